"""Run directory -> figures (the paper's Figures 1-5, wall time) and a self-contained HTML/Markdown report.

Everything is rebuilt from each run's ``config.json`` and ``metrics.jsonl`` alone (and ``experiment.json``).
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
from matplotlib.ticker import FuncFormatter, NullLocator  # noqa: E402

from .training.metrics import read_records  # noqa: E402

__all__ = ["build_report", "load_runs", "aggregate", "figure_captions"]

FIGURE_NAMES = ("schedules.png", "train_loss.png", "test_acc_epochs.png", "test_acc_updates.png", "wall_time.png")
# NOTE [paper figures]: Smith et al. 2018 show §5.1 (compare) as Figure 1 (schedules), Figure 2 (training
# cross-entropy against epochs and updates), Figures 3-4 (test accuracy against epochs, one panel per
# optimizer); §5.2 (paper-5.2) as Figure 5 (test accuracy against updates).
_PAPER = {
    "compare": {"schedules.png": "the paper's Figure 1", "train_loss.png": "the paper's Figure 2",
                "test_acc_epochs.png": "the paper's Figures 3 and 4 (one panel per optimizer)",
                "test_acc_updates.png": "no figure in the paper (§5.2's Figure 5 plots its own schedules so)"},
    "paper-5.2": {"schedules.png": "the schedules of the paper's §5.2",
                  "train_loss.png": "no figure in the paper", "test_acc_epochs.png": "no figure in the paper",
                  "test_acc_updates.png": "the paper's Figure 5"},
}
_TITLES = {
    "schedules.png": "Learning rate and batch size against epochs",
    "train_loss.png": "Training loss (cross-entropy) against epochs and against parameter updates",
    "test_acc_epochs.png": "Test accuracy against epochs; right: the last two phases, zoomed",
    "test_acc_updates.png": "Test accuracy against parameter updates; right: the last two phases, zoomed",
    "wall_time.png": "Wall time per schedule",
}
WALL_NOTE = ("training and the per-epoch test evaluation; with --micro-batch-size auto it also includes the "
             "one-time micro-batch measurement of the first epochs; data loading and model building are excluded")
# one (line style, marker) per schedule, so curves that lie on each other stay distinguishable
_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 1)), "P"))


def figure_captions(experiment: str) -> dict[str, str]:
    """Each figure's file name -> its caption: what it shows and which figure of the paper it corresponds to."""
    paper = _PAPER.get(experiment, {})
    captions = {}
    for name in FIGURE_NAMES:
        title = _TITLES[name]
        if name == "wall_time.png":
            captions[name] = f"{title} (mean over seeds). The bar includes {WALL_NOTE}."
        else:
            captions[name] = f"{title} ({paper.get(name, 'no figure in the paper')})."
    return captions


# what the report reads of each file; a damaged run is named with the file and the field it lacks
RECORD_KEYS = ("epoch", "updates", "samples", "wall_s", "lr", "batch_size", "train_loss", "test_acc")
CONFIG_KEYS = ("schedule", "optimizer", "seed")
PHASE_KEYS = ("start_epoch", "end_epoch", "lr", "batch_size")


def load_runs(out: Path, record_keys: tuple[str, ...] = RECORD_KEYS) -> list[dict]:
    """Every run directory under ``out`` that has a config and at least one complete epoch; every metrics line
    must hold ``record_keys`` (a language model's lines have test_loss and tokens instead of test_acc).

    Raises:
        ValueError: a ``config.json`` or a metrics line lacks a field the report needs (naming both).
    """
    runs = []
    for run_dir in sorted(p for p in Path(out).iterdir() if p.is_dir()):
        config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
        if not (config_path.is_file() and metrics_path.is_file()):
            continue
        records = read_records(metrics_path)
        if not records:
            continue
        config = _read_config(config_path)
        for line, record in enumerate(records, 1):
            missing = [key for key in record_keys if key not in record] if isinstance(record, dict) else ["all"]
            if missing:
                raise ValueError(f"{metrics_path}: line {line} lacks {', '.join(missing)}; the metrics file is "
                                 "damaged: restore it, or train the run again (growbatch run ... --force)")
        runs.append({"name": run_dir.name, "config": config, "records": records,
                     "schedule": config["schedule"].get("name", "custom"), "optimizer": config["optimizer"],
                     "seed": config["seed"]})
    if not runs:
        raise ValueError(f"{out} holds no run with metrics (looked for */config.json and */metrics.jsonl)")
    return runs


