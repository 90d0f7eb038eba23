"""Keras 3: one ``model.fit()`` that follows a growbatch Schedule (batch, lr and momentum per update).

``ScheduleDataset`` (a ``keras.utils.PyDataset``) cuts each epoch's permutation into the schedule's
batches; ``ScheduleCallback`` moves it from epoch to epoch, sets the optimizer's lr and momentum before
every update, sizes the progress bar per epoch and checks that every batch was trained. Written and
tested for the torch backend (``KERAS_BACKEND=torch``, set by default when Keras is not yet imported).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Any

if "keras" not in sys.modules:
    os.environ.setdefault("KERAS_BACKEND", "torch")  # growbatch is a PyTorch library
try:
    import keras
except ImportError as err:  # pragma: no cover - the extra is missing
    raise ImportError("growbatch.integrations.keras needs Keras 3: pip install 'growbatch[keras]'") from err
if int(keras.__version__.split(".")[0]) < 3:  # pragma: no cover
    raise ImportError(f"growbatch.integrations.keras needs Keras 3, but found keras=={keras.__version__}")

import numpy as np
import torch

from ..batching.sampler import derive_seed
from ..checks import check_int
from ..schedule.schedule import Schedule

__all__ = ["ScheduleDataset", "ScheduleCallback", "BackupAndRestore", "GhostBatchNormalization", "STATE_VERSION"]

STATE_VERSION = 1

# NOTE [build pass]: before epoch 0, fit() takes one batch to build the model and compiled metrics,
# calling the data set's on_epoch_begin/on_epoch_end around it, then reads len() once for every epoch.
# So the data set keeps no clock of its own (its hooks only count passes); the callback places it
# at (epoch, position) before each epoch. Until then ("unplaced") len() is the largest epoch's number
# of batches, so Keras never stops an epoch early, and batch 0 serves the build. With workers, Keras's
# enqueuer prefetches further batches in the build pass and hands them to epoch 0 (Keras 3.15); unplaced
# batches past 0 are therefore None, which the enqueuer drops.
#
# NOTE [short epochs]: an epoch with fewer batches than the largest ends when the data set runs out,
# and Keras warns "Your input ran out of data" each time. The callback silences that one warning during
# fit() and checks instead, at every epoch end, that the epoch trained exactly its batches.
_RAN_OUT = "Your input ran out of data"


def _momentum_attribute(optimizer: Any) -> str | None:
    """The optimizer attribute that holds the momentum: Adam-type ``beta_1``, SGD/RMSprop ``momentum``."""
    for name in ("beta_1", "momentum"):
        if isinstance(getattr(optimizer, name, None), (int, float)):
            return name
    return None


class ScheduleDataset(keras.utils.PyDataset):
    """A PyDataset whose epochs are cut into the batches of a Schedule, placed by its ScheduleCallback.

    Every epoch is a permutation drawn from (seed, epoch), as ``DynamicBatchSampler`` draws it, cut
    into ``schedule.batch_sizes(epoch)``; batch ``i`` is the same whichever worker asks for it.

    Args:
        x, y: arrays (or dicts/tuples of arrays) with the schedule's ``dataset_size`` samples first.
        schedule: the growbatch Schedule to train on.
        shuffle: a new permutation each epoch; False keeps the order 0..N-1. Pass ``shuffle=False``
            to ``fit()`` itself: Keras must not reorder the batches.
        seed: non-negative; with the epoch it fixes the permutation.
        workers, use_multiprocessing, max_queue_size: Keras's PyDataset parallelism.

    Example:
        N = 1000 and phases (0, 1, batch 400), (1, 2, batch 800):

        =====  ===  ===============
        epoch  len  batch sizes
        =====  ===  ===============
        0      3    400, 400, 200
        1      2    800, 200
        =====  ===  ===============
    """

    def __init__(self, x: Any, y: Any, schedule: Schedule, *, shuffle: bool = True, seed: int = 0,
                 workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10) -> None:
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule should be a growbatch Schedule, but got {type(schedule).__name__}")
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle should be True or False, but got shuffle={shuffle!r}")
        lengths = sorted({len(leaf) for leaf in keras.tree.flatten((x, y))})
        if lengths != [schedule.dataset_size]:
            raise ValueError(f"x and y should hold the schedule's dataset_size={schedule.dataset_size} samples, "
                             f"but their first dimensions are {lengths}")
        self.x, self.y, self.schedule, self.shuffle = x, y, schedule, shuffle
        self.seed = check_int("seed", seed, 0)
        self.max_batches = max(len(schedule.batch_sizes(e)) for e in range(schedule.epochs))
        self._perm_epoch, self._perm = None, None
        self._unplaced_passes = 0
        self.last_served = -1  # index of the batch built most recently in this process
        self.clear_position()

    # -- the clock the callback sets ------------------------------------------------
    @property
    def uses_enqueuer(self) -> bool:
        """Whether Keras fetches batches through its (prefetching) enqueuer, as PyDatasetAdapter decides."""
        return self.workers > 1 or (self.workers > 0 and self.use_multiprocessing)

    @property
    def placed(self) -> bool:
        return self.epoch is not None

    def set_position(self, epoch: int, position: int = 0) -> None:
        """Serve the batches of ``epoch`` from sample ``position`` on (a cut of that epoch)."""
        check_int("epoch", epoch, 0)
        if epoch >= self.schedule.epochs:
            raise ValueError(f"epoch should be below the schedule's epochs={self.schedule.epochs}, but got {epoch}")
        sizes = self.schedule.batch_sizes(epoch)
        cuts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        if position not in cuts[:-1]:
            raise ValueError(f"position={position} is not where the schedule cuts a batch of epoch {epoch} "
                             f"(valid: 0, {', '.join(map(str, cuts[1:4]))}, ...); the state is from another schedule")
        first = int(np.searchsorted(cuts, position))
        self.epoch, self.position = epoch, position
        self._sizes, self._starts = sizes[first:], cuts[first:-1]

    def clear_position(self) -> None:
        """Back to unplaced: len() is the largest epoch's, batch 0 only serves Keras's build (NOTE [build pass])."""
        self.epoch, self.position = None, 0
        self._sizes = self.schedule.batch_sizes(0)
        self._starts = np.concatenate([[0], np.cumsum(self._sizes)[:-1]]).astype(int)

    def batch_sizes(self) -> list[int]:
        """The sizes of the batches this pass serves, in order."""
        return list(self._sizes)

    # -- the PyDataset protocol ------------------------------------------------------
    def __len__(self) -> int:
        return len(self._sizes) if self.placed else self.max_batches

    def __getitem__(self, index: int) -> Any:
        if not self.placed and index > 0 and self.uses_enqueuer:
            return None  # NOTE [build pass]: a prefetched build-pass batch, dropped by Keras's enqueuer
        if not 0 <= index < len(self._sizes):
            raise IndexError(f"batch index {index} is out of range: this pass has {len(self._sizes)} batches")
        epoch = 0 if self.epoch is None else self.epoch
        start = int(self._starts[index])
        indices = self._permutation(epoch)[start:start + self._sizes[index]]
        self.last_served = index
        return keras.tree.map_structure(lambda a: a[indices], (self.x, self.y))

    def on_epoch_begin(self) -> None:
        """Keras's per-pass hook (build pass included): only checks that a callback places each epoch."""
        if not self.placed:
            self._unplaced_passes += 1
            if self._unplaced_passes > 1:
                raise RuntimeError("ScheduleDataset is trained without its callback: pass "
                                   "fit(dataset, callbacks=[ScheduleCallback(dataset)], shuffle=False)")

    def on_epoch_end(self) -> None:
        self.clear_position()

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            n = self.schedule.dataset_size
            if self.shuffle:
                generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
                self._perm = torch.randperm(n, generator=generator).numpy()
            else:
                self._perm = np.arange(n)
            self._perm_epoch = epoch
        return self._perm


