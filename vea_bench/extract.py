"""Extraction: run the expensive models once per image into the HDF5 cache, in one pass per batch.

The reference implementation reruns a 7B VLM, its vision tower and a ViT on every image in every
epoch of stages 2 and 3, one image at a time. Here one loader pass decodes each image once;
worker processes do all CPU preprocessing (the VLM processor and every teacher/backbone
transform) in ``collate_fn``; the main process runs one batched VLM call per batch that yields the
pooled visual embedding *and* the answer (generated and/or scored), then each teacher and
backbone on the same batch. Results go into cache sources::

    visual/<key>    emb       N x D  float16   mean-pooled visual-encoder output (merger/projector)
    vlm/<key>       text      N      str       raw generated answer              (generate mode)
                    onehot    N x C  uint8     parsed answer, all-zero if unparsed (the paper's 'none')
                    parse     N      str       parse status (see `vea_bench.models.parse`)
                    logprobs  N x C  float32   log-likelihood of each label's answer (score mode)
    teacher/<key>   logits    N x C  float32   in the cache's label order
    backbone/<key>  feat      N x D  float16   pooled frozen-backbone feature

Only rows a source is missing are computed, so a killed run resumes where it stopped; ``shard``
splits rows by ``row % n`` into per-shard files that `vea-bench cache merge` joins; a corrupt
image fails its row (with the reason) and the run goes on. SIGTERM / SIGINT stop the run after
the current batch (`vea_bench.cache.guard`); rows whose image file changed since they were
computed (per-image fingerprints, `vea_bench.cache.fingerprints`) are recomputed.

Started by a launcher (torchrun, accelerate, srun: `vea_bench.distributed`), the processes are the
shards: each computes its rows on its own device into its shard file, skipping rows the cache
already holds, and rank 0 merges the shards into the cache at the end (and, first, any shard
files an earlier launch left behind), so the job ends with the cache one process would write.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vea_bench.errors import CacheError, ConfigError, DatasetError, ModelError, VeaError
from vea_bench.models.base import GenerationOptions, LoadOptions
from vea_bench.models.engines import ENGINES, engine_provenance, load_engine
from vea_bench.progress import Progress, ensure

if TYPE_CHECKING:
    from vea_bench.cache.store import FeatureCache, SourceWriter
    from vea_bench.datasets.base import DatasetIndex

log = logging.getLogger(__name__)

ANSWER_MODES: tuple[str, ...] = ("generate", "score")
PARSER_VERSION = "vea_bench.models.parse/2"


# --------------------------------------------------------------------------------------- keys
def sanitize_key(text: str) -> str:
    """A cache source key from a model name: lower case, ``[a-z0-9._+-]`` only, no slashes."""
    key = re.sub(r"[^a-z0-9._+-]+", "-", str(text).strip().lower()).strip("-.")
    return key or "model"


def _basename(ref: str) -> str:
    return Path(str(ref).rstrip("/\\")).name or str(ref)


def vlm_key(model: str, adapter: str | None = None) -> str:
    """Default key of a VLM's sources: ``qwen2-vl-7b-instruct`` or ``qwen2-vl-7b-instruct+<adapter>``."""
    key = sanitize_key(_basename(model))
    if adapter:
        key += "+" + sanitize_key(_basename(adapter))
    return key


def teacher_key(path: str | Path) -> str:
    """Default key of a teacher: its checkpoint folder name (plus the weights name unless ``best``)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        return sanitize_key(p.parent.name + ("" if p.stem == "best" else "-" + p.stem))
    return sanitize_key(p.name)


def backbone_key(spec: Any) -> str:
    """Default key of a backbone: the timm name, plus ``-random`` or the local weights' file stem."""
    from vea_bench.models.backbone import RANDOM

    key = spec.name
    if spec.weights == RANDOM:
        key += "-random"
    elif spec.weights:
        key += "-" + Path(spec.weights).stem
    return sanitize_key(key)


# ------------------------------------------------------------------------------------ summary
@dataclass
class SourceSummary:
    """What one run did to one source (over the selected splits)."""

    name: str
    rows: int = 0          # rows of the selected splits
    done_before: int = 0   # already resolved (written or failed) when the run started (resume)
    done: int = 0          # written by this run
    failed: int = 0        # failed by this run (reason in the cache's _error)
    unparsed: int = 0      # vlm: answers that named no single label (all-zero one-hot)
    missing: int = 0       # still missing when the run ended (--limit, --shard, interruption)
    changed: int = 0       # rows recomputed because their image file changed since they were written


@dataclass
class ExtractSummary:
    """A finished extraction: where it wrote, what each source got, how fast."""

    cache_path: Path
    sources: list[SourceSummary] = field(default_factory=list)
    images: int = 0                 # images decoded and run through the models by this run
    failed_images: int = 0          # images that could not be decoded or preprocessed
    elapsed_s: float = 0.0          # whole call, model loading included
    loop_s: float = 0.0             # the image loop alone (what images/s is measured over)
    shard: tuple[int, int] | None = None
    # Under a launcher, what rank 0 changes in the final cache before merging this process's shard.
    final_stale: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # source -> split -> rows
    final_drop: list[str] = field(default_factory=list)                          # sources to overwrite

    @property
    def images_per_s(self) -> float:
        return self.images / self.loop_s if self.loop_s > 0 else 0.0

    @property
    def complete(self) -> bool:
        return all(s.missing == 0 for s in self.sources)

    def source(self, name: str) -> SourceSummary:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)


