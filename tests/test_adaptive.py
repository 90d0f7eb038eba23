"""The adaptive rule on values: the batch follows k·B_simple, never shrinks, stays whole, and the lr takes over at the cap."""

from __future__ import annotations

import pytest

from growbatch.schedule.adaptive import AdaptiveBatch
from growbatch.schedule.schedule import Phase, Schedule

START = Schedule((Phase(0, 6, 0.1, 16, 0.9),), dataset_size=1442, name="adaptive")


def _rows(schedule: Schedule) -> list[tuple]:
    return [(p.start_epoch, p.end_epoch, p.lr, p.batch_size) for p in schedule.phases]


def test_the_batch_tracks_the_measured_noise_scale_in_whole_multiples_and_never_shrinks() -> None:
    rule = AdaptiveBatch(noise_multiple=1.0, max_batch_size=144, multiple=16)
    after_0 = rule.extend(START, 0, 50.0)  # 50 -> 48 (3 x 16)
    assert _rows(after_0) == [(0, 1, 0.1, 16), (1, 6, 0.1, 48)]
    after_1 = rule.extend(after_0, 1, 20.0)  # a smaller measurement: the batch stays
    assert after_1 == after_0
    after_2 = rule.extend(after_1, 2, 100.0)  # 100 -> 96
    assert _rows(after_2) == [(0, 1, 0.1, 16), (1, 3, 0.1, 48), (3, 6, 0.1, 96)]
    assert rule.extend(after_2, 5, 1000.0) == after_2  # after the last epoch: nothing to change


def test_past_the_cap_the_lr_falls_by_cap_over_target_and_never_rises() -> None:
    rule = AdaptiveBatch(noise_multiple=2.0, max_batch_size=144, multiple=16)  # cap: 144 = 9 x 16
    capped = rule.extend(START, 0, 144.0)  # target 288: batch 144, lr 0.1 * 144/288
    assert _rows(capped) == [(0, 1, 0.1, 16), (1, 6, pytest.approx(0.05), 144)]
    lower_target = rule.extend(capped, 1, 90.0)  # target 180: lr would be 0.08 > 0.05: it stays
    assert lower_target == capped


def test_an_unmeasured_epoch_keeps_the_schedule_and_bad_settings_are_named() -> None:
    rule = AdaptiveBatch(max_batch_size=144, multiple=8)
    assert rule.extend(START, 0, None) is START and rule.extend(START, 0, float("nan")) is START
    with pytest.raises(ValueError, match="noise_multiple should be a positive number, but got noise_multiple=0.0"):
        AdaptiveBatch(noise_multiple=0.0, max_batch_size=144)
    with pytest.raises(ValueError, match="multiple should be a positive integer value, but got multiple=0"):
        AdaptiveBatch(max_batch_size=144, multiple=0)


# -- through the Trainer: realised, saved, replayed ------------------------------------------------

def _adaptive_run():
    from growbatch.data import load_dataset
    from growbatch.training.experiments import run_configs
    from growbatch.training.settings import ExperimentConfig
    from growbatch.training.task import ClassificationTask

    dataset = load_dataset("digits")
    config = ExperimentConfig(schedules=("adaptive",), epochs=4, batch_size=16, ghost_batch_size=4,
                              micro_batch_size=8)
    (run,) = run_configs(config, dataset.train_size)
    return run, ClassificationTask(dataset)


