"""``growbatch plan``: updates and samples per phase of a preset, a custom step schedule or a converted LR schedule."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..schedule.builders import MODES, RULES, step_schedule
from ..schedule.planner import (
    LR_SCHEDULES,
    comparison_dict,
    convert_lr_schedule,
    format_comparison,
    format_plan_table,
)
from ..schedule.presets import PRESETS, get_preset
from ..schedule.schedule import Schedule
from .common import UsageError
from .plan_lm import add_lm_plan_flags, plan_lm

__all__ = ["add_plan_parser"]


def _numbers(text: str) -> tuple[float, ...]:
    """Comma-separated epochs such as ``60,120,160``; whole numbers stay ints for readable errors."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        try:
            values.append(int(part))
        except ValueError:
            try:
                values.append(float(part))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected comma-separated epochs such as 60,120,160, but got {text!r}") from None
    return tuple(values)


# Flags that describe a custom schedule (dest -> flag); None means "not given".
_SCHEDULE_FLAGS = {
    "lr": "--lr", "batch_size": "--batch-size", "momentum": "--momentum", "epochs": "--epochs",
    "milestones": "--milestones", "factor": "--factor", "mode": "--mode", "max_batch_size": "--max-batch-size",
    "dataset_size": "--dataset-size", "lr_schedule": "--lr-schedule", "batch_size_multiple": "--batch-size-multiple",
    "exact": "--exact", "rule": "--rule",
}
_REQUIRED_FLAGS = ("lr", "batch_size", "epochs", "dataset_size")


def add_plan_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plan", help="updates and samples per phase of a preset or a custom schedule",
        description="Print each phase (epochs, lr, momentum, batch size, noise scale, updates, samples) and the "
                    "totals, for a preset, a step schedule from flags, or an LR schedule converted to batch sizes.",
        epilog="examples: growbatch plan cifar10-wrn-increase | growbatch plan --compare cifar10-wrn-decay "
               "cifar10-wrn-increase | growbatch plan --lr 0.1 --batch-size 128 --epochs 200 "
               "--milestones 60,120,160 --dataset-size 50000 --mode hybrid")
    p.add_argument("preset", nargs="?", metavar="PRESET", help="a name from 'growbatch presets'")
    p.add_argument("--compare", nargs="+", metavar="PRESET", help="several presets side by side")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None,
                   help="drop each epoch's last partial batch (default: the preset's; off for a custom schedule)")
    custom = p.add_argument_group("custom schedule (instead of PRESET)")
    custom.add_argument("--lr", type=float, help="initial learning rate (required)")
    custom.add_argument("--batch-size", type=int, help="initial global batch size (required)")
    custom.add_argument("--epochs", type=int, help="number of epochs (required)")
    custom.add_argument("--dataset-size", type=int, help="training samples N (required)")
    custom.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    custom.add_argument("--milestones", type=_numbers, help="epochs of the LR steps, e.g. 60,120,160")
    custom.add_argument("--factor", type=float, help="the noise scale is divided by it at each milestone (default 5)")
    custom.add_argument("--mode", choices=MODES, help="how each step is taken (default increase)")
    custom.add_argument("--rule", choices=RULES, help="what a batch step stands for: linear (B x factor, SGD), sqrt "
                        "(B x factor^2, Adam) or seesaw (B x factor, lr / sqrt(factor)) (default linear)")
    custom.add_argument("--max-batch-size", type=int, help="batch cap; past it the lr falls (default N/10)")
    custom.add_argument("--exact", action="store_true", default=None,
                        help="keep the exact g = lr/(1-m)*(N/B-1) rather than the B << N approximation")
    custom.add_argument("--lr-schedule", choices=tuple(dict.fromkeys(LR_SCHEDULES + ("wsd",))),
                        help="convert this LR schedule to batch sizes at equal noise scale (instead of --mode)")
    custom.add_argument("--batch-size-multiple", type=int,
                        help="with --lr-schedule: round batch sizes to a multiple of this (default 1)")
    add_lm_plan_flags(p)
    p.set_defaults(handler=_plan)


