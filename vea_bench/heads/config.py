"""The typed configs of stages 2 and 3 and their schedules; light to import (no torch).

`DistillConfig` and `GateConfig` are each stage's whole schema: the library trains from them, an
experiment file's `[distill]` / `[gate]` and the options of `vea-bench train distill|gate` and
`sweep` are read into exactly their fields (`vea_bench.schema`; the CLI generates its options from
them), and a stage's identity hashes them. Kept free of torch so that `--help` stays fast.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from vea_bench.errors import ConfigError
from vea_bench.heads.head_registry import check_head, hidden_dims_for

# One home for the KD and head defaults (`heads.losses`, `heads.distill` and `heads.resmlp` read them here).
DEFAULT_TAU = 2.0
DEFAULT_ALPHA = 0.5
DEFAULT_DROPOUT = 0.1

SCHEDULES = ("default", "reference")
GATE_FITS = ("train", "val", "crossfit")
GATE_SOLVERS = ("adam", "lbfgs")
DISTILL_INPUTS = ("logprobs", "logits")
# What early stopping and the kept epoch read on val (`heads.trainer.MemberSelection`): "val-loss":
# the val accuracy, with the val loss falling by a tolerance also counting as progress (on a small
# val split accuracy moves in coarse steps); "smoothed-acc": an exponential moving average of the val
# accuracy. `python benchmarks/heads.py --early-stops val-loss,smoothed-acc` compares them.
EARLY_STOPS = ("val-loss", "smoothed-acc")
PRECISION_CHOICES = ("fp32", "bf16", "auto")
DEFAULT_FOLDS = 5
LR_SCALINGS = ("sqrt", "linear", "none")
# The reference implementation's stages 2/3 (batch size 1, last epoch kept, fixed epochs): pinned
# by ``--schedule reference`` and never changed, so that it stays a faithful reproduction.
REFERENCE = {"distill": {"lr": 1e-5, "weight_decay": 1e-4, "epochs": 5},
             "gate": {"lr": 1e-4, "weight_decay": 1e-4, "epochs": 10}}
# The default schedule trains to convergence and chooses on val only: mini-batches, an epoch
# budget, each member scored on val after every epoch (accuracy, ties broken by val loss), stopped
# after ``patience`` epochs without improvement, and its best epoch restored. ``lr`` is always the
# batch-1 rate; at batch B Adam uses lr * sqrt(B) (``lr_scaling``). The gate's batch-1 rate is 10x
# the reference's: at the reference's 1e-4 a gate of a few hundred parameters needs far more epochs
# than the budget allows at any batch size (the issue this schedule fixes). `python
# benchmarks/heads.py` compares both schedules side by side and reproduces the README's figures.
# The distill head's budget also counts optimiser steps (``min_steps``): at batch 256 an
# Emotion6-sized set (1,600 train rows) makes 7 steps an epoch, so 60 epochs would be 420 steps
# where FI (18,000 rows) gets 4,260; `scaled_budget` grows the epochs and the patience of a small
# set by the same factor, so both mean the same share of training at every size.
DEFAULT_SCHEDULE = {
    "distill": {"lr": 1e-5, "weight_decay": 1e-4, "epochs": 60, "batch_size": 256, "patience": 5, "keep": "best",
                "min_steps": 3000},
    "gate": {"lr": 1e-3, "weight_decay": 1e-4, "epochs": 200, "batch_size": 64, "patience": 15, "keep": "best"},
}
DEFAULT_BATCH = {k: v["batch_size"] for k, v in DEFAULT_SCHEDULE.items()}


def scaled_budget(epochs: int, patience: int | None, steps_per_epoch: int, min_steps: int) -> tuple[int, int | None]:
    """The epoch budget and patience for a set of ``steps_per_epoch`` steps: at least ``min_steps`` steps.

    Why: an epoch budget gives a small set few optimiser steps. Where ``epochs`` epochs are fewer
    than ``min_steps`` steps, the budget and the patience are both multiplied by
    ``min_steps / (epochs * steps_per_epoch)`` (rounded up), so patience stays the same share of
    the budget; larger sets keep ``epochs`` and ``patience`` as given. ``min_steps = 0``: epochs only.
    """
    if min_steps <= 0 or epochs * steps_per_epoch >= min_steps:
        return epochs, patience
    scale = min_steps / (epochs * steps_per_epoch)
    return math.ceil(epochs * scale), None if patience is None else math.ceil(patience * scale)


def effective_lr(lr: float, batch_size: int, scaling: str) -> float:
    """The Adam learning rate used at ``batch_size`` for a batch-1 learning rate ``lr``."""
    if scaling == "sqrt":
        return lr * batch_size ** 0.5
    if scaling == "linear":
        return lr * batch_size
    if scaling == "none":
        return lr
    raise ConfigError(f"unknown --lr-scaling '{scaling}' (choices: {', '.join(LR_SCALINGS)})")


_D = DEFAULT_SCHEDULE["distill"]
_G = DEFAULT_SCHEDULE["gate"]


def _opt(help: str, **meta: Any) -> dict[str, Any]:
    """Field metadata: the help text the CLI options and the docs show (`vea_bench.schema`)."""
    return {"help": help, **meta}


@dataclass
class DistillConfig:
    """One distill run: architecture, KD weights, optimiser and schedule (the default one), seed.

    The fields are the stage's whole schema: `[distill]` in an experiment file and the options of
    `vea-bench train distill` / `sweep` are read into exactly these (see `vea_bench.schema`).
    """

    depth: int = field(default=1, metadata=_opt("distill hidden layers, 1..5 ([1024, 512, 256, 128, 64][:depth])."))
    head: str = field(default="distill", metadata=_opt("distill head architecture: a HEADS registry name."))
    head_kwargs: dict[str, Any] = field(default_factory=dict, metadata=_opt(
        "extra keyword arguments of the head's constructor (values read as JSON where they parse)."))
    alpha: float = field(default=DEFAULT_ALPHA, metadata=_opt("KD weight: alpha*tau^2*KL + (1-alpha)*CE."))
    tau: float = field(default=DEFAULT_TAU, metadata=_opt("KD temperature."))
    lr: float = field(default=_D["lr"], metadata=_opt(
        "Adam batch-1 learning rate (default 1e-5, the reference code's; the paper says 1e-3)."))
    weight_decay: float = field(default=_D["weight_decay"], metadata=_opt("Adam L2 weight decay."))
    epochs: int = field(default=_D["epochs"], metadata=_opt(
        "epoch budget (default schedule: 60, early-stopped on val; reference: 5)."))
    batch_size: int = field(default=_D["batch_size"], metadata=_opt(
        "mini-batch size (default schedule: 256; Adam lr scaled by sqrt(batch))."))
    min_steps: int = field(default=_D["min_steps"], metadata=_opt(
        "default schedule (keep best): train at least this many optimiser steps; where --epochs epochs are fewer, "
        "the epoch budget and --patience grow by the same factor (0: count in epochs only, the default where "
        "--epochs is set; reference: 0)."))
    dropout: float = field(default=DEFAULT_DROPOUT, metadata=_opt("distill head dropout."))
    seed: int = field(default=0, metadata=_opt("seed of init, data order and dropout."))
    keep: str = field(default=_D["keep"], metadata=_opt(
        "which epoch's weights to keep: best (on val; default schedule) or last (reference)."))
    schedule: str = field(default="default", metadata=_opt(
        "default (mini-batches, epoch budget, early stopping on val, best epoch kept; members batched) or "
        "reference (batch 1, reference lrs, fixed epochs, last epoch: a faithful reproduction)."))
    lr_scaling: str = field(default="sqrt", metadata=_opt(
        "lr is the batch-1 rate; at batch B Adam uses lr*sqrt(B) (sqrt), lr*B (linear) or lr (none)."))
    patience: int | None = field(default=_D["patience"], metadata=_opt(
        "default schedule: stop a member after this many epochs without val improvement (0: never).",
        zero_is_none=True))
    early_stop: str = field(default=EARLY_STOPS[0], metadata=_opt(
        "what patience and the kept epoch read on val: val-loss (accuracy, or the loss falling by a "
        "tolerance) or smoothed-acc (a moving average of the accuracy)."))
    precision: str = field(default="fp32", metadata=_opt(
        "distill head matmuls: fp32, bf16 (fp32 master weights, Adam state and loss) or auto "
        "(bf16 on a bf16-capable CUDA device, fp32 elsewhere)."))

    @property
    def effective_lr(self) -> float:
        return effective_lr(self.lr, self.batch_size, self.lr_scaling)

    @property
    def hidden_dims(self) -> list[int]:
        return hidden_dims_for(self.depth)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_dims"] = self.hidden_dims
        d["effective_lr"] = self.effective_lr
        return d


@dataclass
class GateConfig:
    """One gate run over a distill head; ``gate_fit`` says which split's inputs the gate is fitted on.

    ``solver="lbfgs"`` fits the Concat & Linear gate exactly (multinomial logistic regression is
    convex): full-batch L-BFGS to a gradient tolerance, no lr, epochs or seed-dependent init.
    ``distill_input="logprobs"`` feeds the gate the distill head's log-softmax instead of its raw
    logits: logits are defined only up to a constant per image, and a gate with no per-answer bias
    (Bilinear) otherwise scores by where that arbitrary constant happens to land.
    The fields are the stage's whole schema, like `DistillConfig`'s.
    """

    gate: str = field(default="concat", metadata=_opt("gate: a GATES registry name (concat, moe, ...)."))
    lr: float = field(default=_G["lr"], metadata=_opt(
        "gate Adam batch-1 lr (default schedule 1e-3; reference 1e-4, the reference code's)."))
    weight_decay: float = field(default=_G["weight_decay"], metadata=_opt("gate Adam weight decay."))
    epochs: int = field(default=_G["epochs"], metadata=_opt(
        "gate epoch budget (default schedule: 200, early-stopped on val; reference: 10)."))
    batch_size: int = field(default=_G["batch_size"], metadata=_opt(
        "gate mini-batch size (default schedule: 64; Adam lr scaled by sqrt(batch))."))
    seed: int = field(default=0, metadata=_opt("seed of the gate's init and data order."))
    gate_fit: str = field(default="train", metadata=_opt(
        "split whose distill outputs fit the gate: train (reference), val, crossfit (K-fold OOF)."))
    folds: int = field(default=DEFAULT_FOLDS, metadata=_opt("K for gate_fit crossfit."))
    vlm_input: str = field(default="onehot", metadata=_opt(
        "onehot (paper) or logprobs (softmax of per-label log-probs)."))
    distill_input: str = field(default="logprobs", metadata=_opt(
        "the distill head's output as the gate reads it: logprobs (its log-softmax; default schedule) or "
        "logits (raw, the reference code's)."))
    keep: str = field(default=_G["keep"], metadata=_opt(
        "which epoch's weights to keep: best (on val; default schedule) or last (reference)."))
    schedule: str = field(default="default", metadata=_opt("default or reference (as for the distill head)."))
    lr_scaling: str = field(default="sqrt", metadata=_opt("sqrt, linear or none (as for the distill head)."))
    patience: int | None = field(default=_G["patience"], metadata=_opt(
        "gate early-stopping patience (default schedule: 15; 0: never).", zero_is_none=True))
    early_stop: str = field(default=EARLY_STOPS[0], metadata=_opt(
        "what patience and the kept epoch read on val: val-loss or smoothed-acc (as for the distill head)."))
    solver: str = field(default="adam", metadata=_opt(
        "gate fit: adam (the schedule) or lbfgs (concat only: exact full-batch fit, no schedule)."))

    @property
    def effective_lr(self) -> float:
        return effective_lr(self.lr, self.batch_size, self.lr_scaling)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["effective_lr"] = self.effective_lr
        return d


CONFIGS: dict[str, type] = {"distill": DistillConfig, "gate": GateConfig}


def make_config(kind: str, values: dict[str, Any] | None = None, **fixed: Any) -> Any:
    """The scheduled config of ``kind`` ("distill" or "gate") from the fields a user set.

    ``values`` holds only what a file or command line gave (type-checked against the fields);
    ``fixed`` is what the caller decides (seed, gate name). Everything else is the schedule's:
    the reference schedule refuses a set value it pins, by key, not by comparing with defaults.
    """
    from vea_bench.schema import check_fields

    if kind not in CONFIGS:
        raise ConfigError(f"unknown config kind '{kind}' (choices: {', '.join(CONFIGS)})")
    cls = CONFIGS[kind]
    given = check_fields(cls, dict(values or {}), f"[{kind}]")
    cfg = cls(**{**given, **fixed})
    return apply_schedule(cfg, kind, explicit={**given, **fixed})


def apply_schedule(cfg: Any, kind: str, *, explicit: dict[str, Any] | None = None) -> Any:
    """Validate ``cfg`` and apply its schedule; the reference schedule pins batch 1, fixed epochs, last epoch.

    ``explicit`` names the options the user set; setting one the reference pins is an error.
    """
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"unknown --schedule '{cfg.schedule}' (choices: {', '.join(SCHEDULES)})")
    if kind == "gate":
        from vea_bench.heads.gates import GATES

        GATES.canonical(cfg.gate)
        if cfg.gate_fit not in GATE_FITS:
            raise ConfigError(f"unknown --gate-fit '{cfg.gate_fit}' (choices: {', '.join(GATE_FITS)})")
        if cfg.gate_fit == "crossfit" and cfg.folds < 2:
            raise ConfigError("--gate-fit crossfit needs at least 2 folds")
        if cfg.distill_input not in DISTILL_INPUTS:
            raise ConfigError(f"unknown --distill-input '{cfg.distill_input}' (choices: {', '.join(DISTILL_INPUTS)})")
        if cfg.solver not in GATE_SOLVERS:
            raise ConfigError(f"unknown --solver '{cfg.solver}' (choices: {', '.join(GATE_SOLVERS)})")
        if cfg.solver == "lbfgs" and GATES.canonical(cfg.gate) != "concat":
            raise ConfigError("--solver lbfgs fits only the convex concat gate; use adam for "
                              f"'{GATES.canonical(cfg.gate)}'")
    else:
        if not isinstance(cfg.head_kwargs, dict):
            raise ConfigError(f"head_kwargs must be a mapping, got {cfg.head_kwargs!r}")
        check_head(cfg.head, cfg.head_kwargs)
        hidden_dims_for(cfg.depth)
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1], got {cfg.alpha}")
        if cfg.tau <= 0:
            raise ConfigError(f"--tau must be positive, got {cfg.tau}")
        if cfg.min_steps < 0:
            raise ConfigError(f"--min-steps must be 0 or more, got {cfg.min_steps}")
        if cfg.precision not in PRECISION_CHOICES:
            raise ConfigError(f"unknown --precision '{cfg.precision}' (choices: {', '.join(PRECISION_CHOICES)})")
    effective_lr(cfg.lr, cfg.batch_size, cfg.lr_scaling)
    if cfg.lr <= 0 or cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError("--lr must be positive, --epochs and --batch-size at least 1")
    if cfg.patience is not None and cfg.patience < 1:
        raise ConfigError("--patience must be at least 1 (0: no early stopping)")
    if cfg.early_stop not in EARLY_STOPS:
        raise ConfigError(f"unknown --early-stop '{cfg.early_stop}' (choices: {', '.join(EARLY_STOPS)})")
    if cfg.schedule == "reference":
        pinned = {"batch_size": 1, "keep": "last", "lr_scaling": "none", "patience": None, **REFERENCE[kind]}
        if kind == "gate":
            pinned["gate_fit"] = "train"
            pinned["solver"] = "adam"
            pinned["distill_input"] = "logits"
        else:
            pinned["precision"] = "fp32"
            pinned["min_steps"] = 0
        for k, v in pinned.items():
            if explicit and k in explicit and explicit[k] is not None and explicit[k] != v:
                shown = "off" if v is None else v
                raise ConfigError(f"--schedule reference pins {k.replace('_', '-')} = {shown}; drop that option")
        cfg = replace(cfg, **pinned)
    if kind == "distill" and explicit and explicit.get("epochs") is not None and "min_steps" not in explicit:
        cfg = replace(cfg, min_steps=0)     # an epoch budget the user set is taken as given
    if cfg.patience is not None and cfg.keep != "best":
        cfg = replace(cfg, patience=None)   # early stopping restores the best epoch; keep=last trains the budget
    if kind == "gate" and cfg.gate_fit == "val" and cfg.keep == "best":
        # val is the gate's training data here: nothing honest is left to select or stop on
        if explicit and explicit.get("keep") == "best":
            raise ConfigError("--keep best selects on val, which --gate-fit val trains on; use --keep last")
        cfg = replace(cfg, keep="last", patience=None)
    return cfg
