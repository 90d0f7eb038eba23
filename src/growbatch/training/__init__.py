"""Training runs: tasks, the Trainer, checkpoints, run directories, metrics files and the distributed context.

    from growbatch.training import ClassificationTask, RunConfig, Trainer, train_run
"""

from .distributed import DistInfo
from .runfiles import RunFiles, train_run
from .settings import ExperimentConfig, RunConfig, RunSettings
from .task import ClassificationTask, Task
from .trainer import (
           DivergenceError,
           Interrupted,
           Observer,
           StopFlag,
           Trainer,
           TrainerState,
)

__all__ = ["ClassificationTask", "DistInfo", "DivergenceError", "ExperimentConfig", "Interrupted", "Observer", "RunConfig",
           "RunFiles", "RunSettings", "StopFlag", "Task", "Trainer", "TrainerState", "train_run"]
