"""``growbatch run``: flags -> ExperimentConfig -> runs -> report."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data import load_dataset
from ..report import build_report
from ..training.distributed import DistInfo, setup, teardown
from ..training.experiments import run_experiment
from ..training.lm import run_lm_experiment
from ..training.precision import cpu_bf16_note
from ..training.settings import (
    EXPERIMENTS,
    ExperimentConfig,
    flag_settings,
    positive_int,
)
from ..training.threads import choose_threads, restore_threads
from ..training.trainer import DivergenceError, Interrupted, StopFlag
from .progress import ProgressObserver

MAX_THREADS = 1024

__all__ = ["add_run_parser", "add_setting_flag", "experiment_config_from_args", "resume_command"]


def add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="train the paper's comparisons and write a report",
        description="Train decay / hybrid / increase (compare, §5.1) or the four §5.2 schedules, then write "
                    "OUT/report.html. With no argument: compare on the embedded digits data set.")
    p.add_argument("experiment", nargs="?", default="compare", choices=EXPERIMENTS,
                   help="which comparison to train: compare (§5.1: decay, hybrid, increase), paper-5.2 "
                        "(§5.2: original, increase, increase-lr, increase-momentum) or lm (a GPT on a token clock: "
                        "decay, converted, seesaw, rampup, steps) (default: compare)")
    for setting in flag_settings():  # every training setting, declared once in training/settings.py
        add_setting_flag(p, setting)
    p.add_argument("--download", action="store_true", help="download missing data set files (checksums verified) (default: off)")
    p.add_argument("--out", default=None, help="output directory (default runs/EXPERIMENT-DATASET)")
    p.add_argument("--workers", type=_flag_type(_thread_count), default=None,
                   help="CPU threads for training (data sets are held in memory, so no loader processes; "
                        "default: one per core left idle by other work, at least 1, counted as the run starts and again "
                        "when training speeds up or slows down 1.5x or cores sat idle over an epoch; a resume "
                        "starts with the count its checkpoint recorded)")
    p.add_argument("--resume", action="store_true", help="continue the experiment already in --out (default: off)")
    p.add_argument("--force", action="store_true", help="start over in an --out that holds results (default: off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on a terminal, only the per-epoch lines (default: off)")
    p.set_defaults(handler=_run)


def add_setting_flag(parser: argparse.ArgumentParser, setting: dataclasses.Field) -> None:
    """``--name-with-dashes`` for a settings field: its parser, choices, default and help from its metadata."""
    flag, meta = "--" + setting.name.replace("_", "-"), setting.metadata
    shown = f" (default: {_shown(setting.default)})"
    if setting.default is None:  # resolved from other settings: the help says how, or nothing is used
        shown = "" if "default" in meta["help"] else " (default: not set)"
    if isinstance(setting.default, bool) and meta["parse"] is None:  # a switch: --x, or --x/--no-x when on
        action = "store_true" if setting.default is False else argparse.BooleanOptionalAction
        parser.add_argument(flag, action=action, default=setting.default,
                            help=meta["help"] + (" (default: off)" if setting.default is False else " (default: on)"))
        return
    parser.add_argument(flag, default=setting.default, choices=meta["choices"], help=meta["help"] + shown,
                        type=_flag_type(meta["parse"]) if meta["parse"] is not None else None)


def experiment_config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    return ExperimentConfig(experiment=args.experiment, **{f.name: getattr(args, f.name) for f in flag_settings()})


def _flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse's ``type`` for a settings parser: its ValueError becomes argparse's one-line error."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err) if parse is not float else f"expected a number, got {text!r}") \
                from None
    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _out_text(text: str) -> str:
    """``--out`` as given, refused when empty or holding a newline or other control character."""
    if not text.strip():
        raise ValueError(f"--out should name a directory, but got {text!r}; leave it out for runs/EXPERIMENT-DATASET")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"--out should not hold a newline or other control character, but got {text!r}; "
                         "choose another directory name")
    return text


def _thread_count(text: str) -> int:
    """``--workers``: 1..1024 threads (torch's thread pool allocates per thread: 10**9 of them exhaust memory)."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise ValueError(f"expected a thread count in 1..{MAX_THREADS}, got {value}")
    return value


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _install_stop_handlers(stop: StopFlag) -> dict:
    """Turn SIGINT/SIGTERM into a stop request; returns the previous handlers, to restore them."""
    def handler(signum: int, frame: object) -> None:
        if stop.requested:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        stop.requested = True
        stop.signal_name = signal.Signals(signum).name

    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}


