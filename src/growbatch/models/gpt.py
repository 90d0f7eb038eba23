"""GPT: a decoder-only pre-LayerNorm transformer over bytes (causal scaled-dot-product attention, tied weights).

``gpt-tiny`` (about 1M parameters, the CPU default) and ``gpt-small`` (about 10M), in the shape of nanoGPT's
model: learned positions, no dropout, the output layer sharing the token embedding's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_positive_int

__all__ = ["GPTConfig", "GPT", "GPT_SIZES", "gpt_config"]


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT: vocabulary, context length, layers, heads and width."""

    vocab_size: int = 256
    max_seq_len: int = 128
    layers: int = 5
    heads: int = 4
    width: int = 128  # d_model; each head is width / heads wide

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "layers", "heads", "width"):
            check_positive_int(name, getattr(self, name))
        if self.width % self.heads:
            raise ValueError(f"width should be a multiple of heads={self.heads}, but got width={self.width}")


# name -> (layers, heads, width): 1.03M and 9.9M parameters at vocabulary 256 and 128 positions
GPT_SIZES = {"gpt-tiny": (5, 4, 128), "gpt-small": (8, 8, 320)}


def gpt_config(name: str, *, vocab_size: int = 256, max_seq_len: int = 128) -> GPTConfig:
    """The configuration of ``gpt-tiny`` or ``gpt-small`` for a vocabulary and context length."""
    if name not in GPT_SIZES:
        raise ValueError(f"unknown GPT size {name!r}; valid: {', '.join(GPT_SIZES)}")
    layers, heads, width = GPT_SIZES[name]
    return GPTConfig(vocab_size, max_seq_len, layers, heads, width)


class _Block(nn.Module):
    """x + attention(LN(x)), then x + MLP(LN(x)): the pre-LN block of GPT-2."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.ln_attention = nn.LayerNorm(config.width)
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.projection = nn.Linear(config.width, config.width)
        self.ln_mlp = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(nn.Linear(config.width, 4 * config.width), nn.GELU(),
                                 nn.Linear(4 * config.width, config.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.ln_attention(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.projection(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
    """Token ids (batch x length, int64) -> next-token logits (batch x length x vocab_size).

    Example:
        >>> model = GPT(gpt_config("gpt-tiny"))
        >>> model(torch.zeros(2, 16, dtype=torch.long)).shape, sum(p.numel() for p in model.parameters())
        (torch.Size([2, 16, 256]), 1033984)
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Embedding(config.max_seq_len, config.width)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.layers))
        self.ln_final = nn.LayerNorm(config.width)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * layers), so the residual stream keeps its size
        for block in self.blocks:
            for layer in (block.projection, block.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * config.layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.config.max_seq_len:
            raise ValueError(f"sequences should be at most max_seq_len={self.config.max_seq_len} tokens, "
                             f"but got {length}")
        positions = torch.arange(length, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        # weight tying: the output layer is the token embedding (nanoGPT, Press & Wolf 2017)
        return F.linear(self.ln_final(x), self.token_embedding.weight)
