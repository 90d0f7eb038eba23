"""growbatch.integrations.huggingface against the real transformers Trainer: exact updates, resumes, epochs, micro-batches."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", minversion="5.0")
pytest.importorskip("accelerate")
hf = pytest.importorskip("growbatch.integrations.huggingface")

from transformers.modeling_outputs import SequenceClassifierOutput  # noqa: E402

from growbatch.batching.sampler import derive_seed  # noqa: E402
from growbatch.schedule import Phase, Schedule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N = 600
# 3 epochs, a batch change in the middle of epoch 1 (epoch 1.5 = position 300) and one at epoch 2
SCHEDULE = Schedule((Phase(0, 1.5, 0.1, 20, 0.9), Phase(1.5, 2, 0.05, 60, 0.9), Phase(2, 3, 0.05, 200, 0.5)),
                    dataset_size=N)
PLAN_UPDATES = 30 + (15 + 5) + 3  # 600/20, 300/20 + 300/60, 600/200


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Digits(torch.utils.data.Dataset):
    """N of sklearn's digits as dicts: pixels, labels and the sample's index (so a test sees what trained)."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        self.pixels = torch.tensor(data.data[:N] / 16.0, dtype=torch.float32)
        self.labels = torch.tensor(data.target[:N])

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict:
        return {"pixels": self.pixels[i], "labels": self.labels[i], "index": i}


class DigitsConfig(transformers.PretrainedConfig):
    model_type = "growbatch-digits"

    def __init__(self, hidden: int = 32, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden = hidden


class DigitsModel(transformers.PreTrainedModel):
    """A small PreTrainedModel built from its config; records the samples of every training forward."""

    config_class = DigitsConfig

    def __init__(self, config: DigitsConfig) -> None:
        super().__init__(config)
        self.net = nn.Sequential(nn.Linear(64, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 10))
        self.trained: list[list[int]] = []
        self.post_init()

    def forward(self, pixels, labels=None, index=None):
        if self.training and index is not None:
            self.trained.append(index.tolist())
        logits = self.net(pixels)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def trainer(tmp_path, *, workers=0, micro_batch_size=None, save_steps=None, **overrides):
    torch.manual_seed(0)
    model = DigitsModel(DigitsConfig())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=3, seed=3, report_to="none", use_cpu=True,
        disable_tqdm=True, logging_steps=1, dataloader_num_workers=workers,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, **overrides)
    return hf.ScheduleTrainer(model, args, schedule=SCHEDULE, train_dataset=Digits(), micro_batch_size=micro_batch_size,
                              optimizers=(optimizer, None))


def expected_batches(seed: int) -> list[list[int]]:
    """DynamicBatchSampler's permutation of each epoch cut into the schedule's sizes."""
    out = []
    for epoch in range(SCHEDULE.epochs):
        perm = torch.randperm(N, generator=torch.Generator().manual_seed(derive_seed(seed, epoch)))
        start = 0
        for size in SCHEDULE.batch_sizes(epoch):
            out.append(perm[start:start + size].tolist())
            start += size
    return out


def clock_epoch(updates: int) -> float:
    """epoch + position / N after ``updates`` updates."""
    done = 0
    for epoch in range(SCHEDULE.epochs):
        position = 0
        for size in SCHEDULE.batch_sizes(epoch):
            if done == updates:
                return epoch + position / N
            done, position = done + 1, position + size
    return float(SCHEDULE.epochs)


@pytest.mark.parametrize("workers", [0, 2], ids=["huggingface-workers0", "huggingface-workers2"])
def test_huggingface_trainer_trains_the_plan(tmp_path, workers):
    t = trainer(tmp_path, workers=workers)
    t.train()
    assert t.state.global_step == SCHEDULE.plan().total_updates == PLAN_UPDATES
    assert t.model.trained == expected_batches(3)  # every batch once, in order, of the schedule's size
    assert sum(map(len, t.model.trained)) == SCHEDULE.plan().total_samples
    assert t.state.max_steps == PLAN_UPDATES


def test_huggingface_logs_the_epoch_on_the_sample_clock(tmp_path):
    t = trainer(tmp_path)
    t.train()
    logged = [(entry["step"], entry["epoch"]) for entry in t.state.log_history if "loss" in entry]
    assert [step for step, _ in logged] == list(range(1, PLAN_UPDATES + 1))
    assert [epoch for _, epoch in logged] == pytest.approx([clock_epoch(step) for step, _ in logged])
    assert logged[29][1] == 1.0 and logged[-1][1] == 3.0  # not 2.08 (a fixed batch's steps per epoch)
    lrs = [entry["learning_rate"] for entry in t.state.log_history if "loss" in entry]
    assert lrs == pytest.approx([0.1] * 45 + [0.05] * 8)


