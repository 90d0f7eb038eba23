"""The measured gradient noise scale: a closed-form oracle, 1 process = 2 processes, state round trip."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from growbatch import MicroBatcher, convert_to_ghost_batch_norm
from growbatch.batching.noise_scale import GradientNoiseScale
from growbatch.training.distributed import AllReduceStats, DistInfo, teardown, wrap_ddp

DIMENSION, NOISE = 10, 2.0


def _half_squared_error(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor):
    return 0.5 * (model(inputs).squeeze(1) - targets).pow(2).mean(), {}


def _least_squares(weight: torch.Tensor) -> nn.Linear:
    model = nn.Linear(DIMENSION, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(weight.view(1, -1))
    return model


def _batch(generator: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ N(0, I), y = w*·x + σ ε with w* = 0."""
    x = torch.randn(size, DIMENSION, generator=generator, dtype=torch.float64)
    return x, NOISE * torch.randn(size, generator=generator, dtype=torch.float64)


def test_the_noise_scale_of_linear_least_squares_matches_its_closed_form() -> None:
    """Per-sample gradient g = r x with r = δ·x − σε, δ = w − w*: G = δ, E|g|² = |δ|²(d+2) + σ²d, so
    tr(Σ) = |δ|²(d+1) + σ²d and B_simple = d + 1 + σ²d/|δ|² (51 here), at fixed weights, fresh data."""
    generator = torch.Generator().manual_seed(0)
    delta = torch.randn(DIMENSION, generator=generator, dtype=torch.float64)
    delta /= delta.norm()  # |δ| = 1
    model = _least_squares(delta)
    gns = GradientNoiseScale(model, decay=0.995)
    micro = MicroBatcher(model, loss=_half_squared_error, micro_batch_size=32, noise_scale=gns)
    for _ in range(1500):
        model.zero_grad(set_to_none=True)
        micro.backward(*_batch(generator, 256), global_batch_size=256)
    expected = DIMENSION + 1 + NOISE**2 * DIMENSION
    assert gns.value == pytest.approx(expected, rel=0.10)
    assert gns.gradient_sq / (1 - gns.decay**gns.updates) == pytest.approx(1.0, rel=0.15)  # |G|² = |δ|² = 1


def test_a_batch_that_fits_one_micro_batch_is_cut_in_two_and_keeps_its_gradient() -> None:
    model = _least_squares(torch.ones(DIMENSION, dtype=torch.float64))
    plain = _least_squares(torch.ones(DIMENSION, dtype=torch.float64))
    gns = GradientNoiseScale(model)
    x, y = _batch(torch.Generator().manual_seed(1), 64)
    whole = GradientNoiseScale(plain)
    MicroBatcher(plain, loss=_half_squared_error, micro_batch_size=64, noise_scale=whole).backward(
        x, y, global_batch_size=64)
    assert whole.updates == 0 and whole.value is None  # by default: no second batch size, no estimate
    plain.zero_grad(set_to_none=True)
    result = MicroBatcher(model, loss=_half_squared_error, micro_batch_size=64, noise_scale=gns,
                          split_for_noise_scale=True).backward(x, y, global_batch_size=64)
    MicroBatcher(plain, loss=_half_squared_error, micro_batch_size=64).backward(x, y, global_batch_size=64)
    assert (result.micro_batches, result.micro_batch_size) == (2, 32) and gns.updates == 1
    assert torch.allclose(model.weight.grad, plain.weight.grad, rtol=1e-12, atol=0)


