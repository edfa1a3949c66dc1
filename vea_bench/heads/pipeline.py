"""Stages 2 and 3 against the cache: distill heads and gates as batched runs, records and weights.

A *config* is one run (one seed); the functions take lists of configs and train every group of
compatible configs (same architecture, schedule and row count) as one batched model. A single
run is a list of one, so a sweep member and a single run follow exactly the same code path.

Schedules: ``default`` trains with mini-batches (``DEFAULT_BATCH``) and batches members together;
``reference`` reproduces the reference implementation's stages 2/3 (batch size 1, its learning
rates, the last epoch kept, gate fitted on train, one configuration at a time) for parity checks.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vea_bench.errors import ConfigError
from vea_bench.heads.data import HeadData
from vea_bench.heads.distill import DEFAULT_DROPOUT, build_distill_head, count_params, hidden_dims_for
from vea_bench.heads.gates import GATES, build_gate, gate_display_name
from vea_bench.heads.losses import DEFAULT_ALPHA, DEFAULT_TAU
from vea_bench.heads.trainer import (
    MemberHyper,
    SplitInputs,
    StackedMLP,
    VmappedModules,
    build_member_modules,
    resolve_device,
    stream_seed,
    train_members,
)
from vea_bench.metrics import split_metrics
from vea_bench.progress import Progress
from vea_bench.records import ARTIFACTS_DIR, RunRecord
from vea_bench.report.predictions import attach_head

SCHEDULES = ("default", "reference")
GATE_FITS = ("train", "val", "crossfit")
DEFAULT_FOLDS = 5
# The default schedule: mini-batches of DEFAULT_BATCH with Adam's square-root scaling rule,
# effective lr = lr * sqrt(batch_size / 1), so that ``--lr`` always means the reference's batch-1
# learning rate (1e-5 distill, 1e-4 gate) and batch size 1 reproduces the reference exactly.
# benchmarks/heads.py compares this schedule with the reference's on a 20,000 x 3584 cache: trained
# fully on its first 2,000 rows, batch 256 reached 64.65 % test accuracy vs the reference's 63.80 %
# (with lr 1e-5 unscaled, batch 256 stayed near chance: 14.8 %). Gates are tiny, so their default
# batch stays small (32), closer to the reference's batch-1 dynamics at negligible cost.
DEFAULT_BATCH = {"distill": 256, "gate": 32}
LR_SCALINGS = ("sqrt", "linear", "none")


def effective_lr(lr: float, batch_size: int, scaling: str) -> float:
    """The Adam learning rate used at ``batch_size`` for a batch-1 learning rate ``lr``."""
    if scaling == "sqrt":
        return lr * batch_size ** 0.5
    if scaling == "linear":
        return lr * batch_size
    if scaling == "none":
        return lr
    raise ConfigError(f"unknown --lr-scaling '{scaling}' (choices: {', '.join(LR_SCALINGS)})")
REFERENCE = {"distill": {"lr": 1e-5, "weight_decay": 1e-4, "epochs": 5},
             "gate": {"lr": 1e-4, "weight_decay": 1e-4, "epochs": 10}}


@dataclass
class DistillConfig:
    """One distill run: architecture, KD weights, optimiser (SPEC defaults) and seed."""

    depth: int = 1
    alpha: float = DEFAULT_ALPHA
    tau: float = DEFAULT_TAU
    lr: float = REFERENCE["distill"]["lr"]
    weight_decay: float = REFERENCE["distill"]["weight_decay"]
    epochs: int = REFERENCE["distill"]["epochs"]
    batch_size: int = DEFAULT_BATCH["distill"]
    dropout: float = DEFAULT_DROPOUT
    seed: int = 0
    keep: str = "last"
    schedule: str = "default"
    lr_scaling: str = "sqrt"

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
    """One gate run over a distill head; ``gate_fit`` says which split's inputs the gate is fitted on."""

    gate: str = "concat"
    lr: float = REFERENCE["gate"]["lr"]
    weight_decay: float = REFERENCE["gate"]["weight_decay"]
    epochs: int = REFERENCE["gate"]["epochs"]
    batch_size: int = DEFAULT_BATCH["gate"]
    seed: int = 0
    gate_fit: str = "train"
    folds: int = DEFAULT_FOLDS
    vlm_input: str = "onehot"
    keep: str = "last"
    schedule: str = "default"
    lr_scaling: str = "sqrt"

    @property
    def effective_lr(self) -> float:
        return effective_lr(self.lr, self.batch_size, self.lr_scaling)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["effective_lr"] = self.effective_lr
        return d


