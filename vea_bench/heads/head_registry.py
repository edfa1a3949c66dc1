"""The heads registry, the head contract and the paper's hidden widths; light to import (no torch).

Why a module of its own: the configs validate a head name and its options, the trainer reads a
head's declared layout and every head module registers here. Keeping the registry below all of
them (built-in heads are lazy ``"module:Class"`` entries, imported on first use) means no head
module imports another and nothing imports upwards.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vea_bench.errors import ConfigError
from vea_bench.registry import Registry

if TYPE_CHECKING:
    from torch import nn

HIDDEN_DIMS: tuple[int, ...] = (1024, 512, 256, 128, 64)
MAX_DEPTH = len(HIDDEN_DIMS)
DEFAULT_HEAD = "distill"
CONTRACT_ARGS = ("in_dim", "num_classes", "hidden_dims", "depth", "dropout")

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
# The built-in heads, one module each; a plugin package registers with ``@HEADS.register``.
HEADS.add(DEFAULT_HEAD, "vea_bench.heads.distill:DistillHead", aliases=("mlp",))
HEADS.add("resmlp", "vea_bench.heads.resmlp:ResMLPHead", aliases=("residual-mlp",))


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


def _options(cls: type) -> tuple[list[str], bool]:
    """The keyword options a head class takes beyond the contract's, and whether it takes ``**kwargs``."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    names = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
             and p.name not in CONTRACT_ARGS]
    return names, var_kw


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
