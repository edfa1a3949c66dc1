"""Fine-tune a conventional vision model: Table 1's baselines (VGG16, ResNet50, ViT) and the KD teacher.

SPEC's recipe by default (Adam lr 3e-5, weight decay 1e-5, batch 10, 10 epochs; train
RandomResizedCrop + flip, test Resize + CenterCrop), every number overridable. Weights come from
the hub only when asked for implicitly and reachable, from a local file (``weights``), or random
(``random_init``, with a warning, since such a teacher is far below the paper's numbers).

Each epoch validates, keeps ``best`` (by val accuracy) and ``last`` via `save_teacher`, and writes a
resume checkpoint (model, optimizer, epoch) atomically; rerunning the same command continues from
it. Every epoch reseeds from (seed, epoch), so a resumed run gives the numbers an uninterrupted one
would. Broken images are skipped and counted, never fatal. The test metrics of the best checkpoint
(reloaded from disk, exactly what extraction will use) become a run record.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vea_bench.errors import ConfigError, DatasetError, ModelError
from vea_bench.hashing import config_hash, file_sha256
from vea_bench.progress import Progress, ensure
from vea_bench.results import ResultsStore, RunRecord
from vea_bench.schema import doc
from vea_bench.tracking.base import Tracker, ensure_tracker
from vea_bench.train.state import (
    STATE_FILE,
    atomic_dir,
    check_same_config,
    load_optimizer,
    read_state,
    recover_dir,
    save_optimizer,
    write_json_atomic,
)

if TYPE_CHECKING:
    from torch import nn

    from vea_bench.datasets.base import DatasetIndex

log = logging.getLogger(__name__)

RESUME_DIR = "resume"


@dataclass
class TeacherConfig:
    """Everything that decides the trained weights (its hash names the run; device and workers do not)."""

    arch: str = field(metadata=doc(
        "timm architecture or preset: vit (ViT-B/16 224), vit-384, resnet50, vgg16, or any timm name."))
    epochs: int = field(default=10, metadata=doc("Epochs (SPEC: 10)."))
    lr: float = field(default=3e-5, metadata=doc("Adam learning rate (SPEC: 3e-5)."))
    weight_decay: float = field(default=1e-5, metadata=doc("Adam weight decay (SPEC: 1e-5)."))
    batch_size: int = field(default=10, metadata=doc("Batch size (SPEC: 10)."))
    img_size: int | None = field(default=None, metadata=doc(
        "Input size (default: the architecture's own, e.g. 384 for vit_base_patch16_384)."))
    seed: int = field(default=0, metadata=doc("Training seed (init of the head, shuffling, augmentation)."))
    weights: str | None = field(default=None, metadata=doc(
        "Local pretrained weights (safetensors or torch state dict) to start from."))
    random_init: bool = field(default=False, metadata=doc("Train from random weights (far below the paper's numbers)."))
    timm_kwargs: dict[str, Any] = field(default_factory=dict, metadata=doc("timm constructor arguments."))

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError("--epochs must be at least 1")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if self.lr <= 0:
            raise ConfigError("--lr must be positive")
        if self.img_size is not None and self.img_size < 1:
            raise ConfigError("--img-size must be positive (leave it out for the architecture's own)")
        if self.weights and self.random_init:
            raise ConfigError("give either --weights FILE or --random-init, not both")


@dataclass
class TeacherResult:
    """Where everything went and what it scored."""

    out: Path
    record: RunRecord
    record_paths: list[Path]
    best_epoch: int
    history: list[dict[str, Any]]
    resumed_from: int = 0


def method_name(arch: str) -> str:
    """The table row name for a timm architecture ('ViT', 'ResNet50', 'VGG16'), else the timm name."""
    from vea_bench.models.teacher import TEACHER_PRESETS

    methods = {TEACHER_PRESETS.get(n).arch: TEACHER_PRESETS.get(n).method for n in TEACHER_PRESETS.names()}
    return methods.get(arch, arch)


def build_initial_model(cfg: TeacherConfig, num_classes: int) -> tuple[nn.Module, str]:
    """The model to fine-tune and how it was initialised ('weights:<sha>', 'hub', 'random')."""
    from vea_bench.models.teacher import build_teacher

    if cfg.weights:
        model = build_teacher(cfg.arch, num_classes, weights=cfg.weights, img_size=cfg.img_size, **cfg.timm_kwargs)
        return model, f"weights:{file_sha256(cfg.weights)}"
    if cfg.random_init:
        log.warning("training %s from random initialisation (--random-init): expect accuracy far below "
                    "the paper's fine-tuned models", cfg.arch)
        return build_teacher(cfg.arch, num_classes, img_size=cfg.img_size, **cfg.timm_kwargs), "random"
    try:
        with _hub_or_cache_only():
            model = build_teacher(cfg.arch, num_classes, pretrained=True, img_size=cfg.img_size, **cfg.timm_kwargs)
    except ModelError as exc:
        raise ModelError(
            f"no pretrained weights for '{cfg.arch}': the hub is unreachable or has none ({exc}); "
            f"pass --weights FILE (a local safetensors / torch state dict, e.g. ImageNet weights) "
            f"or --random-init to train from scratch"
        ) from None
    return model, "hub"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint (``HF_ENDPOINT``) accepts a TCP connection within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


@contextmanager
def _hub_or_cache_only() -> Iterator[None]:
    """Without a reachable hub, look only in the local HF cache: a fast answer instead of minutes of retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    log.info("the hub at %s is unreachable; looking for cached weights only", constants.ENDPOINT)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


