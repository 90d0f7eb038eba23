"""growbatch.integrations.keras against real Keras 3 (torch backend): one fit() follows a Schedule exactly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", minversion="3.0")
gk = pytest.importorskip("growbatch.integrations.keras")

from growbatch.batching.sampler import derive_seed  # noqa: E402
from growbatch.schedule import Phase, Schedule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DATA = ROOT.parent / "shared" / "data" / "mnist.npz"

N = 600
# 3 epochs, a batch change in the middle of epoch 1 (epoch 1.5 = position 300) and one at epoch 2
SCHEDULE = Schedule((Phase(0, 1.5, 0.1, 20, 0.9), Phase(1.5, 2, 0.05, 60, 0.9), Phase(2, 3, 0.05, 200, 0.5)),
                    dataset_size=N)
PLAN_UPDATES = 30 + (15 + 5) + 3  # 600/20, 300/20 + 300/60, 600/200


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def digits() -> tuple[np.ndarray, np.ndarray]:
    """N samples of sklearn's digits; the last feature is the sample's index, so a test can see what trained."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.concatenate([data.data[:N] / 16.0, np.arange(N)[:, None]], axis=1).astype("float32")
    return x, data.target[:N].astype("int64")


class Recorded(keras.Model):
    """A softmax regression on the pixels that records, for every update, the samples and the lr and momentum used."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = keras.layers.Dense(10, activation="softmax")
        self.batches: list[list[int]] = []
        self.hyper: list[tuple[float, float]] = []

    def build(self, input_shape):
        self.dense.build((input_shape[0], input_shape[1] - 1))

    def call(self, x):
        return self.dense(x[:, :-1])

    def train_step(self, data):
        self.batches.append(data[0][:, -1].long().tolist())
        optimizer = self.optimizer
        momentum = optimizer.momentum if hasattr(optimizer, "momentum") else optimizer.beta_1
        self.hyper.append((float(optimizer.learning_rate), float(momentum)))
        return super().train_step(data)


def build(momentum: float = 0.9) -> Recorded:
    keras.utils.set_random_seed(0)
    model = Recorded()
    model.build((None, 65))
    model.compile(keras.optimizers.SGD(0.1, momentum=momentum), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def expected_batches(schedule: Schedule, seed: int, epochs: range) -> list[list[int]]:
    """What DynamicBatchSampler's permutation cut into the schedule's sizes gives, epoch by epoch."""
    out = []
    for epoch in epochs:
        perm = torch.randperm(schedule.dataset_size, generator=torch.Generator().manual_seed(derive_seed(seed, epoch)))
        start = 0
        for size in schedule.batch_sizes(epoch):
            out.append(perm[start:start + size].tolist())
            start += size
    return out


def fit(model, dataset, callbacks=(), **kwargs):
    callback = gk.ScheduleCallback(dataset)
    model.fit(dataset, epochs=kwargs.pop("epochs", 3), shuffle=False, verbose=kwargs.pop("verbose", 0),
              callbacks=[callback, *callbacks], **kwargs)
    return callback


@pytest.mark.parametrize("workers, processes", [(0, False), (2, False), (2, True)],
                         ids=["keras-workers0", "keras-threads2", "keras-processes2"])
def test_keras_one_fit_trains_the_plan(workers, processes):
    x, y = digits()
    model = build()
    dataset = gk.ScheduleDataset(x, y, SCHEDULE, seed=3, workers=workers, use_multiprocessing=processes)
    callback = fit(model, dataset)
    plan = SCHEDULE.plan()
    assert plan.total_updates == PLAN_UPDATES
    assert int(model.optimizer.iterations) == callback.updates == PLAN_UPDATES
    assert sum(map(len, model.batches)) == callback.samples_seen == plan.total_samples == 3 * N
    # the same samples in the same order as the sampler's permutation: no build-pass batch, none lost or repeated
    assert model.batches == expected_batches(SCHEDULE, 3, range(3))


def test_keras_lr_and_momentum_follow_each_update(recwarn):
    x, y = digits()
    model = build()
    fit(model, gk.ScheduleDataset(x, y, SCHEDULE))
    # epochs 1 and 2 are shorter than epoch 0: Keras's "ran out of data" is silenced during fit() only
    assert not [w for w in recwarn if "ran out of data" in str(w.message)]
    assert not [f for f in warnings.filters if f[1] is not None and "ran out of data" in f[1].pattern]
    expected = [(0.1, 0.9)] * 45 + [(0.05, 0.9)] * 5 + [(0.05, 0.5)] * 3  # epoch 1.5 is the 16th batch of epoch 1
    assert np.allclose(model.hyper, expected, rtol=1e-6)
    assert [len(b) for b in model.batches] == [20] * 45 + [60] * 5 + [200] * 3  # no batch of an old size


def test_keras_adam_beta_1_follows_the_schedule():
    x, y = digits()
    keras.utils.set_random_seed(0)
    model = Recorded()
    model.compile(keras.optimizers.Adam(0.01, beta_1=0.9), "sparse_categorical_crossentropy")
    with pytest.warns(UserWarning, match=r"lr=0.1 replaces the optimizer's learning_rate=0.01"):
        fit(model, gk.ScheduleDataset(x, y, SCHEDULE))
    assert np.allclose(model.hyper, [(0.1, 0.9)] * 45 + [(0.05, 0.9)] * 5 + [(0.05, 0.5)] * 3, rtol=1e-6)


def test_keras_progress_bar_counts_each_epochs_batches(capsys):
    x, y = digits()
    model = build()
    fit(model, gk.ScheduleDataset(x, y, SCHEDULE), verbose=1, validation_data=(x[:100], y[:100]))
    assert len(model.history.history["val_accuracy"]) == 3  # validation runs, silent inside fit (Keras's own bar)
    out = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # without the colours
    epochs = out.split("Epoch ")[1:]
    assert [e[:3] for e in epochs] == ["1/3", "2/3", "3/3"]
    for text, batches in zip(epochs, (30, 20, 3)):
        counters = [tuple(map(int, c)) for c in re.findall(r"(\d+)/(\d+) ", text[3:])]
        assert {total for _, total in counters} == {batches}  # the bar's length is this epoch's
        assert max(done for done, _ in counters) == batches


@pytest.mark.parametrize("kill_at", [(0, 7), (1, 17), (2, 1)], ids=lambda k: f"keras-killed-epoch{k[0]}-batch{k[1]}")
def test_keras_backup_and_restore_resumes_exactly(tmp_path, kill_at):
    x, y = digits()
    whole = build()
    fit(whole, gk.ScheduleDataset(x, y, SCHEDULE))

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            if (self.epoch, batch) == kill_at:
                raise KeyboardInterrupt

    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        fit(build(), gk.ScheduleDataset(x, y, SCHEDULE), [keras.callbacks.BackupAndRestore(backup), Kill()])
    resumed = build()  # a new process: new model, data set and callback
    callback = fit(resumed, gk.ScheduleDataset(x, y, SCHEDULE), [keras.callbacks.BackupAndRestore(backup)])
    assert int(resumed.optimizer.iterations) == callback.updates == PLAN_UPDATES
    assert resumed.batches == expected_batches(SCHEDULE, 0, range(kill_at[0], 3))
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_keras_state_dict_resumes_mid_epoch(tmp_path):
    x, y = digits()
    whole = build()
    fit(whole, gk.ScheduleDataset(x, y, SCHEDULE))

    class SaveAndStop(keras.callbacks.Callback):
        """Saves weights, optimizer and the schedule's clock after update 40 (mid-epoch 1), then stops."""

        def __init__(self, schedule_callback):
            super().__init__()
            self.schedule_callback = schedule_callback

        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 40:
                self.model.save_weights(tmp_path / "at40.weights.h5")
                self.state = self.schedule_callback.state_dict()
                raise KeyboardInterrupt

    first, dataset = build(), gk.ScheduleDataset(x, y, SCHEDULE)
    schedule_callback = gk.ScheduleCallback(dataset)
    saver = SaveAndStop(schedule_callback)
    with pytest.raises(KeyboardInterrupt):
        first.fit(dataset, epochs=3, shuffle=False, verbose=0, callbacks=[schedule_callback, saver])
    assert saver.state == {"version": 1, "dataset_size": N, "epoch": 1, "position": 200, "updates": 40,
                           "samples_seen": N + 200}

    resumed, dataset = build(), gk.ScheduleDataset(x, y, SCHEDULE)
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(tmp_path / "at40.weights.h5")
    callback = gk.ScheduleCallback(dataset)
    callback.load_state_dict(saver.state)
    resumed.fit(dataset, epochs=3, initial_epoch=1, shuffle=False, verbose=0, callbacks=[callback])
    assert int(resumed.optimizer.iterations) == callback.updates == PLAN_UPDATES
    assert resumed.batches == expected_batches(SCHEDULE, 0, range(1, 3))[10:]
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_keras_misuse_is_refused_with_the_fix():
    x, y = digits()
    dataset = gk.ScheduleDataset(x, y, SCHEDULE)
    with pytest.raises(ValueError, match=r"shuffle=True\) reorders the schedule's batches; pass fit\(\.\.\., shuffle=False"):
        build().fit(dataset, epochs=3, verbose=0, callbacks=[gk.ScheduleCallback(dataset)])
    dataset = gk.ScheduleDataset(x, y, SCHEDULE)
    with pytest.raises(ValueError, match=r"fit\(epochs=4\) runs past the schedule's epochs=3"):
        build().fit(dataset, epochs=4, shuffle=False, verbose=0, callbacks=[gk.ScheduleCallback(dataset)])
    dataset = gk.ScheduleDataset(x, y, SCHEDULE)
    with pytest.raises(ValueError, match=r"fit\(\) plans 5 steps per epoch, but the schedule's epochs have up to 30"):
        build().fit(dataset, epochs=3, steps_per_epoch=5, shuffle=False, verbose=0,
                    callbacks=[gk.ScheduleCallback(dataset)])
    dataset = gk.ScheduleDataset(x, y, SCHEDULE)
    with pytest.raises(RuntimeError, match=r"trained without its callback"):
        build().fit(dataset, epochs=3, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match=r"SGD\(momentum=0\) keeps no momentum buffers.*momentum=0.9"):
        dataset = gk.ScheduleDataset(x, y, SCHEDULE)
        build(momentum=0.0).fit(dataset, epochs=3, shuffle=False, verbose=0, callbacks=[gk.ScheduleCallback(dataset)])
    with pytest.raises(ValueError, match=r"dataset_size=600 samples, but their first dimensions are \[599, 600\]"):
        gk.ScheduleDataset(x[:-1], y, SCHEDULE)
    with pytest.raises(ValueError, match=r"position=7 is not where the schedule cuts a batch of epoch 1"):
        gk.ScheduleCallback(gk.ScheduleDataset(x, y, SCHEDULE)).load_state_dict(
            {"version": 1, "dataset_size": N, "epoch": 1, "position": 7})