def test_no_estimate_where_a_cut_would_split_a_ghost_batch() -> None:
    """A batch of one ghost batch cannot be cut without changing what batch norm normalises over."""
    model = convert_to_ghost_batch_norm(nn.Sequential(nn.Linear(DIMENSION, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)),
                                        ghost_batch_size=16).double()
    gns = GradientNoiseScale(model)
    micro = MicroBatcher(model, loss=_half_squared_error, micro_batch_size=64, noise_scale=gns,
                         split_for_noise_scale=True)
    generator = torch.Generator().manual_seed(4)
    assert micro.backward(*_batch(generator, 16), global_batch_size=16).micro_batches == 1
    assert gns.value is None and gns.updates == 0
    assert micro.backward(*_batch(generator, 48), global_batch_size=48).micro_batch_size == 32  # 2 whole ghosts
    assert gns.updates == 1


def test_state_round_trip_continues_the_same_averages() -> None:
    generator = torch.Generator().manual_seed(2)
    model = _least_squares(torch.ones(DIMENSION, dtype=torch.float64))
    a = GradientNoiseScale(model, decay=0.9)
    micro = MicroBatcher(model, loss=_half_squared_error, micro_batch_size=16, noise_scale=a)
    for _ in range(5):
        model.zero_grad(set_to_none=True)
        micro.backward(*_batch(generator, 64), global_batch_size=64)
    b = GradientNoiseScale(model, decay=0.5)
    b.load_state_dict(a.state_dict())
    assert (b.decay, b.updates, b.gradient_sq, b.trace, b.value) == (a.decay, a.updates, a.gradient_sq, a.trace, a.value)
    with pytest.raises(ValueError, match="GradientNoiseScale state_dict of version 1"):
        b.load_state_dict({"version": 7})
    with pytest.raises(ValueError, match=r"decay should be in \[0, 1\), but got decay=1.0"):
        GradientNoiseScale(model, decay=1.0)


def _estimate(rank: int, world_size: int, port: int, queue) -> None:
    """Ten updates of a global batch of 64, micro-batches of 16, on ``world_size`` processes."""
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIMENSION, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    gns = GradientNoiseScale(model, decay=0.5)
    wrapped = wrap_ddp(model, DistInfo(rank=rank, world_size=world_size), AllReduceStats())
    micro = MicroBatcher(wrapped, loss=_half_squared_error, micro_batch_size=16, noise_scale=gns)
    generator = torch.Generator().manual_seed(3)
    for _ in range(10):
        x, y = _batch(generator, 64)
        y = y + 3.0 * x[:, 0]  # a signal the untrained network is far from: |G|² > 0
        share = slice(64 * rank // world_size, 64 * (rank + 1) // world_size)
        model.zero_grad(set_to_none=True)
        micro.backward(x[share], y[share], global_batch_size=64, world_size=world_size)
    if rank == 0:
        queue.put((gns.value, gns.gradient_sq, gns.trace, gns.updates))
    del micro, wrapped  # the DDP wrapper holds the gloo group: drop it before leaving (NOTE [teardown])
    teardown()


@pytest.mark.slow
def test_two_processes_measure_the_same_noise_scale_as_one() -> None:
    context = mp.get_context("spawn")
    results = []
    for world_size in (1, 2):
        queue = context.Queue()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        processes = [context.Process(target=_estimate, args=(rank, world_size, port, queue))
                     for rank in range(world_size)]
        for process in processes:
            process.start()
        results.append(queue.get(timeout=120))
        for process in processes:
            process.join(timeout=60)
            assert process.exitcode == 0
    (one, *one_rest), (two, *two_rest) = results
    assert one_rest[2] == two_rest[2] == 10
    assert one is not None and one > 0
    assert two == pytest.approx(one, rel=1e-9) and two_rest[:2] == pytest.approx(one_rest[:2], rel=1e-9)


def test_the_example_measures_a_noise_scale_that_grows_as_training_goes_on() -> None:
    """examples/noise_scale.py: the digits CNN at batch 64; B_simple rises as the gradient shrinks."""
    import runpy
    from pathlib import Path

    example = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "noise_scale.py"))
    measured = example["main"](["--epochs", "3"])
    assert all(value is not None and 0 < value < 10_000 for value in measured)
    assert measured[-1] > measured[0]
