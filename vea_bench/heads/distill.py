"""The distill head of EmoVLM-KD stage 2 (SPEC): an MLP on the mean-pooled visual embedding.

``[Linear(D, h1), GELU, Dropout(0.1), ..., Linear(h_last, C)]`` with hidden dims taken from
``[1024, 512, 256, 128, 64][:depth]``; depth 1 is the paper's choice (3,679,240 parameters for
D = 3584 and 8 classes).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from vea_bench.errors import ConfigError
from vea_bench.registry import Registry

HIDDEN_DIMS: tuple[int, ...] = (1024, 512, 256, 128, 64)
MAX_DEPTH = len(HIDDEN_DIMS)
from vea_bench.heads.config import DEFAULT_DROPOUT  # noqa: E402,F401  (one home)

# Heads that read the visual embedding; the trainer builds members from here.
HEADS: Registry[type[nn.Module]] = Registry("head")


def hidden_dims_for(depth: int) -> list[int]:
    """The paper's hidden widths for ``depth`` hidden layers (1..5)."""
    if not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise ConfigError(f"distill depth must be 1..{MAX_DEPTH}, got {depth}")
    return list(HIDDEN_DIMS[:depth])


@HEADS.register("distill", aliases=("mlp",))
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


def build_distill_head(
    in_dim: int,
    num_classes: int,
    hidden_dims: Sequence[int] | None = None,
    *,
    depth: int | None = None,
    dropout: float = DEFAULT_DROPOUT,
) -> DistillHead:
    """The distill head for ``in_dim`` inputs and ``num_classes`` outputs (by hidden dims or depth)."""
    return HEADS.get("distill")(in_dim, num_classes, hidden_dims, depth=depth, dropout=dropout)


def count_params(module: nn.Module) -> int:
    """Trainable parameters of a module (the paper's Tables 2 and 3 count these)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
