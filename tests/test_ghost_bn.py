"""growbatch.batching.ghost_bn: ghost batch norm against nn.BatchNorm per ghost, running statistics, the converter, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from growbatch.batching.ghost_bn import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    check_ghost_batch_size,
    convert_to_ghost_batch_norm,
    ghost_sizes,
    largest_ghost_batch_size,
)

# (ghost class, plain class, shape of one sample)
KINDS = [
    pytest.param(GhostBatchNorm1d, nn.BatchNorm1d, (5,), id="1d-NC"),
    pytest.param(GhostBatchNorm1d, nn.BatchNorm1d, (5, 7), id="1d-NCL"),
    pytest.param(GhostBatchNorm2d, nn.BatchNorm2d, (5, 3, 4), id="2d"),
]


def data(batch: int, sample_shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # per-sample offsets, so that ghosts really have different statistics
    return torch.randn(batch, *sample_shape, generator=generator) * 2 + torch.randn(batch, 1, generator=generator) \
        .view(batch, *([1] * len(sample_shape))) * 3


def randomise(norm: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial weight, bias and running statistics, so copying them is visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
        norm.bias.copy_(torch.randn(norm.num_features, generator=generator))
        norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator))
        norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
        norm.num_batches_tracked.fill_(7)
    return norm


@pytest.mark.parametrize("ghost_kind, plain_kind, sample_shape", KINDS)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_one_ghost_equals_batch_norm_in_training_and_eval(ghost_kind, plain_kind, sample_shape, momentum):
    plain = randomise(plain_kind(5, momentum=momentum))
    ghost = ghost_kind(5, ghost_batch_size=16, momentum=momentum)
    ghost.load_state_dict(plain.state_dict())
    for step in range(3):  # batches of 16 and fewer: one ghost each
        inputs = data(16 - 5 * step, sample_shape, seed=step)
        plain_inputs, ghost_inputs = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
        plain_out, ghost_out = plain(plain_inputs), ghost(ghost_inputs)
        torch.testing.assert_close(ghost_out, plain_out, rtol=0, atol=0)
        (plain_out ** 2).sum().backward()
        (ghost_out ** 2).sum().backward()
        torch.testing.assert_close(ghost_inputs.grad, plain_inputs.grad, rtol=0, atol=0)
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(ghost.state_dict()[name], value, rtol=0, atol=0)
    torch.testing.assert_close(ghost.weight.grad, plain.weight.grad, rtol=0, atol=0)
    plain.eval(), ghost.eval()
    inputs = data(40, sample_shape, seed=9)  # eval: running statistics, however large the batch
    torch.testing.assert_close(ghost(inputs), plain(inputs), rtol=0, atol=0)


def per_ghost_oracle(plain: nn.Module, inputs: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, list[nn.Module]]:
    """Each ghost through its own copy of nn.BatchNorm: outputs and the copies (holding each ghost's stats)."""
    copies = [copy.deepcopy(plain) for _ in sizes]
    outputs = torch.cat([norm(ghost) for norm, ghost in zip(copies, inputs.split(sizes))])
    return outputs, copies


@pytest.mark.parametrize("ghost_kind, plain_kind, sample_shape", KINDS)
@pytest.mark.parametrize("batch, ghost_batch_size, sizes", [
    (12, 4, [4, 4, 4]),
    (10, 4, [4, 4, 2]),  # a short last ghost
    (9, 3, [3, 3, 3]),
])
def test_each_ghost_is_normalised_by_its_own_statistics(ghost_kind, plain_kind, sample_shape, batch,
                                                         ghost_batch_size, sizes):
    plain = randomise(plain_kind(5))
    ghost = ghost_kind(5, ghost_batch_size=ghost_batch_size)
    ghost.load_state_dict(plain.state_dict())
    inputs = data(batch, sample_shape)
    ghost_inputs, plain_inputs = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
    expected, copies = per_ghost_oracle(plain, plain_inputs, sizes)
    outputs = ghost(ghost_inputs)
    torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-5)
    whole = copy.deepcopy(plain)(inputs)
    assert not torch.allclose(outputs, whole, rtol=1e-3, atol=1e-3)  # not the whole batch's statistics

    # gradients through the ghost statistics: inputs, weight, bias
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3))
    (outputs * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(ghost_inputs.grad, plain_inputs.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ghost.weight.grad, sum(norm.weight.grad for norm in copies), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ghost.bias.grad, sum(norm.bias.grad for norm in copies), rtol=1e-5, atol=1e-5)

    # running statistics: the ghosts' updates averaged with weights n_k / N, one count per forward
    shares = [size / batch for size in sizes]
    torch.testing.assert_close(ghost.running_mean, sum(w * norm.running_mean for w, norm in zip(shares, copies)))
    torch.testing.assert_close(ghost.running_var, sum(w * norm.running_var for w, norm in zip(shares, copies)))
    assert ghost.num_batches_tracked.item() == copies[0].num_batches_tracked.item() == 8  # 7 before


def test_running_statistics_follow_the_documented_formula_with_cumulative_momentum():
    ghost = GhostBatchNorm2d(3, ghost_batch_size=4, momentum=None)
    inputs = [data(10, (3, 2, 2), seed=seed) for seed in range(3)]
    expected_mean, expected_var = torch.zeros(3), torch.ones(3)
    for count, batch in enumerate(inputs, start=1):
        ghost(batch)
        ghosts = batch.split([4, 4, 2])
        means = sum(len(g) / 10 * g.mean((0, 2, 3)) for g in ghosts)
        variances = sum(len(g) / 10 * g.transpose(0, 1).flatten(1).var(1) for g in ghosts)  # unbiased
        expected_mean = (1 - 1 / count) * expected_mean + means / count
        expected_var = (1 - 1 / count) * expected_var + variances / count
    torch.testing.assert_close(ghost.running_mean, expected_mean)
    torch.testing.assert_close(ghost.running_var, expected_var)
    assert ghost.num_batches_tracked.item() == 3


def test_a_lone_last_sample_joins_the_previous_ghost():
    # one sample of an (N, C) input has no variance: ghosts of 4 and 5, not 4, 4 and 1
    plain = randomise(nn.BatchNorm1d(5))
    ghost = GhostBatchNorm1d(5, ghost_batch_size=4)
    ghost.load_state_dict(plain.state_dict())
    inputs = data(9, (5,))
    expected, _ = per_ghost_oracle(plain, inputs, [4, 5])
    torch.testing.assert_close(ghost(inputs), expected, rtol=1e-5, atol=1e-5)
    assert ghost_sizes(9, 4) == [4, 5]
    assert ghost_sizes(9, 4, values_per_sample=2) == [4, 4, 1]  # (N, C, L) with L = 2: a ghost of its own


def test_channels_last_inputs_give_the_same_outputs():
    ghost = GhostBatchNorm2d(5, ghost_batch_size=4)
    inputs = data(10, (5, 3, 4))
    expected = copy.deepcopy(ghost)(inputs)
    outputs = ghost(inputs.to(memory_format=torch.channels_last))
    torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-5)
    assert outputs.is_contiguous(memory_format=torch.channels_last)


