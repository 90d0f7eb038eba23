"""Run settings, each declared once as a dataclass field with its type, default and help.

The CLI flags (``growbatch run``), ``config.json``, the resume compatibility check and the
experiment manifest are all derived from these fields and their metadata (see :func:`setting`):
adding a setting means adding one field here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..checks import MAX_COUNT, MAX_FACTOR, MAX_SEED, check_number, check_positive_int
from ..data import DATASET_NAMES
from ..data.text import TEXT_DATASETS
from ..models import LM_MODEL_NAMES, MODEL_NAMES
from ..schedule.adaptive import AdaptiveBatch
from ..schedule.builders import RULES
from ..schedule.schedule import Schedule
from ..schedule.tokens import LR_SCHEDULES, parse_batch_schedule, parse_rampup, parse_tokens

__all__ = ["OPTIMIZERS", "EXPERIMENTS", "PRECISIONS", "RunSettings", "ExperimentConfig", "RunConfig", "setting", "flag_settings",
           "compatible_keys", "positive_int", "int_list", "bounded_float", "name_list", "micro_batch_size_text"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
EXPERIMENTS = ("compare", "paper-5.2", "lm")
NOISE_SCALE_MODES = ("free", "split", "off")
PRECISIONS = ("fp32", "bf16")  # NOTE [precision] in training/task.py
SCHEDULES = {"compare": ("decay", "hybrid", "increase", "adaptive"),  # adaptive only when --schedules names it
             "paper-5.2": ("original", "increase", "increase-lr", "increase-momentum"),
             "lm": ("decay", "converted", "seesaw", "rampup", "steps")}  # steps only with --batch-schedule
ALL_SCHEDULES = tuple(dict.fromkeys(name for names in SCHEDULES.values() for name in names))
DEFAULT_MODEL = {"digits": "cnn", "mnist": "mnist-cnn", "fashion-mnist": "mnist-cnn", "cifar10": "wrn-16-4",
                 "python-stdlib": "gpt-tiny", "text": "gpt-tiny"}
DEFAULT_EPOCHS = {"digits": 30, "mnist": 6, "fashion-mnist": 6, "cifar10": 200, "python-stdlib": 8, "text": 8}
ALL_DATASETS = DATASET_NAMES + TEXT_DATASETS
DEFAULT_SEQ_LEN = 128
DEFAULT_TOKENS = 2**19  # per lm run: about 4-5 minutes of gpt-tiny's four runs on an idle CPU core


# -- the text form of settings (a flag's value); each raises ValueError with the message a user sees --------
def positive_int(text: str) -> int:
    """``"64"`` -> 64; zero, negatives and non-integers are refused."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {value}")
    if value > MAX_COUNT:  # NOTE [bounds] in checks.py
        raise ValueError(f"expected a positive integer of at most 10**12, got {_digits(text)}")
    return value


def int_list(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); each a seed, in 0..2**32-1 (what NumPy and torch accept)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError("expected at least one integer")
    bad = [v for v in values if not 0 <= v <= MAX_SEED]
    if bad:
        raise ValueError(f"expected seeds in 0..{MAX_SEED} (2**32-1), got {_digits(str(bad[0]))}")
    return values


def bounded_float(maximum: float) -> Callable[[str], float]:
    """A parser of a finite number of at most ``maximum`` (a factor or a multiple; NOTE [bounds] in checks.py)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or abs(value) > maximum:
            raise ValueError(f"expected a finite number of at most {maximum:g}, got {_digits(text)}")
        return value
    parse.__name__ = "number"
    return parse


def _digits(text: str) -> str:
    """A flag's text for a one-line message, a number of hundreds of digits cut short."""
    text = text.strip()
    return text if len(text) <= 40 else f"{text[:12]}...{text[-6:]} ({len(text)} characters)"


