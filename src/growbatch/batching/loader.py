"""TensorLoader: the whole data set as one tensor on the device, batched augmentation, dynamic batches.

The fast path for data that fits in memory: gather a batch by index, then convert, crop, flip
and normalise the whole batch at once. Batches follow a DynamicBatchSampler exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..checks import check_int
from ..schedule.schedule import Schedule
from .allocator import keep_freed_memory
from .sampler import DynamicBatchSampler, derive_seed

__all__ = ["SamplerLoader", "TensorLoader"]

_AUGMENT_SALT = 0x41756721  # keeps augmentation seeds apart from permutation seeds
WINDOW_TABLE_BYTES = 64 * 2**20  # largest table of crop windows kept (NOTE [windows])


def _channel_vector(name: str, values: Sequence[float] | torch.Tensor | None, channels: int,
                    default: float) -> torch.Tensor:
    if values is None:
        return torch.full((channels,), default, dtype=torch.float32)
    vector = torch.as_tensor(values, dtype=torch.float32).flatten()
    if vector.numel() != channels:
        raise ValueError(f"{name} should have one value per channel ({channels}), but got {name}={values!r}")
    return vector


def _check_data(inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Images N x C x H x W (uint8 or float) and N integer class indices, or raise naming what is wrong."""
    if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError(f"inputs and targets should be tensors, but got {type(inputs).__name__} "
                        f"and {type(targets).__name__}")
    if inputs.dim() != 4:
        raise ValueError(f"inputs should be N x C x H x W, but got shape {tuple(inputs.shape)}")
    if inputs.dtype != torch.uint8 and not inputs.is_floating_point():
        raise TypeError(f"inputs should be uint8 or floating point, but got dtype={inputs.dtype}")
    if targets.shape != inputs.shape[:1] or targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"targets should be {inputs.shape[0]} integer class indices, but got "
                         f"shape {tuple(targets.shape)}, dtype={targets.dtype}")


def _sampler_property(name: str, doc: str) -> property:
    """A read-only attribute of the loader that is its sampler's."""
    return property(lambda self: getattr(self.sampler, name), doc=doc)


class SamplerLoader:
    """A loader whose batches a DynamicBatchSampler (``self.sampler``) cuts: its clock, length and state are the
    sampler's, so a BatchSizeScheduler steps it and a checkpoint holds its exact position."""

    sampler: DynamicBatchSampler

    @property
    def batch_sampler(self) -> DynamicBatchSampler:
        """The sampler that cuts the batches, as ``DataLoader.batch_sampler`` (a BatchSizeScheduler steps it)."""
        return self.sampler

    dataset_size = _sampler_property("dataset_size", "Samples in the data set (all ranks).")
    seed = _sampler_property("seed", "The shuffling seed.")
    epoch = _sampler_property("epoch", "The epoch on the sampler's clock (0-based).")
    position = _sampler_property("position", "Samples of the current epoch already cut into batches.")
    last_global_batch_size = _sampler_property(
        "last_global_batch_size", "Global size of the batch yielded last (this rank's share may be smaller).")

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state; exact, since nothing is prefetched."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)



