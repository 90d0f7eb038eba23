"""``growbatch report``: rebuild a run directory's report from its metrics alone."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..report import build_report

__all__ = ["add_report_parser"]


def add_report_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="rebuild the report of a run directory from its metrics",
        description="Rebuild RUN_DIR/report.html (self-contained), report.md and the PNG figures from each run's "
                    "config.json and metrics.jsonl alone (no checkpoint needed); prints the report's path. "
                    "Works on a finished, interrupted or still running experiment.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out directory of a growbatch run")
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    print(build_report(Path(args.run_dir)))
    return 0
