"""``growbatch run``: flags -> ExperimentConfig -> runs -> report."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

import torch

from ..data import DATASET_NAMES, load_dataset
from ..models import MODEL_NAMES
from ..report import build_report
from ..training.distributed import setup, teardown
from ..training.experiments import EXPERIMENTS, ExperimentConfig, run_experiment
from ..training.settings import OPTIMIZERS
from ..training.trainer import DivergenceError, Interrupted, StopFlag

__all__ = ["add_run_parser", "experiment_config_from_args", "resume_command"]


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _name_list(valid: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [n for n in names if n not in valid]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad) or 'empty list'}; valid: {', '.join(valid)}")
        return names
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _micro(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"micro-batch size should be a positive integer or 'auto', "
                                         f"got {text!r}") from None


def add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="train the paper's comparisons and write a report",
        description="Train decay / hybrid / increase (compare, §5.1) or the four §5.2 schedules, then write "
                    "OUT/report.html. With no argument: compare on the embedded digits data set.")
    p.add_argument("experiment", nargs="?", default="compare", choices=EXPERIMENTS)
    p.add_argument("--dataset", default="digits", choices=DATASET_NAMES)
    p.add_argument("--data-dir", default=None, help="where the data set files are (npz or torchvision layout)")
    p.add_argument("--download", action="store_true", help="download missing data set files (checksums verified)")
    p.add_argument("--model", default=None, choices=MODEL_NAMES, help="default: suited to the data set")
    p.add_argument("--optimizers", type=_name_list(OPTIMIZERS), default=("momentum",),
                   help=f"comma-separated: {','.join(OPTIMIZERS)} (default momentum)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="milestones are rescaled to it")
    p.add_argument("--seeds", type=_int_list, default=(0,), help="comma-separated, e.g. 0,1,2")
    p.add_argument("--out", default=None, help="output directory (default runs/EXPERIMENT-DATASET)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=_positive_int, default=None, help="initial global batch")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (default per optimizer)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--max-batch-size", type=_positive_int, default=None, help="batch cap (default N/10)")
    p.add_argument("--factor", type=float, default=5.0, help="noise-scale step at each milestone")
    p.add_argument("--micro-batch-size", type=_micro, default="auto", help="samples per forward pass, or auto")
    p.add_argument("--ghost-batch-size", type=int, default=None,
                   help="ghost batch norm size (default: the initial batch size; 0 turns ghost BN off)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="CPU threads for training (data sets are held in memory, so no loader processes)")
    p.add_argument("--train-size", type=_positive_int, default=None,
                   help="train on a class-balanced subset of this many images (the test set stays whole)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, help="also checkpoint every K updates")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue the experiment already in --out")
    p.add_argument("--force", action="store_true", help="start over in an --out that holds results")
    p.add_argument("--no-progress", action="store_true", help="plain lines instead of progress bars")
    p.set_defaults(handler=_run)


def experiment_config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    if args.ghost_batch_size is not None and args.ghost_batch_size < 0:
        raise ValueError(f"--ghost-batch-size should be a positive integer (or 0 for plain batch norm), "
                         f"but got {args.ghost_batch_size}")
    return ExperimentConfig(
        experiment=args.experiment, dataset=args.dataset, data_dir=args.data_dir, model=args.model,
        optimizers=args.optimizers, epochs=args.epochs, seeds=args.seeds, batch_size=args.batch_size,
        lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, max_batch_size=args.max_batch_size,
        factor=args.factor, micro_batch_size=args.micro_batch_size, ghost_batch_size=args.ghost_batch_size,
        device=args.device, channels_last=args.channels_last, checkpoint_every=args.checkpoint_every,
        train_size=args.train_size,
    )


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
    out = Path(args.out or f"runs/{config.experiment}-{config.dataset}")
    if args.workers:
        torch.set_num_threads(args.workers)
    info = setup(args.device)
    stop = StopFlag()
    previous_handlers = _install_stop_handlers(stop)
    in_step = False  # True where every rank ends the same way at the same point (then they leave together)
    try:
        dataset = load_dataset(config.dataset, config.data_dir, download=args.download)
        progress = not args.no_progress
        run_experiment(config, out, info=info, resume=args.resume, force=args.force, stop=stop,
                       progress=progress, dataset=dataset)
        in_step = True
        if info.is_main:
            path = build_report(out)
            print(path)
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
        # NOTE [lost rank]: a rank died (its connections closed) or hung past the timeout; torchrun
        # stops the others. The last checkpoint is intact: rank 0 writes it whole, then renames it.
        command = resume_command(getattr(args, "argv", sys.argv[1:]))
        detail = " ".join(str(err).split())[:200]
        print(f"growbatch: error: rank {info.rank} lost the other processes: a rank died or hung "
              f"({type(err).__name__}: {detail}); resume under the same launcher with: {command}",
              file=sys.stderr, flush=True)
        return 1
    except (ValueError, TypeError, OSError) as err:
        if info.enabled:
            err.rank = info.rank  # this rank's own error: cli.main reports it (NOTE [one report] in cli.py)
        raise
    finally:
        teardown(wait=in_step)
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    return 0


def _is_collective_failure(err: RuntimeError) -> bool:
    """A collective that failed because a rank died or hung (DDP wraps gloo's error in a plain RuntimeError)."""
    text = str(err)
    return isinstance(err, torch.distributed.DistError) or any(
        mark in text for mark in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out"))
