"""TensorLoader: the sampler's batches, exact conversion, crop and flip, and reproducible augmentation."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

import growbatch.batching.loader
from growbatch import DynamicBatchSampler, Phase, Schedule, TensorLoader

WORLD_SIZES = [1, 2, 3, 8]


def make_schedule(kind: str, n: int) -> Schedule | int:
    if kind == "constant":
        return max(1, n // 7)
    # 3 steps, the last change in the middle of epoch 2
    sizes = (max(1, n // 9), max(1, n // 4), max(1, n // 2))
    return Schedule((Phase(0, 1, 0.1, sizes[0]), Phase(1, 2.5, 0.1, sizes[1]), Phase(2.5, 4, 0.1, sizes[2])), n)


def make_data(n: int, channels: int = 3, height: int = 6, width: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, 256, (n, channels, height, width), dtype=torch.uint8, generator=generator)
    return inputs, torch.randint(0, 10, (n,), generator=generator)


def one_pass(loader: TensorLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("kind", ["constant", "steps"])
@pytest.mark.parametrize("n", [1, 10, 101])
def test_same_batches_as_the_sampler(n, kind, drop_last, world_size):
    inputs, targets = make_data(n)
    for rank in range(world_size):
        arguments = dict(seed=7, drop_last=drop_last, rank=rank, world_size=world_size)
        loader = TensorLoader(inputs, targets, make_schedule(kind, n), **arguments)
        sampler = DynamicBatchSampler(n, make_schedule(kind, n), **arguments)
        for epoch in range(5):
            assert len(loader) == len(sampler)
            for (x, y), indices in zip(loader, sampler, strict=True):
                assert torch.equal((x * 255).round().to(torch.uint8), inputs[indices])  # the same samples
                assert x.dtype == torch.float32 and y.dtype == torch.long
                assert torch.equal(y, targets[indices])
                assert loader.last_global_batch_size == sampler.last_global_batch_size
            assert (loader.epoch, loader.position) == (sampler.epoch, sampler.position) == (epoch, loader.position)


def test_normalisation_per_channel_for_uint8_and_float_inputs():
    inputs, targets = make_data(8)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.5]
    expected = (inputs.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    (x, _), = TensorLoader(inputs, targets, 8, mean=mean, std=std, shuffle=False)
    torch.testing.assert_close(x, expected)
    (x, _), = TensorLoader(inputs.float() / 255, targets, 8, mean=mean, std=std, shuffle=False)
    torch.testing.assert_close(x, expected)
    loader = TensorLoader(inputs, targets, 8, mean=mean, std=std)
    torch.testing.assert_close(loader.normalize(inputs), expected)  # evaluation batches


def test_padding_zero_crop_is_the_identity_and_flip_is_torch_flip():
    inputs, targets = make_data(64)
    (x, _), = TensorLoader(inputs, targets, 64, shuffle=False, crop_padding=0, flip=False)
    assert torch.equal(x, inputs.float() * (1 / 255))
    (x, _), = TensorLoader(inputs, targets, 64, shuffle=False, flip=True)
    original, flipped = inputs.float() * (1 / 255), torch.flip(inputs.float() * (1 / 255), dims=[3])
    was_flipped = (x == flipped).flatten(1).all(1)
    assert torch.equal(torch.where(was_flipped[:, None, None, None], flipped, original), x)
    assert 10 < int(was_flipped.sum()) < 54  # about half


@pytest.mark.parametrize("flip", [False, True])
def test_crop_is_a_window_of_the_zero_padded_image(flip):
    padding = 2
    inputs, targets = make_data(40, height=7, width=6)
    (x, _), = TensorLoader(inputs, targets, 40, shuffle=False, crop_padding=padding, flip=flip, seed=1)
    padded = F.pad(inputs.float() * (1 / 255), (padding,) * 4)  # zero in raw pixels, as torchvision's RandomCrop
    candidates = [(dy, dx, flipped) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                  for flipped in (False, True)]
    offsets, flipped_only = set(), 0
    for i in range(40):
        matches = []
        for dy, dx, flipped in candidates:  # brute force: which window (and flip) is it?
            window = padded[i, :, dy:dy + 7, dx:dx + 6]
            if torch.equal(torch.flip(window, dims=[2]) if flipped else window, x[i]):
                matches.append((dy, dx, flipped))
        assert matches, f"sample {i} is no crop of its padded image"
        assert flip or not all(m[2] for m in matches)
        flipped_only += all(m[2] for m in matches)
        offsets.add(matches[0][:2])
    assert len(offsets) > 5  # the offsets vary over the batch
    assert (flipped_only > 5) == flip


@pytest.mark.parametrize("flip", [False, True])
def test_crops_without_the_window_table_are_the_same(flip, monkeypatch):
    # large images or padding skip the precomputed table (NOTE [windows]); the pixels must not change
    inputs, targets = make_data(40, height=7, width=6)
    with_table = TensorLoader(inputs, targets, 16, crop_padding=2, flip=flip, seed=3, normalize_batches=False)
    monkeypatch.setattr(growbatch.batching.loader, "WINDOW_TABLE_BYTES", 0)
    without = TensorLoader(inputs, targets, 16, crop_padding=2, flip=flip, seed=3, normalize_batches=False)
    assert with_table._windows is not None and without._windows is None
    for (a, _), (b, _) in zip(with_table, without, strict=True):
        assert torch.equal(a, b)


def test_augmentation_is_the_same_on_any_number_of_ranks():
    inputs, targets = make_data(50)
    arguments = dict(crop_padding=2, flip=True, seed=4, mean=[0.5] * 3, std=[0.25] * 3)
    single = one_pass(TensorLoader(inputs, targets, 16, **arguments))
    shares = [one_pass(TensorLoader(inputs, targets, 16, rank=r, world_size=3, **arguments)) for r in range(3)]
    for b, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([shares[r][b][0] for r in range(3)]), x)
        assert torch.equal(torch.cat([shares[r][b][1] for r in range(3)]), y)


def test_augmentation_follows_seed_and_epoch():
    inputs, targets = make_data(32)
    a = TensorLoader(inputs, targets, 32, shuffle=False, crop_padding=2, flip=True, seed=1)
    b = TensorLoader(inputs, targets, 32, shuffle=False, crop_padding=2, flip=True, seed=1)
    c = TensorLoader(inputs, targets, 32, shuffle=False, crop_padding=2, flip=True, seed=2)
    epoch0, epoch1 = one_pass(a)[0][0], one_pass(a)[0][0]
    assert torch.equal(epoch0, one_pass(b)[0][0])
    assert not torch.equal(epoch0, epoch1)
    assert not torch.equal(epoch0, one_pass(c)[0][0])


@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_mid_epoch_reproduces_batches_and_augmentation(world_size):
    n = 101
    inputs, targets = make_data(n)
    schedule = make_schedule("steps", n)
    arguments = dict(crop_padding=2, flip=True, mean=[0.5] * 3, std=[0.3] * 3, world_size=world_size)
    for rank in range(world_size):
        full = TensorLoader(inputs, targets, schedule, seed=5, rank=rank, **arguments)
        expected = [one_pass(full) for _ in range(4)]
        run = TensorLoader(inputs, targets, schedule, seed=5, rank=rank, **arguments)
        one_pass(run)
        one_pass(run)
        iterator = iter(run)
        for _ in range(3):  # into epoch 2, before its mid-epoch change
            next(iterator)
        state = run.state_dict()
        resumed = TensorLoader(inputs, targets, schedule, seed=0, rank=rank, **arguments)
        resumed.load_state_dict(state)
        assert resumed.last_global_batch_size == run.last_global_batch_size
        rest = one_pass(resumed) + one_pass(resumed)
        assert len(rest) == len(expected[2]) - 3 + len(expected[3])
        for (x, y), (x_expected, y_expected) in zip(rest, expected[2][3:] + expected[3], strict=True):
            assert torch.equal(x, x_expected) and torch.equal(y, y_expected)


def test_empty_share_gives_empty_tensors():
    inputs, targets = make_data(10)
    loader = TensorLoader(inputs, targets, 2, rank=2, world_size=3, crop_padding=1, flip=True)
    batches = one_pass(loader)
    assert len(batches) == 5
    assert all(x.shape == (0, 3, 6, 5) and y.shape == (0,) for x, y in batches)
    assert loader.last_global_batch_size == 2


def test_channels_last_and_set_epoch():
    inputs, targets = make_data(20)
    loader = TensorLoader(inputs, targets, 8, channels_last=True, crop_padding=1, flip=True)
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)
    loader.set_epoch(3)
    assert (loader.epoch, loader.position, len(loader)) == (3, 0, 3)


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"inputs": torch.zeros(10, 3, 4)}, ValueError, r"inputs should be N x C x H x W, but got shape \(10, 3, 4\)"),
        ({"inputs": torch.zeros(10, 1, 2, 2, dtype=torch.int32)}, TypeError,
         r"inputs should be uint8 or floating point, but got dtype=torch.int32"),
        ({"targets": torch.zeros(9, dtype=torch.long)}, ValueError,
         r"targets should be 10 integer class indices, but got shape \(9,\)"),
        ({"targets": torch.zeros(10)}, ValueError, r"targets should be 10 integer class indices, .*dtype=torch.float32"),
        ({"inputs": [0] * 10}, TypeError, r"inputs and targets should be tensors, but got list and Tensor"),
        ({"mean": [0.5, 0.5]}, ValueError, r"mean should have one value per channel \(3\), but got mean=\[0.5, 0.5\]"),
        ({"std": [1.0, 0.0, 1.0]}, ValueError, r"std should be positive in every channel, but got std=\[1.0, 0.0, 1.0\]"),
        ({"crop_padding": -1}, ValueError, r"crop_padding should be an integer >= 0, but got crop_padding=-1"),
        ({"batch": 0}, ValueError, r"batch_size should be a positive integer value, but got batch_size=0"),
        ({"batch": 11}, ValueError, r"batch_size should be at most the data set size 10, but got batch_size=11"),
        ({"rank": 3, "world_size": 3}, ValueError, r"rank should be in \[0, world_size=3\), but got rank=3"),
        ({"seed": -2}, ValueError, r"seed should be an integer >= 0, but got seed=-2"),
    ],
)
def test_bad_arguments(change, error, match):
    inputs, targets = make_data(10)
    arguments = {"inputs": inputs, "targets": targets, "batch": 4, **change}
    with pytest.raises(error, match=match):
        TensorLoader(arguments.pop("inputs"), arguments.pop("targets"), arguments.pop("batch"), **arguments)


def test_state_from_another_data_set():
    inputs, targets = make_data(10)
    state = TensorLoader(inputs, targets, 2).state_dict()
    with pytest.raises(ValueError, match=r"the state is for dataset_size=10, but this sampler has dataset_size=9"):
        TensorLoader(inputs[:9], targets[:9], 2).load_state_dict(state)


def test_docstring_examples():
    assert doctest.testmod(growbatch.batching.loader).failed == 0


@pytest.mark.parametrize("augment", [False, True])
def test_unnormalized_batches_are_the_stored_dtype_and_normalize_to_the_same(augment):
    inputs, targets = make_data(37, height=8, width=8)
    kwargs = dict(mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], crop_padding=2 if augment else 0, flip=augment,
                  seed=3, channels_last=True)
    normalized = one_pass(TensorLoader(inputs, targets, 10, **kwargs))
    raw_loader = TensorLoader(inputs, targets, 10, normalize_batches=False, **kwargs)
    raw = one_pass(raw_loader)
    assert [x.dtype for x, _ in raw] == [torch.uint8] * 4
    for (x, y), (r, t) in zip(normalized, raw, strict=True):
        later = raw_loader.normalize(r)
        assert torch.equal(later, x) and torch.equal(y, t)
        assert later.is_contiguous(memory_format=torch.channels_last)


def test_normalize_batches_must_be_a_bool():
    inputs, targets = make_data(4)
    with pytest.raises(TypeError, match="normalize_batches should be True or False, but got normalize_batches=1"):
        TensorLoader(inputs, targets, 2, normalize_batches=1)
