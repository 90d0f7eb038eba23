"""Run directory -> figures (the paper's Figures 1-5, wall time) and a self-contained HTML/Markdown report.

Everything is rebuilt from each run's ``config.json`` and ``metrics.jsonl`` alone.
"""

from __future__ import annotations

import base64
import html
import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .training.metrics import read_records  # noqa: E402

__all__ = ["build_report", "load_runs", "aggregate"]

FIGURES = {
    "schedules.png": "Learning rate and batch size against epochs (Figure 1)",
    "test_acc_epochs.png": "Test accuracy against epochs (Figures 2-4)",
    "test_acc_updates.png": "Test accuracy against parameter updates (Figure 5)",
    "wall_time.png": "Wall time per schedule",
}


def load_runs(out: Path) -> list[dict]:
    """Every run directory under ``out`` that has a config and at least one complete epoch."""
    runs = []
    for run_dir in sorted(p for p in Path(out).iterdir() if p.is_dir()):
        config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
        if not (config_path.exists() and metrics_path.exists()):
            continue
        records = read_records(metrics_path)
        if not records:
            continue
        config = json.loads(config_path.read_text())
        runs.append({"name": run_dir.name, "config": config, "records": records,
                     "schedule": config["schedule"].get("name", "custom"), "optimizer": config["optimizer"],
                     "seed": config["seed"]})
    if not runs:
        raise ValueError(f"{out} holds no run with metrics (looked for */config.json and */metrics.jsonl)")
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (schedule, optimizer): mean and spread over seeds of the final numbers."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["schedule"], run["optimizer"])].append(run)
    rows = []
    for (schedule, optimizer), members in groups.items():
        last = [m["records"][-1] for m in members]
        final = _mean_std([r["test_acc"] for r in last])
        best = _mean_std([max(x["test_acc"] for x in m["records"]) for m in members])
        wall = _mean_std([r["wall_s"] for r in last])
        rows.append({"schedule": schedule, "optimizer": optimizer, "seeds": len(members),
                     "epochs": last[0]["epoch"] + 1, "final_test_acc": final[0], "final_test_acc_std": final[1],
                     "best_test_acc": best[0], "best_test_acc_std": best[1], "updates": last[0]["updates"],
                     "samples": last[0]["samples"], "wall_s": wall[0], "wall_s_std": wall[1],
                     "allreduces": last[0].get("allreduces", 0)})
    return rows


def _curves(ax, runs: list[dict], x_key: str, optimizer: str) -> None:
    by_schedule: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        if run["optimizer"] == optimizer:
            by_schedule[run["schedule"]].append(run)
    for schedule, members in by_schedule.items():
        length = min(len(m["records"]) for m in members)
        xs = [members[0]["records"][i]["epoch"] + 1 if x_key == "epoch" else members[0]["records"][i][x_key]
              for i in range(length)]
        per_epoch = [[m["records"][i]["test_acc"] for m in members] for i in range(length)]
        mean = [statistics.fmean(v) for v in per_epoch]
        (line,) = ax.plot(xs, mean, label=f"{schedule} (n={len(members)})")
        if len(members) > 1:  # band: min..max over seeds
            ax.fill_between(xs, [min(v) for v in per_epoch], [max(v) for v in per_epoch],
                            color=line.get_color(), alpha=0.2)
    ax.set_title(optimizer)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _figures(runs: list[dict], out: Path) -> None:
    optimizers = list(dict.fromkeys(r["optimizer"] for r in runs))
    first_of = {}
    for run in runs:
        first_of.setdefault(run["schedule"], run)

    fig, (ax_lr, ax_b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for schedule, run in first_of.items():
        phases = _realised_phases(run)
        xs = [p["start_epoch"] for p in phases] + [phases[-1]["end_epoch"]]
        ax_lr.step(xs, [p["lr"] for p in phases] + [phases[-1]["lr"]], where="post", label=schedule)
        ax_b.step(xs, [p["batch_size"] for p in phases] + [phases[-1]["batch_size"]], where="post", label=schedule)
    for ax, label in ((ax_lr, "learning rate"), (ax_b, "batch size")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "schedules.png", dpi=110)
    plt.close(fig)

    # linear axes, as the paper's Figure 5: the updates saved show as a shorter curve
    for name, x_key, x_label in (("test_acc_epochs.png", "epoch", "epoch"),
                                 ("test_acc_updates.png", "updates", "parameter updates")):
        fig, axes = plt.subplots(1, len(optimizers), figsize=(5 * len(optimizers), 3.8), squeeze=False)
        for ax, optimizer in zip(axes[0], optimizers):
            _curves(ax, runs, x_key, optimizer)
            ax.set_xlabel(x_label)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    rows = aggregate(runs)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 3.6))
    labels = [f"{r['schedule']}\n{r['optimizer']}" for r in rows]
    ax.bar(labels, [r["wall_s"] for r in rows], yerr=[r["wall_s_std"] for r in rows], capsize=3)
    ax.set_ylabel("wall time (s)")
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "wall_time.png", dpi=110)
    plt.close(fig)


