"""Markdown tables for docs/results.md from the study's run directories (metrics only).

    .venv/bin/python studies/summarize.py runs/study/mnist-compare [...]

Per study: the report's summary (mean ± std over seeds), then each schedule against the
reference (decay for ``compare``, original for ``paper-5.2``): the difference in mean final test
accuracy, the largest per-epoch difference in mean test accuracy over the second half of
training, the seeds' spread, and the ratios of updates and wall time.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from growbatch.report import aggregate, load_runs


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summarize(out: Path) -> str:
    summary = json.loads((out / "summary.json").read_text())
    runs = load_runs(out)
    rows = aggregate(runs)
    text = [f"### {out.name}: {summary['experiment']} on {summary['dataset']} ({summary['dataset_size']:,} "
            f"training images), model {summary['model']}", ""]
    text.append(_table(
        ["schedule", "optimizer", "seeds", "final test acc %", "best test acc %", "updates", "samples", "wall s"],
        [[r["schedule"], r["optimizer"], str(r["seeds"]),
          f"{100 * r['final_test_acc']:.2f} ± {100 * r['final_test_acc_std']:.2f}",
          f"{100 * r['best_test_acc']:.2f} ± {100 * r['best_test_acc_std']:.2f}",
          f"{r['updates']:,}", f"{r['samples']:,}", f"{r['wall_s']:.0f} ± {r['wall_s_std']:.0f}"] for r in rows]))
    reference = "decay" if summary["experiment"] == "compare" else "original"
    curves: dict[tuple[str, str], list[float]] = {}
    by_group: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        by_group[(run["schedule"], run["optimizer"])].append(run)
    for key, members in by_group.items():
        length = min(len(m["records"]) for m in members)
        curves[key] = [statistics.fmean(m["records"][i]["test_acc"] for m in members) for i in range(length)]
    lookup = {(r["schedule"], r["optimizer"]): r for r in rows}
    compared = []
    for r in rows:
        ref = lookup.get((reference, r["optimizer"]))
        if ref is None or r["schedule"] == reference:
            continue
        a, b = curves[(r["schedule"], r["optimizer"])], curves[(reference, r["optimizer"])]
        half = len(b) // 2
        gap = max(abs(x - y) for x, y in zip(a[half:], b[half:]))
        spread = max(r["final_test_acc_std"], ref["final_test_acc_std"])
        compared.append([f"{r['schedule']} vs {reference}", r["optimizer"],
                         f"{100 * (r['final_test_acc'] - ref['final_test_acc']):+.2f}",
                         f"{100 * gap:.2f}", f"{100 * spread:.2f}",
                         f"{r['updates'] / ref['updates']:.3f}", f"{r['wall_s'] / ref['wall_s']:.2f}"])
    text += ["", _table(["schedules", "optimizer", "Δ final acc (points)", "largest per-epoch gap, 2nd half (points)",
                         "seeds' std (points)", "updates ratio", "wall-time ratio"], compared), ""]
    return "\n".join(text)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for path in argv:
        print(summarize(Path(path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