def apply_schedule(cfg: Any, kind: str, *, explicit: dict[str, Any] | None = None) -> Any:
    """Validate ``cfg`` and apply its schedule; the reference schedule pins batch 1 and last epoch.

    ``explicit`` names the options the user set; setting one the reference pins is an error.
    """
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"unknown --schedule '{cfg.schedule}' (choices: {', '.join(SCHEDULES)})")
    if kind == "gate":
        GATES.canonical(cfg.gate)
        if cfg.gate_fit not in GATE_FITS:
            raise ConfigError(f"unknown --gate-fit '{cfg.gate_fit}' (choices: {', '.join(GATE_FITS)})")
        if cfg.gate_fit == "crossfit" and cfg.folds < 2:
            raise ConfigError("--gate-fit crossfit needs at least 2 folds")
        if cfg.gate_fit == "val" and cfg.keep == "best":
            raise ConfigError("--keep best selects on val, which --gate-fit val trains on; use --keep last")
    else:
        hidden_dims_for(cfg.depth)
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1], got {cfg.alpha}")
        if cfg.tau <= 0:
            raise ConfigError(f"--tau must be positive, got {cfg.tau}")
    effective_lr(cfg.lr, cfg.batch_size, cfg.lr_scaling)
    if cfg.lr <= 0 or cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError("--lr must be positive, --epochs and --batch-size at least 1")
    if cfg.schedule == "reference":
        pinned = {"batch_size": 1, "keep": "last", "lr_scaling": "none", **REFERENCE[kind]}
        if kind == "gate":
            pinned["gate_fit"] = "train"
        for k, v in pinned.items():
            if explicit and k in explicit and explicit[k] is not None and explicit[k] != v:
                raise ConfigError(f"--schedule reference pins {k.replace('_', '-')} = {v}; drop that option")
        cfg = replace(cfg, **pinned)
    return cfg


# ----------------------------------------------------------------------------- results

@dataclass
class HeadResult:
    """A trained member: its config, weights, per-split logits and metrics."""

    kind: str
    config: Any
    state: dict[str, torch.Tensor]
    logits: dict[str, np.ndarray]
    metrics: dict[str, Any]
    params: int
    best_epoch: int
    train_loss: list[float]
    extra: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0


def _to(x: np.ndarray | None, dev: torch.device) -> torch.Tensor | None:
    return None if x is None else torch.from_numpy(np.ascontiguousarray(x)).to(dev)


def _metrics(data: HeadData, logits: dict[str, np.ndarray], tau: float, *, best_epoch: int | None = None,
             train_loss: Sequence[float] = ()) -> dict[str, Any]:
    out = {}
    for split, lg in logits.items():
        sa = data.splits[split]
        m = split_metrics(sa.y, lg, data.label_names, teacher_logits=sa.teacher, tau=tau)
        m.extra["excluded_rows"] = sa.excluded
        if best_epoch is not None:
            m.extra["kept_epoch"] = best_epoch
        if train_loss:
            m.extra["train_loss"] = [float(v) for v in train_loss]
        if sa.teacher is not None:
            m.extra["kl_tau"] = tau
        out[split] = asdict(m)
    return out


