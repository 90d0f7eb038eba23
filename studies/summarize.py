"""Markdown tables for docs/results.md from the study's run directories (metrics only).

    .venv/bin/python studies/summarize.py [--figures docs/img/study] runs/study/mnist-compare [...]

Per study: the report's summary (mean ± std over seeds), then each schedule against the
reference (decay for ``compare``, original for ``paper-5.2``): the difference in mean final test
accuracy, the largest per-epoch difference in mean test accuracy over the second half of
training, the seeds' spread, and the ratios of updates and wall time. ``--figures DIR`` also
copies each study's accuracy and schedule figures to ``DIR/STUDY-FIGURE.png`` (what
docs/results.md shows).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from growbatch.report import aggregate, load_runs

DOC_FIGURES = ("schedules.png", "test_acc_epochs.png", "test_acc_updates.png")  # the ones docs/results.md shows


def _summarize_lm(out: Path, summary: dict) -> str:
    from growbatch.report_lm import LM_RECORD_KEYS, aggregate_lm, summary_table

    head, rows = summary_table(aggregate_lm(load_runs(out, LM_RECORD_KEYS)))
    return "\n".join([f"### {out.name}: lm, {summary['model']} on {summary['dataset']} ({summary['tokens']:,} tokens "
                      f"per run, sequences of {summary['seq_len']})", "", _table(head, rows), ""])


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summarize(out: Path) -> str:
    summary = json.loads((out / "summary.json").read_text())
    if summary["experiment"] == "lm":  # validation loss, not accuracy: the lm report's table
        return _summarize_lm(out, summary)
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


def copy_figures(out: Path, figures: Path) -> None:
    """The report's figures that docs/results.md shows, renamed STUDY-FIGURE.png, into ``figures``."""
    figures.mkdir(parents=True, exist_ok=True)
    for name in DOC_FIGURES:
        shutil.copyfile(out / name, figures / f"{out.name}-{name}")


def main(argv: list[str]) -> int:
    figures = None
    if argv[:1] == ["--figures"] and len(argv) > 1:
        figures, argv = Path(argv[1]), argv[2:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for path in argv:
        print(summarize(Path(path)))
        if figures is not None:
            copy_figures(Path(path), figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