# ------------------------------------------------------------------------------------- groups
@dataclass
class _Target:
    """One cache source a model group writes, with its per-split missing rows."""

    writer: SourceWriter
    summary: SourceSummary
    missing: dict[str, set[int]] = field(default_factory=dict)
    fingerprints: dict[str, np.ndarray] = field(default_factory=dict)  # per split, of the images now


class _Group:
    """One model on the batch: prepares its inputs in workers, runs in the main process, writes targets."""

    name: str
    targets: list[_Target]

    def needs(self, split: str, row: int) -> bool:
        return any(row in t.missing.get(split, ()) for t in self.targets)

    def prepare(self, images: list[Any]) -> Any:  # in a loader worker
        raise NotImplementedError

    def run(self, inputs: Any, jobs: list[_Job]) -> dict[str, dict[str, np.ndarray]]:  # main process
        """Arrays per target name (``kind/key``), one row per job."""
        raise NotImplementedError


class _VLMGroup(_Group):
    def __init__(self, engine: Any, prompt: str, modes: set[str], labels: list[str], space: Any,
                 generation: GenerationOptions, visual: _Target, vlm: _Target | None, parse: str = "strict") -> None:
        self.name = "vlm"
        self.parse = parse
        self.engine = engine
        self.backend = backend = engine.backend
        if vlm is None:   # an engine without answers (embed-only): the visual source alone
            modes = set()
        self.prompt = prompt
        self.modes = modes
        self.labels = labels
        self.space = space
        self.generation = generation
        self.visual = visual
        self.vlm = vlm
        self.targets = [visual] if vlm is None else [visual, vlm]

        # The CPU half only (processor + chat template), so workers never need the model itself.
        get = getattr(backend, "preparer", None)
        self._prep = get() if callable(get) else backend.prepare

    def prepare(self, images: list[Any]) -> Any:
        return self._prep(images, self.prompt)

    def run(self, inputs: Any, jobs: list[_Job]) -> dict[str, dict[str, np.ndarray]]:
        from vea_bench.models.parse import onehot, parse_answers

        # Sampled decoding is seeded by the backend from ``generation.seed`` per batch, so a
        # resumed run redraws what an uninterrupted one would have drawn for the same batch.
        out = self.engine.run(
            inputs,
            generate="generate" in self.modes,
            score_labels=list(self.labels) if "score" in self.modes else None,
            generation=self.generation,
        )
        pooled = np.asarray(out.pooled, dtype=np.float32)
        if pooled.shape != (len(jobs), self.backend.embed_dim):
            raise ModelError(
                f"VLM backend {self.backend.name} returned pooled features of shape {pooled.shape} "
                f"for {len(jobs)} images (expected width {self.backend.embed_dim})"
            )
        vlm: dict[str, np.ndarray] = {}
        if "generate" in self.modes:
            texts = list(out.texts or [])
            if len(texts) != len(jobs):
                raise ModelError(f"VLM backend {self.backend.name} returned {len(texts)} answers for {len(jobs)} images")
            parsed = parse_answers(texts, self.space, mode=self.parse)
            # HDF5 strings cannot hold NUL; a model can emit one (byte-level tokens), keep it visible.
            vlm["text"] = np.asarray([str(t).replace("\x00", "\\x00") for t in texts], dtype=object)
            vlm["onehot"] = onehot(parsed, len(self.labels))
            vlm["parse"] = np.asarray([p.status for p in parsed], dtype=object)
        if "score" in self.modes:
            lp = np.asarray(out.logprobs, dtype=np.float32)
            if lp.shape != (len(jobs), len(self.labels)):
                raise ModelError(f"VLM backend {self.backend.name} returned log-probs of shape {lp.shape}")
            vlm["logprobs"] = lp
        if self.vlm is None:
            return {self.visual.summary.name: {"emb": pooled.astype(np.float16)}}
        return {self.visual.summary.name: {"emb": pooled.astype(np.float16)}, self.vlm.summary.name: vlm}


class _ImageModelGroup(_Group):
    """A teacher (logits) or backbone (features): a torch module on transformed pixels."""

    def __init__(self, name: str, model: Any, transform: Callable[[Any], Any], target: _Target,
                 field_name: str, dtype: str, device: str, column_order: np.ndarray | None = None) -> None:
        self.name = name
        self.model = model
        self.transform = transform
        self.target = target
        self.targets = [target]
        self.field_name = field_name
        self.dtype = dtype
        self.device = device
        self.column_order = column_order

    def prepare(self, images: list[Any]) -> Any:
        import torch

        return torch.stack([self.transform(img) for img in images])

    def run(self, inputs: Any, jobs: list[_Job]) -> dict[str, dict[str, np.ndarray]]:
        import torch

        with torch.inference_mode():
            out = self.model(inputs.to(self.device)).float().cpu().numpy()
        if self.column_order is not None:
            out = out[:, self.column_order]
        return {self.target.summary.name: {self.field_name: out.astype(self.dtype)}}


