"""Issue 14's framework table, measured: 4,000 MNIST samples, 3 epochs, batch 32 -> 128 -> 400 (167 planned updates).

For each framework: the updates of one fresh run (workers 0 and 2), and of runs killed at updates 60 and 160
and resumed from the framework's own checkpoints, with whether their final weights equal the fresh run's.

    .venv/bin/python bench/bench_integrations.py [--frameworks keras,huggingface]    # ~1 min on 2 busy cores
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


# -- Hugging Face -----------------------------------------------------------------------
def hf_trainer(out: str, workers: int = 0, save_steps: int | None = None):
    import transformers
    from torch import nn
    from transformers.modeling_outputs import SequenceClassifierOutput

    from growbatch.integrations.huggingface import ScheduleTrainer

    class Pixels(torch.utils.data.Dataset):
        def __init__(self):
            x, y = mnist()
            self.x, self.y = torch.tensor(x).flatten(1), torch.tensor(y)

        def __len__(self):
            return N

        def __getitem__(self, i):
            return {"pixels": self.x[i], "labels": self.y[i]}

    class Config(transformers.PretrainedConfig):
        model_type = "bench-mnist-mlp"

    class MLP(transformers.PreTrainedModel):
        config_class = Config

        def __init__(self, config):
            super().__init__(config)
            self.net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
            self.post_init()

        def forward(self, pixels, labels=None):
            logits = self.net(pixels)
            return SequenceClassifierOutput(loss=nn.functional.cross_entropy(logits, labels), logits=logits)

    torch.manual_seed(0)
    model = MLP(Config())
    args = transformers.TrainingArguments(out, num_train_epochs=3, learning_rate=0.05, report_to="none", use_cpu=True,
                                          disable_tqdm=True, dataloader_num_workers=workers, logging_steps=1,
                                          save_strategy="steps" if save_steps else "no", save_steps=save_steps or 1)
    return ScheduleTrainer(model, args, schedule=schedule(), train_dataset=Pixels(),
                           optimizers=(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), None))


def hf_row() -> dict:
    import accelerate
    import transformers

    row = {"framework": f"transformers {transformers.__version__} + accelerate {accelerate.__version__}",
           "planned": schedule().plan().total_updates}
    with tempfile.TemporaryDirectory() as out:
        whole = hf_trainer(f"{out}/whole", save_steps=20)
        whole.train()
        row["updates_workers0"] = whole.state.global_step
        row["last_logged_epoch"] = whole.state.log_history[-2]["epoch"]
        final = whole.model.state_dict()
        two = hf_trainer(f"{out}/two", workers=2)
        two.train()
        row["updates_workers2"] = two.state.global_step
        for step in KILLS:
            resumed = hf_trainer(f"{out}/from{step}")
            resumed.train(resume_from_checkpoint=f"{out}/whole/checkpoint-{step}")
            row[f"resumed_from_checkpoint_{step}"] = resumed.state.global_step
            row[f"same_weights_from_checkpoint_{step}"] = all(
                torch.equal(v, final[k]) for k, v in resumed.model.state_dict().items())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", default="keras,huggingface", help="comma-separated: keras, huggingface")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small steps on shared cores: one thread is several times faster
    rows = {"keras": keras_row, "huggingface": hf_row}
    for name in args.frameworks.split(","):
        print(json.dumps(rows[name]()))


if __name__ == "__main__":
    main()
