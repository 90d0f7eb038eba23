"""Language models on a token clock: the corpus recipe, the token loader, the GPT, the token schedules and the
lm experiment's counts against the planner (issue 16)."""

from __future__ import annotations

import math
import platform
from pathlib import Path

import pytest
import torch

from growbatch.batching.token_loader import TokenLoader
from growbatch.data.dataset import DataError
from growbatch.data.text import STDLIB_SHA256, build_stdlib_corpus, load_stdlib_corpus, read_text_files
from growbatch.models import build_model
from growbatch.models.gpt import GPT, gpt_config
from growbatch.schedule.builders import from_lr_function
from growbatch.schedule.tokens import (
    TokenClock,
    convert_at_equal_noise,
    fixed_batch,
    lr_function,
    parse_batch_schedule,
    parse_rampup,
    parse_tokens,
    rampup_batches,
    seesaw,
    with_batches,
)
from growbatch.training.distributed import DistInfo
from growbatch.training.lm import lm_plan, lm_run_configs, lm_schedules, run_lm_experiment
from growbatch.training.settings import ExperimentConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "python_stdlib.npz"
if not SHARED.exists():
    SHARED = Path("/work/shared/data/python_stdlib.npz")
CPU = DistInfo(0, 1, 0, torch.device("cpu"))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -- the corpus -------------------------------------------------------------------------------

@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/python_stdlib.npz is not here")
def test_the_shared_file_has_the_readme_checksums() -> None:
    corpus = load_stdlib_corpus(SHARED.parent)
    assert corpus.sha256() == STDLIB_SHA256
    assert (corpus.train_tokens, corpus.val_tokens) == (10_560_443, 505_740)


@pytest.mark.skipif(platform.python_version() != "3.11.7", reason="the shared file is CPython 3.11.7's library")
def test_the_self_built_corpus_is_the_shared_file_byte_for_byte_on_python_3_11_7(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = build_stdlib_corpus()
    assert (len(arrays["train_files"]), len(arrays["val_files"])) == (567, 34)
    monkeypatch.setenv("GROWBATCH_DATA_DIR", str(tmp_path))  # a default data folder without the file
    corpus = load_stdlib_corpus(None)  # no data dir given: built from the running Python's library
    assert corpus.sha256() == STDLIB_SHA256
    assert "self-built" in corpus.source


def test_a_folder_of_text_files_is_joined_in_path_order_with_separators(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("bbbb")
    (tmp_path / "a.txt").write_text("aé")  # two UTF-8 bytes for é
    corpus = read_text_files(tmp_path, validation_fraction=0.25)
    stream = bytes(torch.cat([corpus.train, corpus.val]).tolist())
    assert stream == "aé".encode() + b"\0bbbb\0"
    assert corpus.val_tokens == 2  # the last quarter of 9 bytes, rounded down


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing.txt", "does not exist"),
    (lambda p: (p / "empty.txt").write_bytes(b"") and None or p / "empty.txt", "is empty"),
    (lambda p: (p / "x.bin").write_bytes(b"ab\0cd") and None or p / "x.bin", "binary file"),
    (lambda p: (p / "latin1.txt").write_bytes("caf\xe9".encode("latin-1")) and None or p / "latin1.txt",
     "not UTF-8"),
    (lambda p: (p / "d").mkdir() or p / "d", "empty folder"),
])
def test_bad_text_files_are_refused_by_name(tmp_path: Path, make, match: str) -> None:
    with pytest.raises(DataError, match=match):
        read_text_files(make(tmp_path))


# -- the token loader -------------------------------------------------------------------------

def test_token_loader_epochs_are_successive_intervals_of_the_stream() -> None:
    stream = torch.arange(50)
    loader = TokenLoader(stream, 4, 3, sequences_per_epoch=6, shuffle=False)
    first = [x for x, _ in loader]
    second = [x for x, _ in loader]
    assert [len(x) for x in first] == [3, 3]
    assert first[0][:, 0].tolist() == [0, 4, 8] and second[0][:, 0].tolist() == [24, 28, 32]
    x, y = loader.windows(0, torch.tensor([1]))
    assert x.tolist() == [[4, 5, 6, 7]] and y.tolist() == [[5, 6, 7, 8]]  # targets: the next tokens
    assert loader.windows(2, torch.tensor([0]))[0][0, 0].item() == (12 % 12) * 4  # 12 sequences: wraps round