def test_huggingface_resumes_exactly_from_every_checkpoint(tmp_path):
    whole = trainer(tmp_path / "whole", save_steps=10)
    whole.train()
    checkpoints = sorted((tmp_path / "whole").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [int(p.name.split("-")[1]) for p in checkpoints] == [10, 20, 30, 40, 50, 53]
    final = {k: v.clone() for k, v in whole.model.state_dict().items()}
    batches = expected_batches(3)
    for checkpoint in checkpoints[:-1]:
        step = int(checkpoint.name.split("-")[1])
        resumed = trainer(tmp_path / f"from-{step}", workers=2 if step == 40 else 0)
        resumed.train(resume_from_checkpoint=str(checkpoint))
        assert resumed.state.global_step == PLAN_UPDATES, step
        assert resumed.model.trained == batches[step:], step  # no batch repeated or skipped
        for name, value in resumed.model.state_dict().items():
            assert torch.equal(value, final[name]), (step, name)


def test_huggingface_micro_batches_give_the_whole_batch_gradient(tmp_path):
    whole = trainer(tmp_path / "whole")
    whole.train()
    micro = trainer(tmp_path / "micro", micro_batch_size=7)
    micro.train()
    assert micro.state.global_step == PLAN_UPDATES
    assert [len(b) for b in micro.model.trained][:4] == [7, 7, 6, 7]  # batches of 20 as 7 + 7 + 6
    for (name, a), b in zip(whole.model.state_dict().items(), micro.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    losses = [entry["loss"] for entry in whole.state.log_history if "loss" in entry]
    micro_losses = [entry["loss"] for entry in micro.state.log_history if "loss" in entry]
    assert micro_losses == pytest.approx(losses, rel=1e-4)  # the logged loss is the whole batch's mean


def test_huggingface_bert_dict_batches_micro_batched(tmp_path):
    """A tiny BertForSequenceClassification from a config: input_ids/attention_mask/labels dicts, split in 3."""
    config = transformers.BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64, num_labels=10,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

    class Tokens(Digits):
        def __getitem__(self, i):
            ids = (self.pixels[i] * 16).long() + 2  # a digit's 64 pixels as tokens 2..18
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}

    schedule = Schedule((Phase(0, 1, 0.05, 100), Phase(1, 2, 0.05, 300)), dataset_size=N)
    results = []
    for micro_batch_size in (None, 40):
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification(config)
        args = transformers.TrainingArguments(output_dir=str(tmp_path / str(micro_batch_size)), num_train_epochs=2,
                                              learning_rate=0.05, report_to="none", use_cpu=True, disable_tqdm=True,
                                              save_strategy="no", logging_steps=1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)  # Adam would magnify rounding in tiny gradients
        t = hf.ScheduleTrainer(model, args, schedule=schedule, train_dataset=Tokens(),
                               micro_batch_size=micro_batch_size, optimizers=(optimizer, None))
        t.train()
        results.append((t.state.global_step, model.state_dict()))
    assert results[0][0] == results[1][0] == 6 + 2
    for name, value in results[0][1].items():
        torch.testing.assert_close(value, results[1][1][name], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_huggingface_ddp_two_processes_equal_one(tmp_path):
    """torchrun, 2 CPU processes (gloo): the same updates and, with odd batches (rank shares 13/12, 38/37), the
    same weights as one process: each rank's loss is weighted by its share of the global batch."""
    import os
    import subprocess
    import sys

    script, env = str(ROOT / "tests" / "huggingface_ddp_run.py"), {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, script, str(one)], check=True, env=env, capture_output=True, timeout=300)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", script, str(two)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    alone, ranks = torch.load(one / "rank0.pt"), [torch.load(two / f"rank{r}.pt") for r in (0, 1)]
    assert alone["updates"] == ranks[0]["updates"] == ranks[1]["updates"] == 24 + 8  # 600/25, ceil(600/75)
    assert alone["samples"] == ranks[0]["samples"] + ranks[1]["samples"] == 2 * N
    for name, value in alone["weights"].items():
        torch.testing.assert_close(ranks[0]["weights"][name], value, rtol=1e-5, atol=1e-6)
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name])


def test_huggingface_arguments_that_would_miscount_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=2: the schedule sets the whole batch; "
                                         r"pass micro_batch_size"):
        trainer(tmp_path, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match=r"max_steps=100, but the schedule plans 53 updates"):
        trainer(tmp_path, max_steps=100)
    with pytest.raises(ValueError, match=r"num_train_epochs=3, but the schedule spans 2 epochs"):
        hf.ScheduleTrainer(DigitsModel(DigitsConfig()), transformers.TrainingArguments(
            str(tmp_path), num_train_epochs=3, report_to="none", use_cpu=True),
            schedule=Schedule((Phase(0, 2, 0.1, 20),), dataset_size=N), train_dataset=Digits())
    with pytest.raises(ValueError, match=r"train_dataset has 600 samples, but the schedule is for dataset_size=500"):
        hf.ScheduleTrainer(DigitsModel(DigitsConfig()), transformers.TrainingArguments(
            str(tmp_path), num_train_epochs=1, report_to="none", use_cpu=True),
            schedule=Schedule((Phase(0, 1, 0.1, 20),), dataset_size=500), train_dataset=Digits())
    t = trainer(tmp_path, micro_batch_size=2)
    with pytest.raises(ValueError, match=r"the tensors of a batch should have the same first dimension \(samples\), "
                                         r"but got inputs\['pixels'\]: 4, inputs\['labels'\]: 5"):
        t.training_step(t.model, {"pixels": torch.zeros(4, 64), "labels": torch.zeros(5, dtype=torch.long)})


def test_huggingface_docs_example_runs(tmp_path, monkeypatch):
    """docs/huggingface.md's complete example trains the planned updates (it asserts them itself)."""
    monkeypatch.chdir(tmp_path)  # its checkpoints go to runs/hf-digits
    text = (ROOT / "docs" / "huggingface.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "docs/huggingface.md", "exec"), {})