# -------------------------------------------------------------------------------------- loader
@dataclass(frozen=True)
class _Job:
    split: str
    row: int
    path: str
    needs: tuple[bool, ...]   # per group


@dataclass
class _Batch:
    jobs: list[_Job]
    failed: list[tuple[int, str]]                       # (job position, reason): image unreadable
    inputs: list[tuple[list[int], Any] | None]          # per group: (job positions, prepared inputs)
    group_failed: list[list[tuple[int, str]]]           # per group: preprocessing failures


class _ImageJobs:
    """Map-style dataset over the jobs: decodes each image once (in a worker)."""

    def __init__(self, root: Path, jobs: list[_Job], exif: str = "apply") -> None:
        self.root = root
        self.jobs = jobs
        self.exif = exif

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        from vea_bench.datasets import open_image

        try:
            return i, open_image(self.root / self.jobs[i].path, exif=self.exif), None
        except DatasetError as exc:
            return i, None, str(exc)
        except Exception as exc:  # noqa: BLE001  a decoder crash is this row's failure, not the run's
            return i, None, f"{self.jobs[i].path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


class _Collate:
    """Runs every group's CPU preprocessing on a batch (in the worker that decoded it)."""

    def __init__(self, jobs: list[_Job], groups: list[_Group]) -> None:
        self.jobs = jobs
        self.groups = groups

    def __call__(self, items: list[tuple[int, Any, str | None]]) -> _Batch:
        jobs = [self.jobs[i] for i, _, _ in items]
        failed = [(pos, err) for pos, (_, _, err) in enumerate(items) if err is not None]
        inputs: list[tuple[list[int], Any] | None] = []
        group_failed: list[list[tuple[int, str]]] = []
        for g_idx, group in enumerate(self.groups):
            pos = [p for p, (i, img, err) in enumerate(items) if err is None and self.jobs[i].needs[g_idx]]
            bad: list[tuple[int, str]] = []
            prepared = None
            if pos:
                try:
                    prepared = group.prepare([items[p][1] for p in pos])
                except Exception:  # noqa: BLE001  isolate the image(s) the preprocessor refuses
                    keep = []
                    for p in pos:
                        try:
                            group.prepare([items[p][1]])
                            keep.append(p)
                        except Exception as exc:  # noqa: BLE001
                            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                            bad.append((p, f"{jobs[p].path}: preprocessing for {group.name} failed ({msg[:160]})"))
                    pos = keep
                    prepared = group.prepare([items[p][1] for p in pos]) if pos else None
            inputs.append((pos, prepared) if pos else None)
            group_failed.append(bad)
        return _Batch(jobs, failed, inputs, group_failed)


def _worker_init(_: int) -> None:
    import torch

    from vea_bench.cache.guard import ignore_stop_signals

    torch.set_num_threads(1)  # workers preprocess; the model owns the cores
    ignore_stop_signals()  # the main process stops the run after its current batch


# ------------------------------------------------------------------------------------- extract
@dataclass
class _Request:
    """One extraction's options after validation (what every process of a launch shares)."""

    index: DatasetIndex
    cache_path: Path
    vlm: LoadOptions | None
    vlm_backend: Any | None
    modes: set[str]
    generation: GenerationOptions
    teachers: Sequence[str | Path]
    backbones: Sequence[Any]
    keys: dict[str, str]
    splits: list[str]
    limit: int | None
    shard: tuple[int, int] | None
    batch_size: int
    num_workers: int
    overwrite: bool
    retry_failed: bool
    device: str | None
    parse: str
    exif: str
    decoding: dict[str, Any]
    engine: str = "transformers"
    # Under a launcher: the final cache, whose resolved rows no process computes again.
    final: Path | None = None