def name_list(valid: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """A parser of comma-separated names from ``valid``: ``"sgd,adam"`` -> ("sgd", "adam")."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [n for n in names if n not in valid]
        if bad or not names:
            raise ValueError(f"unknown {', '.join(bad) or 'empty list'}; valid: {', '.join(valid)}")
        return names
    return parse


def micro_batch_size_text(text: str) -> int | str:
    """``"auto"`` or a positive integer."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except ValueError:
        raise ValueError(f"micro-batch size should be a positive integer or 'auto', got {text!r}") from None


def setting(default: Any, help: str, *, parse: Callable[[str], Any] | None = None, choices: tuple | None = None,
            flag: bool = True, resume: str = "match", manifest: bool = True) -> Any:
    """A settings field: its default and help text, how its flag parses, and what it means for a run.

    Args:
        default: the value when the flag is not given.
        help: the flag's help text (also documents the field).
        parse: turns the flag's text into the value (argparse's ``type``); None for a plain string,
            or an on/off switch where the default is ``False``.
        choices: the valid values of the flag.
        flag: whether ``growbatch run`` has a flag for it (``--name-with-dashes``).
        resume: ``"match"`` if a checkpoint may only be continued with the same value; ``"free"`` if
            it may change between a run and its resume (where or how fast it runs).
        manifest: whether it identifies the experiment in its output directory.
    """
    if resume not in ("match", "free"):
        raise ValueError(f"resume should be 'match' or 'free', but got resume={resume!r}")
    metadata = {"help": help, "parse": parse, "choices": choices, "flag": flag, "resume": resume,
                "manifest": manifest}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RunSettings:
    """The settings that every run of an experiment takes over unchanged."""

    dataset: str | None = setting(None, "data set to train on (default: digits; python-stdlib for lm, text with "
                                  "--text-file)", choices=ALL_DATASETS)
    data_dir: str | None = setting(None, "where the data set files are (npz or torchvision layout)",
                                   resume="free", manifest=False)
    weight_decay: float = setting(5e-4, "L2 weight decay", parse=float)
    micro_batch_size: int | str = setting("auto", "samples per forward pass, or auto (measured)",
                                          parse=micro_batch_size_text)
    device: str = setting("auto", "where to train", choices=("auto", "cpu", "cuda"), resume="free", manifest=False)
    channels_last: bool = setting(False, "channels-last memory format for images")
    precision: str = setting(
        "fp32", "arithmetic of the forward passes and the loss, in training and evaluation: fp32 (float32 throughout; "
        "resumes are bit-identical) or bf16 (torch.autocast to bfloat16 on the CPU or CUDA; weights, gradients and "
        "the optimizer stay float32)", choices=PRECISIONS)
    checkpoint_every: int | None = setting(None, "also checkpoint every K updates", parse=positive_int,
                                           resume="free", manifest=False)
    noise_scale: str = setting(
        "free", "measure the gradient noise scale B_simple: free (from updates of two micro-batches or more, over "
        "all ranks), split (cut a batch that fits one micro-batch in two: every update, other float rounding) or off",
        choices=NOISE_SCALE_MODES)
    tensorboard: bool = setting(False, "also write TensorBoard event files (RUN/tensorboard/; needs the tensorboard "
                                       "package: pip install 'growbatch[tensorboard]')", resume="free", manifest=False)
    eval_batch_size: int = setting(1024, "samples per evaluation pass", flag=False, resume="free", manifest=False)
    seq_len: int | None = setting(None, f"lm: tokens per sequence, one sample (default {DEFAULT_SEQ_LEN})",
                                  parse=positive_int)
    text_file: str | None = setting(None, "lm: train on this UTF-8 file or folder of files (dataset text) instead of "
                                          "the Python standard library")

    def __post_init__(self) -> None:
        if self.dataset is None:  # NOTE [resolved defaults]: an explicit value stays what was given, to be checked
            object.__setattr__(self, "dataset", "text" if self.text_file is not None else "digits")
        if self.dataset not in ALL_DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {', '.join(ALL_DATASETS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        check_number("weight_decay", self.weight_decay)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay should be >= 0, but got weight_decay={self.weight_decay}")
        if self.checkpoint_every is not None:
            check_positive_int("checkpoint_every", self.checkpoint_every)

    def run_settings(self) -> RunSettings:
        """These settings alone (an ExperimentConfig's share for its runs)."""
        return RunSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RunSettings)})


