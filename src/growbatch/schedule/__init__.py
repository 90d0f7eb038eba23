"""Schedules as values: the noise-scale formulas, Phase/Schedule and their plans, builders, presets, the planner."""

from .builders import (
                       Conversion,
                       cosine_lr,
                       default_max_batch_size,
                       from_lr_function,
                       from_lr_scheduler,
                       multistep_lr,
                       step_schedule,
                       warmup_stable_decay_lr,
)
from .noise import (
                       batch_size_for_momentum,
                       batch_size_for_noise_ratio,
                       effective_lr,
                       lr_for_batch_size,
                       noise_scale,
                       noise_scale_approx,
)
from .presets import PRESETS, get_preset
from .schedule import Phase, PhasePlan, Plan, Schedule

__all__ = [
    "Conversion",
    "cosine_lr",
    "default_max_batch_size",
    "from_lr_function",
    "from_lr_scheduler",
    "multistep_lr",
    "step_schedule",
    "warmup_stable_decay_lr",
    "batch_size_for_momentum",
    "batch_size_for_noise_ratio",
    "effective_lr",
    "lr_for_batch_size",
    "noise_scale",
    "noise_scale_approx",
    "PRESETS",
    "get_preset",
    "Phase",
    "PhasePlan",
    "Plan",
    "Schedule",
]