def test_without_running_statistics_eval_also_uses_ghost_statistics():
    plain = nn.BatchNorm2d(5, track_running_stats=False)
    ghost = GhostBatchNorm2d(5, ghost_batch_size=4, track_running_stats=False).eval()
    assert ghost.running_mean is None and "running_mean" not in ghost.state_dict()
    inputs = data(8, (5, 3, 4))
    expected, _ = per_ghost_oracle(plain, inputs, [4, 4])
    torch.testing.assert_close(ghost(inputs), expected, rtol=1e-5, atol=1e-5)


def test_state_dict_is_that_of_batch_norm():
    plain = randomise(nn.BatchNorm2d(5))
    ghost = GhostBatchNorm2d(5, ghost_batch_size=2)
    assert list(ghost.state_dict()) == list(plain.state_dict())
    ghost.load_state_dict(plain.state_dict(), strict=True)
    back = nn.BatchNorm2d(5)
    back.load_state_dict(ghost.state_dict(), strict=True)
    for name, value in plain.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    assert isinstance(ghost, nn.BatchNorm2d) and isinstance(GhostBatchNorm1d(3), nn.BatchNorm1d)
    assert "ghost_batch_size=2" in repr(ghost)


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 4 * 4, 8), nn.BatchNorm1d(8), nn.ReLU(),
                                  nn.Linear(8, 3))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(inputs))


