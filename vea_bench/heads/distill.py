"""The distill head of EmoVLM-KD stage 2 (SPEC): an MLP on the mean-pooled visual embedding.

``[Linear(D, h1), GELU, Dropout(0.1), ..., Linear(h_last, C)]`` with hidden dims taken from
``[1024, 512, 256, 128, 64][:depth]``; depth 1 is the paper's choice (SPEC gives its parameter
count; `tests/test_heads.py` checks it).

Other heads register in ``HEADS`` from their own module (``vea_bench/heads/resmlp.py``); the
imports at the end of this file load them, so a name resolves wherever ``HEADS`` is read.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from vea_bench.errors import ConfigError
from vea_bench.registry import Registry

HIDDEN_DIMS: tuple[int, ...] = (1024, 512, 256, 128, 64)
MAX_DEPTH = len(HIDDEN_DIMS)
from vea_bench.heads.config import DEFAULT_DROPOUT  # noqa: E402,F401  (one home)
DEFAULT_HEAD = "distill"

HEADS: Registry[type[nn.Module]] = Registry("head", plugins="vea_bench.heads")
HEADS.__doc__ = """Heads that read the visual embedding; `train_distill` builds every member from here.

Contract of a registered head class (``DistillConfig.head`` names it, ``head_kwargs`` adds options):

- ``cls(in_dim, num_classes, hidden_dims, *, depth=None, dropout=..., **options)`` builds an
  ``nn.Module`` mapping ``[B, in_dim]`` features to ``[B, num_classes]`` logits; ``hidden_dims``
  (from ``--depth``) are its hidden widths, ``dropout`` its dropout probability.
- Randomness only through ``nn.Dropout`` modules (the batched trainer draws each member's masks
  from that member's own generator); no buffers updated in training (no BatchNorm).
- Optionally ``stacked_mlp() -> MLPLayout``: the head declares it *is* a plain
  Linear-GELU-Dropout MLP, and trains on the fast `StackedMLP` path (which checks the claim and
  refuses any structure it does not reproduce exactly). Without it the head trains with
  ``torch.func.vmap`` over stacked parameters.
"""


@dataclass(frozen=True)
class MLPLayout:
    """What a head declares to train on the fast `StackedMLP` path: its Linear layers, in order,
    with ``activation`` (only "gelu", exact) and ``nn.Dropout(dropout)`` after every hidden Linear."""

    linears: tuple[nn.Linear, ...]
    activation: str
    dropout: float


def hidden_dims_for(depth: int) -> list[int]:
    """The paper's hidden widths for ``depth`` hidden layers (1..5)."""
    if not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise ConfigError(f"distill depth must be 1..{MAX_DEPTH}, got {depth}")
    return list(HIDDEN_DIMS[:depth])


@HEADS.register(DEFAULT_HEAD, aliases=("mlp",))
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


def _options(cls: type) -> tuple[list[str], bool]:
    """The keyword options a head class takes beyond the contract's, and whether it takes ``**kwargs``."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    names = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
             and p.name not in CONTRACT_ARGS]
    return names, var_kw


CONTRACT_ARGS = ("in_dim", "num_classes", "hidden_dims", "depth", "dropout")


def check_head(name: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """Validate a head name and its options before any training: the canonical name, or a one-line error."""
    canon = HEADS.canonical(name)
    opts, var_kw = _options(HEADS.get(canon))
    for k in kwargs or {}:
        if k in CONTRACT_ARGS:
            raise ConfigError(f"head option '{k}' is set by the distill config itself (--{k.replace('_', '-')}), "
                              "not by head_kwargs")
        if k not in opts and not var_kw:
            shown = ", ".join(opts) if opts else "none"
            raise ConfigError(f"head '{canon}' has no option '{k}' (its options: {shown})")
    return canon


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


# Heads in their own modules register on import (one line per head module).
from vea_bench.heads import resmlp as _resmlp  # noqa: E402,F401