def extract(
    dataset_index: DatasetIndex,
    cache_path: str | Path,
    *,
    vlm: LoadOptions | None,
    answer_modes: Iterable[str] = ("generate",),
    generation: GenerationOptions | None = None,
    teachers: Sequence[str | Path] = (),
    backbones: Sequence[Any] = (),
    splits: Sequence[str] | None = None,
    limit: int | None = None,
    shard: tuple[int, int] | str | None = None,
    batch_size: int = 8,
    num_workers: int = 2,
    source_keys: Mapping[str, str] | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    device: str | None = None,
    vlm_backend: Any | None = None,
    progress: Progress | None = None,
    parse: str = "strict",
    exif: str = "apply",
    engine: str = "transformers",
) -> ExtractSummary:
    """Fill ``cache_path`` with the sources of ``vlm`` / ``teachers`` / ``backbones`` for the dataset.

    ``backbones`` are timm names, ``NAME@WEIGHTS`` strings or `BackboneSpec`s. ``source_keys`` maps
    ``"vlm"``, a teacher path or a backbone string (as given) to the cache key to use instead of the
    default. ``vlm_backend`` passes an already loaded backend (benchmarks, repeated runs).
    ``parse`` is the answer parse mode (`vea_bench.models.parse`: strict, the reference's, or
    lenient); ``exif`` applies or ignores EXIF orientation (`vea_bench.datasets.images`); both are
    recorded in the sources' provenance. ``engine`` (a `vea_bench.models.engines.ENGINES` name) runs
    the VLM; an engine that gives no answers writes only the visual source. Returns per-source
    counts. SIGTERM / SIGINT stop the run after the current batch with
    `vea_bench.cache.guard.Stopped` (every batch written so far is kept; a second signal stops at once).

    Started by a launcher (torchrun, accelerate, srun; `vea_bench.distributed`), each process
    computes its share of the rows on its own device into a shard file, and rank 0 merges them
    into ``cache_path`` at the end; every process returns the whole job's summary.
    """
    from vea_bench.distributed import hint_more_gpus, launch_env

    req = _request(dataset_index, cache_path, vlm=vlm, answer_modes=answer_modes, generation=generation,
                   teachers=teachers, backbones=backbones, splits=splits, limit=limit, shard=shard,
                   batch_size=batch_size, num_workers=num_workers, source_keys=source_keys, overwrite=overwrite,
                   retry_failed=retry_failed, device=device, vlm_backend=vlm_backend, parse=parse, exif=exif,
                   engine=engine)
    launch = launch_env()
    if launch.distributed:
        return _extract_launched(req, launch, progress)
    hint_more_gpus(device)
    return _extract_file(req, progress)


def _request(index: DatasetIndex, cache_path: str | Path, *, vlm: LoadOptions | None, answer_modes: Iterable[str],
             generation: GenerationOptions | None, teachers: Sequence[str | Path], backbones: Sequence[Any],
             splits: Sequence[str] | None, limit: int | None, shard: tuple[int, int] | str | None,
             batch_size: int, num_workers: int, source_keys: Mapping[str, str] | None, overwrite: bool,
             retry_failed: bool, device: str | None, vlm_backend: Any | None, parse: str, exif: str,
             engine: str = "transformers") -> _Request:
    """Validate everything cheap (options, paths, lineage) before any model is loaded."""
    from vea_bench import lineage
    from vea_bench.cache.ops import parse_shard
    from vea_bench.datasets.images import decoding_provenance
    from vea_bench.models.parse import check_mode

    modes = {m.strip().lower() for m in answer_modes if m.strip()}
    unknown = modes - set(ANSWER_MODES)
    if unknown:
        raise ConfigError(f"unknown answer mode(s) {', '.join(sorted(unknown))} (choices: {', '.join(ANSWER_MODES)})")
    with_vlm = vlm is not None or vlm_backend is not None
    if with_vlm and not modes:
        raise ConfigError("--answer needs at least one of generate, score")
    if not with_vlm and not teachers and not backbones:
        raise ConfigError("nothing to extract: give --vlm, --teacher or --backbone")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {limit}")
    check_mode(parse)
    ENGINES.canonical(engine)  # an unknown engine is a one-line error before anything loads
    if isinstance(shard, str):
        shard = parse_shard(shard)
    use_splits = list(splits) if splits else list(index.splits)
    for s in use_splits:
        index.split(s)  # one-line DatasetError for an unknown split
    # Cheap checks before anything heavy: model paths, teacher checkpoints.
    if vlm is not None and vlm_backend is None:
        from vea_bench.models.loading import resolve_source

        resolve_source(vlm.model)
    for t in teachers:
        if not Path(t).exists():
            raise ModelError(f"teacher checkpoint {t} does not exist")
        lineage.check_teacher(t, index)  # trained on another split of this dataset: refused
    if vlm is not None and vlm.adapter:
        lineage.check_adapter(vlm.adapter, index)
    return _Request(index, Path(cache_path), vlm, vlm_backend, modes, generation or GenerationOptions(),
                    teachers, backbones, dict(source_keys or {}), use_splits, limit, shard, batch_size,
                    num_workers, overwrite, retry_failed, device, parse, exif, decoding_provenance(exif), engine)


