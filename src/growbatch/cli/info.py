"""``growbatch presets`` and ``growbatch noise``: the paper's schedules by name, and one setting's noise scale."""

from __future__ import annotations

import argparse
import json

from ..schedule.planner import format_noise_report, format_table, noise_report
from ..schedule.presets import PRESETS

__all__ = ["add_presets_parser", "add_noise_parser"]


def add_presets_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("presets", help="list the paper's schedules by name",
                              description="The paper's experiments, for 'growbatch plan PRESET'.")
    p.set_defaults(handler=_presets)


def _presets(args: argparse.Namespace) -> int:
    print(format_table(("preset", "schedule"), [(p.name, p.description) for p in PRESETS.values()], align="ll"))
    return 0


def add_noise_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "noise", help="the noise scale of one setting and the settings equivalent to it",
        description="Print g = lr/(1-m) * (N/B - 1), its approximation lr*N/(B(1-m)), the effective lr "
                    "lr/(1-m), the batch that divides g by --factor, and other settings with the same g.")
    p.add_argument("--lr", type=float, required=True, help="learning rate")
    p.add_argument("--batch-size", type=int, required=True, help="global batch size B")
    p.add_argument("--dataset-size", type=int, required=True, help="training samples N")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum m (default 0: plain SGD)")
    p.add_argument("--factor", type=float, default=5.0, help="the wanted division of g (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(handler=_noise)


def _noise(args: argparse.Namespace) -> int:
    report = noise_report(args.lr, args.batch_size, args.dataset_size, args.momentum, factor=args.factor)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_noise_report(report))
    return 0