class TensorLoader(SamplerLoader):
    """Yields ``(inputs, targets)`` of this rank's share of each batch, from tensors held on ``device``.

    Per batch: gather by index; random crop with zero padding of ``crop_padding`` pixels (as
    torchvision's ``RandomCrop(H, padding)``, padding in raw pixel values) and a horizontal flip
    with probability 1/2, both for the whole batch in one indexing operation; then float32
    (divided by 255 for uint8) and ``(x - mean) / std`` per channel. The augmentation of a batch
    is drawn from (seed, epoch, position where the batch is cut) for the *global* batch, so it is
    the same on 1 or 8 ranks and after a resume. Batches, ranks, ``len``, epochs and state are
    those of the :class:`DynamicBatchSampler` in ``sampler`` (an empty share gives tensors of
    length 0).

    Args:
        inputs: N x C x H x W, uint8 (preferred: 4x less memory) or floating point.
        targets: N class indices (any integer dtype); yielded as int64.
        schedule_or_batch_size, shuffle, seed, drop_last, rank, world_size: as for the sampler.
        mean, std: C values each, in the units after conversion (so in [0, 1] for uint8 inputs).
        crop_padding: pixels of zero padding for the random crop (4 for CIFAR); 0 disables it.
        flip: random horizontal flips.
        device: where data and batches live; None keeps the device of ``inputs``.
        channels_last: yield inputs in ``torch.channels_last`` memory format.
        normalize_batches: False yields the gathered (and augmented) inputs in their stored dtype,
            uint8 for images, and leaves :meth:`normalize` to the consumer, for instance per
            micro-batch with ``MicroBatcher(..., transform=loader.normalize)``: a logical batch of
            16,000 CIFAR images then holds 47 MB instead of 188 MB of float32.

    Example:
        >>> x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
        >>> loader = TensorLoader(x, torch.zeros(10, dtype=torch.long), 4, shuffle=False)
        >>> [(255 * inputs.flatten()).round().tolist() for inputs, _ in loader]
        [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        schedule_or_batch_size: Schedule | int,
        *,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        crop_padding: int = 0,
        flip: bool = False,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        channels_last: bool = False,
        normalize_batches: bool = True,
    ) -> None:
        _check_data(inputs, targets)
        self.crop_padding = check_int("crop_padding", crop_padding, 0)
        if not isinstance(flip, bool) or not isinstance(channels_last, bool):
            raise TypeError(f"flip and channels_last should be True or False, but got flip={flip!r}, "
                            f"channels_last={channels_last!r}")
        self.flip, self.channels_last = flip, channels_last
        if not isinstance(normalize_batches, bool):
            raise TypeError(f"normalize_batches should be True or False, but got normalize_batches={normalize_batches!r}")
        self.normalize_batches = normalize_batches
        self.sampler = DynamicBatchSampler(
            inputs.shape[0], schedule_or_batch_size, shuffle=shuffle, seed=seed,
            drop_last=drop_last, rank=rank, world_size=world_size,
        )
        self.device = torch.device(device) if device is not None else inputs.device
        if self.device.type == "cpu":
            keep_freed_memory()  # NOTE: large CPU batches reuse freed pages (growbatch.batching.allocator)
        # the data moves to the device once; batches are gathered there
        self.inputs = inputs.to(self.device)
        self.targets = targets.to(self.device, torch.long)
        channels = inputs.shape[1]
        mean_vector = _channel_vector("mean", mean, channels, 0.0)
        std_vector = _channel_vector("std", std, channels, 1.0)
        if not bool((std_vector > 0).all()):
            raise ValueError(f"std should be positive in every channel, but got std={std!r}")
        # (x/255 - mean)/std as one multiply-add: x * scale + shift
        self._uint8_scale = (1.0 / (255.0 * std_vector)).view(-1, 1, 1).to(self.device)
        self._float_scale = (1.0 / std_vector).view(-1, 1, 1).to(self.device)
        self._shift = (-mean_vector / std_vector).view(-1, 1, 1).to(self.device)
        # NOTE [windows]: every crop window, unflipped and flipped, as flat offsets into the padded
        # image: 2 (2p+1)^2 rows of H*W int64 (1.3 MB for CIFAR with p = 4). Picking a batch's rows
        # from this table is the whole index computation, a third of the augmentation time at batch
        # 3,200. Past WINDOW_TABLE_BYTES (large images or padding) each batch adds its corners instead.
        height, width, positions = inputs.shape[2], inputs.shape[3], 2 * self.crop_padding + 1
        padded_width = width + 2 * self.crop_padding
        rows = torch.arange(height, device=self.device)[:, None] * padded_width
        columns = torch.arange(width, device=self.device)
        self._grids = torch.stack([(rows + columns).flatten(), (rows + columns.flip(0)).flatten()])  # -> or <-
        corners = torch.arange(positions, device=self.device)
        self._corners = (corners[:, None] * padded_width + corners).flatten()  # top-left pixel, by (top, left)
        self._windows = None
        if 2 * positions ** 2 * height * width * 8 <= WINDOW_TABLE_BYTES:
            self._windows = (self._grids[:, None, :] + self._corners[None, :, None]).flatten(0, 1)

    # -- batches -------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for cut in self.sampler._cuts():
            indices = cut.indices.to(self.device, non_blocking=True)
            batch = self.inputs.index_select(0, indices)
            if self.crop_padding or self.flip:
                batch = self._augment(batch, cut.epoch, cut.position, cut.global_batch_size, cut.share_start)
            targets = self.targets.index_select(0, indices)
            yield (self.normalize(batch) if self.normalize_batches else batch), targets

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """float32, /255 for uint8, ``(x - mean)/std``, on the loader's device (also for evaluation batches)."""
        scale = self._uint8_scale if batch.dtype == torch.uint8 else self._float_scale
        # one new tensor, then in place: on the CPU a fresh large buffer costs more than the arithmetic
        out = batch.to(self.device, torch.float32, copy=True).mul_(scale).add_(self._shift)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _augment(self, batch: torch.Tensor, epoch: int, position: int, global_batch_size: int,
                 share_start: int) -> torch.Tensor:
        """Random crop and flip of a whole batch as one gather; randomness drawn for the global batch, then sliced."""
        size, channels, height, width = batch.shape
        pad = self.crop_padding
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, position, _AUGMENT_SALT))
        offsets = torch.randint(0, 2 * pad + 1, (2, global_batch_size), generator=generator)
        flips = torch.randint(0, 2, (global_batch_size,), generator=generator, dtype=torch.bool)
        share = slice(share_start, share_start + size)
        positions = 2 * pad + 1
        corner = (offsets[0, share] * positions + offsets[1, share]).to(self.device)  # (top, left) -> index
        flipped = flips[share].to(self.device, torch.long) if self.flip else torch.zeros_like(corner)
        if self._windows is not None:  # NOTE [windows]: rows of the flipped windows follow the unflipped
            pixels = self._windows.index_select(0, flipped * positions ** 2 + corner)
        else:
            pixels = self._grids.index_select(0, flipped) + self._corners.index_select(0, corner)[:, None]
        pixels = pixels.view(size, 1, height * width).expand(size, channels, height * width)
        padded = F.pad(batch, (pad, pad, pad, pad)) if pad else batch
        flat = padded.reshape(size, channels, (height + 2 * pad) * (width + 2 * pad))
        return flat.gather(2, pixels).view(size, channels, height, width)
