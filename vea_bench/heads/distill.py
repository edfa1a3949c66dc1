"""The distill head of EmoVLM-KD stage 2 (SPEC): an MLP on the mean-pooled visual embedding.

``[Linear(D, h1), GELU, Dropout(0.1), ..., Linear(h_last, C)]`` with hidden dims taken from
``[1024, 512, 256, 128, 64][:depth]``; depth 1 is the paper's choice (SPEC gives its parameter
count; `tests/test_heads.py` checks it).

Every head, this one included, is an entry of ``HEADS`` (`vea_bench.heads.head_registry`), which
imports a head's module only when its name is first resolved.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from vea_bench.errors import ConfigError
from vea_bench.heads.config import DEFAULT_DROPOUT
from vea_bench.heads.head_registry import (  # noqa: F401  (the registry's home; re-exported for callers)
    CONTRACT_ARGS,
    DEFAULT_HEAD,
    HEADS,
    HIDDEN_DIMS,
    MAX_DEPTH,
    MLPLayout,
    check_head,
    hidden_dims_for,
)


class DistillHead(nn.Sequential):
    """SPEC's distill head; a plain ``nn.Sequential`` so saved weights load without vea-bench."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] | None = None,
        *,
        depth: int | None = None,
        dropout: float = DEFAULT_DROPOUT,
    ) -> None:
        if hidden_dims is None:
            hidden_dims = hidden_dims_for(1 if depth is None else depth)
        dims = [int(h) for h in hidden_dims]
        if not dims:
            raise ConfigError("a distill head needs at least one hidden layer")
        layers: list[nn.Module] = []
        prev = int(in_dim)
        for h in dims:
            layers += [nn.Linear(prev, h), nn.GELU(), nn.Dropout(dropout)]
            prev = h
        layers.append(nn.Linear(prev, int(num_classes)))
        super().__init__(*layers)
        self.in_dim = int(in_dim)
        self.num_classes = int(num_classes)
        self.hidden_dims = dims
        self.dropout = float(dropout)

    @property
    def linears(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]

    def stacked_mlp(self) -> MLPLayout:
        """This head is exactly the MLP `StackedMLP` runs (which verifies it)."""
        return MLPLayout(tuple(self.linears), "gelu", self.dropout)


def build_head(
    name: str,
    in_dim: int,
    num_classes: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    depth: int | None = None,
    dropout: float = DEFAULT_DROPOUT,
    kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The registered head ``name`` for ``in_dim`` inputs and ``num_classes`` outputs, with its options."""
    canon = check_head(name, kwargs)
    try:
        return HEADS.get(canon)(in_dim, num_classes, hidden_dims, depth=depth, dropout=dropout, **dict(kwargs or {}))
    except (TypeError, ValueError) as e:   # a bad option value: one line naming the head
        raise ConfigError(f"head '{canon}': {e}") from None


def build_distill_head(
    in_dim: int,
    num_classes: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    depth: int | None = None,
    dropout: float = DEFAULT_DROPOUT,
) -> DistillHead:
    """SPEC's distill head (the default head) for ``in_dim`` inputs and ``num_classes`` outputs."""
    head = build_head(DEFAULT_HEAD, in_dim, num_classes, hidden_dims, depth=depth, dropout=dropout)
    assert isinstance(head, DistillHead)
    return head


def count_params(module: nn.Module) -> int:
    """Trainable parameters of a module (the paper's Tables 2 and 3 count these)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