def _read_config(path: Path) -> dict:
    """A run's ``config.json``, checked for what the report reads of it."""
    def damaged(what: str) -> ValueError:
        return ValueError(f"{path} {what}; the run's config is damaged: restore it, or train the run again "
                          "(growbatch run ... --force)")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise damaged("is not valid JSON") from None
    if not isinstance(config, dict):
        raise damaged(f"holds a {type(config).__name__}, not a JSON object")
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise damaged(f"lacks {', '.join(missing)}")
    phases = config["schedule"].get("phases") if isinstance(config["schedule"], dict) else None
    if not isinstance(phases, list) or not phases:
        raise damaged("has no schedule.phases (a list of one phase or more)")
    for index, phase in enumerate(phases):
        missing = [key for key in PHASE_KEYS if key not in phase] if isinstance(phase, dict) else ["all"]
        if missing:
            raise damaged(f"lacks schedule.phases[{index}].{', '.join(missing)}")
    return config


def _read_manifest(out: Path) -> dict:
    """``experiment.json``, or {} when there is none; a damaged one is named."""
    path = out / "experiment.json"
    if not path.is_file():
        return {}
    try:
        experiment = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        experiment = None
    if not isinstance(experiment, dict):
        raise ValueError(f"{path} is not a JSON object; the experiment's manifest is damaged: delete it (the report "
                         "then lists what the runs recorded), or train the experiment again with --force")
    return experiment


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (schedule, optimizer): mean and spread over seeds of the final numbers, and the
    difference to the optimizer's reference schedule (its first: decay or original), paired by seed."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["schedule"], run["optimizer"])].append(run)
    reference: dict[str, dict[int, dict]] = {}
    for (schedule, optimizer), members in groups.items():
        reference.setdefault(optimizer, {m["seed"]: m for m in members})
    rows = []
    for (schedule, optimizer), members in groups.items():
        last = [m["records"][-1] for m in members]
        final = _mean_std([r["test_acc"] for r in last])
        best = _mean_std([max(x["test_acc"] for x in m["records"]) for m in members])
        wall = _mean_std([r["wall_s"] for r in last])
        ref = reference[optimizer]
        paired = [m["records"][-1]["test_acc"] - ref[m["seed"]]["records"][-1]["test_acc"]
                  for m in members if m["seed"] in ref]
        ref_updates = next(iter(ref.values()))["records"][-1]["updates"]
        delta = _mean_std(paired) if paired else (float("nan"), 0.0)
        rows.append({"schedule": schedule, "optimizer": optimizer, "seeds": len(members),
                     "epochs": last[0]["epoch"] + 1, "final_test_acc": final[0], "final_test_acc_std": final[1],
                     "best_test_acc": best[0], "best_test_acc_std": best[1], "updates": last[0]["updates"],
                     "samples": last[0]["samples"], "wall_s": wall[0], "wall_s_std": wall[1],
                     "allreduces": last[0].get("allreduces", 0), "final_test_acc_delta": delta[0],
                     "final_test_acc_delta_std": delta[1], "updates_ratio": last[0]["updates"] / ref_updates,
                     "reference": next(iter(ref.values()))["schedule"]})
    return rows


def _styles(runs: list[dict]) -> dict[str, dict]:
    schedules = list(dict.fromkeys(r["schedule"] for r in runs))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {s: {"linestyle": _STYLES[i % len(_STYLES)][0], "marker": _STYLES[i % len(_STYLES)][1],
                "color": colors[i % len(colors)], "index": i} for i, s in enumerate(schedules)}