def _extract_file(req: _Request, progress: Progress | None) -> ExtractSummary:
    """One process: fill its cache file (the final one, or its shard's) with the rows it owns."""
    from vea_bench.cache.guard import stop_on_signals
    from vea_bench.cache.ops import shard_path
    from vea_bench.cache.store import FeatureCache

    progress = ensure(progress)
    index = req.index
    out_path = req.cache_path if req.shard is None else shard_path(req.cache_path, *req.shard)
    cache = FeatureCache.create(
        out_path, dataset=index.name, label_space=index.label_space.name, label_names=list(index.label_space.labels),
        splits=index.split_specs(), split_seed=index.split_seed,
        extra={"root": str(index.root), "split_rule": index.split_rule},
    )
    t0 = time.perf_counter()
    summary = ExtractSummary(out_path, shard=req.shard)
    loader_iter = None
    try:
        groups = _build_groups(cache, index, req.vlm, req.vlm_backend, req.modes, req.generation, req.teachers,
                               req.backbones, req.keys, req.overwrite, req.shard, req.device, parse=req.parse,
                               decoding=req.decoding, engine=req.engine)
        jobs = _plan(req, cache, groups, summary)
        summary.sources = [t.summary for g in groups for t in g.targets]
        progress.start(f"extract {index.name}", total=len(jobs))
        t_loop = time.perf_counter()
        # SIGTERM / SIGINT only set a flag (workers forked below inherit that): the run stops
        # between two flushed batches, never in the middle of a write.
        with stop_on_signals() as stop:
            if jobs:
                loader = _make_loader(index.root, jobs, groups, req.batch_size, req.num_workers, req.exif)
                cache.release_handles()  # workers must not inherit (and keep locked) open HDF5 files
                loader_iter = iter(loader)
                for batch in loader_iter:
                    _process(batch, groups, summary)
                    summary.loop_s = time.perf_counter() - t_loop
                    progress.advance(len(batch.jobs), failed=summary.failed_images,
                                     unparsed=sum(s.unparsed for s in summary.sources))
                    if stop.requested:
                        break
            if stop.requested:
                done = summary.images + summary.failed_images
                raise stop.error(f"{done} of {len(jobs)} image(s) done by this run, kept in {out_path}")
    finally:
        progress.finish()  # also on Ctrl-C, so the terminal's progress display is closed
        summary.elapsed_s = time.perf_counter() - t0
        if loader_iter is not None:
            del loader_iter  # stop the workers before closing the file
        try:
            for s in summary.sources:
                kind, key = s.name.split("/", 1)
                info = cache.source(kind, key)
                s.missing = sum(info.counts[sp]["missing"] for sp in req.splits if sp in info.counts)
        finally:
            cache.close()
    return summary


def _plan(req: _Request, cache: FeatureCache, groups: list[_Group], summary: ExtractSummary) -> list[_Job]:
    """The rows to compute: per split, the union of what any source is missing (in this process's shard)."""
    from vea_bench.cache.fingerprints import fingerprints, stale_rows
    from vea_bench.cache.ops import shard_rows

    index, shard = req.index, req.shard
    final = _FinalRows(req.final, req.retry_failed, req.overwrite, shard)
    jobs: list[_Job] = []
    try:
        for split in req.splits:
            everywhere: set[int] = set()
            paths = [smp.path for smp in index.split(split)]
            # A shard holds (and will compute) only its own rows: fingerprint just those.
            current = fingerprints(index.root, paths,
                                   None if shard is None else shard_rows(np.arange(len(paths)), *shard))
            for g in groups:
                for t in g.targets:
                    t.fingerprints[split] = current
                    stale = stale_rows(t.writer.fingerprints(split), t.writer.status(split), current)
                    if stale.size:  # the image changed under the same path: recompute those rows
                        t.writer.invalidate(split, stale)
                        t.summary.changed += int(stale.size)
                        log.info("%s: %d row(s) of '%s' have a changed image file; recomputing them",
                                 t.summary.name, stale.size, split)
                    miss = t.writer.missing(split, retry_failed=req.retry_failed)
                    n_rows = cache.num_rows(split)
                    t.summary.rows += n_rows
                    t.summary.done_before += int(n_rows - len(miss))  # written or failed before
                    miss = final.pending(t, split, miss, current)
                    everywhere.update(int(r) for r in miss)
                    if shard is not None:
                        miss = shard_rows(miss, *shard)
                    t.missing[split] = set(int(r) for r in miss)
            rows = sorted(set().union(*(t.missing[split] for g in groups for t in g.targets)))
            if req.limit is not None:
                # Under a launcher the job's first missing rows, each process taking its own of them.
                first = set(sorted(everywhere)[:req.limit]) if req.final is not None else set(rows[:req.limit])
                rows = [r for r in rows if r in first]
                keep = set(rows)
                for g in groups:
                    for t in g.targets:
                        t.missing[split] &= keep
            samples = index.split(split)
            for r in rows:
                jobs.append(_Job(split, r, samples[r].path, tuple(g.needs(split, r) for g in groups)))
    finally:
        final.close()
    summary.final_stale, summary.final_drop = final.stale, sorted(final.drop)
    return jobs


