"""growbatch: train by increasing the batch size instead of decaying the learning rate."""

__version__ = "0.1.0"  # first: modules below import it

from .batching.ghost_bn import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    convert_to_ghost_batch_norm,
)
from .batching.loader import TensorLoader
from .batching.microbatch import MicroBatcher, StepResult
from .batching.sampler import DynamicBatchSampler
from .batching.scheduler import BatchSizeScheduler
from .schedule.builders import (
    Conversion,
    cosine_lr,
    from_lr_function,
    from_lr_scheduler,
    multistep_lr,
    step_schedule,
    warmup_stable_decay_lr,
)
from .schedule.noise import (
    batch_size_for_momentum,
    batch_size_for_noise_ratio,
    effective_lr,
    lr_for_batch_size,
    noise_scale,
    noise_scale_approx,
)
from .schedule.presets import PRESETS, get_preset
from .schedule.schedule import Phase, Plan, Schedule

