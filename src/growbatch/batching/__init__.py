"""Batches on a sample clock: the sampler, the in-memory loader, the batch-size scheduler, micro-batching, ghost BN."""

from .ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d, convert_to_ghost_batch_norm
from .loader import TensorLoader
from .microbatch import MicroBatcher, StepResult
from .sampler import DynamicBatchSampler
from .scheduler import BatchSizeScheduler

__all__ = [
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "convert_to_ghost_batch_norm",
    "TensorLoader",
    "MicroBatcher",
    "StepResult",
    "DynamicBatchSampler",
    "BatchSizeScheduler",
]