class _FinalRows:
    """Under a launcher: which of a shard's rows the final cache already holds (read only, never locked).

    Collects what rank 0 must change in the final cache before the merge: sources to drop
    (``overwrite``) and rows recomputed because their image changed.
    """

    def __init__(self, path: Path | None, retry_failed: bool, overwrite: bool, shard: tuple[int, int] | None) -> None:
        from vea_bench.cache.store import FeatureCache

        self.retry_failed = retry_failed
        self.overwrite = overwrite
        self.shard = shard
        self.cache = FeatureCache.open(path) if path is not None and path.exists() else None
        self.stale: dict[str, dict[str, list[int]]] = {}
        self.drop: set[str] = set()

    def pending(self, target: _Target, split: str, miss: np.ndarray, current: np.ndarray) -> np.ndarray:
        """``miss`` less the rows resolved in the final cache from an unchanged image."""
        from vea_bench.cache.fingerprints import stale_rows
        from vea_bench.cache.ops import shard_rows
        from vea_bench.cache.store import ROW_MISSING, ROW_OK, stable_provenance

        name = target.summary.name
        kind, key = name.split("/", 1)
        if self.cache is None or not self.cache.has_source(kind, key):
            return miss
        if self.overwrite:
            self.drop.add(name)
            return miss
        old, new = stable_provenance(self.cache.source(kind, key).provenance), stable_provenance(target.writer.info().provenance)
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise CacheError(f"{self.cache.path}: source {name} was written with other settings ({', '.join(diff)}); "
                             f"use another key or overwrite")
        stored, status = self.cache.fingerprints(kind, key, split)
        stale = stale_rows(stored, status, current)
        if self.shard is not None:
            stale = shard_rows(stale, *self.shard)
        if stale.size:  # recomputed here; rank 0 clears them in the final cache before the merge
            self.stale.setdefault(name, {})[split] = [int(r) for r in stale]
            target.summary.changed += int(stale.size)
        open_rows = status != ROW_OK if self.retry_failed else status == ROW_MISSING
        open_rows[stale] = True
        return np.asarray([r for r in miss if open_rows[r]], dtype=np.int64)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def _extract_launched(req: _Request, launch: Any, progress: Progress | None) -> ExtractSummary:
    """Every process of a launch: its share into its shard file, then one merge on rank 0.

    Shard files left by an earlier launch (a rank that died, another number of processes) are
    merged into the final cache first, so only rows resolved nowhere are computed again.
    """
    from vea_bench import distributed as dist

    if req.shard is not None:
        raise ConfigError(f"--shard {req.shard[0]}/{req.shard[1]} under a {launch.world_size}-process launch: "
                          f"the processes split the rows themselves; leave --shard out")
    _, device = dist.setup(req.device or (req.vlm.device if req.vlm is not None else None) or "auto")
    if req.vlm is not None:
        import dataclasses

        req.vlm = dataclasses.replace(req.vlm, device=device)
    req.device, req.final, req.shard = device, req.cache_path, (launch.rank, launch.world_size)
    if launch.is_main:
        _fold_shards(req.cache_path, progress)
    dist.barrier()
    error: BaseException | None = None
    try:
        summary = _extract_file(req, progress if launch.is_main else None)
    except VeaError as exc:  # every process learns of it below, so none waits for a merge forever
        error, summary = exc, ExtractSummary(req.cache_path)
    failures = [(r, msg) for r, msg in enumerate(dist.gather_objects(None if error is None else str(error))) if msg]
    if error is not None:
        raise error
    if failures:
        rank, msg = failures[0]
        raise ModelError(f"process {rank} of {launch.world_size} failed ({msg}); rerun the same command to finish "
                         f"(rows already written are kept)")
    parts: list[ExtractSummary] = dist.gather_objects(summary)
    if launch.is_main:
        _clear_stale(req.cache_path, parts)
        _fold_shards(req.cache_path, progress)
    dist.barrier()
    return _combine(parts, req)


def _fold_shards(final: Path, progress: Progress | None) -> None:
    """Merge every shard file beside ``final`` into it (one merge, via the cache's own API), then drop them."""
    from vea_bench.cache.ops import merge_caches
    from vea_bench.cache.store import remove_cache

    shards = sorted(final.parent.glob(f"{final.stem}.shard-*-of-*{final.suffix or '.h5'}"))
    shards = [p for p in shards if re.fullmatch(rf"{re.escape(final.stem)}\.shard-\d+-of-\d+", p.stem)]
    if not shards:
        return
    merge_caches(shards, final, progress=progress)
    for p in shards:
        remove_cache(p)


def _clear_stale(final: Path, parts: list[ExtractSummary]) -> None:
    """What the processes recomputed (rows whose image changed, sources to overwrite): cleared in the final cache."""
    from vea_bench.cache.store import FeatureCache

    stale = [(name, split, rows) for part in parts for name, per in part.final_stale.items()
             for split, rows in per.items() if len(rows)]
    drop = sorted({name for part in parts for name in part.final_drop})
    if not (stale or drop) or not final.exists():
        return
    with FeatureCache.open(final, "a") as cache:
        for name in drop:  # overwrite: the processes recomputed every row of it
            cache.delete_source(*name.split("/", 1))
        for name, split, rows in stale:
            kind, key = name.split("/", 1)
            info = cache.source(kind, key)
            cache.writer(kind, key, info.fields, info.provenance).invalidate(split, rows)


def _combine(parts: list[ExtractSummary], req: _Request) -> ExtractSummary:
    """The whole launch's summary: counts summed over the processes, what is missing read from the merged cache."""
    from vea_bench.cache.store import FeatureCache

    out = ExtractSummary(req.cache_path, images=sum(p.images for p in parts),
                         failed_images=sum(p.failed_images for p in parts),
                         elapsed_s=max(p.elapsed_s for p in parts), loop_s=max(p.loop_s for p in parts))
    names = [s.name for s in parts[0].sources]
    with FeatureCache.open(req.cache_path) as cache:
        for name in names:
            own = [p.source(name) for p in parts]
            kind, key = name.split("/", 1)
            info = cache.source(kind, key)
            s = SourceSummary(name, rows=own[0].rows, done=sum(o.done for o in own), failed=sum(o.failed for o in own),
                              unparsed=sum(o.unparsed for o in own), changed=sum(o.changed for o in own),
                              missing=sum(info.counts[sp]["missing"] for sp in req.splits if sp in info.counts))
            s.done_before = s.rows - s.missing - s.done - s.failed
            out.sources.append(s)
    return out