class _ImageSet:
    """A split as a torch dataset; an undecodable image yields None (skipped and counted by the collate)."""

    def __init__(self, index: DatasetIndex, split: str, transform: Any) -> None:
        self.root = index.root
        self.samples = index.split(split)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        from vea_bench.datasets import open_image

        s = self.samples[i]
        try:
            img = open_image(self.root / s.path)
        except DatasetError:
            return None, s.label, i
        return self.transform(img), s.label, i


def _collate(batch: list[tuple[Any, int, int]]) -> tuple[Any, Any, Any, list[int]]:
    import torch

    good = [b for b in batch if b[0] is not None]
    bad = [b[2] for b in batch if b[0] is None]
    if not good:
        return None, None, None, bad
    return (torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]),
            torch.tensor([b[2] for b in good]), bad)


def _loader(ds: _ImageSet, batch_size: int, *, shuffle: bool, seed: int, workers: int) -> Any:
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g,
                                       num_workers=workers, collate_fn=_collate,
                                       persistent_workers=False, pin_memory=False)


def predict(model: nn.Module, ds: _ImageSet, *, device: str, batch_size: int, workers: int,
            progress: Progress | None = None, desc: str = "eval") -> tuple[Any, Any, list[int]]:
    """Logits and labels of every decodable image of ``ds`` (in split order) and the skipped indices."""
    import numpy as np
    import torch

    prog = ensure(progress)
    prog.start(desc, total=len(ds))
    model.eval()
    logits, labels, order, skipped = [], [], [], []
    with torch.inference_mode(), _autocast(device):
        for x, y, idx, bad in _loader(ds, batch_size, shuffle=False, seed=0, workers=workers):
            skipped.extend(bad)
            if x is not None:
                logits.append(model(x.to(device)).float().cpu())
                labels.append(y)
                order.append(idx)
            prog.advance(len(bad) + (0 if x is None else len(x)))
    prog.finish()
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64), skipped
    return torch.cat(logits).numpy(), torch.cat(labels).numpy(), skipped


