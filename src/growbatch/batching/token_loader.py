"""TokenLoader: fixed-length sequences cut from one token stream, batched by a DynamicBatchSampler.

One sample is one sequence of ``seq_len`` tokens (and its ``seq_len`` next tokens as targets), so the sample
clock counts sequences and tokens are samples x seq_len. NOTE [token epochs]: an "epoch" of N sequences is an
interval of the stream, not a pass over it: epoch e trains sequences e*N .. e*N + N - 1 (wrapping round the
stream past its end), shuffled within the interval, so a run of E epochs reads E*N fresh sequences.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..checks import check_positive_int
from ..schedule.schedule import Schedule
from .loader import SamplerLoader
from .sampler import DynamicBatchSampler

__all__ = ["TokenLoader", "sequence_count"]


def sequence_count(stream_tokens: int, seq_len: int) -> int:
    """Whole sequences of ``seq_len`` inputs (plus one target token) in a stream of ``stream_tokens``."""
    return max(0, (stream_tokens - 1) // seq_len)


class TokenLoader(SamplerLoader):
    """Yields ``(inputs, targets)`` of this rank's share of each batch: int64 ``b x seq_len`` token windows.

    Args:
        stream: one-dimensional integer tokens (uint8 bytes for a byte vocabulary).
        seq_len: tokens per sequence.
        schedule_or_batch_size: a Schedule over ``sequences_per_epoch`` samples, or a fixed batch.
        sequences_per_epoch: N, the sequences of one epoch (an interval of the stream, NOTE [token epochs]).
        seed, rank, world_size: as for :class:`DynamicBatchSampler` (the order within an epoch).
        device: where the batches are gathered.

    Example:
        >>> loader = TokenLoader(torch.arange(10), 3, 1, sequences_per_epoch=2, shuffle=False)
        >>> [x.tolist() for x, _ in loader], [x.tolist() for x, _ in loader]  # epochs 0 and 1
        ([[[0, 1, 2]], [[3, 4, 5]]], [[[6, 7, 8]], [[0, 1, 2]]])
    """

    def __init__(self, stream: torch.Tensor, seq_len: int, schedule_or_batch_size: Schedule | int, *,
                 sequences_per_epoch: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: torch.device | str | None = None) -> None:
        if not isinstance(stream, torch.Tensor) or stream.dim() != 1 or stream.is_floating_point():
            raise TypeError(f"stream should be a one-dimensional integer tensor, but got "
                            f"{getattr(stream, 'shape', type(stream).__name__)}")
        self.seq_len = check_positive_int("seq_len", seq_len)
        self.available = sequence_count(stream.numel(), self.seq_len)
        if self.available == 0:
            raise ValueError(f"seq_len={seq_len} needs a stream of at least {seq_len + 1} tokens, but it has "
                             f"{stream.numel()}; lower --seq-len")
        self.sampler = DynamicBatchSampler(check_positive_int("sequences_per_epoch", sequences_per_epoch),
                                           schedule_or_batch_size, shuffle=shuffle, seed=seed, rank=rank,
                                           world_size=world_size)
        self.device = torch.device(device) if device is not None else stream.device
        self.stream = stream.to(self.device)
        self._offsets = torch.arange(self.seq_len + 1, device=self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices in self.sampler:
            epoch = self.sampler.epoch  # the clock's epoch: it moves at the start of a pass, not within one
            yield self.windows(epoch, torch.as_tensor(indices, dtype=torch.long))

    def windows(self, epoch: int, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets of the sequences ``indices`` of ``epoch`` (NOTE [token epochs])."""
        sequences = (epoch * self.sampler.dataset_size + indices.to(self.device)) % self.available
        window = self.stream[(sequences * self.seq_len)[:, None] + self._offsets].long()
        return window[:, :-1], window[:, 1:]