def _make_loader(root: Path, jobs: list[_Job], groups: list[_Group], batch_size: int, num_workers: int,
                 exif: str = "apply") -> Any:
    import multiprocessing as mp

    from torch.utils.data import DataLoader

    kwargs: dict[str, Any] = {}
    if num_workers > 0 and "fork" not in mp.get_all_start_methods():
        # Workers must inherit the loaded processors and transforms (fork); elsewhere load in-process.
        log.warning("no 'fork' start method on this platform: loading images in the main process")
        num_workers = 0
    if num_workers > 0:
        kwargs["multiprocessing_context"] = "fork"
        kwargs["worker_init_fn"] = _worker_init
        kwargs["prefetch_factor"] = 2
    return DataLoader(
        _ImageJobs(root, jobs, exif),
        batch_size=batch_size,
        shuffle=False,
        num_workers=max(0, num_workers),
        collate_fn=_Collate(jobs, groups),
        **kwargs,
    )


def _process(batch: _Batch, groups: list[_Group], summary: ExtractSummary) -> None:
    """Run each group on its part of the batch and write results (and failures) by split."""
    summary.images += len(batch.jobs) - len(batch.failed)
    summary.failed_images += len(batch.failed)
    for g_idx, group in enumerate(groups):
        failures = [(p, r) for p, r in batch.failed if batch.jobs[p].needs[g_idx]] + batch.group_failed[g_idx]
        for t in group.targets:
            _fail(t, [(batch.jobs[p], r) for p, r in failures])
        entry = batch.inputs[g_idx]
        if entry is None:
            continue
        pos, inputs = entry
        sub = [batch.jobs[p] for p in pos]
        results = group.run(inputs, sub)
        for t in group.targets:
            arrays = results[t.summary.name]
            _write(t, sub, arrays)


def _fail(target: _Target, items: list[tuple[_Job, str]]) -> None:
    by_split: dict[str, list[tuple[int, str]]] = {}
    for job, reason in items:
        if job.row in target.missing.get(job.split, ()):
            by_split.setdefault(job.split, []).append((job.row, reason))
    for split, pairs in by_split.items():
        rows = [r for r, _ in pairs]
        fp = target.fingerprints.get(split)
        target.writer.fail(split, rows, [m for _, m in pairs], fingerprints=None if fp is None else fp[rows])
        target.summary.failed += len(pairs)
        target.missing[split] -= {r for r, _ in pairs}


def _write(target: _Target, jobs: list[_Job], arrays: dict[str, np.ndarray]) -> None:
    by_split: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        if job.row in target.missing.get(job.split, ()):
            by_split.setdefault(job.split, []).append(i)
    for split, idx in by_split.items():
        rows = [jobs[i].row for i in idx]
        fp = target.fingerprints.get(split)
        target.writer.write(split, rows, fingerprints=None if fp is None else fp[rows],
                            **{k: v[idx] for k, v in arrays.items()})
        target.summary.done += len(rows)
        if "onehot" in arrays:
            target.summary.unparsed += int((arrays["onehot"][idx].sum(axis=1) == 0).sum())
        target.missing[split] -= set(rows)