def _autocast(device: str) -> Any:
    """bf16 autocast on GPU (SPEC: mixed precision); a no-op context on CPU."""
    import contextlib

    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class _Run:
    """One teacher run's fixed facts: identity, where it writes, the launch it runs in."""

    index: DatasetIndex
    cfg: TeacherConfig
    out: Path
    identity: dict[str, Any]
    chash: str
    device: str
    launch: Any
    workers: int
    track: Tracker = field(default_factory=lambda: ensure_tracker(None))  # rank 0's tracker

    @property
    def resume_dir(self) -> Path:
        return self.out / RESUME_DIR

    @property
    def steps_per_epoch(self) -> int:
        """Global batches in one pass over train (a tracker's step count)."""
        return -(-len(self.index.split("train")) // self.cfg.batch_size)


@dataclass
class _Progress:
    """What the loop carries from epoch to epoch (and what the resume checkpoint restores)."""

    start_epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def train_teacher(
    index: DatasetIndex,
    cfg: TeacherConfig,
    out: str | Path,
    *,
    device: str = "auto",
    workers: int = 0,
    results_dir: str | Path | None = "results",
    progress: Progress | None = None,
    tracker: Tracker | None = None,
) -> TeacherResult:
    """Fine-tune ``cfg.arch`` on ``index`` into ``out``; resumes an unfinished run with the same config.

    A finished run with the same config is not retrained: its record is returned as is. Under a
    launcher (`vea_bench.distributed`) the processes train one DistributedDataParallel model:
    every process reads each global batch of ``cfg.batch_size`` images (the same crops as one
    process draws) and trains on its share, so the weights match a single-process run; rank 0
    alone validates and writes checkpoints and the record. A run resumes with any number of processes.
    """
    import torch

    from vea_bench import distributed as dist
    from vea_bench.models.teacher import resolve_arch

    cfg.validate()
    cfg.arch = resolve_arch(cfg.arch)
    launch, device = dist.setup(device)
    run = _new_run(index, cfg, Path(out), device, launch, workers)
    if launch.is_main:
        run.track = ensure_tracker(tracker)
    if launch.is_main:
        recover_dir(run.resume_dir)
    dist.barrier()
    state = read_state(run.resume_dir)
    if state is not None:
        check_same_config(state, run.identity, run.chash, run.out, "teacher")
        if state.get("finished"):
            rec_path = Path(state["record"])
            log.info("%s already holds this finished run; returning its record %s", run.out, rec_path)
            record = RunRecord.load(rec_path)
            return TeacherResult(run.out, record, [rec_path], int(state["best_epoch"]), state["history"],
                                 resumed_from=int(state["epoch"]))

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    model, init = build_initial_model(cfg, index.label_space.num_classes)
    meta = _teacher_meta(run, model, init)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    done = _resume(run, model, opt, state)
    _fit(run, model, opt, meta, done, progress)
    result = _finish(run, meta, init, done, t0, results_dir, progress) if launch.is_main else None
    return dist.broadcast_object(result)


def _new_run(index: DatasetIndex, cfg: TeacherConfig, out: Path, device: str, launch: Any, workers: int) -> _Run:
    """Check the splits and fix the run's identity (its hash names the run; the launch is not in it)."""
    space = index.label_space
    for split in ("train", "val", "test"):
        if split not in index.splits or not index.splits[split]:
            raise DatasetError(f"{index.name} at {index.root}: split '{split}' is empty or missing; "
                               f"teacher training needs train, val and test")
    identity = {
        "task": "teacher",
        **asdict(cfg),
        "weights_sha256": file_sha256(cfg.weights) if cfg.weights else None,
        "dataset": index.name,
        "label_space": space.name,
        "label_names": list(space.labels),
        "manifests": index.manifest_hashes(),
        "split_seed": index.split_seed,
    }
    return _Run(index, cfg, out, identity, config_hash(identity), device, launch, workers)


def _teacher_meta(run: _Run, model: nn.Module, init: str) -> dict[str, Any]:
    """What `save_teacher` records beside the weights: enough to rebuild and preprocess exactly."""
    from vea_bench.datasets.images import decoding_provenance
    from vea_bench.models.teacher import data_config

    cfg, space = run.cfg, run.index.label_space
    return {
        "label_names": list(space.labels), "label_space": space.name, "dataset": run.index.name,
        "img_size": cfg.img_size, "data_config": data_config(model, cfg.img_size), "timm_kwargs": dict(cfg.timm_kwargs),
        "init": init, "seed": cfg.seed, "train_config": run.identity, "config_hash": run.chash,
        "image_decoding": decoding_provenance(),  # how its training images were decoded (EXIF applied)
    }


def _resume(run: _Run, model: nn.Module, opt: Any, state: dict[str, Any] | None) -> _Progress:
    """Load the resume checkpoint (written by any number of processes) into the model and optimizer."""
    if state is None:
        return _Progress()
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(run.resume_dir / "model.safetensors")), strict=True)
    load_optimizer(opt, run.resume_dir, state["optimizer"])
    done = _Progress(int(state["epoch"]), float(state["best_val"]), int(state["best_epoch"]), list(state["history"]))
    log.info("resuming %s from epoch %d (best val %.4f at epoch %d)", run.out, done.start_epoch, done.best_acc,
             done.best_epoch)
    return done