def test_keras_learning_rate_schedule_optimizer_is_refused():
    x, y = digits()
    model = Recorded()
    decay = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    model.compile(keras.optimizers.SGD(decay, momentum=0.9), "sparse_categorical_crossentropy")
    dataset = gk.ScheduleDataset(x, y, SCHEDULE)
    with pytest.raises(ValueError, match=r"SGD was built with a learning-rate schedule.*set_lr=False"):
        model.fit(dataset, epochs=3, shuffle=False, verbose=0, callbacks=[gk.ScheduleCallback(dataset)])


@pytest.mark.parametrize("batch", [7, 20, 23])
def test_keras_ghost_batch_normalization_is_batch_norm_per_ghost(batch):
    """Oracle: each ghost batch of 10 normalised as keras BatchNormalization would normalise it alone."""
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(batch, 4, 4, 3)).astype("float32")
    ghost = gk.GhostBatchNormalization(10, momentum=0.9)
    out = keras.ops.convert_to_numpy(ghost(x, training=True))
    reference = keras.layers.BatchNormalization(momentum=0.9)
    chunks = [keras.ops.convert_to_numpy(reference(x[i:i + 10], training=True)) for i in range(0, batch, 10)]
    np.testing.assert_allclose(out, np.concatenate(chunks), rtol=1e-5, atol=1e-5)
    means = [x[i:i + 10].mean(axis=(0, 1, 2)) for i in range(0, batch, 10)]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ghost.moving_mean), 0.1 * np.mean(means, axis=0), rtol=1e-5)


