"""The paper's presets: their schedules, what they add up to, and unknown names."""

import dataclasses

import pytest

from growbatch.schedule.presets import PRESETS, get_preset, preset_names

CIFAR = 50_000
IMAGENET = 1_281_167


def schedule(name, drop_last):
    return dataclasses.replace(get_preset(name).schedule(), drop_last=drop_last)


# Updates per epoch: CIFAR-10 50000/128 = 390.6, /640 = 78.1, /3200 = 15.6, /5120 = 9.8;
# ImageNet 1281167/8192 = 156.4, /16384 = 78.2, /32768 = 39.1, /65536 = 19.5.
UPDATES = {
    # name: (last partial batch kept, dropped)
    "cifar10-wrn-decay": (200 * 391, 200 * 390),
    "cifar10-wrn-hybrid": (60 * 391 + 140 * 79, 60 * 390 + 140 * 78),
    "cifar10-wrn-increase": (60 * 391 + 60 * 79 + 40 * 16 + 40 * 10, 60 * 390 + 60 * 78 + 40 * 15 + 40 * 9),
    "cifar10-wrn-increase-lr": (60 * 79 + 60 * 16 + 80 * 10, 60 * 78 + 60 * 15 + 80 * 9),
    "cifar10-wrn-increase-momentum": (60 * 16 + 140 * 10, 60 * 15 + 140 * 9),
    "imagenet-irv2-decay": (90 * 157, 90 * 156),
    "imagenet-irv2-increase": (30 * 157 + 60 * 20, 30 * 156 + 60 * 19),
    "imagenet-irv2-momentum-0.95": (30 * 79 + 60 * 20, 30 * 78 + 60 * 19),
    "imagenet-irv2-momentum-0.975": (30 * 40 + 60 * 20, 30 * 39 + 60 * 19),
}

SAMPLES_DROPPED = {
    "cifar10-wrn-decay": 200 * 390 * 128,
    "cifar10-wrn-increase": 60 * 390 * 128 + 60 * 78 * 640 + 40 * 15 * 3200 + 40 * 9 * 5120,
    "imagenet-irv2-decay": 90 * 156 * 8192,
    "imagenet-irv2-increase": 30 * 156 * 8192 + 60 * 19 * 65_536,
}


def test_every_preset_has_its_counts_here():
    assert set(UPDATES) == set(preset_names())


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("name", list(UPDATES))
def test_total_updates(name, drop_last):
    plan = schedule(name, drop_last).plan()
    assert plan.total_updates == UPDATES[name][drop_last]
    if not drop_last:
        assert plan.total_samples == plan.epochs * plan.dataset_size  # every sample once per epoch


@pytest.mark.parametrize("name", list(SAMPLES_DROPPED))
def test_total_samples_with_the_last_batch_dropped(name):
    assert schedule(name, True).plan().total_samples == SAMPLES_DROPPED[name]


def test_imagenet_presets_drop_the_last_batch_and_cifar_presets_keep_it():
    for name, preset in PRESETS.items():
        assert preset.schedule().drop_last == name.startswith("imagenet"), name
    assert get_preset("imagenet-irv2-increase").schedule().plan().total_updates == 30 * 156 + 60 * 19


def test_per_phase_updates_of_the_increase_preset():
    plan = get_preset("cifar10-wrn-increase").schedule().plan()
    assert [p.updates for p in plan.phases] == [60 * 391, 60 * 79, 40 * 16, 40 * 10]
    assert [p.samples for p in plan.phases] == [60 * CIFAR, 60 * CIFAR, 40 * CIFAR, 40 * CIFAR]


@pytest.mark.parametrize(
    "name, momentum, rows",
    [
        ("cifar10-wrn-decay", 0.9, [(0.1, 128), (0.02, 128), (0.004, 128), (0.0008, 128)]),
        ("cifar10-wrn-hybrid", 0.9, [(0.1, 128), (0.1, 640), (0.02, 640), (0.004, 640)]),
        ("cifar10-wrn-increase", 0.9, [(0.1, 128), (0.1, 640), (0.1, 3200), (0.032, 5120)]),
        ("cifar10-wrn-increase-lr", 0.9, [(0.5, 640), (0.5, 3200), (0.16, 5120), (0.032, 5120)]),
        ("cifar10-wrn-increase-momentum", 0.98, [(0.5, 3200), (0.16, 5120), (0.032, 5120), (0.0064, 5120)]),
        ("imagenet-irv2-decay", 0.9, [(3.0, 8192), (0.3, 8192), (0.03, 8192), (0.003, 8192)]),
        ("imagenet-irv2-increase", 0.9, [(3.0, 8192), (2.4, 65_536), (0.24, 65_536), (0.024, 65_536)]),
        ("imagenet-irv2-momentum-0.95", 0.95, [(3.0, 16_384), (1.2, 65_536), (0.12, 65_536), (0.012, 65_536)]),
        ("imagenet-irv2-momentum-0.975", 0.975, [(3.0, 32_768), (0.6, 65_536), (0.06, 65_536), (0.006, 65_536)]),
    ],
)
def test_preset_schedules(name, momentum, rows):
    s = get_preset(name).schedule()
    assert s.name == name
    assert [p.batch_size for p in s.phases] == [b for _, b in rows]
    assert [p.lr for p in s.phases] == pytest.approx([lr for lr, _ in rows], rel=1e-12)
    assert {p.momentum for p in s.phases} == {momentum}
    starts = [0, 60, 120, 160] if name.startswith("cifar") else [0, 30, 60, 80]
    assert [p.start_epoch for p in s.phases] == starts
    assert s.epochs == (200 if name.startswith("cifar") else 90)
    assert s.dataset_size == (CIFAR if name.startswith("cifar") else IMAGENET)


@pytest.mark.parametrize("family, reference", [("cifar10", "cifar10-wrn-decay"), ("imagenet", "imagenet-irv2-decay")])
def test_every_preset_has_the_decay_schedules_noise_scale_in_every_phase(family, reference):
    # the paper's point: the schedules differ in lr, B and m, but g ~ lr*N/(B(1-m)) is the same
    decay = get_preset(reference).schedule()
    expected = [p.noise_scale_approx(decay.dataset_size) for p in decay.phases]
    for name in preset_names():
        if name.startswith(family):
            s = get_preset(name).schedule()
            assert [p.noise_scale_approx(s.dataset_size) for p in s.phases] == pytest.approx(expected, rel=1e-12), name


def test_cifar_presets_use_the_papers_weight_decay():
    assert {PRESETS[n].weight_decay for n in preset_names() if n.startswith("cifar10")} == {5e-4}


def test_unknown_preset_lists_every_valid_name():
    with pytest.raises(ValueError, match=r"unknown preset 'cifar10-wrn'; valid presets: cifar10-wrn-decay, ") as info:
        get_preset("cifar10-wrn")
    for name in preset_names():
        assert name in str(info.value)
