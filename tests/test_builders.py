"""Builders: the paper's step modes keep the noise scale's steps; LR schedules convert at equal noise."""

import math

import pytest
import torch

from growbatch.schedule.builders import (
    cosine_lr,
    default_max_batch_size,
    from_lr_function,
    from_lr_scheduler,
    multistep_lr,
    step_schedule,
    warmup_stable_decay_lr,
)
from growbatch.schedule.noise import noise_scale, noise_scale_approx

N = 50_000
CIFAR = dict(lr=0.1, batch_size=128, epochs=200, milestones=(60, 120, 160), factor=5, dataset_size=N, momentum=0.9)


def lr_batch(schedule):
    return [(p.lr, p.batch_size) for p in schedule.phases]


# -- the paper's three modes -------------------------------------------------------
@pytest.mark.parametrize(
    "mode, expected",
    [
        ("decay", [(0.1, 128), (0.1 / 5, 128), (0.1 / 25, 128), (0.1 / 125, 128)]),
        ("hybrid", [(0.1, 128), (0.1, 640), (0.1 / 5, 640), (0.1 / 25, 640)]),
        # 3200 x 5 = 16000 passes the cap 5120: B stops there, the lr takes 16000/5120
        ("increase", [(0.1, 128), (0.1, 640), (0.1, 3200), (0.1 * 5120 / 16000, 5120)]),
    ],
)
def test_modes_on_the_papers_cifar_schedule(mode, expected):
    schedule = step_schedule(mode, max_batch_size=5120, **CIFAR)
    assert [p.start_epoch for p in schedule.phases] == [0, 60, 120, 160]
    assert [p.end_epoch for p in schedule.phases] == [60, 120, 160, 200]
    assert [b for _, b in lr_batch(schedule)] == [b for _, b in expected]
    assert [lr for lr, _ in lr_batch(schedule)] == pytest.approx([lr for lr, _ in expected], rel=1e-12)
    assert all(p.momentum == 0.9 for p in schedule.phases)


def _g_steps(schedule, exact):
    g = [p.noise_scale(N) if exact else p.noise_scale_approx(N) for p in schedule.phases]
    return [a / b for a, b in zip(g, g[1:])]


# max_batch_size = N is no cap at all here (16000 or 2000 at most); 5120 and 1000 bind
@pytest.mark.parametrize("max_batch_size", [N, 5120, 1000])
@pytest.mark.parametrize("factor", [5, 2.5])
@pytest.mark.parametrize("mode", ["decay", "hybrid", "increase"])
def test_approximate_noise_scale_falls_by_exactly_the_factor(mode, factor, max_batch_size):
    schedule = step_schedule(mode, **{**CIFAR, "factor": factor}, max_batch_size=max_batch_size)
    assert _g_steps(schedule, exact=False) == pytest.approx([factor] * 3, rel=1e-12)
    assert all(p.batch_size <= max_batch_size for p in schedule.phases)


@pytest.mark.parametrize("max_batch_size", [N, 5120, 1000])
@pytest.mark.parametrize("mode", ["decay", "hybrid", "increase"])
def test_exact_noise_scale_falls_by_the_factor_up_to_rounding_the_batch(mode, max_batch_size):
    factor = 5
    schedule = step_schedule(mode, **CIFAR, max_batch_size=max_batch_size, exact=True)
    phases = schedule.phases
    for before, after in zip(phases, phases[1:]):
        target = before.noise_scale(N) / factor
        if after.lr == before.lr:
            # the batch alone made the step: the ideal batch is within half a sample of the integer one
            assert noise_scale(after.lr, after.batch_size + 0.5, N, 0.9) <= target
            assert target <= noise_scale(after.lr, after.batch_size - 0.5, N, 0.9)
        else:
            # the lr made (the rest of) the step, so it is exact
            assert after.noise_scale(N) == pytest.approx(target, rel=1e-12)
    if mode != "decay":
        assert phases[1].batch_size == 634  # 50000 / (1 + (50000/128 - 1)/5) = 633.5, not 640