def _by_schedule(runs: list[dict], optimizer: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        if run["optimizer"] == optimizer:
            groups[run["schedule"]].append(run)
    return groups


def _curves(ax, runs: list[dict], x_key: str, y_key: str, optimizer: str, styles: dict[str, dict],
            x_from: float | None = None) -> None:
    """Mean over seeds per schedule (a min..max band with several seeds); ``x_from``: only epochs >= it."""
    for schedule, members in _by_schedule(runs, optimizer).items():
        length = min(len(m["records"]) for m in members)
        first = members[0]["records"]
        keep = [i for i in range(length) if x_from is None or first[i]["epoch"] + 1 >= x_from]
        xs = [first[i]["epoch"] + 1 if x_key == "epoch" else first[i][x_key] for i in keep]
        per_epoch = [[m["records"][i][y_key] for m in members] for i in keep]
        style = styles[schedule]
        step = max(1, len(xs) // 8)
        label = schedule if len(members) == 1 else f"{schedule} (mean of {len(members)} seeds)"
        ax.plot(xs, [statistics.fmean(v) for v in per_epoch], label=label, color=style["color"],
                linestyle=style["linestyle"], marker=style["marker"], markersize=4,
                markevery=(style["index"] % step, step))  # markers offset per schedule: overlaps stay visible
        if len(members) > 1:
            ax.fill_between(xs, [min(v) for v in per_epoch], [max(v) for v in per_epoch], color=style["color"],
                            alpha=0.15)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.5g}"))


def _last_phase_start(runs: list[dict]) -> float:
    """The first epoch (1-based, as plotted) that ends inside the reference schedule's last two phases."""
    phases = runs[0]["config"]["schedule"]["phases"]
    return float(int(phases[max(0, len(phases) - 2)]["start_epoch"]) + 1)


def _schedule_figure(runs: list[dict], styles: dict[str, dict], path: Path) -> None:
    first_of: dict[str, dict] = {}
    for run in runs:
        first_of.setdefault(run["schedule"], run)
    fig, (ax_lr, ax_b) = plt.subplots(1, 2, figsize=(12, 3.8))
    used: set[int] = set()
    for schedule, run in first_of.items():
        phases, style = _realised_phases(run), styles[schedule]
        xs = [p["start_epoch"] for p in phases] + [phases[-1]["end_epoch"]]
        kwargs = {"where": "post", "label": schedule, "color": style["color"], "linestyle": style["linestyle"]}
        ax_lr.step(xs, [p["lr"] for p in phases] + [phases[-1]["lr"]], **kwargs)
        ax_b.step(xs, [p["batch_size"] for p in phases] + [phases[-1]["batch_size"]], **kwargs)
        used.update(p["batch_size"] for p in phases)
    for ax, label in ((ax_lr, "learning rate"), (ax_b, "batch size")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_b.set_yticks(sorted(used))  # the batch sizes actually used, not only the powers of ten
    ax_b.yaxis.set_minor_locator(NullLocator())
    ax_b.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _realised_phases(run: dict) -> list[dict]:
    """The phases a run followed: its config's schedule, or for an adaptive run the epochs' records."""
    if not run["config"].get("adaptive"):
        return run["config"]["schedule"]["phases"]
    return [{"start_epoch": r["epoch"], "end_epoch": r["epoch"] + 1, "lr": r["lr"], "batch_size": r["batch_size"]}
            for r in run["records"]]


NOISE_SCALE_FIGURE = ("noise_scale.png", "Measured gradient noise scale B_simple against the batch size used, per "
                      "epoch (log scales; on the dashed line the batch equals B_simple; no figure in the paper).")


def _noise_scale_figure(runs: list[dict], styles: dict[str, dict], path: Path) -> bool:
    """B_simple of every epoch against that epoch's batch, per schedule; False (no file) where nothing was measured."""
    measured = [(run, [(r["batch_size"], r["gradient_noise_scale"]) for r in run["records"]
                       if r.get("gradient_noise_scale")]) for run in runs]
    measured = [(run, points) for run, points in measured if points]
    if not measured:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.4))
    labelled: set[str] = set()
    for run, points in measured:
        label, style = f"{run['schedule']} ({run['optimizer']})", styles[run["schedule"]]
        batches, values = zip(*points)
        ax.plot(batches, values, color=style["color"], linestyle=style["linestyle"], marker=style.get("marker", "o"),
                label=None if label in labelled else label, alpha=0.8)
        labelled.add(label)
    every = [v for _, points in measured for point in points for v in point]
    low, high = min(every) / 1.5, max(every) * 1.5
    ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=1)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="gradient noise scale B_simple")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _grid_figure(runs: list[dict], styles: dict[str, dict], path: Path, panels: list[tuple[str, str, bool]],
                 y_key: str, y_label: str, log_y: bool = False) -> None:
    """One row per optimizer; ``panels``: (x key, x label, zoomed on the last phase) per column."""
    optimizers = list(dict.fromkeys(r["optimizer"] for r in runs))
    fig, axes = plt.subplots(len(optimizers), len(panels), figsize=(12, 3.8 * len(optimizers)), squeeze=False)
    zoom_from = _last_phase_start(runs)
    for row, optimizer in zip(axes, optimizers):
        for ax, (x_key, x_label, zoomed) in zip(row, panels):
            _curves(ax, runs, x_key, y_key, optimizer, styles, x_from=zoom_from if zoomed else None)
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label)
            if log_y:
                ax.set_yscale("log")
            ax.set_title(f"{optimizer}" + (f": epochs {zoom_from:g} on (the last two phases)" if zoomed else ""), fontsize=10)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wall_figure(runs: list[dict], styles: dict[str, dict], path: Path) -> None:
    rows = aggregate(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows)), 3.2))
    labels = [f"{r['schedule']}\n{r['optimizer']}" for r in rows]
    errors = [r["wall_s_std"] for r in rows] if any(r["seeds"] > 1 for r in rows) else None
    ax.bar(labels, [r["wall_s"] for r in rows], yerr=errors, capsize=3,
           color=[styles[r["schedule"]]["color"] for r in rows])
    for index, row in enumerate(rows):
        ax.annotate(f"{row['wall_s']:.1f} s", (index, row["wall_s"]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("wall time (s): training + evaluation")
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _figures(runs: list[dict], out: Path) -> None:
    styles = _styles(runs)
    _schedule_figure(runs, styles, out / "schedules.png")
    # linear x axes, as the paper's Figure 5: the updates saved show as a shorter curve
    _grid_figure(runs, styles, out / "train_loss.png", [("epoch", "epoch", False), ("updates", "parameter updates", False)],
                 "train_loss", "training loss", log_y=True)
    _grid_figure(runs, styles, out / "test_acc_epochs.png", [("epoch", "epoch", False), ("epoch", "epoch", True)],
                 "test_acc", "test accuracy")
    _grid_figure(runs, styles, out / "test_acc_updates.png",
                 [("updates", "parameter updates", False), ("updates", "parameter updates", True)],
                 "test_acc", "test accuracy")
    _wall_figure(runs, styles, out / "wall_time.png")


def _spread(mean: float, std: float, seeds: int, scale: float = 100, digits: int = 2, sign: str = "") -> str:
    """``99.15`` with one seed, ``99.15 ± 0.12`` (std over seeds) with several: no ``± 0.00`` that says nothing."""
    text = f"{scale * mean:{sign}.{digits}f}"
    return f"{text} ± {scale * std:.{digits}f}" if seeds > 1 else text


def _tables(runs: list[dict]) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    rows = aggregate(runs)
    several = any(r["seeds"] > 1 for r in rows)
    reduces = any(r["allreduces"] for r in rows)
    agg_head = ["schedule", "optimizer", *(["seeds"] if several else []), "final test acc %",
                "Δ vs reference (pp)", "best test acc %", "updates", "updates vs reference", "samples", "wall s",
                *(["all-reduces"] if reduces else [])]
    agg = []
    for r in rows:
        is_reference = r["schedule"] == r["reference"]
        delta = "reference" if is_reference else _spread(r["final_test_acc_delta"], r["final_test_acc_delta_std"],
                                                          r["seeds"], sign="+")
        agg.append([r["schedule"], r["optimizer"], *([str(r["seeds"])] if several else []),
                    _spread(r["final_test_acc"], r["final_test_acc_std"], r["seeds"]), delta,
                    _spread(r["best_test_acc"], r["best_test_acc_std"], r["seeds"]), f"{r['updates']:,}",
                    "reference" if is_reference else f"{r['updates_ratio']:.0%}", f"{r['samples']:,}",
                    _spread(r["wall_s"], r["wall_s_std"], r["seeds"], scale=1, digits=1),
                    *([f"{r['allreduces']:,}"] if reduces else [])])
    run_head = ["run", "epochs", "final test acc %", "best test acc %", "final train loss", "updates", "samples",
                "wall s"]
    per_run = []
    for run in runs:
        last = run["records"][-1]
        per_run.append([run["name"], str(last["epoch"] + 1), f"{100 * last['test_acc']:.2f}",
                        f"{100 * max(r['test_acc'] for r in run['records']):.2f}", f"{last['train_loss']:.4f}",
                        f"{last['updates']:,}", f"{last['samples']:,}", f"{last['wall_s']:.1f}"])
    return agg_head, agg, run_head, per_run


def settings_used(experiment: dict, runs: list[dict]) -> dict[str, object]:
    """The experiment's settings with the values the runs used in place of the defaults left unset (None)."""
    used = dict(experiment)
    by_optimizer: dict[str, dict] = {}
    for run in runs:
        by_optimizer.setdefault(run["optimizer"], run)  # the first schedule: the reference

    def per_optimizer(value_of) -> str:
        values = {opt: value_of(run) for opt, run in by_optimizer.items()}
        distinct = set(values.values())
        return str(distinct.pop()) if len(distinct) == 1 else ", ".join(f"{k}: {v}" for k, v in values.items())

    if used.get("batch_size") is None:
        used["batch_size"] = per_optimizer(lambda run: run["config"]["schedule"]["phases"][0]["batch_size"])
    if used.get("lr") is None:
        used["lr"] = per_optimizer(lambda run: f"{run['config']['schedule']['phases'][0]['lr']:g}")
    if used.get("max_batch_size") is None:
        used["max_batch_size"] = max(p["batch_size"] for run in runs for p in _realised_phases(run))
    if used.get("ghost_batch_size") is None:
        used["ghost_batch_size"] = per_optimizer(lambda run: run["config"].get("ghost_batch_size") or "off")
    if used.get("micro_batch_size") == "auto":
        sizes = sorted({r.get("micro_batch_size") for run in runs for r in run["records"] if r.get("micro_batch_size")})
        used["micro_batch_size"] = f"auto ({', '.join(map(str, sizes))})" if sizes else "auto"
    if not used:  # no experiment.json: what every run records
        first = runs[0]["config"]
        used = {"dataset": first.get("dataset"), "model": first.get("model")}
    return {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in used.items()}


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
    experiment = _read_manifest(out)
    if experiment.get("experiment") == "lm":
        from .report_lm import build_lm_report  # a language model's figures: loss against tokens (report_lm.py)

        return build_lm_report(out)
    runs = load_runs(out)
    _figures(runs, out)
    agg_head, agg, run_head, per_run = _tables(runs)
    name = experiment.get("experiment", "runs")
    title = f"growbatch: {name} on {experiment.get('dataset', runs[0]['config'].get('dataset', '?'))}"
    setting = ", ".join(f"{k}={v}" for k, v in settings_used(experiment, runs).items())
    captions = figure_captions(name)
    if _noise_scale_figure(runs, _styles(runs), out / NOISE_SCALE_FIGURE[0]):
        captions[NOISE_SCALE_FIGURE[0]] = NOISE_SCALE_FIGURE[1]
    reference = agg and next((r[0] for r in agg if "reference" in r), "")
    summary_title = f"Final results against the reference schedule ({reference})"
    note = ("Δ: final test accuracy minus the reference's, in percentage points"
            + (", mean ± std over seeds (paired by seed)." if "seeds" in agg_head else " (one seed)."))

    md = [f"# {title}", "", f"Settings used: {setting}", "", f"## {summary_title}", "", note, "",
          _markdown_table(agg_head, agg), "", "## Runs", "", _markdown_table(run_head, per_run), ""]
    for file, caption in captions.items():
        md += [f"![{caption}]({file})", "", f"*{caption}*", ""]
    (out / "report.md").write_text("\n".join(md))

    figures_html = "".join(
        f"<figure><img src='data:image/png;base64,{base64.b64encode((out / file).read_bytes()).decode()}' "
        f"alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
        for file, caption in captions.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}th{{background:#f3f3f3}}img{{max-width:100%}}
figure{{margin:2em 0}}figcaption{{color:#555;font-size:90%}}.settings{{color:#555;font-size:90%}}</style></head>
<body><h1>{html.escape(title)}</h1><p class="settings">Settings used: {html.escape(setting)}</p>
<h2>{html.escape(summary_title)}</h2><p>{html.escape(note)}</p>{_html_table(agg_head, agg)}
<h2>Runs</h2>{_html_table(run_head, per_run)}{figures_html}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