def test_an_adaptive_run_grows_its_batch_with_the_measured_noise_scale_and_counts_its_updates(tmp_path) -> None:
    from growbatch.training.distributed import DistInfo
    from growbatch.training.runfiles import train_run

    run, task = _adaptive_run()
    assert run.adaptive == AdaptiveBatch(noise_multiple=1.0, max_batch_size=144, multiple=8)  # lcm(ghost 4, micro 8)
    assert run.settings.noise_scale == "split"
    records = list(train_run(run, task, tmp_path / "run", info=DistInfo()))
    batches = [r["batch_size"] for r in records]
    assert batches[0] == 16 and batches == sorted(batches) and batches[-1] > 16
    assert all(b % 8 == 0 and b <= 144 for b in batches)
    for before, record in zip(records, records[1:]):  # each epoch's batch: its predecessor's measurement, whole
        wanted = 8 * round(before["gradient_noise_scale"] / 8)
        assert record["batch_size"] == min(144, max(before["batch_size"], wanted))
    expected = sum(-(-1442 // b) for b in batches)  # the last partial batch of each epoch kept
    assert records[-1]["updates"] == expected


@pytest.mark.parametrize("stop_after", [40, 100])  # in the first epoch; after the batch first grew
def test_a_stopped_adaptive_run_resumes_on_its_realised_schedule_bit_identically(stop_after: int, tmp_path) -> None:
    import torch

    from growbatch.training.checkpoint import load_checkpoint
    from growbatch.training.distributed import DistInfo
    from growbatch.training.runfiles import train_run
    from growbatch.training.trainer import Interrupted, StopFlag

    class StopAt:
        def __init__(self, stop: StopFlag) -> None:
            self.stop = stop

        def epoch_started(self, *args) -> None: ...

        def update_done(self, trainer) -> None:
            self.stop.requested = trainer.state.updates == stop_after

        def epoch_ended(self, *args) -> None: ...

    run, task = _adaptive_run()
    whole = list(train_run(run, task, tmp_path / "whole", info=DistInfo()))
    stop = StopFlag()
    with pytest.raises(Interrupted):
        list(train_run(run, _adaptive_run()[1], tmp_path / "cut", info=DistInfo(), stop=stop, observer=StopAt(stop)))
    resumed = list(train_run(run, _adaptive_run()[1], tmp_path / "cut", info=DistInfo(), resume=True))
    timing = ("wall_s", "size_search_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in timing} for r in whole]
    a, b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt"), load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    assert a["schedule"] == b["schedule"] and len(a["schedule"]["phases"]) > 1
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_sampler_and_a_scheduler_take_a_new_schedule_only_if_it_keeps_what_was_trained() -> None:
    import torch

    from growbatch import BatchSizeScheduler, DynamicBatchSampler

    sampler = DynamicBatchSampler(1442, START, seed=0)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    scheduler = BatchSizeScheduler(sampler, optimizer, START)
    for _ in range(-(-1442 // 16)):  # epoch 0, whole
        scheduler.step()
    grown = AdaptiveBatch(max_batch_size=144, multiple=16).extend(START, 0, 64.0)
    scheduler.set_schedule(grown)
    assert scheduler.get_last_batch_size() == 64 and optimizer.param_groups[0]["lr"] == 0.1
    rewritten = Schedule((Phase(0, 6, 0.1, 32, 0.9),), dataset_size=1442)
    with pytest.raises(ValueError, match="should keep the data set, drop_last and every phase before epoch 1"):
        scheduler.set_schedule(rewritten)
    list(sampler)  # the sampler cuts epoch 0
    with pytest.raises(ValueError, match="every phase before epoch 1"):
        sampler.set_schedule(rewritten)
    sampler.set_schedule(grown)
    assert [len(batch) for batch in sampler][:2] == [64, 64]  # epoch 1 at the new size


def test_the_report_shows_the_realised_adaptive_batch_and_the_measured_noise_scale(tmp_path) -> None:
    import json

    from growbatch.cli import main

    out = tmp_path / "out"
    assert main(["run", "--schedules", "decay,adaptive", "--epochs", "3", "--batch-size", "16", "--ghost-batch-size",
                 "4", "--micro-batch-size", "8", "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "adaptive-momentum-seed0" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    adaptive = next(r for r in summary["runs"] if r["schedule"] == "adaptive")
    assert adaptive["updates"] == adaptive["planned_updates"] == sum(-(-1442 // r["batch_size"]) for r in records)
    assert records[-1]["batch_size"] > 16  # it grew
    page = (out / "report.html").read_text()
    assert (out / "noise_scale.png").stat().st_size > 0 and "Measured gradient noise scale" in page
    assert page.count("<img src='data:image/png;base64,") == 6  # the five of every report and the noise scale