def resume_command(argv: list[str]) -> str:
    """The command line that continues an interrupted ``growbatch run``: --resume instead of --force."""
    args = [arg for arg in argv if arg != "--force"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["growbatch", *args])


def _run(args: argparse.Namespace) -> int:
    if args.resume and args.force:
        raise ValueError("--resume continues the runs in --out and --force starts them over; pass one of them")
    config = experiment_config_from_args(args)
    out = Path(_out_text(args.out) if args.out is not None else f"runs/{config.experiment}-{config.dataset}")
    info = setup(args.device)
    stop = StopFlag()
    previous_handlers = _install_stop_handlers(stop)
    note = choose_threads(args.workers)  # NOTE [threads under load] in training/threads.py; undone in finally
    bf16_note = cpu_bf16_note(config.precision, info.device)  # NOTE [bf16 on the CPU] in training/precision.py
    note = "\n".join(line for line in (note, bf16_note) if line) or None
    in_step = False  # True where every rank ends the same way at the same point (then they leave together)
    try:
        _train_and_report(args, config, out, info, stop, note)
        in_step = True
    except Interrupted as err:
        in_step = True
        if info.is_main:
            command = resume_command(getattr(args, "argv", sys.argv[1:]))
            print(f"growbatch: {err}; resume with: {command}", file=sys.stderr)
        return 128 + int(getattr(signal, stop.signal_name or "SIGINT", signal.SIGINT))
    except DivergenceError as err:
        in_step = True
        if info.is_main:
            print(f"growbatch: error: {err}", file=sys.stderr)
        return 1
    except RuntimeError as err:
        if not (info.enabled and _is_collective_failure(err)):
            if info.enabled:
                err.rank = info.rank
            raise
        _report_lost_rank(err, info.rank, args)
        return 1
    except (ValueError, TypeError, OSError) as err:
        if info.enabled:
            err.rank = info.rank  # this rank's own error: cli.main reports it (NOTE [one report] in cli/main.py)
        raise
    finally:
        teardown(wait=in_step)
        restore_threads()
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    return 0


def _train_and_report(args: argparse.Namespace, config: ExperimentConfig, out: Path, info: DistInfo,
                      stop: StopFlag, note: str | None) -> None:
    """Train the experiment into ``out``, then (on rank 0) write the report and print its path; ``note`` (the
    thread count chosen, a bf16 warning) is printed as the first epoch starts."""
    if args.resume and info.is_main and (not out.exists() or out.is_dir() and not any(out.iterdir())):
        # NOTE [resume fresh]: `growbatch run --resume` is the idempotent command (make demo): with nothing
        # to continue it starts the experiment, but says so, since a mistyped --out looks the same
        print(f"growbatch: --out {out} holds no experiment to resume; --resume starts it fresh", file=sys.stderr)
    observer = ProgressObserver(bars=not args.no_progress, note=note) if info.is_main else None
    if config.experiment == "lm":  # a text corpus, the LanguageModelTask (training/lm.py)
        summary = run_lm_experiment(config, out, info=info, resume=args.resume, force=args.force, stop=stop,
                                    observer=observer)
    else:
        dataset = load_dataset(config.dataset, config.data_dir, download=args.download)
        summary = run_experiment(config, out, info=info, resume=args.resume, force=args.force, stop=stop,
                                 observer=observer, dataset=dataset)
    if info.is_main:
        path = build_report(out)
        observer.finished(summary)
        print(path)  # last, on stdout: the one line a script reads


def _report_lost_rank(err: RuntimeError, rank: int, args: argparse.Namespace) -> None:
    """NOTE [lost rank]: a rank died (its connections closed) or hung past the timeout; torchrun stops
    the others. The last checkpoint is intact: rank 0 writes it whole, then renames it."""
    command = resume_command(getattr(args, "argv", sys.argv[1:]))
    detail = " ".join(str(err).split())[:200]
    print(f"growbatch: error: rank {rank} lost the other processes: a rank died or hung "
          f"({type(err).__name__}: {detail}); resume under the same launcher with: {command}",
          file=sys.stderr, flush=True)


def _is_collective_failure(err: RuntimeError) -> bool:
    """A collective that failed because a rank died or hung (DDP wraps gloo's error in a plain RuntimeError)."""
    text = str(err)
    return isinstance(err, torch.distributed.DistError) or any(
        mark in text for mark in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out"))
