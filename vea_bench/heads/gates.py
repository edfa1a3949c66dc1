"""The five fusion gates of EmoVLM-KD stage 3 (SPEC, paper Table 4), in a registry.

Every gate maps ``v1`` (the distill head's output, ``[B, C]``: its log-softmax by default, its raw
logits under the reference schedule; `distill_vector`) and ``v2`` (the VLM's answer as a
one-hot, or its normalised label probabilities, ``[B, C]``) to final logits ``[B, C]``. Gates are
plain ``nn.Module`` classes (``__init__(num_classes)``, ``forward(v1, v2)``, a ``display_name``),
random only through ``nn.Dropout`` if at all, so the batched trainer runs many of them at once
with ``torch.func.vmap``, each member with its own dropout masks. Adding a sixth gate is one
decorated class here; the tests over ``GATES.names()`` then train, batch and count it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vea_bench.registry import Registry

GATES: Registry[type[nn.Module]] = Registry("gate", plugins="vea_bench.gates")


class Gate(nn.Module):
    """Base class: ``display_name`` is the paper's row name."""

    display_name: str = ""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = int(num_classes)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def source_weights(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor | None:
        """Per-image weights ``[B, 2]`` (distill, VLM) summing to one, for gates whose architecture weighs
        its two sources (Figure 4 and the report show them); None for gates that mix through linear maps."""
        return None


@GATES.register("concat", aliases=("concat-linear", "concat & linear", "concatlinear", "linear"))
class ConcatLinear(Gate):
    """The paper's gate: ``Linear(2C, C)`` over ``[v1, v2]`` (136 parameters for C = 8)."""

    display_name = "Concat & Linear"

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.fc = nn.Linear(2 * num_classes, num_classes)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([v1, v2], dim=-1))


@GATES.register("moe", aliases=("mixture-of-experts",))
class MoE(Gate):
    """Three experts ``Linear(2C, C)`` mixed by a softmax router ``Linear(2C, 3)``."""

    display_name = "MoE"

    def __init__(self, num_classes: int, num_experts: int = 3) -> None:
        super().__init__(num_classes)
        self.experts = nn.ModuleList(nn.Linear(2 * num_classes, num_classes) for _ in range(num_experts))
        self.router = nn.Linear(2 * num_classes, num_experts)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        x = torch.cat([v1, v2], dim=-1)
        w = torch.softmax(self.router(x), dim=-1)                      # [B, E]
        out = torch.stack([e(x) for e in self.experts], dim=-2)        # [B, E, C]
        return (w.unsqueeze(-1) * out).sum(-2)


@GATES.register("bilinear")
class BilinearGate(Gate):
    """``Bilinear(C, C, C)`` over (v1, v2), then ``Linear(C, C)``."""

    display_name = "Bilinear"

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.bilinear = nn.Bilinear(num_classes, num_classes, num_classes)
        self.fc = nn.Linear(num_classes, num_classes)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        # Written with einsum (same maths as nn.Bilinear) so that vmap batches it.
        z = torch.einsum("...i,kij,...j->...k", v1, self.bilinear.weight, v2) + self.bilinear.bias
        return self.fc(z)


@GATES.register("dynamic", aliases=("dynamicweighting", "dynamic-weighting"))
class DynamicWeighting(Gate):
    """Softmax of ``Linear(2C, 2)`` weighs v1 and v2; ``Linear(C, C)`` on the weighted sum."""

    display_name = "DynamicWeighting"

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.weigher = nn.Linear(2 * num_classes, 2)
        self.fc = nn.Linear(num_classes, num_classes)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        w = self.source_weights(v1, v2)
        return self.fc(w[..., :1] * v1 + w[..., 1:] * v2)

    def source_weights(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """The softmax weights themselves."""
        return torch.softmax(self.weigher(torch.cat([v1, v2], dim=-1)), dim=-1)


@GATES.register("crossgating", aliases=("cross", "cross-gating"))
class CrossGating(Gate):
    """``g1 = sigmoid(Linear(v2))``, ``g2 = sigmoid(Linear(v1))``; ``Linear(C, C)`` over ``g1*v1 + g2*v2``."""

    display_name = "CrossGating"

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.gate1 = nn.Linear(num_classes, num_classes)
        self.gate2 = nn.Linear(num_classes, num_classes)
        self.fc = nn.Linear(num_classes, num_classes)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        g1 = torch.sigmoid(self.gate1(v2))
        g2 = torch.sigmoid(self.gate2(v1))
        return self.fc(g1 * v1 + g2 * v2)

    def source_weights(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """The sigmoid gates averaged over classes, normalised to sum to one."""
        w = torch.stack([torch.sigmoid(self.gate1(v2)).mean(-1), torch.sigmoid(self.gate2(v1)).mean(-1)], dim=-1)
        return w / w.sum(-1, keepdim=True)


def distill_vector(logits: np.ndarray, distill_input: str) -> np.ndarray:
    """The gate's v1 from the distill head's logits: as they are (``"logits"``) or their log-softmax.

    Why: softmax ignores a constant added to an image's logits, so that constant is whatever
    training left; the log-softmax is the one representative with no such freedom.
    """
    x = np.asarray(logits, dtype=np.float32)
    if distill_input == "logits":
        return x
    if distill_input != "logprobs":
        raise ValueError(f"unknown distill input '{distill_input}'")
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def build_gate(name: str, num_classes: int) -> Gate:
    """A gate by registry name (or alias) for ``num_classes`` classes."""
    return GATES.get(name)(num_classes)


def gate_display_name(name: str) -> str:
    cls = GATES.get(name)
    return getattr(cls, "display_name", "") or GATES.canonical(name)