def _fit(run: _Run, model: nn.Module, opt: Any, meta: dict[str, Any], done: _Progress,
         progress: Progress | None) -> None:
    """The epochs still to train: train, then (rank 0) validate, keep best/last and checkpoint."""
    import torch

    from vea_bench import distributed as dist
    from vea_bench.models.teacher import teacher_transform

    cfg, launch = run.cfg, run.launch
    train_ds = _ImageSet(run.index, "train", teacher_transform(meta, train=True))
    val_ds = _ImageSet(run.index, "val", teacher_transform(meta, train=False))
    net = model
    if launch.distributed:
        from torch.nn.parallel import DistributedDataParallel

        cuda = run.device.startswith("cuda")
        if cuda:  # batch-norm statistics over the global batch, as one process computes them (CUDA only)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[run.device] if cuda else None)
    prog = ensure(progress if launch.is_main else None)
    skipped: set[int] = set()
    for epoch in range(done.start_epoch, cfg.epochs):
        # Reseed per epoch: shuffling, crops and dropout depend only on (seed, epoch) -> exact resume.
        torch.manual_seed(cfg.seed * 1000 + epoch)
        prog.start(f"epoch {epoch + 1}/{cfg.epochs}", total=len(train_ds))
        total, seen, correct = _train_epoch(run, net, opt, train_ds, epoch, skipped, prog)
        prog.finish()
        if seen == 0:
            raise DatasetError(f"{run.index.name}: no training image could be decoded")
        if skipped:
            log.warning("%d training images could not be decoded and were skipped", len(skipped))
        if launch.is_main:
            _end_epoch(run, model, opt, meta, done, val_ds, epoch,
                       {"train_loss": total / seen, "train_accuracy": correct / seen, "skipped_train": len(skipped)},
                       progress)
        dist.barrier()


def _train_epoch(run: _Run, net: nn.Module, opt: Any, train_ds: _ImageSet, epoch: int, skipped: set[int],
                 prog: Progress) -> tuple[float, int, int]:
    """One pass over the training split: (summed loss, images, correct), over all processes.

    Every process loads each global batch (same order, same random crops as a single process)
    and trains on its share: its summed loss, scaled so that DistributedDataParallel's mean over
    processes is the whole batch's mean loss.
    """
    import torch

    from vea_bench import distributed as dist

    cfg, device, launch = run.cfg, run.device, run.launch
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    total, seen, correct = 0.0, 0, 0
    for b, (x, y, _, bad) in enumerate(_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch,
                                               workers=run.workers)):
        skipped.update(bad)
        if x is None:
            prog.advance(len(bad))
            continue
        n = len(y)
        if launch.distributed:
            x, y, weight = _share(x, y, launch.rank, launch.world_size)
        x, y = x.to(device), y.to(device)
        with _autocast(device):
            logits = net(x)
            if launch.distributed:
                loss = torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum") * (weight / n)
            else:
                loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # A token parameter's gradient comes out of a concatenation with other strides than its
            # exchange bucket: torch copies it (a few bytes) and says so; nothing is wrong.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            loss.backward()
        opt.step()
        if launch.distributed:
            total += float(loss.detach()) * n / launch.world_size
            seen += len(y) if weight else 0
            correct += int((logits.argmax(1) == y).sum()) if weight else 0
        else:
            total += loss.item() * len(y)
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
        prog.advance(len(bad) + n, loss=total / max(seen, 1))
        # under a launcher, rank 0's share of the batch loss scaled to the whole batch
        step_loss = loss.item() * (launch.world_size if launch.distributed else 1)
        run.track.step(epoch * run.steps_per_epoch + b, loss=step_loss, lr=opt.param_groups[0]["lr"])
    if launch.distributed:
        total, s, c = dist.all_reduce_sum([total, seen, correct])
        seen, correct = int(s), int(c)
    return total, seen, correct


def _share(x: Any, y: Any, rank: int, world: int) -> tuple[Any, Any, float]:
    """This process's part of a global batch and its loss weight (``world``, or 0 for a stand-in).

    A process left without an image (a batch smaller than the number of processes) still runs
    one image, weighted 0, so that every process takes part in the gradient exchange.
    """
    xs, ys = x[rank::world], y[rank::world]
    if len(ys):
        return xs, ys, float(world)
    return x[:1], y[:1], 0.0