def test_the_cap_stops_the_batch_and_the_lr_takes_the_rest():
    schedule = step_schedule("increase", **CIFAR, max_batch_size=1000)
    # 128 -> 640 -> 3200 capped at 1000 (lr x 1000/3200) -> 5000 capped (lr / 5)
    assert [b for _, b in lr_batch(schedule)] == [128, 640, 1000, 1000]
    assert [lr for lr, _ in lr_batch(schedule)] == pytest.approx([0.1, 0.1, 0.1 * 1000 / 3200, 0.1 * 1000 / 3200 / 5])


def test_default_cap_is_a_tenth_of_the_data_set():
    assert default_max_batch_size(N) == 5000
    schedule = step_schedule("increase", **CIFAR)
    assert [b for _, b in lr_batch(schedule)] == [128, 640, 3200, 5000]
    assert schedule.phases[-1].lr == pytest.approx(0.1 * 5000 / 16000)


def test_hybrid_with_two_batch_increases():
    schedule = step_schedule("hybrid", **CIFAR, max_batch_size=5120, batch_increases=2)
    assert [b for _, b in lr_batch(schedule)] == [128, 640, 3200, 3200]
    assert [lr for lr, _ in lr_batch(schedule)] == pytest.approx([0.1, 0.1, 0.1, 0.02])


def test_no_milestones_is_one_phase():
    schedule = step_schedule("increase", **{**CIFAR, "milestones": ()}, max_batch_size=5120)
    assert lr_batch(schedule) == [(0.1, 128)]
    assert schedule.epochs == 200


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(mode="grow"), ValueError, r"mode should be one of decay, hybrid, increase, but got mode='grow'"),
        (dict(milestones=(60, 60, 160)), ValueError, r"milestones should be strictly increasing, but got milestones=\[60, 60, 160\]"),
        (dict(milestones=(120, 60)), ValueError, r"milestones should be strictly increasing, but got milestones=\[120, 60\]"),
        (dict(milestones=(0, 60)), ValueError, r"milestones should be positive epochs, but got milestones=\[0, 60\]"),
        (dict(milestones=(60, 200)), ValueError, r"milestones should lie strictly between 0 and epochs=200"),
        (dict(milestones="60,120"), TypeError, r"milestones should be a sequence of numbers, but got milestones='60,120'"),
        (dict(factor=1), ValueError, r"factor should be a number greater than 1 .*but got factor=1"),
        (dict(factor=0.2), ValueError, r"factor should be a number greater than 1 .*but got factor=0.2"),
        (dict(factor="5"), TypeError, r"factor should be a number greater than 1, but got factor='5'"),
        (dict(lr=0), ValueError, r"lr should be a positive number, but got lr=0"),
        (dict(lr=-0.1), ValueError, r"lr should be a positive number, but got lr=-0.1"),
        (dict(batch_size=0), ValueError, r"batch_size should be a positive integer value, but got batch_size=0"),
        (dict(batch_size=60_000), ValueError, r"batch_size should be at most the data set size 50000, but got batch_size=60000"),
        (dict(max_batch_size=60_000), ValueError,
         r"max_batch_size should be at most the data set size 50000, but got max_batch_size=60000"),
        (dict(max_batch_size=100), ValueError, r"batch_size should be at most max_batch_size=100, but got batch_size=128"),
        (dict(momentum=1.0), ValueError, r"momentum should be in \[0, 1\), but got momentum=1"),
        (dict(momentum=-0.5), ValueError, r"momentum should be in \[0, 1\), but got momentum=-0.5"),
        (dict(epochs=0), ValueError, r"epochs should be a positive integer value, but got epochs=0"),
        (dict(dataset_size=0), ValueError, r"dataset_size should be a positive integer value, but got dataset_size=0"),
        (dict(batch_increases=-1), ValueError, r"batch_increases should be a non-negative integer, but got batch_increases=-1"),
    ],
)
def test_step_schedule_errors(change, error, match):
    kwargs = {"mode": "increase", **CIFAR, "max_batch_size": 5120, **change}
    with pytest.raises(error, match=match):
        step_schedule(kwargs.pop("mode"), **kwargs)


# -- LR schedule -> batch schedule at equal noise -------------------------------------
def _errors(conversion, lr_at, points, batch_size, exact):
    """|g_new / g_original - 1| at each point where the original g is positive."""
    g = noise_scale if exact else noise_scale_approx
    errors = []
    for t in points:
        phase = conversion.schedule.phase_at(t)
        target = g(lr_at(t), batch_size, N, 0.9) if lr_at(t) > 0 else 0.0
        if target > 0:
            errors.append(abs(g(phase.lr, phase.batch_size, N, phase.momentum) / target - 1.0))
    return errors


