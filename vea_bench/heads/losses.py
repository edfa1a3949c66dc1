"""The knowledge-distillation loss of EmoVLM-KD stage 2, batched over sweep members.

For student logits ``s``, teacher logits ``t``, true class ``y``, temperature ``tau`` and weight
``alpha`` (SPEC; Hinton et al.'s form)::

    p_t^tau = softmax(t / tau),   p_s^tau = softmax(s / tau),   p_s = softmax(s)
    KL      = mean_batch  sum_c  p_t^tau[c] * (log p_t^tau[c] - log p_s^tau[c])
    CE      = mean_batch  -log p_s[y]
    L       = alpha * tau^2 * KL  +  (1 - alpha) * CE

``tau^2`` keeps the soft term's gradient on the same scale as the hard term's when ``tau`` changes
(the soft gradients shrink as 1/tau^2). ``alpha = 1`` is pure distillation (labels unused),
``alpha = 0`` plain supervised training (teacher unused). The paper uses tau = 2, alpha = 0.5.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vea_bench.errors import ConfigError
from vea_bench.heads.config import DEFAULT_ALPHA, DEFAULT_TAU  # noqa: E402,F401  (one home)

# What the batched trainer minimises: ``loss(logits [M, B, C], labels [M, B], teacher [M, B, C] or
# None, alpha [M], tau [M]) -> [M]`` batch-mean losses, one per member (each member's gradient is
# then exactly its own). `kd_objective` (distill heads) and `ce_objective` (gates) are the two.
MemberLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor], torch.Tensor]


def _per_member(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return v.reshape(-1) if v.dim() else v


def kd_terms(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, tau: float | torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-mean KL(p_t^tau || p_s^tau) and CE(y, p_s), per member.

    ``student`` is ``[M, B, C]`` (or ``[B, C]``), ``teacher`` the same shape, ``labels`` ``[M, B]``
    (or ``[B]``); ``tau`` a float or one value per member. Returns two ``[M]`` tensors (or scalars).
    """
    squeeze = student.dim() == 2
    if squeeze:
        student, teacher, labels = student[None], teacher[None], labels[None]
    tau_t = _per_member(tau, student)
    tau_b = tau_t.reshape(-1, 1, 1) if tau_t.dim() else tau_t
    log_ps_tau = F.log_softmax(student / tau_b, dim=-1)
    log_pt_tau = F.log_softmax(teacher / tau_b, dim=-1)
    kl = (log_pt_tau.exp() * (log_pt_tau - log_ps_tau)).sum(-1).mean(-1)
    ce = -F.log_softmax(student, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).mean(-1)
    if squeeze:
        return kl[0], ce[0]
    return kl, ce


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    alpha: float | torch.Tensor = DEFAULT_ALPHA,
    tau: float | torch.Tensor = DEFAULT_TAU,
) -> torch.Tensor:
    """``alpha * tau^2 * KL(p_t^tau || p_s^tau) + (1 - alpha) * CE(y, p_s)``, batch-mean, per member.

    Shapes as in `kd_terms`; ``alpha`` and ``tau`` may be floats or ``[M]`` tensors (one per
    member of a batched sweep). Returns ``[M]`` (or a scalar for unbatched inputs).
    """
    kl, ce = kd_terms(student, teacher, labels, tau)
    a = _per_member(alpha, kl)
    t = _per_member(tau, kl)
    return a * t * t * kl + (1 - a) * ce


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Batch-mean cross-entropy per member: ``logits`` ``[M, B, C]``, ``labels`` ``[M, B]`` -> ``[M]``."""
    return -F.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).mean(-1)


def kd_objective(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None, alpha: torch.Tensor,
                 tau: torch.Tensor) -> torch.Tensor:
    """The distill head's `MemberLoss`: `kd_loss` with each member's own alpha and tau."""
    if teacher is None:
        raise ConfigError("the KD loss needs teacher logits")
    return kd_loss(logits, teacher, labels, alpha, tau)


def ce_objective(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None, alpha: torch.Tensor,
                 tau: torch.Tensor) -> torch.Tensor:
    """The gates' `MemberLoss`: cross-entropy on the labels (no teacher, alpha or tau)."""
    return ce_loss(logits, labels)