def trained_small_net(dtype: torch.dtype = torch.float32) -> SmallNet:
    torch.manual_seed(0)
    model = SmallNet().to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for seed in range(3):  # so weights and running statistics are not their initial values
        optimizer.zero_grad()
        model(data(16, (3, 4, 4), seed=seed).to(dtype)).square().mean().backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_converter_keeps_parameters_buffers_mode_and_eval_outputs(dtype):
    model = trained_small_net(dtype)
    model.head.eval()  # a mixed train/eval model keeps each module's mode
    original = copy.deepcopy(model)
    parameters = dict(model.named_parameters())
    converted = convert_to_ghost_batch_norm(model, 4)
    assert converted is model
    assert type(converted.features[1]) is GhostBatchNorm2d and type(converted.head[2]) is GhostBatchNorm1d
    assert converted.features[1].training and not converted.head[2].training
    for name, parameter in converted.named_parameters():
        assert parameter is parameters[name], name  # the same tensors: an existing optimizer keeps working
    assert list(converted.state_dict()) == list(original.state_dict())
    for name, value in original.state_dict().items():
        assert torch.equal(converted.state_dict()[name], value), name
        assert converted.state_dict()[name].dtype == value.dtype == (value.dtype if "num_batches" in name else dtype)
    converted.eval(), original.eval()
    inputs = data(20, (3, 4, 4), seed=5).to(dtype)
    torch.testing.assert_close(converted(inputs), original(inputs), rtol=0, atol=0)
    assert largest_ghost_batch_size(converted) == 4 and largest_ghost_batch_size(original) is None


def test_converter_replaces_a_lone_batch_norm_and_resizes_ghosts():
    plain = randomise(nn.BatchNorm2d(5, momentum=0.3, eps=1e-3)).eval()
    ghost = convert_to_ghost_batch_norm(plain, 8)
    assert type(ghost) is GhostBatchNorm2d and ghost.ghost_batch_size == 8 and not ghost.training
    assert (ghost.momentum, ghost.eps, ghost.running_var) == (0.3, 1e-3, plain.running_var)
    resized = convert_to_ghost_batch_norm(nn.Sequential(ghost), 2)
    assert resized[0].ghost_batch_size == 2 and resized[0].weight is plain.weight
    assert type(convert_to_ghost_batch_norm(nn.BatchNorm3d(2), 8)) is nn.BatchNorm3d  # only 1d and 2d


def test_ghosts_in_training_differ_from_plain_batch_norm_but_not_in_eval():
    model = trained_small_net()
    converted = convert_to_ghost_batch_norm(copy.deepcopy(model), 4)
    inputs = data(16, (3, 4, 4), seed=7)
    assert not torch.allclose(copy.deepcopy(converted)(inputs), copy.deepcopy(model)(inputs), atol=1e-3)
    model.eval(), converted.eval()
    torch.testing.assert_close(converted(inputs), model(inputs), rtol=0, atol=0)


@pytest.mark.parametrize("call, error, message", [
    (lambda: GhostBatchNorm2d(4, ghost_batch_size=0), ValueError,
     r"ghost_batch_size should be a positive integer, but got ghost_batch_size=0; the paper uses 128"),
    (lambda: GhostBatchNorm1d(4, ghost_batch_size=-2), ValueError, r"but got ghost_batch_size=-2"),
    (lambda: GhostBatchNorm1d(4, ghost_batch_size=64.0), TypeError,
     r"ghost_batch_size should be a positive integer, but got ghost_batch_size=64.0 \(float\)"),
    (lambda: GhostBatchNorm2d(4, ghost_batch_size=True), TypeError, r"ghost_batch_size=True \(bool\)"),
    (lambda: convert_to_ghost_batch_norm(nn.BatchNorm2d(3), 0), ValueError, r"but got ghost_batch_size=0"),
    (lambda: check_ghost_batch_size(256, 128), ValueError,
     r"ghost_batch_size=256 is larger than micro_batch_size=128: each ghost batch must fit in one micro-batch; "
     r"use micro_batch_size >= 256 \(a multiple of 256 keeps training invariant to the split\) or "
     r"ghost_batch_size <= 128"),
])
def test_errors_name_the_value_and_the_fix(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_ghost_as_large_as_the_micro_batch_is_accepted():
    check_ghost_batch_size(128, 128)
    check_ghost_batch_size(128, 1024)
