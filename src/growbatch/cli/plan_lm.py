"""``growbatch plan lm``: the lm experiment's schedules on the token clock, with tokens and updates for each."""

from __future__ import annotations

import argparse
import dataclasses
import json

from ..schedule.planner import format_table
from ..schedule.tokens import format_tokens
from ..training.lm import lm_plan, lm_schedules
from ..training.settings import ExperimentConfig
from .common import UsageError

__all__ = ["add_lm_plan_flags", "plan_lm"]

# the settings of `growbatch run lm` that `growbatch plan lm` takes too (plan has --lr, --batch-size, --epochs,
# --max-batch-size, --momentum and --lr-schedule of its own)
_LM_FLAGS = ("tokens", "seq_len", "warmup", "batch_schedule", "rampup_batch_size", "optimizers", "schedules", "rules")
_NOT_FOR_LM = ("dataset_size", "milestones", "factor", "mode", "exact", "batch_size_multiple", "rule")


def add_lm_plan_flags(parser: argparse.ArgumentParser) -> None:
    """The lm settings as plan flags, from their fields in training/settings.py."""
    from .run import add_setting_flag  # the run parser's flag builder: one declaration per setting

    group = parser.add_argument_group("lm (growbatch plan lm, with --lr, --batch-size, --epochs, --max-batch-size, "
                                      "--momentum, --lr-schedule cosine|wsd)")
    fields = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
    for name in _LM_FLAGS:
        add_setting_flag(group, fields[name])


def plan_lm(args: argparse.Namespace) -> int:
    """Print (or --json) every lm schedule's batch sizes, lr range, updates, sequences and tokens."""
    given = [f"--{d.replace('_', '-')}" for d in _NOT_FOR_LM if getattr(args, d, None) is not None]
    if given:
        raise UsageError(f"growbatch plan lm takes the flags of growbatch run lm; {', '.join(given)} apply to "
                         "image schedules only")
    if args.lr_schedule not in (None, "cosine", "wsd"):
        raise UsageError(f"--lr-schedule {args.lr_schedule} is not an lm schedule; valid: cosine, wsd")
    config = ExperimentConfig(
        experiment="lm", lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, max_batch_size=args.max_batch_size,
        momentum=0.9 if args.momentum is None else args.momentum, lr_schedule=args.lr_schedule or "cosine",
        **{name: getattr(args, name) for name in _LM_FLAGS})
    rows, data = [], []
    for optimizer in config.optimizers:
        plan, schedules = lm_plan(config, optimizer), lm_schedules(config, optimizer)
        seq_len = plan.clock.seq_len
        reference = next(iter(schedules.values())).plan().total_updates
        for name, schedule in schedules.items():
            p = schedule.plan()
            sizes = list(dict.fromkeys(ph.batch_size for ph in p.phases))
            batches = " -> ".join(map(str, sizes)) if len(sizes) <= 8 else \
                f"{sizes[0]} -> ... ({len(sizes)} sizes) -> {sizes[-1]}"
            lrs = f"{max(ph.lr for ph in p.phases):.3g} .. {min(ph.lr for ph in p.phases):.3g}"
            tokens = p.total_samples * seq_len
            rows.append((f"{name}-{optimizer}", batches, lrs, f"{p.total_updates:,}", f"{p.total_samples:,}",
                         f"{tokens:,} ({format_tokens(tokens)})", f"{p.total_updates / reference:.3f}"))
            data.append({"name": f"{name}-{optimizer}", "updates": p.total_updates, "samples": p.total_samples,
                         "tokens": tokens, "seq_len": seq_len, "plan": p.to_dict()})
    if args.json:
        print(json.dumps({"schedules": data}, indent=2))
        return 0
    print(f"tokens per run {plan.total_tokens:,}: {plan.clock.epochs} epochs x {plan.clock.sequences_per_epoch:,} "
          f"sequences x {seq_len} tokens")
    print(format_table(("schedule", "batch sizes (sequences)", "lr", "updates", "sequences", "tokens",
                        "updates / first"), rows, align="lllrrrr"))
    return 0
