"""Keras 3: the MNIST reproduction of ../shared/seeds/004_* in three fit() calls, one per schedule.

Victor Zhou's CNN with a ghost ("virtual") batch norm of 10 in front of its conv layer, trained 6 epochs
with a step every 2 (factor 5): decay the lr, hybrid, increase the batch (100 -> 500 -> 2500). The seed
had to call fit() once per phase; here each schedule is one fit() with growbatch.integrations.keras.

    KERAS_BACKEND=torch python examples/keras_mnist.py [--optimizer momentum|sgd|adam] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from growbatch.integrations.keras import GhostBatchNormalization, ScheduleCallback, ScheduleDataset  # noqa: E402
from growbatch.schedule import step_schedule  # noqa: E402
from growbatch.schedule.builders import MODES  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist.npz"
OPTIMIZERS = {  # lr per update, momentum (SGD's momentum or Adam's beta_1)
    "sgd": (0.1, 0.0),
    "momentum": (0.05, 0.9),
    "adam": (0.001, 0.9),
}


def load(path: Path, train_samples: int, test_samples: int) -> tuple[np.ndarray, ...]:
    """MNIST as float images in [-0.5, 0.5], channels last (the seed's preprocessing)."""
    with np.load(path) as f:
        x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    prepare = lambda x: (x[..., None].astype("float32") / 255.0) - 0.5  # noqa: E731
    return (prepare(x_train[:train_samples]), y_train[:train_samples].astype("int64"),
            prepare(x_test[:test_samples]), y_test[:test_samples].astype("int64"))


def cnn(ghost_batch_size: int) -> keras.Model:
    """Zhou's CNN (conv 8x3x3, max-pool 2, softmax) with the seed's ghost batch norm in front of the conv."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        GhostBatchNormalization(ghost_batch_size),
        keras.layers.Conv2D(8, 3),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])


def optimizer(name: str, lr: float, momentum: float) -> keras.optimizers.Optimizer:
    if name == "adam":
        return keras.optimizers.Adam(lr, beta_1=momentum)
    return keras.optimizers.SGD(lr, momentum=momentum)


def train(mode: str, args: argparse.Namespace, data: tuple[np.ndarray, ...]) -> dict:
    """One schedule, one fit(): returns its updates (counted by Keras's optimizer), the plan's, and accuracies."""
    x_train, y_train, x_test, y_test = data
    lr, momentum = OPTIMIZERS[args.optimizer]
    schedule = step_schedule(mode, lr=lr, batch_size=args.batch_size, epochs=args.epochs,
                             milestones=[args.epochs / 3, 2 * args.epochs / 3], factor=5,
                             dataset_size=len(x_train), momentum=momentum, max_batch_size=len(x_train))
    keras.utils.set_random_seed(args.seed)
    model = cnn(args.ghost_batch_size)
    model.compile(optimizer(args.optimizer, lr, momentum), "sparse_categorical_crossentropy", metrics=["accuracy"])
    dataset = ScheduleDataset(x_train, y_train, schedule, seed=args.seed, workers=args.workers)
    start = time.perf_counter()
    history = model.fit(dataset, epochs=schedule.epochs, shuffle=False, verbose=args.verbose,
                        callbacks=[ScheduleCallback(dataset)])
    seconds = time.perf_counter() - start
    _, test_accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    return {"schedule": mode, "updates": int(model.optimizer.iterations), "planned": schedule.plan().total_updates,
            "batches": sorted({p.batch_size for p in schedule.phases}),
            "train_accuracy": history.history["accuracy"][-1],
            "test_accuracy": float(test_accuracy), "train_s": seconds}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="momentum")
    parser.add_argument("--data", type=Path, default=DATA, help="mnist.npz (see shared/data/README.md)")
    parser.add_argument("--quick", action="store_true", help="1,200 training images, 3 epochs, batch 20 (a test)")
    parser.add_argument("--workers", type=int, default=0, help="PyDataset workers (threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.exit(2, f"keras_mnist.py: error: --data {args.data} is not a file; pass the path of mnist.npz\n")
    args.epochs, args.batch_size, args.ghost_batch_size = (3, 20, 10) if args.quick else (6, 100, 10)
    train_samples, test_samples = (1200, 1000) if args.quick else (60_000, 10_000)
    data = load(args.data, train_samples, test_samples)
    results = [train(mode, args, data) for mode in MODES]
    print(f"\n{args.optimizer}, {train_samples:,} images, {args.epochs} epochs, a step every {args.epochs // 3}")
    print(f"{'schedule':<10}{'batches':<18}{'updates':>8}{'planned':>9}{'train acc':>11}{'test acc':>10}{'train s':>9}")
    for r in results:
        print(f"{r['schedule']:<10}{'/'.join(map(str, r['batches'])):<18}{r['updates']:>8}{r['planned']:>9}"
              f"{r['train_accuracy']:>11.4f}{r['test_accuracy']:>10.4f}{r['train_s']:>9.1f}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
