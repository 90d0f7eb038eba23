"""An lm run directory -> figures (validation loss against tokens and updates, schedules, noise scale, wall time)
and report.md / report.html, rebuilt from each run's config.json and metrics.jsonl.
"""

from __future__ import annotations

import base64
import html
import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .report import RECORD_KEYS, load_runs  # noqa: E402

__all__ = ["build_lm_report", "aggregate_lm", "summary_table", "LM_FIGURES"]

LM_FIGURES = {
    "val_loss_tokens.png": "Validation loss (nats per token) against training tokens: every run trains the same tokens",
    "val_loss_updates.png": "Validation loss against parameter updates (as the paper plots accuracy against updates)",
    "schedules.png": "The schedules on the token clock: batch size (sequences) and learning rate",
    "noise_scale.png": "Measured gradient noise scale B_simple (McCandlish et al. 2018) and the batch size used",
    "wall_time.png": "Wall time per run (mean over seeds)",
}


# what the lm report reads of each metrics line (NOTE in report.load_runs)
LM_RECORD_KEYS = tuple(k for k in RECORD_KEYS if k != "test_acc") + ("test_loss", "tokens")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _groups(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs by schedule and optimizer, in the experiment's order (decay first)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    order = {name: i for i, name in enumerate(("decay", "converted", "seesaw", "rampup", "steps"))}
    for run in sorted(runs, key=lambda r: (r["optimizer"], order.get(r["schedule"], len(order)), r["seed"])):
        groups[f"{run['schedule']}-{run['optimizer']}"].append(run)
    return dict(groups)


def aggregate_lm(runs: list[dict]) -> list[dict]:
    """One row per schedule: final validation loss over seeds, Δ against ``decay`` paired by seed, ratios."""
    groups = _groups(runs)
    rows = []
    for key, members in groups.items():
        optimizer = members[0]["optimizer"]
        reference = {m["seed"]: m for m in groups.get(f"decay-{optimizer}", [])}
        last = [m["records"][-1] for m in members]
        paired = [(m["records"][-1]["test_loss"] - reference[m["seed"]]["records"][-1]["test_loss"],
                   m["records"][-1]["updates"] / reference[m["seed"]]["records"][-1]["updates"],
                   m["records"][-1]["wall_s"] / reference[m["seed"]]["records"][-1]["wall_s"])
                  for m in members if m["seed"] in reference]
        rows.append({
            "schedule": key, "seeds": len(members), "final_test_loss": _mean_std([r["test_loss"] for r in last]),
            "final_test_bpb": statistics.fmean(r["test_bpb"] for r in last),
            "delta": _mean_std([p[0] for p in paired]) if paired else None,
            "tokens": last[0].get("tokens", 0), "updates": last[0]["updates"],
            "updates_ratio": statistics.fmean(p[1] for p in paired) if paired else None,
            "wall_s": statistics.fmean(r["wall_s"] for r in last),
            "wall_ratio": statistics.fmean(p[2] for p in paired) if paired else None,
            "noise_scale": _last_noise(members),
        })
    return rows


def _last_noise(members: list[dict]) -> float | None:
    values = [m["records"][-1].get("gradient_noise_scale") for m in members]
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _curve_figure(runs: list[dict], x_key: str, xlabel: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, members in _groups(runs).items():
        length = min(len(m["records"]) for m in members)
        xs = [statistics.fmean(m["records"][i][x_key] for m in members) for i in range(length)]
        ys = [statistics.fmean(m["records"][i]["test_loss"] for m in members) for i in range(length)]
        ax.plot(xs, ys, marker="o", markersize=3, label=f"{key} ({len(members)} seed{'s' * (len(members) > 1)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    """Write a figure as the report's other figures are written, and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _schedule_figure(runs: list[dict], path: Path) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for key, members in _groups(runs).items():
        config = members[0]["config"]
        schedule, seq_len = config["schedule"], config.get("seq_len") or 128
        tokens_per_epoch = schedule["dataset_size"] * seq_len
        xs, batches, lrs = [], [], []
        for phase in schedule["phases"]:
            xs += [phase["start_epoch"] * tokens_per_epoch, phase["end_epoch"] * tokens_per_epoch]
            batches += [phase["batch_size"]] * 2
            lrs += [phase["lr"]] * 2
        top.plot(xs, batches, label=key)
        bottom.plot(xs, lrs, label=key)
    top.set_ylabel("batch size (sequences)")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("tokens")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=8)
    _save(fig, path)


def _noise_figure(runs: list[dict], path: Path) -> bool:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for key, members in _groups(runs).items():
        records = members[0]["records"]
        points = [(r["tokens"], r["gradient_noise_scale"], r["batch_size"]) for r in records
                  if r.get("gradient_noise_scale") is not None]
        if not points:
            continue
        drawn = True
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                        label=f"{key}: B_simple")
        ax.plot([p[0] for p in points], [p[2] for p in points], linestyle="--", color=line.get_color(), alpha=0.6)
    if drawn:
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel("sequences (dashed: batch size used)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _wall_figure(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.barh([r["schedule"] for r in rows], [r["wall_s"] for r in rows])
    ax.set_xlabel("wall time (s)")
    ax.invert_yaxis()
    _save(fig, path)


def summary_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["schedule", "seeds", "final val loss", "Δ vs decay", "bpb", "tokens", "updates", "updates ratio",
            "wall s", "wall ratio", "noise scale"]

    def spread(pair: tuple[float, float] | None, signed: bool = False) -> str:
        if pair is None:
            return ""
        return f"{pair[0]:+.4f} ± {pair[1]:.4f}" if signed else f"{pair[0]:.4f} ± {pair[1]:.4f}"

    body = [[r["schedule"], str(r["seeds"]), spread(r["final_test_loss"]),
             "reference" if r["schedule"].startswith("decay-") else spread(r["delta"], True),
             f"{r['final_test_bpb']:.3f}", f"{r['tokens']:,}", f"{r['updates']:,}",
             "" if r["updates_ratio"] is None else f"{r['updates_ratio']:.2f}", f"{r['wall_s']:.1f}",
             "" if r["wall_ratio"] is None else f"{r['wall_ratio']:.2f}",
             "" if r["noise_scale"] is None else f"{r['noise_scale']:.1f}"] for r in rows]
    return head, body


def build_lm_report(out: Path) -> Path:
    """Write the figures, ``report.md`` and a self-contained ``report.html`` of an lm experiment; returns the HTML."""
    out = Path(out)
    runs = load_runs(out, LM_RECORD_KEYS)
    experiment = json.loads((out / "experiment.json").read_text()) if (out / "experiment.json").exists() else {}
    rows = aggregate_lm(runs)
    _curve_figure(runs, "tokens", "tokens", out / "val_loss_tokens.png")
    _curve_figure(runs, "updates", "updates", out / "val_loss_updates.png")
    _schedule_figure(runs, out / "schedules.png")
    _wall_figure(rows, out / "wall_time.png")
    figures = dict(LM_FIGURES)
    if not _noise_figure(runs, out / "noise_scale.png"):
        figures.pop("noise_scale.png")
    head, body = summary_table(rows)
    title = f"growbatch: lm, {experiment.get('model', '?')} on {experiment.get('dataset', '?')}"
    settings = ", ".join(f"{k}={v}" for k, v in experiment.items() if v is not None)
    note = "Δ: final validation loss minus decay's (nats/token), paired by seed; ratios are to decay's."
    md = [f"# {title}", "", f"Settings used: {settings}", "", "## Final results", "", note, "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in body), ""]
    for file, caption in figures.items():
        md += [f"![{caption}]({file})", "", f"*{caption}*", ""]
    (out / "report.md").write_text("\n".join(md))
    table = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body) + "</table>"
    images = "".join(f"<figure><img src='data:image/png;base64,{base64.b64encode((out / f).read_bytes()).decode()}'"
                     f" alt='{html.escape(c)}'><figcaption>{html.escape(c)}</figcaption></figure>"
                     for f, c in figures.items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;padding:4px 8px}"
            "table{border-collapse:collapse}img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Settings used: {html.escape(settings)}</p><h2>Final results</h2>"
            f"<p>{html.escape(note)}</p>{table}{images}</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path
