"""Issue 14's framework table, measured: 4,000 MNIST samples, 3 epochs, batch 32 -> 128 -> 400 (167 planned updates).

For each framework: the updates of one fresh run (workers 0 and 2), and of runs killed at updates 60 and 160
and resumed from the framework's own checkpoints, with whether their final weights equal the fresh run's.

    .venv/bin/python bench/bench_integrations.py [--frameworks keras]    # ~1 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist.npz"
N, KILLS = 4000, (60, 160)


def schedule():
    from growbatch.schedule import Phase, Schedule

    return Schedule((Phase(0, 1, 0.05, 32, 0.9), Phase(1, 2, 0.05, 128, 0.9), Phase(2, 3, 0.05, 400, 0.9)),
                    dataset_size=N, name="32-128-400")


def mnist() -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA) as f:
        return (f["x_train"][:N, :, :, None].astype("float32") / 255 - 0.5), f["y_train"][:N].astype("int64")


# -- Keras ---------------------------------------------------------------------------
def keras_run(workers: int, backup: str | None = None, kill_at: int | None = None) -> tuple[int, list]:
    """One fit() (or the fit() after a kill at update ``kill_at``, resumed by BackupAndRestore): updates, weights."""
    import keras

    from growbatch.integrations.keras import ScheduleCallback, ScheduleDataset

    class Kill(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == kill_at:
                raise KeyboardInterrupt

    def fit(extra):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3), keras.layers.MaxPooling2D(2),
                                  keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
        dataset = ScheduleDataset(*mnist(), schedule(), workers=workers)
        model.fit(dataset, epochs=3, shuffle=False, verbose=0, callbacks=[ScheduleCallback(dataset), *extra])
        return int(model.optimizer.iterations), model.get_weights()

    if kill_at is None:
        return fit([])
    try:
        fit([keras.callbacks.BackupAndRestore(backup), Kill()])
    except KeyboardInterrupt:
        pass
    return fit([keras.callbacks.BackupAndRestore(backup)])


def keras_row() -> dict:
    row = {"framework": f"keras {__import__('keras').__version__} (torch backend)",
           "planned": schedule().plan().total_updates}
    updates, weights = keras_run(0)
    row["updates_workers0"] = updates
    updates, weights2 = keras_run(2)
    row["updates_workers2"] = updates
    row["same_weights_workers2"] = all(np.array_equal(a, b) for a, b in zip(weights, weights2))
    for kill in KILLS:
        with tempfile.TemporaryDirectory() as backup:
            updates, resumed = keras_run(0, str(Path(backup) / "b"), kill)
        row[f"resumed_after_kill_at_{kill}"] = updates
        row[f"same_weights_after_kill_at_{kill}"] = all(np.array_equal(a, b) for a, b in zip(weights, resumed))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", default="keras", help="comma-separated: keras")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small steps on shared cores: one thread is several times faster
    rows = {"keras": keras_row}
    for name in args.frameworks.split(","):
        print(json.dumps(rows[name]()))


if __name__ == "__main__":
    main()