def _end_epoch(run: _Run, model: nn.Module, opt: Any, meta: dict[str, Any], done: _Progress, val_ds: _ImageSet,
               epoch: int, train: dict[str, Any], progress: Progress | None) -> None:
    """Rank 0: validate, keep ``best`` / ``last``, write the resume checkpoint atomically."""
    from safetensors.torch import save_file

    from vea_bench.models.teacher import save_teacher

    cfg = run.cfg
    vlogits, vy, vbad = predict(model, val_ds, device=run.device, batch_size=cfg.batch_size * 2, workers=run.workers,
                                progress=progress, desc=f"val {epoch + 1}/{cfg.epochs}")
    val_acc = float((vlogits.argmax(1) == vy).mean()) if len(vy) else float("nan")
    done.history.append({"epoch": epoch + 1, "train_loss": train["train_loss"],
                         "train_accuracy": train["train_accuracy"], "val_accuracy": val_acc,
                         "skipped_train": train["skipped_train"], "skipped_val": len(vbad)})
    run.track.epoch(epoch + 1, done.history[-1], step=(epoch + 1) * run.steps_per_epoch - 1)
    log.info("epoch %d: loss %.4f, val accuracy %.4f", epoch + 1, train["train_loss"], val_acc)
    if val_acc > done.best_acc:
        done.best_acc, done.best_epoch = val_acc, epoch + 1
        save_teacher(model, run.out, meta, name="best")
    save_teacher(model, run.out, meta, name="last")
    with atomic_dir(run.resume_dir) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        opt_meta = save_optimizer(opt, tmp)
        write_json_atomic(tmp / STATE_FILE, {
            "config_hash": run.chash, "config": run.identity, "epoch": epoch + 1, "best_val": done.best_acc,
            "best_epoch": done.best_epoch, "history": done.history, "optimizer": opt_meta, "finished": False})


def _finish(run: _Run, meta: dict[str, Any], init: str, done: _Progress, t0: float,
            results_dir: str | Path | None, progress: Progress | None) -> TeacherResult:
    """Rank 0: test the best checkpoint as reloaded from disk (exactly what extraction will run), record it."""
    from vea_bench.metrics import split_metrics
    from vea_bench.models.teacher import load_teacher, teacher_transform
    from vea_bench.results import environment, experiment_id

    cfg, out, index = run.cfg, run.out, run.index
    label_names = list(index.label_space.labels)
    best, _ = load_teacher(out, device=run.device, name="best")
    metrics = {}
    for split in ("val", "test"):
        ds = _ImageSet(index, split, teacher_transform(meta, train=False))
        logits, y, bad = predict(best, ds, device=run.device, batch_size=cfg.batch_size * 2, workers=run.workers,
                                 progress=progress, desc=split)
        m = split_metrics(y, logits, label_names)
        m.extra["skipped"] = len(bad)
        if bad:
            log.warning("%d %s images could not be decoded and were left out of the %s metrics", len(bad), split, split)
        metrics[split] = asdict(m)
    method = method_name(cfg.arch)
    record = RunRecord(
        kind="teacher",
        method=method,
        dataset=index.name,
        # the stage identity without the seed; the config below also holds this run's history and paths
        experiment_id=experiment_id("teacher", method, method, index.name, run.identity),
        config={**run.identity, "arch": cfg.arch, "init": init, "checkpoint": str(out), "best_epoch": done.best_epoch,
                "device": run.device, "history": done.history, "split_rule": index.split_rule},
        metrics=metrics,
        seed=cfg.seed,
        params=int(sum(p.numel() for p in best.parameters() if p.requires_grad)),
        label_names=label_names,
        artifacts={"best": str(out / "best.safetensors"), "last": str(out / "last.safetensors"),
                   "config": str(out / "config.json")},
        wall_time_s=time.time() - t0,
        environment={**environment(), **run.launch.facts()},  # how many processes trained it
    )
    paths = [ResultsStore(out).save(record, flat=True)]
    if results_dir is not None:
        paths.append(ResultsStore(results_dir).save(record))
    # The run is complete: drop the heavy resume tensors, keep the state as the "finished" marker.
    with atomic_dir(run.resume_dir) as tmp:
        write_json_atomic(tmp / STATE_FILE, {
            "config_hash": run.chash, "config": run.identity, "epoch": cfg.epochs, "best_val": done.best_acc,
            "best_epoch": done.best_epoch, "history": done.history, "finished": True, "record": str(paths[0])})
    return TeacherResult(out, record, paths, done.best_epoch, done.history, resumed_from=done.start_epoch)