# ------------------------------------------------------------------------------ model loading
def _build_groups(
    cache: FeatureCache,
    index: DatasetIndex,
    vlm: LoadOptions | None,
    vlm_backend: Any | None,
    modes: set[str],
    generation: GenerationOptions,
    teachers: Sequence[str | Path],
    backbones: Sequence[Any],
    keys: dict[str, str],
    overwrite: bool,
    shard: tuple[int, int] | None,
    device: str | None,
    *,
    parse: str = "strict",
    decoding: Mapping[str, Any] | None = None,
    engine: str = "transformers",
) -> list[_Group]:
    from vea_bench.models.backbone import BackboneSpec, load_backbone
    from vea_bench.devices import resolve_device
    from vea_bench.models.teacher import load_teacher, teacher_transform
    from vea_bench.prompts import SYSTEM_MESSAGE, categorical_answer, categorical_instruction

    space = index.label_space
    labels = list(space.labels)
    C = len(labels)
    extra: dict[str, Any] = {"shard": f"{shard[0]}/{shard[1]}"} if shard else {}
    if decoding is not None:
        extra["image_decoding"] = dict(decoding)
    groups: list[_Group] = []
    if vlm is not None or vlm_backend is not None:
        backend = vlm_backend
        if backend is None:
            from vea_bench.models import load_vlm

            backend = load_vlm(vlm)
        if device is None:
            device = getattr(backend, "device", None)
        model_ref = vlm.model if vlm is not None else backend.provenance().get("model", backend.name)
        adapter = vlm.adapter if vlm is not None else backend.provenance().get("adapter")
        key = keys.get("vlm") or vlm_key(str(model_ref), adapter)
        prompt = categorical_instruction(space)
        runner = load_engine(engine, backend)
        base = dict(backend.provenance())
        base.update(backend=backend.name, prompt=prompt, system=SYSTEM_MESSAGE, label_names=labels, **extra)
        visual_prov = dict(base, pooling="mean over the image's visual tokens (merger / projector output)",
                           dim=int(backend.embed_dim), **_engine_prov(cache, "visual", key, runner, overwrite))
        vlm_prov = dict(base, answer_modes=sorted(modes), parser=PARSER_VERSION,
                        **_engine_prov(cache, "vlm", key, runner, overwrite))
        if "generate" in modes:
            from vea_bench.models.parse import parser_provenance

            vlm_prov["parse"] = parser_provenance(parse)
        fields: dict[str, tuple[tuple[int, ...], str]] = {}
        if "generate" in modes:
            describe = getattr(backend, "decoding_provenance", None)
            vlm_prov["decoding"] = describe(generation) if callable(describe) else generation.provenance()
            fields.update(text=((), "str"), onehot=((C,), "uint8"), parse=((), "str"))
        if "score" in modes:
            vlm_prov["score_answers"] = [categorical_answer(lab) for lab in labels]
            fields["logprobs"] = ((C,), "float32")
        vis_w = cache.writer("visual", key, {"emb": ((int(backend.embed_dim),), "float16")}, visual_prov,
                             overwrite=overwrite)
        vlm_w = cache.writer("vlm", key, fields, vlm_prov, overwrite=overwrite) if runner.answers else None
        groups.append(_VLMGroup(runner, prompt, modes, labels, space, generation,
                                _Target(vis_w, SourceSummary(f"visual/{key}")),
                                _Target(vlm_w, SourceSummary(f"vlm/{key}")) if vlm_w is not None else None,
                                parse=parse))
    if device is None:
        device = resolve_device("auto")
    device = str(device)
    from vea_bench.hashing import file_sha256

    for t in teachers:
        model, meta = load_teacher(t, device=device)
        order = _teacher_columns(meta, space, str(t))
        key = keys.get(str(t)) or teacher_key(t)
        # Absolute path: resuming from another working directory must not look like another model.
        prov = {"model": str(Path(t).resolve()), "arch": meta.get("arch"), "weights": meta.get("weights", meta.get("path")),
                "label_names": labels, "teacher_label_names": meta.get("label_names"),
                "data_config": meta.get("data_config"), "trained_on": meta.get("dataset"), **extra}
        if meta.get("weights"):
            prov["weights_sha256"] = file_sha256(meta["weights"])
        w = cache.writer("teacher", key, {"logits": ((C,), "float32")}, prov, overwrite=overwrite)
        groups.append(_ImageModelGroup(f"teacher/{key}", model, teacher_transform(meta, train=False),
                                       _Target(w, SourceSummary(f"teacher/{key}")), "logits", "float32",
                                       device, order))
    for b in backbones:
        spec = b if isinstance(b, BackboneSpec) else BackboneSpec.parse(str(b))
        bb = load_backbone(spec, device=device)
        key = keys.get(str(b)) or keys.get(spec.name) or backbone_key(spec)
        w = cache.writer("backbone", key, {"feat": ((bb.dim,), "float16")}, dict(bb.provenance, **extra),
                         overwrite=overwrite)
        groups.append(_ImageModelGroup(f"backbone/{key}", bb.model, bb.transform,
                                       _Target(w, SourceSummary(f"backbone/{key}")), "feat", "float16", device))
    names = [t.summary.name for g in groups for t in g.targets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"two models would write the same source(s) {', '.join(dup)}; give distinct keys")
    return groups


def _engine_prov(cache: FeatureCache, kind: str, key: str, runner: Any, overwrite: bool) -> dict[str, Any]:
    """The engine entry of a VLM source's provenance (see `vea_bench.models.engines.engine_provenance`)."""
    existing = None if overwrite or not cache.has_source(kind, key) else cache.source(kind, key).provenance
    return engine_provenance(runner.name, existing)


def _teacher_columns(meta: Mapping[str, Any], space: Any, where: str) -> np.ndarray | None:
    """Column order mapping the teacher's classes onto the cache's label order (None if identical)."""
    names = [str(n) for n in meta.get("label_names") or []]
    if not names:
        raise ModelError(f"teacher {where} records no label names; cannot align its logits with the dataset")
    idx = [space.lookup(n) for n in names]
    if None in idx or sorted(idx) != list(range(space.num_classes)):  # type: ignore[type-var]
        raise ModelError(
            f"teacher {where} predicts ({', '.join(names)}), which is not the label space "
            f"{space.name} ({', '.join(space.labels)}) of this dataset"
        )
    order = np.argsort(np.asarray(idx))  # cache column j <- teacher column order[j]
    return None if np.array_equal(order, np.arange(len(order))) else order


__all__ = ["ANSWER_MODES", "ExtractSummary", "SourceSummary", "backbone_key", "extract", "sanitize_key",
           "teacher_key", "vlm_key"]