def assert_equal_noise(conversion, lr_at, points, batch_size=128, exact=False):
    """g matches the original schedule's at every point within the reported error, which is attained."""
    errors = _errors(conversion, lr_at, points, batch_size, exact)
    assert errors and max(errors) <= conversion.max_noise_error + 1e-12
    assert max(errors) == pytest.approx(conversion.max_noise_error, abs=1e-12)


CONVERT = dict(batch_size=128, epochs=20, dataset_size=N, momentum=0.9, max_batch_size=5120)


@pytest.mark.parametrize("exact", [False, True])
def test_cosine_conversion_keeps_the_noise_scale(exact):
    lr_at = cosine_lr(0.1, 20)
    conversion = from_lr_function(lr_at, **CONVERT, exact=exact)
    assert_equal_noise(conversion, lr_at, range(20), exact=exact)
    # integer batches near 128 are off by at most half a sample: a relative error of 0.5/128 at most
    assert 0 < conversion.max_noise_error < 0.5 / 128
    phases = conversion.schedule.phases
    assert [p.batch_size for p in phases] == sorted(p.batch_size for p in phases)  # the batch only grows
    assert phases[-1].batch_size == 5120 and phases[-1].lr < 0.1  # at the cap the lr falls instead


def test_rounding_to_a_multiple_is_reported():
    lr_at = cosine_lr(0.1, 20)
    conversion = from_lr_function(lr_at, **CONVERT, batch_size_multiple=64)
    assert all(p.batch_size % 64 == 0 for p in conversion.schedule.phases)
    assert conversion.max_noise_error > 0.5 / 128  # coarser than whole samples
    assert_equal_noise(conversion, lr_at, range(20))


def test_multistep_conversion_is_the_increase_schedule():
    lr_at = multistep_lr(0.1, (6, 12, 16), 5)
    conversion = from_lr_function(lr_at, **CONVERT)
    assert conversion.max_noise_error == pytest.approx(0.0, abs=1e-12)
    assert_equal_noise(conversion, lr_at, range(20))
    increase = step_schedule("increase", **{**CIFAR, "epochs": 20, "milestones": (6, 12, 16)}, max_batch_size=5120)
    assert [(p.start_epoch, p.end_epoch, p.batch_size) for p in conversion.schedule.phases] == \
        [(p.start_epoch, p.end_epoch, p.batch_size) for p in increase.phases]
    assert [p.lr for p in conversion.schedule.phases] == pytest.approx([p.lr for p in increase.phases], rel=1e-12)