class ScheduleCallback(keras.callbacks.ProgbarLogger):
    """Makes one ``fit()`` follow its dataset's Schedule: the epoch's batches, lr and momentum per update.

    Before each epoch it places the ScheduleDataset (NOTE [build pass]) and sizes the progress bar to
    that epoch's batches; before each update it sets the optimizer's ``learning_rate`` and momentum
    (``momentum`` of SGD/RMSprop, ``beta_1`` of Adam-type optimizers) of the phase where the batch is
    cut; after each epoch it checks that every batch was trained. It is Keras's progress bar too (a
    ``ProgbarLogger``), so fit() adds no second one. A phase with ``momentum=None`` keeps the optimizer's.

    Resume: with this module's ``BackupAndRestore`` (any ``save_freq``) or Keras's own with epoch backups,
    a restarted fit() continues exactly where the backup was made; by hand, ``load_state_dict(state)``
    (from ``state_dict()``, saved with the weights) and ``fit(initial_epoch=state["epoch"])``. The first
    epoch of every fit() checks that the optimizer's update counter agrees with where it starts.

    Args:
        dataset: the ScheduleDataset passed to fit().
        set_lr, set_momentum: whether to write them into the optimizer.

    Raises:
        ValueError: at the start of fit(), for ``epochs`` past the schedule, ``steps_per_epoch``,
            ``steps_per_execution`` > 1, an optimizer whose lr is a LearningRateSchedule, or a momentum
            the optimizer cannot take; during fit(), for batches out of order (``fit(shuffle=True)``).
        RuntimeError: an epoch that ends before its last batch.
    """

    def __init__(self, dataset: ScheduleDataset, *, set_lr: bool = True, set_momentum: bool = True) -> None:
        super().__init__()
        if not isinstance(dataset, ScheduleDataset):
            raise TypeError(f"dataset should be a ScheduleDataset, but got {type(dataset).__name__}")
        self.dataset, self.schedule = dataset, dataset.schedule
        self.set_lr, self.set_momentum = bool(set_lr), bool(set_momentum)
        sizes = [self.schedule.batch_sizes(e) for e in range(self.schedule.epochs)]
        self._updates_before = np.concatenate([[0], np.cumsum([len(s) for s in sizes])]).astype(int)
        self._samples_before = np.concatenate([[0], np.cumsum([sum(s) for s in sizes])]).astype(int)
        self.epoch, self.position = 0, 0  # the clock: the next batch is cut at (epoch, position)
        self._resume: tuple[int, int] | None = None
        self._quiet: warnings.catch_warnings | None = None

    # -- counters -------------------------------------------------------------------
    @property
    def updates(self) -> int:
        """Updates trained so far in the whole run (resumed ones included)."""
        done = sum(1 for _ in self._cuts_before(self.epoch, self.position))
        return int(self._updates_before[min(self.epoch, self.schedule.epochs)]) + done

    @property
    def samples_seen(self) -> int:
        return int(self._samples_before[min(self.epoch, self.schedule.epochs)]) + self.position

    def _cuts_before(self, epoch: int, position: int):
        if epoch >= self.schedule.epochs:
            return
        cut = 0
        for size in self.schedule.batch_sizes(epoch):
            if cut >= position:
                return
            yield cut
            cut += size

    def clock_after(self, updates: int) -> tuple[int, int]:
        """(epoch, position) after ``updates`` updates: the schedule cuts the same batches every run."""
        check_int("updates", updates, 0)
        epoch = int(np.searchsorted(self._updates_before, updates, side="right")) - 1
        if epoch >= self.schedule.epochs:
            if updates > self._updates_before[-1]:
                raise ValueError(f"updates={updates} is past the schedule's {self._updates_before[-1]}")
            return self.schedule.epochs, 0
        done = updates - int(self._updates_before[epoch])
        return epoch, int(sum(self.schedule.batch_sizes(epoch)[:done]))

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "dataset_size": self.schedule.dataset_size, "epoch": self.epoch,
                "position": self.position, "updates": self.updates, "samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict) -> None:
        """Continue at the state's (epoch, position); fit() must then start at ``initial_epoch=state['epoch']``."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"state should be a ScheduleCallback.state_dict() of version {STATE_VERSION}, "
                             f"but got {state!r:.80}")
        if state.get("dataset_size") != self.schedule.dataset_size:
            raise ValueError(f"the state is for dataset_size={state.get('dataset_size')}, "
                             f"but the schedule has {self.schedule.dataset_size}")
        epoch, position = state["epoch"], state["position"]
        if epoch < self.schedule.epochs:
            self.dataset.set_position(epoch, position)  # checks it is a cut of this schedule
            self.dataset.clear_position()
        self.epoch, self.position = epoch, position
        self._resume = (epoch, position)

    # -- fit() hooks ----------------------------------------------------------------
    def set_params(self, params: dict) -> None:
        self.params = params  # ProgbarLogger keeps only what its bar needs
        super().set_params(params)

    def on_train_begin(self, logs: dict | None = None) -> None:
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        if epochs is not None and epochs > self.schedule.epochs:
            raise ValueError(f"fit(epochs={epochs}) runs past the schedule's epochs={self.schedule.epochs}; "
                             f"pass epochs={self.schedule.epochs}")
        if steps != self.dataset.max_batches:
            raise ValueError(f"fit() plans {steps} steps per epoch, but the schedule's epochs have up to "
                             f"{self.dataset.max_batches}: pass no steps_per_epoch (and a new ScheduleDataset "
                             "after an interrupted fit in the same process)")
        if getattr(self.model, "steps_per_execution", 1) != 1:
            raise ValueError(f"compile(steps_per_execution={self.model.steps_per_execution}) trains several "
                             "batches per call, so the lr cannot follow each batch; use steps_per_execution=1")
        self._check_optimizer(self.model.optimizer)
        self.dataset._unplaced_passes = 0
        self._first_epoch = True
        self._quiet = warnings.catch_warnings()  # NOTE [short epochs]: until on_train_end
        self._quiet.__enter__()
        warnings.filterwarnings("ignore", message=_RAN_OUT, category=UserWarning)
        super().on_train_begin(logs)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self._resume is not None and self._resume[0] != epoch:
            raise ValueError(f"the loaded state continues at epoch {self._resume[0]}, but fit() starts epoch "
                             f"{epoch}: pass initial_epoch={self._resume[0]}")
        position = self._resume[1] if self._resume is not None else 0
        self._resume = None
        self.dataset.set_position(epoch, position)
        self.epoch, self.position, self._start = epoch, position, position
        if self._first_epoch:
            self._first_epoch = False
            self._check_restored_updates()
            if epoch == 0 and position == 0:
                self._warn_replaced(self.model.optimizer)
        self._sizes, self._batch = self.dataset.batch_sizes(), 0
        self.target = len(self._sizes)  # the progress bar of this epoch
        super().on_epoch_begin(epoch, logs)

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if batch != self._batch or batch >= len(self._sizes):
            raise RuntimeError(f"step {batch} of epoch {self.epoch} should be batch {self._batch} of "
                               f"{len(self._sizes)}; the schedule's batches were not trained in order")
        if not self.dataset.uses_enqueuer and self.dataset.last_served != batch:
            raise ValueError(f"fit() trains batch {self.dataset.last_served} of epoch {self.epoch} as step {batch}: "
                             "fit(shuffle=True) reorders the schedule's batches; pass fit(..., shuffle=False) "
                             "(ScheduleDataset shuffles the samples itself)")
        self._apply(self.schedule.phase_at(self.epoch, self.position))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.position += self._sizes[batch]
        self._batch += 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self._batch != len(self._sizes) and not self.model.stop_training:
            raise RuntimeError(f"epoch {epoch} ended after {self._batch} of its {len(self._sizes)} batches; "
                               "Keras stopped the pass early (steps_per_epoch?), updates would be lost")
        super().on_epoch_end(epoch, logs)
        if self._batch == len(self._sizes):
            self.epoch, self.position = epoch + 1, 0
        self.dataset.clear_position()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._quiet is not None:
            self._quiet.__exit__(None, None, None)
            self._quiet = None
        self.dataset.clear_position()
        super().on_train_end(logs)

    # -- the optimizer --------------------------------------------------------------
    def _check_optimizer(self, optimizer: Any) -> None:
        if optimizer is None:
            raise ValueError("the model has no optimizer: call model.compile(optimizer=...) before fit()")
        schedule_lr = isinstance(getattr(optimizer, "_learning_rate", None),
                                 keras.optimizers.schedules.LearningRateSchedule)
        if self.set_lr and (schedule_lr or callable(getattr(optimizer, "_learning_rate", None))):
            raise ValueError(f"{type(optimizer).__name__} was built with a learning-rate schedule, but the growbatch "
                             "schedule sets the lr per update: build it with a float learning_rate, or pass "
                             "set_lr=False")
        momenta = {p.momentum for p in self.schedule.phases if getattr(p, "momentum", None) is not None}
        if not self.set_momentum or not momenta:
            return
        name = _momentum_attribute(optimizer)
        if name is None and momenta != {0.0}:
            raise ValueError(f"{type(optimizer).__name__} has no momentum or beta_1, but the schedule sets momentum "
                             f"{sorted(momenta)}; build the schedule with momentum=None, or pass set_momentum=False")
        if name == "momentum" and getattr(optimizer, name) == 0 and momenta != {0.0}:
            raise ValueError(f"{type(optimizer).__name__}(momentum=0) keeps no momentum buffers, but the schedule "
                             f"sets momentum {sorted(momenta)}: build it with momentum={max(momenta):g}")

    def _check_restored_updates(self) -> None:
        """The optimizer's own update counter (restored with the weights) must be where the schedule resumes."""
        iterations, expected = int(self.model.optimizer.iterations), self.updates
        if iterations == expected:
            return
        where = f"fit() starts epoch {self.epoch} at sample {self.position}, after {expected} of the schedule's updates"
        if expected == 0:
            warnings.warn(f"the optimizer has made {iterations} updates before this fit(), which {where}; if its "
                          "weights come from a mid-epoch backup, the epoch's first batches are trained twice",
                          stacklevel=2)
            return
        raise RuntimeError(f"the optimizer has made {iterations} updates, but {where}: the weights are from another "
                           "point of the run (a mid-epoch BackupAndRestore(save_freq=<int>) restarts its epoch from "
                           "the first batch); use growbatch.integrations.keras.BackupAndRestore(backup_dir, callback)")

    def _warn_replaced(self, optimizer: Any) -> None:
        """At a fresh start, say where the schedule's first values replace the optimizer's own."""
        phase = self.schedule.phases[0]
        if self.set_lr and not math.isclose(float(optimizer.learning_rate), phase.lr, rel_tol=1e-6):
            warnings.warn(f"the schedule's lr={phase.lr:g} replaces the optimizer's learning_rate="
                          f"{float(optimizer.learning_rate):g}", stacklevel=2)
        name, momentum = _momentum_attribute(optimizer), getattr(phase, "momentum", None)
        if self.set_momentum and name and momentum is not None and not math.isclose(getattr(optimizer, name), momentum):
            warnings.warn(f"the schedule's momentum={momentum:g} replaces the optimizer's {name}="
                          f"{getattr(optimizer, name):g}; build the schedule with momentum=None to keep it",
                          stacklevel=2)

    def _apply(self, phase: Any) -> None:
        """Set every update (not only at phase changes): a restore or another callback may have moved them."""
        optimizer = self.model.optimizer
        lr = phase.lr if self.set_lr else None
        name = _momentum_attribute(optimizer) if self.set_momentum else None
        momentum = getattr(phase, "momentum", None) if name else None
        if lr is not None:
            optimizer.learning_rate = lr
        if momentum is not None:
            setattr(optimizer, name, momentum)


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` that resumes a ScheduleCallback exactly, mid-epoch backups included.

    Keras's own restores the weights (the optimizer's update counter with them) but restarts the backed-up
    epoch from its first batch, and after a restore it records epoch 0 until the next epoch ends. This one
    places the run where the restored update counter says: the schedule cuts the same batches every run,
    so ``updates`` fixes (epoch, position), and fit() continues at the next batch.

    Args:
        backup_dir, save_freq, double_checkpoint, delete_checkpoint: as for Keras's.
        schedule_callback: the ScheduleCallback of the same fit().
    """

    def __init__(self, backup_dir: str, schedule_callback: ScheduleCallback, **kwargs: Any) -> None:
        super().__init__(backup_dir, **kwargs)
        if not isinstance(schedule_callback, ScheduleCallback):
            raise TypeError("schedule_callback should be a ScheduleCallback, but got "
                            f"{type(schedule_callback).__name__}")
        self.schedule_callback = schedule_callback

    def on_train_begin(self, logs: dict | None = None) -> None:
        restoring = os.path.exists(self._weights_path) or os.path.exists(self._prev_weights_path)
        super().on_train_begin(logs)
        if not restoring:
            return
        epoch, position = self.schedule_callback.clock_after(int(self.model.optimizer.iterations))
        clock = {**self.schedule_callback.state_dict(), "epoch": epoch, "position": position}
        self.schedule_callback.load_state_dict(clock)
        self.model._initial_epoch = epoch  # what Keras's own restore sets, here from the update counter
        self._current_epoch = epoch  # Keras's counter restarts at 0 after a restore


class GhostBatchNormalization(keras.layers.Layer):
    """Batch normalisation over ghost batches of ``ghost_batch_size`` consecutive samples (Hoffer et al. 2017).

    Keras 3 dropped ``BatchNormalization(virtual_batch_size=...)``; this is it for channels-last inputs:
    in training every ghost batch (the last one shorter) is normalised by its own mean and variance, and
    the moving statistics follow the ghosts' average; at inference the moving statistics, as BatchNormalization.
    """

    def __init__(self, ghost_batch_size: int, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ghost_batch_size = check_int("ghost_batch_size", ghost_batch_size, 1)
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def build(self, input_shape: tuple) -> None:
        channels = (input_shape[-1],)
        self.gamma = self.add_weight(shape=channels, initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=channels, initializer="zeros", name="beta")
        self.moving_mean = self.add_weight(shape=channels, initializer="zeros", name="moving_mean", trainable=False)
        self.moving_variance = self.add_weight(shape=channels, initializer="ones", name="moving_variance",
                                               trainable=False)

    def call(self, inputs: Any, training: bool = False) -> Any:
        ops = keras.ops
        if not training:
            return self._normalise(inputs, self.moving_mean, self.moving_variance)
        n, g = inputs.shape[0], self.ghost_batch_size
        full = (n // g) * g
        parts, means, variances = [], [], []
        if full:
            ghosts = ops.reshape(inputs[:full], (n // g, g, *inputs.shape[1:]))
            axes = tuple(range(1, len(ghosts.shape) - 1))
            mean, variance = ops.moments(ghosts, axes=axes, keepdims=True)
            parts.append(ops.reshape(self._normalise(ghosts, mean, variance), (full, *inputs.shape[1:])))
            means.append(ops.reshape(mean, (n // g, -1)))
            variances.append(ops.reshape(variance, (n // g, -1)))
        if full < n:
            rest = inputs[full:]
            mean, variance = ops.moments(rest, axes=tuple(range(len(rest.shape) - 1)), keepdims=False)
            parts.append(self._normalise(rest, mean, variance))
            means.append(mean[None])
            variances.append(variance[None])
        self.moving_mean.assign(self.momentum * self.moving_mean
                                + (1 - self.momentum) * ops.mean(ops.concatenate(means), axis=0))
        self.moving_variance.assign(self.momentum * self.moving_variance
                                    + (1 - self.momentum) * ops.mean(ops.concatenate(variances), axis=0))
        return parts[0] if len(parts) == 1 else ops.concatenate(parts)

    def _normalise(self, x: Any, mean: Any, variance: Any) -> Any:
        return (x - mean) * keras.ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta

    def get_config(self) -> dict:
        return {**super().get_config(), "ghost_batch_size": self.ghost_batch_size, "momentum": self.momentum,
                "epsilon": self.epsilon}