def test_two_ranks_share_each_batch_of_one() -> None:
    stream = torch.randint(0, 256, (1000,), generator=torch.Generator().manual_seed(0))
    one = [x for x, _ in TokenLoader(stream, 8, 5, sequences_per_epoch=40, seed=3)]
    ranks = [[x for x, _ in TokenLoader(stream, 8, 5, sequences_per_epoch=40, seed=3, rank=r, world_size=2)]
             for r in (0, 1)]
    assert all(torch.equal(torch.cat([a, b]), whole) for whole, a, b in zip(one, *ranks))


# -- the model --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, parameters", [("gpt-tiny", 1_040_768), ("gpt-small", 9_987_200)])
def test_gpt_sizes(name: str, parameters: int) -> None:
    model = GPT(gpt_config(name))
    assert sum(p.numel() for p in model.parameters()) == parameters  # tied: the output layer adds no weights
    assert model.token_embedding.weight.data_ptr() == next(model.parameters()).data_ptr()


def test_gpt_is_causal() -> None:
    torch.manual_seed(0)
    model = GPT(gpt_config("gpt-tiny", max_seq_len=16)).eval()
    tokens = torch.randint(0, 256, (2, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 256
    with torch.no_grad():
        assert torch.allclose(model(tokens)[:, :10], model(changed)[:, :10], atol=1e-6)
        assert not torch.allclose(model(tokens)[:, 10:], model(changed)[:, 10:])


def test_a_language_model_is_not_an_image_model() -> None:
    with pytest.raises(ValueError, match="gpt-tiny is a language model"):
        build_model("gpt-tiny", in_channels=1, num_classes=10, image_size=8)


# -- schedules on the token clock ---------------------------------------------------------------

@pytest.mark.parametrize("text, tokens", [("4096", 4096), ("512k", 512_000), ("2M", 2_000_000), ("1.5M", 1_500_000)])
def test_parse_tokens(text: str, tokens: int) -> None:
    assert parse_tokens(text) == tokens


@pytest.mark.parametrize("text, match", [
    ("16,32", "TOKENS:BATCH pairs"), ("0:16,2M:x", "TOKENS:BATCH pairs"), ("1M:16,2M:32", "start at token 0"),
    ("0:16,2M:8", "should increase"), ("0:16,2M:32,1M:64", "should increase"), ("", "start at token 0"),
])
def test_bad_batch_schedules_are_refused(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_batch_schedule(text)


def test_batch_schedule_and_rampup_parse() -> None:
    assert parse_batch_schedule("0:16,2M:32,6M:64") == ((0, 16), (2_000_000, 32), (6_000_000, 64))
    assert parse_rampup("16 16 2000") == parse_rampup("16,16,2000") == (16, 16, 2000)
    with pytest.raises(ValueError, match="START INCREMENT SAMPLES"):
        parse_rampup("16 16")


def test_rampup_is_megatrons_arithmetic() -> None:
    # (128 - 32) / 32 = 3 increments over 900 samples: one every 300
    assert rampup_batches(32, 32, 900, 128) == [(0, 32), (300, 64), (600, 96), (900, 128)]
    with pytest.raises(ValueError, match="multiple of INCREMENT"):
        rampup_batches(32, 20, 900, 128)


CLOCK = TokenClock(seq_len=32, sequences_per_epoch=400, epochs=4)
COSINE = lr_function("cosine", 1e-3, 4, 0.05)


def test_the_linear_conversion_is_from_lr_function() -> None:
    ours = convert_at_equal_noise(COSINE, batch_size=8, max_batch_size=64, clock=CLOCK, rule="linear")
    theirs = from_lr_function(COSINE, batch_size=8, epochs=4, dataset_size=400, max_batch_size=64,
                              points_per_epoch=16).schedule
    assert [(p.start_epoch, p.end_epoch, p.batch_size) for p in ours.phases] == \
        [(p.start_epoch, p.end_epoch, p.batch_size) for p in theirs.phases]
    assert [p.lr for p in ours.phases] == pytest.approx([p.lr for p in theirs.phases], rel=1e-12)  # one ulp apart


def test_the_sqrt_conversion_squares_the_lr_ratio_and_keeps_lr_over_sqrt_b_at_the_cap() -> None:
    schedule = convert_at_equal_noise(COSINE, batch_size=8, max_batch_size=64, clock=CLOCK, rule="sqrt")
    for phase in schedule.phases:
        t = phase.start_epoch
        peak = max(COSINE(k / 16) for k in range(int(round(t * 16)) + 1))
        if phase.batch_size < 64:
            assert phase.lr == peak and phase.batch_size == round(8 * (peak / COSINE(t)) ** 2)
        else:  # lr / sqrt(B) equals the lr schedule's at batch 8
            assert phase.lr / math.sqrt(64) == pytest.approx(COSINE(t) / math.sqrt(8))


def test_seesaw_doubles_the_batch_and_divides_the_lr_by_sqrt_2() -> None:
    schedule = seesaw(COSINE, batch_size=8, max_batch_size=64, clock=CLOCK)
    steps = [(p.batch_size, p.lr) for p in schedule.phases if p.start_epoch > 0.2]  # after the warm-up
    batches = [b for b, _ in steps]
    assert batches[0] == 8 and set(batches) <= {8, 16, 32, 64} and batches == sorted(batches)
    peak = max(COSINE(k / 16) for k in range(4 * 16))  # the largest sampled lr (just after the warm-up)
    for batch, lr in steps:
        if batch < 64:
            assert lr == pytest.approx(peak / math.sqrt(batch / 8), rel=1e-12)


def test_every_lm_schedule_trains_the_same_tokens() -> None:
    ramp = [(CLOCK.epoch_of_samples(s), b) for s, b in rampup_batches(8, 8, 800, 64)]
    steps = [(CLOCK.epoch_of_tokens(t), b) for t, b in parse_batch_schedule("0:8,10k:16,30k:32")]
    schedules = [fixed_batch(COSINE, batch_size=8, clock=CLOCK),
                 convert_at_equal_noise(COSINE, batch_size=8, max_batch_size=64, clock=CLOCK, rule="sqrt"),
                 seesaw(COSINE, batch_size=8, max_batch_size=64, clock=CLOCK),
                 with_batches(COSINE, ramp, clock=CLOCK), with_batches(COSINE, steps, clock=CLOCK)]
    assert {s.plan().total_samples * CLOCK.seq_len for s in schedules} == {4 * 400 * 32}
    # the step list: 10k tokens = 312.5 sequences -> batch 16 from sample 313 (rounded up to a whole sample)
    assert schedules[-1].batch_size_at(0, 312) == 8 and schedules[-1].batch_size_at(0, 313) == 16
    assert fixed_batch(COSINE, batch_size=8, clock=CLOCK).plan().total_updates == 4 * 400 // 8


def test_lm_plan_rounds_tokens_down_to_whole_sequences_per_epoch() -> None:
    plan = lm_plan(ExperimentConfig(experiment="lm", tokens=parse_tokens("100k"), epochs=4, seq_len=64), "adamw")
    assert plan.clock.sequences_per_epoch == 100_000 // (4 * 64) and plan.total_tokens == 390 * 4 * 64
    assert (plan.batch_size, plan.max_batch_size, plan.lr) == (16, 128, 2e-3)
    with pytest.raises(ValueError, match="--batch-size 500 is more than the 390 sequences"):
        lm_plan(ExperimentConfig(experiment="lm", tokens=100_000, epochs=4, seq_len=64, batch_size=500), "adamw")


# -- the experiment, end to end -----------------------------------------------------------------

TINY = dict(experiment="lm", tokens=4096, epochs=2, seq_len=16, batch_size=4, max_batch_size=16,
            micro_batch_size=4, schedules=("decay", "converted", "rampup", "steps"),
            batch_schedule=((0, 4), (1024, 8)), seeds=(0,))


def test_lm_runs_count_the_planners_tokens_and_updates(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("def f(x):\n    return x + 1\n" * 400)
    config = ExperimentConfig(**TINY, text_file=str(tmp_path / "corpus.txt"))
    summary = run_lm_experiment(config, tmp_path / "out", info=CPU)
    runs = {run.name: run for run in lm_run_configs(config)}
    assert [r["name"] for r in summary["runs"]] == list(runs)
    for row in summary["runs"]:
        plan = runs[row["name"]].schedule.plan()
        assert row["updates"] == row["planned_updates"] == plan.total_updates
        assert row["tokens"] == plan.total_samples * 16 == 4096 // (2 * 16) * 2 * 16
        assert row["final_test_bpb"] == pytest.approx(row["final_test_loss"] / math.log(2))
    records = [line for line in (tmp_path / "out" / "decay-adamw-seed0" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all('"tokens"' in r and '"test_bpb"' in r for r in records)
    assert summary["runs"][0]["updates"] == 4096 // 16 // 4  # decay: 256 sequences in batches of 4
    assert lm_schedules(config, "adamw")["steps"].batch_size_at(0, 64) == 8  # 1024 tokens = 64 sequences


@pytest.mark.parametrize("kwargs, match", [
    (dict(experiment="lm", dataset="mnist"), "trains a language model on text"),
    (dict(dataset="python-stdlib"), "is text, for growbatch run lm"),
    (dict(experiment="lm", model="wrn-16-4"), "is an image model"),
    (dict(model="gpt-small"), "is a language model"),
    (dict(experiment="lm", schedules=("steps",)), "--batch-schedule"),
    (dict(tokens=4096), "applies to growbatch run lm only"),
    (dict(experiment="lm", dataset="text"), "reads --text-file"),
])
def test_task_and_data_must_match(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**kwargs)


def test_a_long_batch_in_micro_batches_has_the_whole_batchs_gradient() -> None:
    from growbatch.batching.microbatch import MicroBatcher
    from growbatch.data.text import TextCorpus
    from growbatch.training.lm_task import LanguageModelTask

    stream = torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    task = LanguageModelTask(TextCorpus(stream, stream[:500], "random"), seq_len=16, sequences_per_epoch=64,
                             eval_sequences=8)
    inputs, targets = TokenLoader(stream, 16, 12, sequences_per_epoch=64).windows(0, torch.arange(12))
    grads = []
    for micro in (12, 5):  # one pass, or 5 + 5 + 2
        torch.manual_seed(0)
        model = GPT(gpt_config("gpt-tiny", max_seq_len=16))
        result = MicroBatcher(model, loss=task.loss, micro_batch_size=micro).backward(
            inputs, targets, global_batch_size=12)
        grads.append([p.grad.clone() for p in model.parameters()])
        assert result.micro_batches == -(-12 // micro) and result.samples == 12
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(*grads))


@pytest.mark.parametrize("kwargs, match", [
    (dict(train_size=100), "--train-size applies to image experiments"),
    (dict(ghost_batch_size=0), "--ghost-batch-size applies to image experiments"),
    (dict(rules=("linear", "sqrt")), "one rule, linear or sqrt"),
    (dict(rules=("seesaw",)), "one rule, linear or sqrt"),
])
def test_image_settings_are_refused_by_lm(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(experiment="lm", **kwargs)


def test_a_data_dir_without_the_shared_file_warns_and_builds_the_corpus(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="python_stdlib.npz is not in"):
        corpus = load_stdlib_corpus(tmp_path)
    assert "self-built" in corpus.source and corpus.train_tokens > 0
