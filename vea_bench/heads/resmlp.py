"""A second head: pre-LayerNorm residual MLP blocks on the visual embedding.

Why it is here: it is the proof that heads are an extension point. It is not a plain
Linear-GELU-Dropout MLP (LayerNorm, a residual, a choice of activation), so it declares no
`stacked_mlp` layout and trains through the generic ``torch.func.vmap`` path; training, sweeps
and records reach it by its registry name alone (``DistillConfig(head="resmlp")``, recorded as
``config["head"]``).

Per hidden width ``h``: ``x = Linear(prev, h)(x)``, then ``x = x + Dropout(act(Linear(h, h)(LN(x))))``;
the logits are ``Linear(h_last, C)(LN(x))``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vea_bench.errors import ConfigError
from vea_bench.heads.config import DEFAULT_DROPOUT
from vea_bench.heads.head_registry import hidden_dims_for

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


class ResidualBlock(nn.Module):
    """``x + Dropout(act(Linear(LN(x))))``: a pre-norm residual block of width ``dim``."""

    def __init__(self, dim: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.act(self.fc(self.norm(x))))


class ResMLPHead(nn.Module):
    """LayerNorm + residual MLP head; ``activation`` (gelu, relu, silu) is its one option."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] | None = None,
        *,
        depth: int | None = None,
        dropout: float = DEFAULT_DROPOUT,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"resmlp activation '{activation}' is not one of {', '.join(ACTIVATIONS)}")
        dims = [int(h) for h in (hidden_dims if hidden_dims is not None else hidden_dims_for(depth or 1))]
        if not dims:
            raise ConfigError("a resmlp head needs at least one hidden layer")
        self.proj = nn.ModuleList()
        self.blocks = nn.ModuleList()
        prev = int(in_dim)
        for h in dims:
            self.proj.append(nn.Linear(prev, h))
            self.blocks.append(ResidualBlock(h, activation, dropout))
            prev = h
        self.norm = nn.LayerNorm(prev)
        self.out = nn.Linear(prev, int(num_classes))
        self.in_dim, self.num_classes, self.hidden_dims = int(in_dim), int(num_classes), dims
        self.dropout, self.activation = float(dropout), activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for proj, block in zip(self.proj, self.blocks):
            x = block(proj(x))
        return self.out(self.norm(x))