def _realised_phases(run: dict) -> list[dict]:
    """The phases a run followed: its config's schedule, or for an adaptive run the epochs' records."""
    if not run["config"].get("adaptive"):
        return run["config"]["schedule"]["phases"]
    return [{"start_epoch": r["epoch"], "end_epoch": r["epoch"] + 1, "lr": r["lr"], "batch_size": r["batch_size"]}
            for r in run["records"]]


NOISE_SCALE_FIGURE = ("noise_scale.png", "Measured gradient noise scale B_simple against the batch size used "
                      "(log scales; on the dashed line the batch equals B_simple)")


def _noise_scale_figure(runs: list[dict], out: Path) -> bool:
    """B_simple of every epoch against that epoch's batch, per schedule; False (no file) where nothing was measured."""
    measured = [(run, [(r["batch_size"], r["gradient_noise_scale"]) for r in run["records"]
                       if r.get("gradient_noise_scale")]) for run in runs]
    measured = [(run, points) for run, points in measured if points]
    if not measured:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.2))
    colors: dict[str, str] = {}
    for run, points in measured:
        label = f"{run['schedule']} ({run['optimizer']})"
        batches, values = zip(*points)
        (line,) = ax.plot(batches, values, marker="o", color=colors.get(label),
                          label=None if label in colors else label, alpha=0.8)
        colors.setdefault(label, line.get_color())
    every = [v for _, points in measured for point in points for v in point]
    low, high = min(every) / 1.5, max(every) * 1.5
    ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="gradient noise scale B_simple")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / NOISE_SCALE_FIGURE[0], dpi=110)
    plt.close(fig)
    return True


def _tables(runs: list[dict]) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    agg_head = ["schedule", "optimizer", "seeds", "final test acc", "best test acc", "updates", "samples",
                "wall s", "all-reduces"]
    agg = [[r["schedule"], r["optimizer"], str(r["seeds"]),
            f"{100 * r['final_test_acc']:.2f} ± {100 * r['final_test_acc_std']:.2f}",
            f"{100 * r['best_test_acc']:.2f} ± {100 * r['best_test_acc_std']:.2f}",
            f"{r['updates']:,}", f"{r['samples']:,}", f"{r['wall_s']:.1f} ± {r['wall_s_std']:.1f}",
            f"{r['allreduces']:,}"] for r in aggregate(runs)]
    run_head = ["run", "epochs", "final test acc", "best test acc", "updates", "samples", "wall s"]
    per_run = []
    for run in runs:
        last = run["records"][-1]
        per_run.append([run["name"], str(last["epoch"] + 1), f"{100 * last['test_acc']:.2f}",
                        f"{100 * max(r['test_acc'] for r in run['records']):.2f}", f"{last['updates']:,}",
                        f"{last['samples']:,}", f"{last['wall_s']:.1f}"])
    return agg_head, agg, run_head, per_run


def _markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def build_report(out: Path) -> Path:
    """Write the PNG figures, ``report.md`` and a self-contained ``report.html`` into ``out``; returns the HTML path."""
    out = Path(out)
    if not out.is_dir():
        raise ValueError(f"{out} is not a run directory (it does not exist); pass the --out of a growbatch run")
    runs = load_runs(out)
    _figures(runs, out)
    figures = dict(FIGURES)
    if _noise_scale_figure(runs, out):
        figures[NOISE_SCALE_FIGURE[0]] = NOISE_SCALE_FIGURE[1]
    agg_head, agg, run_head, per_run = _tables(runs)
    experiment = {}
    if (out / "experiment.json").exists():
        experiment = json.loads((out / "experiment.json").read_text())
    title = f"growbatch: {experiment.get('experiment', 'runs')} on {experiment.get('dataset', '?')}"
    setting = ", ".join(f"{k}={v}" for k, v in experiment.items())

    md = [f"# {title}", "", f"Settings: {setting}", "", "## Summary (mean ± std over seeds)", "",
          _markdown_table(agg_head, agg), "", "## Runs", "", _markdown_table(run_head, per_run), ""]
    for name, caption in figures.items():
        md += [f"## {caption}", "", f"![{caption}]({name})", ""]
    (out / "report.md").write_text("\n".join(md))

    figures_html = "".join(
        f"<figure><img src='data:image/png;base64,{base64.b64encode((out / name).read_bytes()).decode()}' "
        f"alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in figures.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th{{background:#f3f3f3}}img{{max-width:100%}}figcaption{{color:#555;font-size:90%}}</style></head>
<body><h1>{html.escape(title)}</h1><p>{html.escape(setting)}</p>
<h2>Summary (mean ± std over seeds)</h2>{_html_table(agg_head, agg)}
<h2>Runs</h2>{_html_table(run_head, per_run)}{figures_html}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