@pytest.mark.slow
def test_keras_mnist_example_quick():
    """examples/keras_mnist.py --quick: the seed's three schedules, one fit() each, trains the planned updates."""
    if not EXAMPLE_DATA.is_file():
        pytest.skip(f"no MNIST at {EXAMPLE_DATA}")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "keras_mnist.py"), "--quick", "--verbose", "0"],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "KERAS_BACKEND": "torch"})
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split()[:1] in (["decay"], ["hybrid"], ["increase"])}
    assert {name: (int(r[2]), int(r[3])) for name, r in rows.items()} == {
        "decay": (3 * 60, 3 * 60), "hybrid": (60 + 12 + 12, 84), "increase": (60 + 12 + 3, 75)}
    assert all(float(r[5]) > 0.6 for r in rows.values())  # test accuracy after 3 short epochs


def test_keras_mnist_example_bad_data_path_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "keras_mnist.py"), "--data", str(tmp_path / "no.npz")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"keras_mnist.py: error: --data {tmp_path / 'no.npz'} is not a file; "
                                                  "pass the path of mnist.npz"]


def test_keras_docs_example_runs(tmp_path, monkeypatch):
    """docs/keras.md's complete example trains the planned updates (it asserts them itself)."""
    monkeypatch.chdir(tmp_path)  # its backups go to runs/
    text = (ROOT / "docs" / "keras.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/keras.md", "exec"), namespace)
    assert int(namespace["model"].optimizer.iterations) == 2 * 57 + 2 * 12 + 2 * 3