@dataclass(frozen=True)
class ExperimentConfig(RunSettings):
    """An experiment: several schedules x optimizers x seeds on one data set and model."""

    experiment: str = setting("compare", "compare (§5.1) or paper-5.2 (§5.2)", choices=EXPERIMENTS, flag=False)
    model: str | None = setting(None, "the network (default: suited to the data set)",
                                choices=MODEL_NAMES + LM_MODEL_NAMES)
    schedules: tuple[str, ...] | None = setting(
        None, "comma-separated subset of the experiment's schedules (compare: decay,hybrid,increase; paper-5.2: "
        "original,increase,increase-lr,increase-momentum) (default all)", parse=name_list(ALL_SCHEDULES))
    optimizers: tuple[str, ...] | None = setting(None, f"comma-separated: {','.join(OPTIMIZERS)} (default: momentum; "
                                                 "adamw for lm)", parse=name_list(OPTIMIZERS))
    epochs: int | None = setting(None, "epochs per run; milestones are rescaled to it (default per data set)",
                                 parse=positive_int)
    seeds: tuple[int, ...] = setting((0,), "comma-separated seeds, e.g. 0,1,2", parse=int_list)
    batch_size: int | None = setting(None, "initial global batch (default: suited to the data set size)",
                                     parse=positive_int)
    lr: float | None = setting(None, "initial learning rate (default per optimizer)", parse=float)
    momentum: float = setting(0.9, "momentum (Adam's beta1)", parse=float)
    max_batch_size: int | None = setting(None, "batch cap; past it the lr falls (default N/10)", parse=positive_int)
    factor: float = setting(5.0, "noise-scale step at each milestone", parse=bounded_float(MAX_FACTOR))
    noise_multiple: float = setting(1.0, "adaptive: the batch tracks this many times the measured noise scale",
                                    parse=bounded_float(MAX_FACTOR))
    rules: tuple[str, ...] | None = setting(
        None, "how a batch step replaces an lr step, comma-separated: linear (B x f), sqrt (B x f^2), seesaw (B x f, "
        "lr / sqrt f); several give a hybrid and an increase run per rule, named increase-sqrt etc. (default: sqrt for "
        "adam, linear for SGD; compare only)", parse=name_list(RULES))
    ghost_batch_size: int | None = setting(
        None, "ghost batch norm size (default: the initial batch size; 0 turns ghost BN off)", parse=int)
    train_size: int | None = setting(
        None, "train on a class-balanced subset of this many images (the test set stays whole)", parse=positive_int)
    tokens: int | None = setting(None, "lm: training tokens per run, e.g. 512k or 2M (default 524288 = 2^19)",
                                 parse=parse_tokens)
    lr_schedule: str = setting("cosine", "lm: the lr schedule of the decay run and of the conversions: cosine "
                               "(warm-up + cosine to lr/10) or wsd (warm-up, stable, last 20%% linear to lr/10)",
                               choices=LR_SCHEDULES)
    warmup: float = setting(0.05, "lm: warm-up, as a fraction of the tokens", parse=float)
    batch_schedule: tuple[tuple[int, int], ...] | None = setting(
        None, "lm: a token step list TOKENS:BATCH,... such as 0:16,2M:32,6M:64 (Megatron's step schedule), run as "
        "schedule steps with the lr schedule", parse=parse_batch_schedule)
    rampup_batch_size: tuple[int, int, int] | None = setting(
        None, "lm: Megatron's --rampup-batch-size as 'START INCREMENT SAMPLES' towards --max-batch-size, for the "
        "rampup schedule (default: from --batch-size by --batch-size over half the samples)", parse=parse_rampup)

    def __post_init__(self) -> None:
        if self.dataset is None and self.experiment == "lm":  # NOTE [resolved defaults]
            object.__setattr__(self, "dataset", "text" if self.text_file is not None else "python-stdlib")
        if self.optimizers is None:
            object.__setattr__(self, "optimizers", ("adamw",) if self.experiment == "lm" else ("momentum",))
        if self.experiment == "lm":  # recorded resolved, so config.json and a resume check see the value used
            object.__setattr__(self, "seq_len", self.seq_len or DEFAULT_SEQ_LEN)
            object.__setattr__(self, "tokens", self.tokens or DEFAULT_TOKENS)
        super().__post_init__()
        self._check_task()

        def one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
        one_of("experiment", self.experiment, EXPERIMENTS)
        if self.model is not None:
            one_of("model", self.model, MODEL_NAMES + LM_MODEL_NAMES)
        if not self.optimizers:
            raise ValueError(f"optimizers should name at least one of {', '.join(OPTIMIZERS)}")
        for name in self.optimizers:
            one_of("optimizer", name, OPTIMIZERS)
        for name in ("epochs", "train_size"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED
                                 for s in self.seeds):
            raise ValueError(f"seeds should be integers in 0..{MAX_SEED}, but got seeds={list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError("seeds and optimizers should not repeat")
        if self.experiment == "paper-5.2" and "sgd" in self.optimizers:
            raise ValueError("paper-5.2 scales the momentum coefficient, so optimizer sgd (no momentum) does not "
                             "apply; use momentum, nesterov or adam")
        self._check_schedules()
        ghost = self.ghost_batch_size
        if ghost is not None and (isinstance(ghost, bool) or not 0 <= ghost <= MAX_COUNT):
            raise ValueError(f"--ghost-batch-size should be a positive integer of at most 10**12 (or 0 for plain batch "
                             f"norm), but got {_digits(str(ghost))}")

    def _check_schedules(self) -> None:
        """The schedule names, conversion rules and noise-scale settings name what this experiment has."""
        if self.schedules is not None:
            bad = [name for name in self.schedules if name not in SCHEDULES[self.experiment]]
            if bad or not self.schedules or len(set(self.schedules)) != len(self.schedules):
                raise ValueError(f"schedules should name distinct schedules of {self.experiment} "
                                 f"({', '.join(SCHEDULES[self.experiment])}), but got {', '.join(self.schedules)}")
        if self.experiment == "compare" and "adaptive" in (self.schedules or ()) and self.noise_scale == "off":
            raise ValueError("the adaptive schedule follows the measured noise scale; drop --noise-scale off")
        check_number("noise_multiple", self.noise_multiple)
        if not 0 < self.noise_multiple <= MAX_FACTOR:
            raise ValueError(f"noise_multiple should be a positive number, but got noise_multiple={self.noise_multiple}")
        if self.rules is not None:
            bad = [rule for rule in self.rules if rule not in RULES]
            if bad or not self.rules or len(set(self.rules)) != len(self.rules):
                raise ValueError(f"rules should name distinct rules of {', '.join(RULES)}, but got {', '.join(self.rules)}")
        if self.experiment == "paper-5.2" and self.rules not in (None, ("linear",)):
            raise ValueError(f"paper-5.2 scales lr and momentum by the paper's linear rules (B ∝ lr, B ∝ 1/(1-m)); "
                             f"--rules {','.join(self.rules)} applies to compare only")

    def resolved_rules(self, optimizer: str) -> tuple[str, ...]:
        """The conversion rules of ``optimizer``'s schedules: by default the square-root rule for Adam, else SGD's."""
        if self.rules is not None:
            return self.rules
        return ("sqrt",) if optimizer in ("adam", "adamw") and self.experiment in ("compare", "lm") else ("linear",)

    def _check_task(self) -> None:
        """A text data set and a GPT go with lm only, and the lm settings with nothing else."""
        text, lm = self.dataset in TEXT_DATASETS, self.experiment == "lm"
        if lm and not text:
            raise ValueError(f"growbatch run lm trains a language model on text, but got --dataset {self.dataset} "
                             f"(images); use --dataset python-stdlib or --text-file PATH")
        if self.text_file is not None and not lm:
            raise ValueError(f"--text-file is a corpus for growbatch run lm; {self.experiment} trains image classifiers")
        if text and not lm:
            raise ValueError(f"--dataset {self.dataset} is text, for growbatch run lm; {self.experiment} trains "
                             f"image classifiers on {', '.join(DATASET_NAMES)}")
        if self.model is not None and (self.model in LM_MODEL_NAMES) != lm:
            valid = LM_MODEL_NAMES if lm else MODEL_NAMES
            raise ValueError(f"--model {self.model} is {'an image' if lm else 'a language'} model, but "
                             f"{self.experiment} trains {'a language model' if lm else 'images'}; valid: "
                             f"{', '.join(valid)}")
        if self.text_file is not None and self.dataset != "text":
            raise ValueError(f"--text-file is the corpus of --dataset text, but got --dataset {self.dataset}; "
                             "drop one of them")
        if self.dataset == "text" and self.text_file is None:
            raise ValueError("--dataset text reads --text-file PATH; give one (a UTF-8 file or a folder of them)")
        lm_only = {"tokens": self.tokens, "seq_len": self.seq_len, "batch_schedule": self.batch_schedule,
                   "rampup_batch_size": self.rampup_batch_size}
        given = [name for name, value in lm_only.items() if value is not None]
        if given and not lm:
            raise ValueError(f"--{given[0].replace('_', '-')} applies to growbatch run lm only")
        image_only = {"train_size": self.train_size is not None, "ghost_batch_size": self.ghost_batch_size is not None,
                      "channels_last": self.channels_last, "factor": self.factor != 5.0,
                      "noise_multiple": self.noise_multiple != 1.0}
        given = [name for name, set_ in image_only.items() if set_]
        if lm and given:
            raise ValueError(f"--{given[0].replace('_', '-')} applies to image experiments; growbatch run lm does not "
                             "take it")
        if lm and self.rules is not None and (len(self.rules) > 1 or self.rules[0] == "seesaw"):
            raise ValueError(f"lm converts its lr schedule by one rule, linear or sqrt (seesaw is its own schedule), "
                             f"but got --rules {','.join(self.rules)}")
        if lm and self.schedules is not None and "steps" in self.schedules and self.batch_schedule is None:
            raise ValueError("the steps schedule follows --batch-schedule TOKENS:BATCH,...; give one, or drop steps")
        check_number("warmup", self.warmup)

    @property
    def resolved_model(self) -> str:
        return self.model or DEFAULT_MODEL[self.dataset]

    @property
    def resolved_epochs(self) -> int:
        return self.epochs or DEFAULT_EPOCHS[self.dataset]

    def manifest(self) -> dict[str, Any]:
        """What identifies the experiment in its output directory (not where or how fast it runs)."""
        data = {f.name: _json_value(getattr(self, f.name)) for f in dataclasses.fields(self) if f.metadata["manifest"]}
        return {**data, "model": self.resolved_model, "epochs": self.resolved_epochs}


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on: its schedule, model, optimizer and seed, and the shared settings."""

    name: str
    schedule: Schedule
    model: str = "cnn"
    optimizer: str = "momentum"  # sgd | momentum | nesterov | adam (momentum is Adam's beta1)
    seed: int = 0
    ghost_batch_size: int | None = None  # samples per ghost batch-norm batch; None: plain BN
    adaptive: AdaptiveBatch | None = None  # the batch follows the measured noise scale (schedule/adaptive.py)
    settings: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer should be one of {', '.join(OPTIMIZERS)}, but got optimizer={self.optimizer!r}")
        if self.adaptive is not None and self.settings.noise_scale == "off":
            raise ValueError("an adaptive run follows the measured noise scale, but noise_scale='off'; "
                             "use noise_scale='split' (or 'free')")
        if self.optimizer == "sgd" and any(p.momentum for p in self.schedule.phases):
            raise ValueError("optimizer=sgd has no momentum, but the schedule sets momentum > 0; use momentum or nesterov")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe settings (the schedule as its own dict), as written to ``config.json``."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "settings"}
        own["schedule"] = self.schedule.to_dict()
        own["adaptive"] = None if self.adaptive is None else dataclasses.asdict(self.adaptive)
        return {**own, **{name: _json_value(getattr(self.settings, name)) for name in _RUN_SETTING_NAMES}}


_RUN_SETTING_NAMES = tuple(f.name for f in dataclasses.fields(RunSettings))
# NOTE [run-defined]: these are decided per run (a schedule, a seed) or resolved from the experiment
# (model, ghost size); they always have to match for a checkpoint to continue.
_RUN_DEFINED = ("model", "optimizer", "schedule", "seed", "ghost_batch_size", "adaptive")


def compatible_keys() -> tuple[str, ...]:
    """The ``config.json`` keys that must be equal for a checkpoint to be continued."""
    shared = tuple(f.name for f in dataclasses.fields(RunSettings) if f.metadata["resume"] == "match")
    return _RUN_DEFINED + shared


def flag_settings() -> list[dataclasses.Field]:
    """The ExperimentConfig fields that ``growbatch run`` has a flag for, in declaration order."""
    return [f for f in dataclasses.fields(ExperimentConfig) if f.metadata["flag"]]


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
