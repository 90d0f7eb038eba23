"""Conversion rules: linear (SGD, the paper), square root (Adam) and Seesaw, as arithmetic and through the CLI."""

from __future__ import annotations

import math

import pytest

from growbatch import step_schedule
from growbatch.cli import main
from growbatch.training.experiments import run_configs
from growbatch.training.settings import ExperimentConfig

COMMON = dict(lr=1e-3, batch_size=16, epochs=6, milestones=(2, 4), factor=4, dataset_size=1442, momentum=0.9)


def _phases(rule: str, **changes) -> list[tuple[float, int]]:
    return [(p.lr, p.batch_size) for p in step_schedule("increase", rule=rule, **{**COMMON, **changes}).phases]


def test_each_rule_takes_its_batch_step_and_the_lr_supplies_the_rest_at_the_cap() -> None:
    # cap N/10 = 144; linear: B x4 then capped (144/64 = 2.25 of 4: lr x 2.25/4)
    assert _phases("linear") == [(1e-3, 16), (1e-3, 64), (pytest.approx(1e-3 * 2.25 / 4), 144)]
    # sqrt: B x16 = 256 passes the cap: 144 = x9 stands for lr / 3, so lr x 3/4; then lr / 4
    assert _phases("sqrt") == [(1e-3, 16), (pytest.approx(1e-3 * 3 / 4), 144), (pytest.approx(1e-3 * 3 / 16), 144)]
    # seesaw: lr / 2 with B x4; then B x2.25 (lr / 1.5 by the sqrt rule), lr x 1.5/4
    assert _phases("seesaw") == [(1e-3, 16), (pytest.approx(5e-4), 64), (pytest.approx(5e-4 * 1.5 / 4), 144)]


@pytest.mark.parametrize("rule", ["sqrt", "seesaw"])
def test_the_sqrt_rules_keep_lr_over_root_batch_falling_by_the_factor_at_each_milestone(rule: str) -> None:
    """Without a cap, lr/sqrt(B) (the sqrt rule's invariant at fixed momentum) falls by exactly 4 per milestone."""
    phases = step_schedule("increase", rule=rule, max_batch_size=1442, **{**COMMON, "dataset_size": 1442}).phases
    ratios = [(a.lr / math.sqrt(a.batch_size)) / (b.lr / math.sqrt(b.batch_size)) for a, b in zip(phases, phases[1:])]
    assert ratios == [pytest.approx(4.0), pytest.approx(4.0)]
    expected_batches = [16, 256, 1442] if rule == "sqrt" else [16, 64, 256]
    assert [p.batch_size for p in phases] == expected_batches


def test_bad_rules_are_named() -> None:
    with pytest.raises(ValueError, match="rule should be one of linear, sqrt, seesaw, but got rule='cubic'"):
        step_schedule("increase", rule="cubic", **COMMON)
    with pytest.raises(ValueError, match="exact=True .* rule='sqrt' cannot be combined"):
        step_schedule("increase", rule="sqrt", exact=True, **COMMON)
    with pytest.raises(ValueError, match="paper-5.2 scales .* --rules sqrt applies to compare only"):
        ExperimentConfig(experiment="paper-5.2", rules=("sqrt",))
    with pytest.raises(ValueError, match="rules should name distinct rules of linear, sqrt, seesaw, but got sqrt, sqrt"):
        ExperimentConfig(rules=("sqrt", "sqrt"))


def test_adam_defaults_to_the_square_root_rule_and_sgd_to_the_linear_one() -> None:
    runs = run_configs(ExperimentConfig(optimizers=("momentum", "adam"), epochs=6), 1442)
    increase = {r.optimizer: r.schedule for r in runs if r.schedule.name == "increase"}
    assert [p.batch_size for p in increase["momentum"].phases] == [8, 40, 144, 144]
    assert [p.batch_size for p in increase["adam"].phases] == [8, 144, 144, 144]  # x25 = 200 passes the cap 144
    seesaw = run_configs(ExperimentConfig(optimizers=("adam",), epochs=6, rules=("seesaw",)), 1442)
    assert [p.batch_size for p in seesaw[2].schedule.phases] == [8, 40, 144, 144]


def test_several_rules_give_one_run_per_rule_named_by_it() -> None:
    config = ExperimentConfig(optimizers=("adam",), epochs=6, schedules=("decay", "increase"),
                              rules=("linear", "sqrt", "seesaw"))
    runs = run_configs(config, 1442)
    assert [r.name for r in runs] == ["decay-adam-seed0", "increase-linear-adam-seed0", "increase-sqrt-adam-seed0",
                                      "increase-seesaw-adam-seed0"]
    assert [[p.batch_size for p in r.schedule.phases] for r in runs[1:]] == [[8, 40, 144, 144], [8, 144, 144, 144],
                                                                              [8, 40, 144, 144]]
    assert runs[3].schedule.phases[1].lr == pytest.approx(1e-3 / 5**0.5)  # seesaw: lr / sqrt(5) with B x5


def test_plan_prints_the_rule_in_the_schedule_name(capsys: pytest.CaptureFixture) -> None:
    args = ["plan", "--lr", "0.001", "--batch-size", "16", "--epochs", "6", "--milestones", "2,4", "--factor", "4",
            "--dataset-size", "1442", "--rule", "sqrt", "--json"]
    assert main(args) == 0
    import json
    plan = json.loads(capsys.readouterr().out)
    assert plan["name"] == "custom-increase-sqrt"
    assert [p["batch_size"] for p in plan["phases"]] == [16, 144, 144]
    assert main([*args[:-3], "--lr-schedule", "cosine", "--rule", "sqrt"]) == 2
    assert "--rule sqrt applies to step schedules" in capsys.readouterr().err


def test_schedules_picks_a_subset_in_the_experiments_order(capsys: pytest.CaptureFixture) -> None:
    runs = run_configs(ExperimentConfig(schedules=("increase", "decay"), seeds=(0, 1)), 1442)
    assert [r.name for r in runs] == ["decay-momentum-seed0", "decay-momentum-seed1", "increase-momentum-seed0",
                                      "increase-momentum-seed1"]
    with pytest.raises(ValueError, match=r"schedules should name distinct schedules of compare \(decay, hybrid, "
                                         r"increase, adaptive\), but got increase-lr"):
        ExperimentConfig(schedules=("increase-lr",))
    assert main(["run", "--schedules", "decay,cosine"]) == 2
    assert "unknown cosine; valid: decay, hybrid, increase, adaptive, original" in capsys.readouterr().err