def test_keras_momentum_none_keeps_the_optimizers(recwarn):
    """A schedule without momentum (Phase.momentum None) leaves SGD's momentum and Adam's beta_1 alone."""
    x, y = digits()
    schedule = Schedule((Phase(0, 1, 0.1, 20), Phase(1, 3, 0.1, 200)), dataset_size=N)
    for optimizer, own in ((keras.optimizers.SGD(0.1, momentum=0.7), 0.7), (keras.optimizers.Adam(0.1, beta_1=0.8), 0.8)):
        model = Recorded()
        model.compile(optimizer, "sparse_categorical_crossentropy")
        fit(model, gk.ScheduleDataset(x, y, schedule))
        assert [m for _, m in model.hyper] == pytest.approx([own] * (30 + 3 + 3))
    assert not [w for w in recwarn if "replaces" in str(w.message)]


def test_keras_mid_epoch_backup_is_refused_not_repeated(tmp_path):
    """Keras's BackupAndRestore(save_freq=int) restores mid-epoch weights but restarts the epoch: refused, loudly."""
    x, y = digits()

    class Kill(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == 45:  # epoch 1, batch 15
                raise KeyboardInterrupt

    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        fit(build(), gk.ScheduleDataset(x, y, SCHEDULE), [keras.callbacks.BackupAndRestore(backup, save_freq=5), Kill()])
    with pytest.raises(RuntimeError, match=r"the optimizer has made 45 updates, but fit\(\) starts epoch 1 at sample 0, "
                                           r"after 30 of the schedule's updates"):
        fit(build(), gk.ScheduleDataset(x, y, SCHEDULE), [keras.callbacks.BackupAndRestore(backup, save_freq=5)])


def test_keras_growbatch_backup_and_restore_resumes_mid_epoch_twice(tmp_path):
    """growbatch's BackupAndRestore(save_freq=5): killed at update 45 (mid-epoch 1), then at 52, the same weights."""
    x, y = digits()
    whole = build()
    fit(whole, gk.ScheduleDataset(x, y, SCHEDULE))

    class Kill(keras.callbacks.Callback):
        def __init__(self, at):
            super().__init__()
            self.at = at

        def on_train_batch_begin(self, batch, logs=None):
            if int(self.model.optimizer.iterations) == self.at:
                raise KeyboardInterrupt

    backup = str(tmp_path / "backup")
    trained = []
    for kill_at in (45, 52, None):  # the last backups before them: after updates 45 and 50 (the end of epoch 1)
        model, dataset = build(), gk.ScheduleDataset(x, y, SCHEDULE)
        callback = gk.ScheduleCallback(dataset)
        callbacks = [callback, gk.BackupAndRestore(backup, callback, save_freq=5)] + ([Kill(kill_at)] if kill_at else [])
        try:
            model.fit(dataset, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
        except KeyboardInterrupt:
            pass
        trained.append(model.batches)
    assert int(model.optimizer.iterations) == callback.updates == PLAN_UPDATES
    batches = expected_batches(SCHEDULE, 0, range(3))
    assert trained[0] == batches[:45] and trained[1] == batches[45:52] and trained[2] == batches[50:]
    for a, b in zip(whole.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert gk.ScheduleCallback(dataset).clock_after(45) == (1, 300) and gk.ScheduleCallback(dataset).clock_after(53) == (3, 0)
