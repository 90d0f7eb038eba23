"""The update planner: what a schedule adds up to, side-by-side comparisons and noise-scale reports.

Everything here returns values or text; the CLI only parses flags and prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..checks import check_batch_size, check_dataset_size, check_lr, check_momentum
from .builders import Conversion, cosine_lr, from_lr_function, multistep_lr
from .noise import (
    batch_size_for_momentum,
    batch_size_for_noise_ratio,
    effective_lr,
    noise_scale,
    noise_scale_approx,
)
from .schedule import Plan

__all__ = [
    "LR_SCHEDULES",
    "convert_lr_schedule",
    "format_table",
    "format_plan_table",
    "comparison_dict",
    "format_comparison",
    "Setting",
    "NoiseReport",
    "noise_report",
    "format_noise_report",
]

LR_SCHEDULES: tuple[str, ...] = ("cosine", "multistep")


def convert_lr_schedule(
    kind: str,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    dataset_size: int,
    momentum: float = 0.0,
    milestones: Sequence[float] = (),
    factor: float = 10.0,
    max_batch_size: int | None = None,
    batch_size_multiple: int = 1,
    drop_last: bool = False,
    exact: bool = False,
    name: str | None = None,
) -> Conversion:
    """The batch-size schedule at equal noise scale for a cosine or multistep LR schedule.

    ``cosine`` anneals ``lr`` to 0 over ``epochs``; ``multistep`` divides it by ``factor``
    at each of ``milestones``. See :func:`growbatch.schedule.builders.from_lr_function`.

    Raises:
        ValueError: an unknown ``kind``, or any bad value :func:`from_lr_function` rejects.
    """
    if kind == "cosine":
        lr_fn = cosine_lr(lr, epochs)
    elif kind == "multistep":
        lr_fn = multistep_lr(lr, milestones, factor)
    else:
        raise ValueError(f"kind should be one of {', '.join(LR_SCHEDULES)}, but got kind={kind!r}")
    return from_lr_function(
        lr_fn, batch_size=batch_size, epochs=epochs, dataset_size=dataset_size, momentum=momentum,
        max_batch_size=max_batch_size, batch_size_multiple=batch_size_multiple, drop_last=drop_last,
        exact=exact, name=name or f"{kind}-converted",
    )


# -- text tables -------------------------------------------------------------------
def _number(value: float) -> str:
    """Four significant digits for small values, thousands separators for large ones."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """Columns separated by two spaces, under a rule of dashes.

    ``align`` has one letter per column, ``l`` or ``r``; by default the first column is
    left-aligned (names) and the others right-aligned (numbers).
    """
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align should be one letter l or r per column ({len(headers)}), but got align={align!r}")
    widths = [max(len(str(r[i])) for r in (headers, *rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def format_plan_table(plan: Plan, max_noise_error: float | None = None) -> str:
    """A plan as a terminal table: one row per phase, then the totals.

    ``max_noise_error`` (from a conversion) adds a line with the rounding error of g.
    """
    last_batch = "dropped" if plan.drop_last else "kept"
    title = f"{plan.name}: N = {plan.dataset_size:,} samples, {plan.epochs} epochs, last partial batch {last_batch}"
    headers = ("start epoch", "end epoch", "lr", "momentum", "batch size", "noise scale g", "updates", "samples")
    rows = [
        (f"{p.start_epoch:g}", f"{p.end_epoch:g}", f"{p.lr:.4g}", ("optimizer's" if p.momentum is None else f"{p.momentum:g}"), f"{p.batch_size:,}",
         _number(p.noise_scale), f"{p.updates:,}", f"{p.samples:,}")
        for p in plan.phases
    ]
    rows.append(("total", "", "", "", "", "", f"{plan.total_updates:,}", f"{plan.total_samples:,}"))
    text = f"{title}\n{format_table(headers, rows)}"
    if max_noise_error is not None:
        text += f"\nlargest noise-scale error from rounding batch sizes: {max_noise_error:.3%}"
    return text


def comparison_dict(plans: Sequence[Plan]) -> dict:
    """Several plans and the ratio of each one's updates to the first one's."""
    if not plans:
        raise ValueError("a comparison needs at least one plan, but got none")
    first = plans[0].total_updates
    return {
        "plans": [p.to_dict() for p in plans],
        "update_ratios": [p.total_updates / first for p in plans],
    }


def format_comparison(plans: Sequence[Plan]) -> str:
    """Plans side by side: batch sizes, total updates and samples, and updates relative to the first."""
    ratios = comparison_dict(plans)["update_ratios"]
    headers = ("schedule", "epochs", "batch sizes", "lr", "updates", "samples", f"updates / {plans[0].name}")
    rows = []
    for plan, ratio in zip(plans, ratios):
        batches = " -> ".join(f"{b:,}" for b in _distinct(p.batch_size for p in plan.phases))
        lrs = " -> ".join(f"{lr:.4g}" for lr in _distinct(p.lr for p in plan.phases))
        rows.append((plan.name, str(plan.epochs), batches, lrs, f"{plan.total_updates:,}",
                     f"{plan.total_samples:,}", f"{ratio:.3f}"))
    return format_table(headers, rows, align="lrllrrr")


def _distinct(values) -> list:
    """``values`` without consecutive repeats."""
    out: list = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


# -- noise-scale reports -----------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """A (lr, batch size, momentum) with the exact noise scale g it gives, and the rule that led to it."""

    rule: str
    lr: float
    batch_size: int
    momentum: float
    noise_scale: float


@dataclass(frozen=True)
class NoiseReport:
    """The noise scale of one setting, and the settings that keep or divide it (§2-§3, §5.2)."""

    lr: float
    batch_size: int
    dataset_size: int
    momentum: float
    effective_lr: float  # eps/(1-m)
    noise_scale: float  # exact, eps/(1-m) * (N/B - 1)
    noise_scale_approx: float  # eps*N / (B(1-m))
    factor: float
    batch_size_divide_exact: float  # the batch that divides g by `factor` at fixed lr, from N/B - 1
    batch_size_divide_approx: float  # the same from the B << N rule B * factor
    equivalents: tuple[Setting, ...]  # other settings with the same exact g

    def to_dict(self) -> dict:
        return asdict(self)


def _equal_noise_lr(g: float, batch_size: int, dataset_size: int, momentum: float) -> float:
    """The lr that gives exact noise scale ``g`` at this batch size and momentum."""
    return g * (1.0 - momentum) / (dataset_size / batch_size - 1.0)


def noise_report(
    lr: float,
    batch_size: int,
    dataset_size: int,
    momentum: float = 0.0,
    *,
    factor: float = 5.0,
    batch_multipliers: Sequence[int] = (2, 5, 10),
    momenta: Sequence[float] = (0.0, 0.9, 0.95, 0.98),
) -> NoiseReport:
    """g, its approximation, the effective lr, and equivalent settings.

    Equivalent settings keep the exact g: the batch times each of ``batch_multipliers``
    with the lr scaled (B ∝ eps), and each other momentum in ``momenta`` with the batch
    scaled by (1-m)/(1-m') (B ∝ 1/(1-m)) and the lr fine-tuned for the rounded batch.
    Settings that would need a batch of N or more are left out.

    Example:
        >>> r = noise_report(0.1, 128, 50_000, momentum=0.9)
        >>> round(r.noise_scale, 3), round(r.noise_scale_approx, 3), round(r.batch_size_divide_exact, 1)
        (389.625, 390.625, 633.5)
    """
    lr = check_lr(lr)
    n = check_dataset_size(dataset_size)
    batch_size = check_batch_size(batch_size, n)
    momentum = check_momentum(momentum)
    factor = check_lr(factor, "factor")
    if factor <= 1:
        raise ValueError(f"factor should be a number greater than 1, but got factor={factor:g}")
    if batch_size == n:
        raise ValueError(f"batch_size should be below the data set size {n} for a noise report "
                         f"(g = 0 at B = N), but got batch_size={batch_size}")
    g = noise_scale(lr, batch_size, n, momentum)
    rows = [Setting("as given", lr, batch_size, momentum, g)]
    for k in batch_multipliers:
        if k * batch_size < n:
            new_lr = _equal_noise_lr(g, k * batch_size, n, momentum)
            rows.append(Setting(f"batch x{k}, lr scaled", new_lr, k * batch_size, momentum,
                                noise_scale(new_lr, k * batch_size, n, momentum)))
    for m in momenta:
        new_batch = round(batch_size_for_momentum(batch_size, momentum, m))
        if m != momentum and 1 <= new_batch < n:
            new_lr = _equal_noise_lr(g, new_batch, n, m)
            rows.append(Setting(f"momentum {m:g}, batch x(1-m)/(1-m')", new_lr, new_batch, m,
                                noise_scale(new_lr, new_batch, n, m)))
    return NoiseReport(
        lr, batch_size, n, momentum, effective_lr(lr, momentum), g,
        noise_scale_approx(lr, batch_size, n, momentum), factor,
        batch_size_for_noise_ratio(batch_size, n, 1.0 / factor, exact=True),
        batch_size_for_noise_ratio(batch_size, n, 1.0 / factor, exact=False),
        tuple(rows),
    )


def format_noise_report(report: NoiseReport) -> str:
    """A noise report as text: the three numbers, the batch that divides g, the equivalent settings."""
    r = report
    lines = [
        f"lr {r.lr:g}, batch size {r.batch_size:,}, momentum {r.momentum:g}, N = {r.dataset_size:,} samples",
        f"noise scale g = lr/(1-m) * (N/B - 1) = {r.noise_scale:.6g}",
        f"approximation  lr*N / (B(1-m))      = {r.noise_scale_approx:.6g}",
        f"effective lr   lr/(1-m)             = {r.effective_lr:.6g}",
        f"batch size that divides g by {r.factor:g} at this lr: {r.batch_size_divide_exact:,.1f} exact, "
        f"{r.batch_size_divide_approx:,.1f} by the B << N rule",
        "",
        "settings with the same noise scale:",
    ]
    rows = [(s.rule, f"{s.lr:.4g}", f"{s.momentum:g}", f"{s.batch_size:,}", f"{s.noise_scale:.6g}") for s in r.equivalents]
    lines.append(format_table(("rule", "lr", "momentum", "batch size", "noise scale g"), rows))
    return "\n".join(lines)
