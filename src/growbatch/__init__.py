"""growbatch: train by increasing the batch size instead of decaying the learning rate.

The public API: the schedule layer (noise formulas, Phase/Schedule, builders, presets) and the batching
layer (sampler, loader, scheduler, micro-batching, ghost BN); the Trainer and tasks are in growbatch.training.
"""

__version__ = "0.1.0"  # first: modules below import it

from . import batching, schedule
from .batching import *  # noqa: F403
from .schedule import *  # noqa: F403

__all__ = ["__version__", *batching.__all__, *schedule.__all__]