def _torch_lrs(make_scheduler, steps):
    """The lr a torch scheduler gives before each of ``steps`` steps (our own simulation, as the oracle)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_torch_cosine_annealing_conversion_keeps_the_noise_scale():
    make = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)  # noqa: E731
    lrs = _torch_lrs(make, 20)
    conversion = from_lr_scheduler(make, lr=0.1, **CONVERT)
    assert_equal_noise(conversion, lambda t: lrs[int(t)], range(20))
    assert conversion.max_noise_error < 0.5 / 128


def test_torch_multistep_conversion_matches_our_multistep():
    make = lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[6, 12, 16], gamma=0.2)  # noqa: E731
    lrs = _torch_lrs(make, 20)
    conversion = from_lr_scheduler(make, lr=0.1, **CONVERT)
    assert_equal_noise(conversion, lambda t: lrs[int(t)], range(20))
    ours = from_lr_function(multistep_lr(0.1, (6, 12, 16), 5), **CONVERT).schedule
    assert [p.batch_size for p in conversion.schedule.phases] == [p.batch_size for p in ours.phases] == [128, 640, 3200, 5120]


def test_torch_scheduler_stepped_within_epochs_gives_phases_mid_epoch():
    steps_per_epoch = 4
    make = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20 * steps_per_epoch)  # noqa: E731
    lrs = _torch_lrs(make, 20 * steps_per_epoch)
    conversion = from_lr_scheduler(make, lr=0.1, steps_per_epoch=steps_per_epoch, **CONVERT)
    points = [k / steps_per_epoch for k in range(20 * steps_per_epoch)]
    assert_equal_noise(conversion, lambda t: lrs[round(t * steps_per_epoch)], points)
    assert any(p.start_epoch % 1 for p in conversion.schedule.phases)  # some phases start mid-epoch
    plan = conversion.schedule.plan()
    assert plan.total_samples == 20 * N


def test_warmup_stable_decay_conversion_keeps_the_warmup_in_the_lr():
    lr_at = warmup_stable_decay_lr(0.1, 20, warmup_epochs=4, decay_epochs=8, min_lr=0.001)
    conversion = from_lr_function(lr_at, **CONVERT)
    assert_equal_noise(conversion, lr_at, range(20))
    schedule = conversion.schedule
    # warm-up: lr rises at the initial batch; plateau: unchanged; decay: the batch grows instead
    assert [schedule.lr_at(t) for t in range(4)] == pytest.approx([0.1 * (t + 1) / 5 for t in range(4)])
    assert {schedule.batch_size_at(t) for t in range(12)} == {128}
    assert schedule.lr_at(12) == pytest.approx(0.1) and schedule.batch_size_at(13) > 128


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: from_lr_function(cosine_lr(0.1, 20), **CONVERT, batch_size_multiple=0), ValueError,
         r"batch_size_multiple should be a positive integer value, but got batch_size_multiple=0"),
        (lambda: from_lr_function(cosine_lr(0.1, 20), **CONVERT, batch_size_multiple=8192), ValueError,
         r"batch_size_multiple=8192 should be at most max_batch_size=5120"),
        (lambda: from_lr_function(cosine_lr(0.1, 20), **CONVERT, points_per_epoch=0), ValueError,
         r"points_per_epoch should be a positive integer value, but got points_per_epoch=0"),
        (lambda: from_lr_function(lambda t: 0.1 - t, **CONVERT), ValueError,
         r"the lr schedule should give finite non-negative values, but gave lr=-0.9 at epoch 1"),
        (lambda: from_lr_function(lambda t: 0.0, **CONVERT), ValueError,
         r"the lr schedule should start positive, but gave lr=0 at epoch 0"),
        (lambda: from_lr_function(cosine_lr(0.1, 20), **{**CONVERT, "max_batch_size": 64}), ValueError,
         r"batch_size should be at most max_batch_size=64, but got batch_size=128"),
        (lambda: from_lr_scheduler(lambda opt: None, lr=0.1, steps_per_epoch=0, **CONVERT), ValueError,
         r"steps_per_epoch should be a positive integer value, but got steps_per_epoch=0"),
        (lambda: from_lr_scheduler(lambda opt: None, lr=0.1, batch_size=128, dataset_size=N), TypeError,
         r"epochs should be a positive integer value, but got epochs=None"),
        (lambda: cosine_lr(0.1, 20, min_lr=0.2), ValueError, r"min_lr should be in \[0, lr=0.1\), but got min_lr=0.2"),
        (lambda: cosine_lr(0.1, 0), ValueError, r"epochs should be a positive number, but got epochs=0"),
        (lambda: multistep_lr(0.1, (6, 6), 5), ValueError, r"milestones should be strictly increasing, but got milestones=\[6, 6\]"),
        (lambda: multistep_lr(0.1, (6, 12), 1), ValueError, r"factor should be a number greater than 1"),
        (lambda: multistep_lr(0, (6, 12), 5), ValueError, r"lr should be a positive number, but got lr=0"),
        (lambda: warmup_stable_decay_lr(0.1, 20, warmup_epochs=15, decay_epochs=10), ValueError,
         r"warmup_epochs \+ decay_epochs should fit in epochs=20, but got warmup_epochs=15, decay_epochs=10"),
    ],
)
def test_conversion_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_conversion_hand_value_at_one_epoch():
    # cosine at epoch 10 of 20 is lr/2: the batch doubles to 256 at lr 0.1
    conversion = from_lr_function(cosine_lr(0.1, 20), **CONVERT)
    assert conversion.schedule.batch_size_at(10) == 256
    assert conversion.schedule.lr_at(10) == pytest.approx(0.1)
    assert math.isclose(cosine_lr(0.1, 20)(10), 0.05)