def _groups(items: Sequence[Any], key: Any) -> list[list[int]]:
    groups: dict[Any, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(key(it), []).append(i)
    return list(groups.values())


def train_distill(
    data: HeadData,
    configs: Sequence[DistillConfig],
    *,
    rows: Sequence[np.ndarray | None] | None = None,
    eval_splits: Sequence[str] | None = None,
    device: str | None = "cpu",
    progress: Progress | None = None,
) -> list[HeadResult]:
    """Train distill heads for ``configs``; compatible ones as one batched model each.

    ``rows[i]`` restricts config i to those training rows (cross-fitting); ``eval_splits``
    defaults to every split but train (pass "train" too when a gate is fitted on it).
    """
    dev = resolve_device(device)
    rows = list(rows) if rows is not None else [None] * len(configs)
    splits = list(eval_splits) if eval_splits is not None else data.eval_splits()
    tr = data.splits["train"]
    if tr.x is None or tr.teacher is None:
        raise ConfigError("distill training needs visual features and teacher logits")
    inputs = {s: SplitInputs([_to(data.splits[s].x, dev)], [False], _to(data.splits[s].y, dev),
                             _to(data.splits[s].teacher, dev)) for s in set(splits) | {"train"}}
    results: list[HeadResult | None] = [None] * len(configs)

    def key(i: int) -> Any:
        c = configs[i]
        n = len(tr) if rows[i] is None else len(rows[i])
        solo = i if c.schedule == "reference" else -1   # the reference runs one configuration at a time
        return (tuple(c.hidden_dims), c.dropout, c.batch_size, c.epochs, c.keep, n, solo)

    for idx in _groups(list(range(len(configs))), key):
        t0 = time.perf_counter()
        cfgs = [configs[i] for i in idx]
        c0 = cfgs[0]
        heads = build_member_modules(
            lambda: build_distill_head(data.input_dim, data.num_classes, c0.hidden_dims, dropout=c0.dropout),
            [c.seed for c in cfgs])
        model = StackedMLP(heads, [c.seed for c in cfgs], dev)
        tr_rows = None
        if any(rows[i] is not None for i in idx):
            tr_rows = torch.stack([torch.as_tensor(rows[i] if rows[i] is not None else np.arange(len(tr)))
                                   for i in idx]).long()
        hyper = [MemberHyper(c.seed, c.effective_lr, c.weight_decay, c.alpha, c.tau) for c in cfgs]
        desc = f"distill {c0.hidden_dims} x{len(cfgs)}"
        out = train_members(model, inputs["train"], hyper, loss="kd", epochs=c0.epochs, batch_size=c0.batch_size,
                            train_rows=tr_rows, evals={s: inputs[s] for s in splits}, keep=c0.keep,
                            progress=progress, desc=desc)
        wall = (time.perf_counter() - t0) / len(cfgs)
        n_params = count_params(heads[0])
        for j, i in enumerate(idx):
            lg = {s: out.logits[s][j] for s in splits}
            loss = [h[j] for h in out.train_loss]
            res = HeadResult("distill", configs[i], out.states[j], lg,
                             _metrics(data, lg, configs[i].tau, best_epoch=out.best_epoch[j], train_loss=loss),
                             n_params, out.best_epoch[j], loss, wall_time_s=wall)
            results[i] = res
            _report_member(progress, res)
    return [r for r in results if r is not None]


def _report_member(progress: Progress | None, res: HeadResult) -> None:
    if progress is None:
        return
    info = {"member": member_label(res.config)}
    for s in ("val", "test"):
        if s in res.metrics:
            info[f"{s}_acc"] = float(res.metrics[s]["accuracy"])
    progress.advance(0, **info)


def member_label(cfg: Any) -> str:
    if isinstance(cfg, GateConfig):
        return f"{GATES.canonical(cfg.gate)} fit={cfg.gate_fit} seed={cfg.seed}"
    return f"depth={cfg.depth} alpha={cfg.alpha:g} lr={cfg.lr:g} seed={cfg.seed}"


def fold_rows(y: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Stratified K-fold assignment of training rows (held-out rows per fold), from the seed."""
    rng = np.random.default_rng(stream_seed(seed, "folds"))
    assign = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        start = int(rng.integers(folds))
        assign[idx] = (np.arange(len(idx)) + start) % folds
    return [np.flatnonzero(assign == k) for k in range(folds)]


def crossfit_train_logits(
    data: HeadData, cfgs: Sequence[DistillConfig], folds: int, *, device: str | None, progress: Progress | None,
) -> list[np.ndarray]:
    """Out-of-fold distill logits on train for each config: K heads per config, each blind to its fold."""
    y = data.splits["train"].y
    n = len(y)
    fold_cfgs, fold_rows_list, owners = [], [], []
    for ci, c in enumerate(cfgs):
        for held in fold_rows(y, folds, c.seed):
            fold_cfgs.append(c)
            fold_rows_list.append(np.setdiff1d(np.arange(n), held))
            owners.append((ci, held))
    res = train_distill(data, fold_cfgs, rows=fold_rows_list, eval_splits=["train"], device=device, progress=progress)
    out = [np.zeros((n, data.num_classes), dtype=np.float32) for _ in cfgs]
    for r, (ci, held) in zip(res, owners):
        out[ci][held] = r.logits["train"][held]
    return out


def gate_inputs(
    data: HeadData, distill: Sequence[HeadResult], gate_fit: str, folds: int, *, device: str | None,
    progress: Progress | None,
) -> list[dict[str, np.ndarray]]:
    """The gate's v1 (distill logits) per split for each distill head, honest to ``gate_fit``."""
    outs = [dict(r.logits) for r in distill]
    if gate_fit == "crossfit":
        oof = crossfit_train_logits(data, [r.config for r in distill], folds, device=device, progress=progress)
        for o, lg in zip(outs, oof):
            o["train"] = lg
    return outs


def train_gates(
    data: HeadData,
    configs: Sequence[GateConfig],
    v1: Sequence[dict[str, np.ndarray]],
    *,
    device: str | None = "cpu",
    progress: Progress | None = None,
    tau: float = 1.0,
) -> list[HeadResult]:
    """Train gates for ``configs`` (config i over distill logits ``v1[i]``), one batched model per gate type."""
    dev = resolve_device(device)
    if data.splits["train"].vlm is None:
        raise ConfigError("gate training needs the VLM source")
    results: list[HeadResult | None] = [None] * len(configs)
    c = data.num_classes
    splits = list(data.splits)

    def key(i: int) -> Any:
        g = configs[i]
        solo = i if g.schedule == "reference" else -1
        return (GATES.canonical(g.gate), g.batch_size, g.epochs, g.keep, g.gate_fit, solo)

    for idx in _groups(list(range(len(configs))), key):
        t0 = time.perf_counter()
        cfgs = [configs[i] for i in idx]
        g0 = cfgs[0]
        if g0.gate_fit == "val" and "val" not in data.splits:
            raise ConfigError("--gate-fit val needs a 'val' split in the cache")
        inputs = {}
        for s in splits:
            sa = data.splits[s]
            v1s = np.stack([v1[i][s] for i in idx]).astype(np.float32)
            inputs[s] = SplitInputs([_to(v1s, dev), _to(sa.vlm, dev)], [True, False], _to(sa.y, dev), None)
        fit = "val" if g0.gate_fit == "val" else "train"
        mods = build_member_modules(lambda: build_gate(g0.gate, c), [g.seed for g in cfgs], stream="gate-init")
        model = VmappedModules(mods, dev)
        hyper = [MemberHyper(g.seed, g.effective_lr, g.weight_decay) for g in cfgs]
        out = train_members(model, inputs[fit], hyper, loss="ce", epochs=g0.epochs, batch_size=g0.batch_size,
                            evals=inputs, keep=g0.keep, order_stream="gate-order", progress=progress,
                            desc=f"gate {GATES.canonical(g0.gate)} x{len(cfgs)}")
        wall = (time.perf_counter() - t0) / len(cfgs)
        n_params = count_params(mods[0])
        for j, i in enumerate(idx):
            lg = {s: out.logits[s][j] for s in splits}
            loss = [h[j] for h in out.train_loss]
            res = HeadResult("gate", configs[i], out.states[j], lg,
                             _metrics(data, lg, tau, best_epoch=out.best_epoch[j], train_loss=loss),
                             n_params, out.best_epoch[j], loss, wall_time_s=wall)
            results[i] = res
            _report_member(progress, res)
    return [r for r in results if r is not None]


# ----------------------------------------------------------------------------- records

def _save_artifacts(results_dir: Path, run_id: str, weights: dict[str, dict[str, torch.Tensor]],
                    config: dict[str, Any]) -> dict[str, str]:
    from safetensors.torch import save_file

    d = Path(results_dir) / ARTIFACTS_DIR / run_id
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, sd in weights.items():
        p = d / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
        out[name] = str(p)
    cfg_path = d / "config.json"
    cfg_path.write_text(json.dumps(config, indent=2, default=str))
    out["config"] = str(cfg_path)
    return out


def distill_arch(data: HeadData, cfg: DistillConfig) -> dict[str, Any]:
    return {"head": "distill", "in_dim": data.input_dim, "num_classes": data.num_classes,
            "hidden_dims": cfg.hidden_dims, "dropout": cfg.dropout}


def distill_record(data: HeadData, res: HeadResult, *, results_dir: str | Path, group: str | None = None,
                   device: str | None = None) -> RunRecord:
    """Write the run record and safetensors weights of a distill head; returns the saved record."""
    cfg: DistillConfig = res.config
    config = {**cfg.to_dict(), "visual": data.sources.get("visual"), "teacher": data.sources.get("teacher"),
              "input_dim": data.input_dim, "num_classes": data.num_classes, "device": device,
              "kept_epoch": "best-on-val" if cfg.keep == "best" else "last"}
    rec = RunRecord(kind="distill", method="distill", dataset=data.dataset, config=config, metrics=res.metrics,
                    seed=cfg.seed, params=res.params, group=group, label_names=list(data.label_names),
                    cache=data.provenance, wall_time_s=res.wall_time_s)
    rec.artifacts = _save_artifacts(Path(results_dir), rec.run_id, {"distill": res.state},
                                    {"run_id": rec.run_id, "distill": distill_arch(data, cfg), "config": config})
    attach_head(rec, data, res)
    rec.save(results_dir)
    return rec


def gate_record(data: HeadData, res: HeadResult, distill: HeadResult | None, *, results_dir: str | Path,
                group: str | None = None, distill_run: str | None = None, device: str | None = None) -> RunRecord:
    """Write the record of a gate run (method "EmoVLM-KD"), with gate and distill weights."""
    cfg: GateConfig = res.config
    dcfg = distill.config.to_dict() if distill is not None else {}
    config = {**cfg.to_dict(), "gate": GATES.canonical(cfg.gate), "gate_display": gate_display_name(cfg.gate),
              "vlm": data.sources.get("vlm"), "visual": data.sources.get("visual"),
              "teacher": data.sources.get("teacher"), "num_classes": data.num_classes, "device": device,
              "distill": dcfg, "distill_run": distill_run,
              "depth": dcfg.get("depth"), "hidden_dims": dcfg.get("hidden_dims"), "alpha": dcfg.get("alpha"),
              "tau": dcfg.get("tau"), "kept_epoch": "best-on-val" if cfg.keep == "best" else "last"}
    if cfg.gate_fit == "val":
        config["note"] = "gate fitted on val: val metrics are in-sample; read test"
    rec = RunRecord(kind="gate", method="EmoVLM-KD", dataset=data.dataset, config=config, metrics=res.metrics,
                    seed=cfg.seed, params=res.params, group=group, label_names=list(data.label_names),
                    cache=data.provenance, wall_time_s=res.wall_time_s)
    weights = {"gate": res.state}
    arch: dict[str, Any] = {"gate": {"name": GATES.canonical(cfg.gate), "num_classes": data.num_classes}}
    if distill is not None:
        weights["distill"] = distill.state
        arch["distill"] = distill_arch(data, distill.config)
    rec.artifacts = _save_artifacts(Path(results_dir), rec.run_id, weights, {"run_id": rec.run_id, **arch,
                                                                             "config": config})
    attach_head(rec, data, res, distill)
    rec.save(results_dir)
    return rec


# ----------------------------------------------------------------------------- reuse saved heads

def load_distill_run(ref: str | Path, results_dir: str | Path, data: HeadData) -> HeadResult:
    """A saved distill head (a run id under ``<results>/artifacts`` or its folder), checked against the cache."""
    from safetensors.torch import load_file

    p = Path(ref)
    if not (p.is_dir() and (p / "config.json").exists()):
        p = Path(results_dir) / ARTIFACTS_DIR / str(ref)
    if not (p / "config.json").exists() or not (p / "distill.safetensors").exists():
        raise ConfigError(f"no saved distill head at '{ref}' (a run id under {results_dir}/{ARTIFACTS_DIR} "
                          f"or a folder with config.json and distill.safetensors)")
    meta = json.loads((p / "config.json").read_text())
    arch = meta.get("distill") or {}
    if arch.get("in_dim") != data.input_dim or arch.get("num_classes") != data.num_classes:
        raise ConfigError(f"{p}: head of input {arch.get('in_dim')} x {arch.get('num_classes')} classes does not "
                          f"fit this cache's {data.input_dim} x {data.num_classes}")
    cfg_d = dict(meta.get("config") or {})
    known = set(DistillConfig.__dataclass_fields__)
    cfg = DistillConfig(**{k: v for k, v in cfg_d.items() if k in known and k != "effective_lr"})
    head = build_distill_head(arch["in_dim"], arch["num_classes"], arch["hidden_dims"], dropout=arch["dropout"])
    head.load_state_dict(load_file(str(p / "distill.safetensors")))
    head.eval()
    logits = {}
    with torch.no_grad():
        for s, sa in data.splits.items():
            logits[s] = head(torch.from_numpy(sa.x)).numpy() if sa.x is not None else None
    return HeadResult("distill", cfg, head.state_dict(), logits, _metrics(data, logits, cfg.tau),
                      count_params(head), -1, [], extra={"run_id": meta.get("run_id"), "dir": str(p)})
