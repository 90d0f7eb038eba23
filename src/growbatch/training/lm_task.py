"""Language modelling as a Task: next-token cross-entropy over byte sequences, metrics summed per token.

Every metrics record carries ``tokens`` (trained so far), ``test_loss`` (nats per token on the validation split)
and ``test_bpb`` (bits per byte: with a byte vocabulary one token is one byte, so test_loss / ln 2).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..batching.token_loader import TokenLoader, sequence_count
from ..data.text import TextCorpus
from ..models.gpt import GPT, gpt_config
from ..schedule.schedule import Schedule
from .distributed import DistInfo, sum_over_ranks
from .settings import RunConfig
from .task import MetricSums, Task, evaluation_autocast

__all__ = ["LanguageModelTask"]

EVAL_SEQUENCES_PER_PASS = 64


class LanguageModelTask(Task):
    """Train a GPT on ``corpus``: ``sequences_per_epoch`` sequences of ``seq_len`` tokens an epoch, evaluated on
    ``eval_sequences`` whole sequences spread evenly over the validation split (every file of a small split).

    Raises:
        ValueError: ``seq_len`` longer than the training stream or the validation split.
    """

    def __init__(self, corpus: TextCorpus, *, seq_len: int, sequences_per_epoch: int, eval_sequences: int) -> None:
        for split, tokens in (("training", corpus.train_tokens), ("validation", corpus.val_tokens)):
            if sequence_count(tokens, seq_len) == 0:
                raise ValueError(f"--seq-len {seq_len} is longer than the {split} split of {corpus.source} "
                                 f"({tokens} tokens; a sequence needs seq_len + 1); use --seq-len {max(1, tokens - 1)} "
                                 "or less, or a larger corpus")
        self.corpus, self.seq_len = corpus, seq_len
        self.sequences_per_epoch = sequences_per_epoch
        available = sequence_count(corpus.val_tokens, seq_len)
        self.eval_sequences = min(eval_sequences, available)
        self._eval_stride = available // self.eval_sequences  # in sequences

    @property
    def train_size(self) -> int:
        return self.sequences_per_epoch

    def build_model(self, config: RunConfig) -> nn.Module:
        return GPT(gpt_config(config.model, vocab_size=self.corpus.vocab_size, max_seq_len=self.seq_len))

    def train_loader(self, schedule: Schedule, config: RunConfig, info: DistInfo) -> TokenLoader:
        return TokenLoader(self.corpus.train, self.seq_len, schedule, sequences_per_epoch=self.sequences_per_epoch,
                           seed=config.seed, rank=info.rank, world_size=info.world_size, device=info.device)

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, MetricSums]:
        logits = model(inputs)
        # mean over the micro-batch's tokens; every sequence has seq_len of them, so it is also the mean per sample
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return loss, {}

    def train_metrics(self, loss_sum: float, sums: dict[str, float], samples: int) -> dict[str, float]:
        return {"train_loss": loss_sum / max(samples, 1)}  # nats per token

    def clock_metrics(self, samples: int) -> dict[str, float]:
        return {"tokens": samples * self.seq_len}

    def evaluate(self, model: nn.Module, config: RunConfig, info: DistInfo) -> dict[str, float]:
        n = self.eval_sequences
        start, stop = n * info.rank // info.world_size, n * (info.rank + 1) // info.world_size
        step = EVAL_SEQUENCES_PER_PASS
        offsets = torch.arange(self.seq_len + 1)
        loss_sum = 0.0
        with torch.no_grad(), evaluation_autocast(config, info.device):  # NOTE [precision] in task.py
            for i in range(start, stop, step):
                rows = torch.arange(i, min(stop, i + step))
                starts = rows * self._eval_stride * self.seq_len
                window = self.corpus.val[starts[:, None] + offsets].long().to(info.device)
                logits = model(window[:, :-1])
                loss_sum += nn.functional.cross_entropy(logits.flatten(0, 1).float(), window[:, 1:].flatten(),
                                                        reduction="sum").item()
        total, = sum_over_ranks([loss_sum], info.device)
        test_loss = total / (n * self.seq_len)
        return {"test_loss": test_loss, "test_bpb": test_loss / math.log(2)}