def _given(args: argparse.Namespace) -> list[str]:
    return [flag for dest, flag in _SCHEDULE_FLAGS.items() if getattr(args, dest) is not None]


def _preset_schedule(name: str, drop_last: bool | None) -> Schedule:
    schedule = get_preset(name).schedule()
    if drop_last is None:
        return schedule
    return dataclasses.replace(schedule, drop_last=drop_last)


def _custom_schedule(args: argparse.Namespace) -> tuple[Schedule, float | None]:
    """The schedule the flags describe, and the rounding error of g when it is a conversion."""
    missing = [_SCHEDULE_FLAGS[d] for d in _REQUIRED_FLAGS if getattr(args, d) is None]
    if missing:
        raise UsageError(f"a custom schedule needs {', '.join(missing)}; or name a preset "
                         f"(one of {', '.join(PRESETS)})")
    if args.lr_schedule is not None and args.mode is not None:
        raise UsageError(f"--mode {args.mode} and --lr-schedule {args.lr_schedule} cannot be combined; "
                         "--mode steps the paper's way, --lr-schedule converts an LR schedule: pick one")
    if args.lr_schedule is not None and args.rule not in (None, "linear"):
        raise UsageError(f"--rule {args.rule} applies to step schedules (--mode); --lr-schedule converts by the "
                         "linear rule")
    if args.lr_schedule is None and args.batch_size_multiple is not None:
        raise UsageError("--batch-size-multiple only applies with --lr-schedule; drop it or add --lr-schedule")
    common = dict(
        lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, dataset_size=args.dataset_size,
        momentum=0.9 if args.momentum is None else args.momentum, milestones=args.milestones or (),
        factor=5.0 if args.factor is None else args.factor, max_batch_size=args.max_batch_size,
        drop_last=bool(args.drop_last), exact=bool(args.exact),
    )
    if args.lr_schedule == "wsd":
        raise UsageError("--lr-schedule wsd is an lm schedule: growbatch plan lm --lr-schedule wsd ...")
    if args.lr_schedule is not None:
        conversion = convert_lr_schedule(args.lr_schedule, batch_size_multiple=args.batch_size_multiple or 1,
                                         **common)
        return conversion.schedule, conversion.max_noise_error
    mode = args.mode or "increase"
    rule = args.rule or "linear"
    name = f"custom-{mode}" + ("" if rule == "linear" else f"-{rule}")
    return step_schedule(mode, name=name, rule=rule, **common), None


def _plan(args: argparse.Namespace) -> int:
    if args.preset == "lm":  # the lm experiment's schedules on the token clock (cli/plan_lm.py)
        return plan_lm(args)
    given = _given(args)
    if args.compare:
        if args.preset is not None or given:
            extra = [args.preset] if args.preset is not None else given
            raise UsageError(f"--compare takes preset names only, but also got {' '.join(extra)}; "
                             "put every preset after --compare")
        plans = [_preset_schedule(name, args.drop_last).plan() for name in args.compare]
        print(json.dumps(comparison_dict(plans), indent=2) if args.json else format_comparison(plans))
        return 0
    if args.preset is not None:
        if given:
            raise UsageError(f"a preset is a complete schedule, but got {', '.join(given)} as well; "
                             "drop them, or leave out PRESET for a custom schedule")
        schedule, noise_error = _preset_schedule(args.preset, args.drop_last), None
    else:
        schedule, noise_error = _custom_schedule(args)
    plan = schedule.plan()
    if args.json:
        data = plan.to_dict()
        if noise_error is not None:
            data["max_noise_error"] = noise_error
        print(json.dumps(data, indent=2))
    else:
        print(format_plan_table(plan, noise_error))
    return 0
