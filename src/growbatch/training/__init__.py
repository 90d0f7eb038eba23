"""Training runs: tasks, the Trainer, checkpoints, run directories, metrics files and the distributed context."""
