"""growbatch: train by increasing the batch size instead of decaying the learning rate."""

from .accumulate import MicroBatcher, StepResult
from .builders import (
    Conversion,
    cosine_lr,
    from_lr_function,
    from_lr_scheduler,
    multistep_lr,
    step_schedule,
    warmup_stable_decay_lr,
)
from .ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d, convert_to_ghost_batch_norm
from .loader import TensorLoader
from .noise import (
    batch_size_for_momentum,
    batch_size_for_noise_ratio,
    effective_lr,
    lr_for_batch_size,
    noise_scale,
    noise_scale_approx,
)
from .presets import PRESETS, get_preset
from .sampler import DynamicBatchSampler
from .schedule import Phase, Plan, Schedule
from .scheduler import BatchSizeScheduler

__version__ = "0.1.0"
