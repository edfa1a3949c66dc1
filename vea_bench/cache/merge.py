"""Merging shard caches into one cache (the last step of a data-parallel or sharded extraction).

Extraction of a large dataset can run as ``n`` separate processes (``--shard i/n``), each writing
rows ``row % n == i`` into its own cache file next to the final one (`shard_path`); `merge_caches`
then combines them (and any cache already at the output path) into one cache, refusing anything
that would mix results of different datasets, label spaces, splits, models or settings. Every
source is streamed in blocks, so memory stays bounded whatever the size of the source.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from vea_bench.cache.layout import row_bytes, rows_per_block
from vea_bench.cache.store import (
    ROW_FAILED,
    ROW_MISSING,
    ROW_OK,
    FeatureCache,
    SourceInfo,
    create_source_group,
    decode_strings,
    empty_rows,
    remove_cache,
    stable_provenance,
)
from vea_bench.errors import CacheError
from vea_bench.progress import Progress, ensure

__all__ = ["MergeReport", "merge_caches"]


@dataclass
class MergeReport:
    """What a merge produced: the output's sources and how many rows each input contributed."""

    output: Path
    inputs: list[Path]
    sources: list[SourceInfo]
    rows_from: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.sources)


def _same_space(ref: FeatureCache, other: FeatureCache) -> None:
    """Refuse, naming ``other``, a cache that is not of exactly the same dataset and splits."""
    where = f"{other.path}"
    if other.dataset != ref.dataset:
        raise CacheError(f"{where}: dataset '{other.dataset}' differs from '{ref.dataset}' in {ref.path}")
    if other.label_names != ref.label_names:
        raise CacheError(
            f"{where}: label names ({', '.join(other.label_names)}) differ from those in {ref.path} "
            f"({', '.join(ref.label_names)})"
        )
    if other.manifest_hashes != ref.manifest_hashes or other.splits != ref.splits:
        raise CacheError(f"{where}: split manifest hashes differ from {ref.path}; caches of different data")
    for split in ref.splits:
        if other.ids(split) != ref.ids(split) or not np.array_equal(other.labels(split), ref.labels(split)):
            raise CacheError(f"{where}: split '{split}' lists its images in another order than {ref.path}")


def _values_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def merge_caches(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    progress: Progress | None = None,
) -> MergeReport:
    """Merge shard caches (and a cache already at ``output``) into ``output``.

    This is how the shards of a data-parallel extraction (``extract --shard i/n``, one process
    per shard, each writing `shard_path` beside the final cache) become one cache. Each row is
    taken from the input that wrote it (ok or failed, with its reason); a row written by two
    inputs must hold the same values there, else the merge stops with a one-line conflict.

    The output is written in the per-source layout like every other writer: each merged source
    goes to a new file in ``output``'s ``.sources`` folder, and the index links them all in one
    atomic commit at the end. An interrupted or refused merge leaves an existing output (and the
    shards) as they were, and leaves no new output behind.
    """
    prog = ensure(progress)
    ins, out = _check_paths(inputs, output)
    created = not out.exists()
    caches: list[FeatureCache] = []
    target: FeatureCache | None = None
    staged: dict[str, Path] = {}
    try:
        for p in ins:
            caches.append(FeatureCache.open(p))
            if len(caches) > 1:
                _same_space(caches[0], caches[-1])
        target = FeatureCache.create_like(out, caches[0]) if created else FeatureCache.open(out, "a")
        members = caches if created else [target, *caches]
        for c in members[1:]:
            _same_space(members[0], c)
        holders = _holders(members)
        split_rows = {s: target.num_rows(s) for s in target.splits}
        rows_from = {str(c.path): 0 for c in members}
        prog.start(f"merge {len(ins)} cache(s) into {out.name}", total=sum(split_rows.values()) * len(holders))
        for name in sorted(holders):
            hs = holders[name]
            size = sum(split_rows.values()) * row_bytes(hs[0][1].fields)
            staged[name] = target.stage_source(
                name, lambda f, n=name, h=hs: _merge_source(f, n, h, members[0], split_rows, rows_from, prog),
                size=size)
        prog.finish()
        target.link_sources(staged)
        sources = target.sources()
    except BaseException:
        for p in staged.values():
            p.unlink(missing_ok=True)
        if target is not None:
            target.close()
            if created:
                remove_cache(out)
        raise
    finally:
        for c in caches:
            c.close()
    target.close()
    return MergeReport(output=out, inputs=ins, sources=sources, rows_from=rows_from)


def _check_paths(inputs: Sequence[str | Path], output: str | Path) -> tuple[list[Path], Path]:
    """The inputs and the output, refusing an empty, repeated or self-including list."""
    ins = [Path(p) for p in inputs]
    out = Path(output)
    if not ins:
        raise CacheError("merge needs at least one input cache")
    seen: set[Path] = set()
    for p in ins:
        r = p.resolve()
        if r in seen:
            raise CacheError(f"{p}: given twice as merge input")
        seen.add(r)
    if out.resolve() in seen:
        raise CacheError(f"{out}: the output cannot also be an input (an existing output is merged in by itself)")
    if out.is_dir():
        raise CacheError(f"{out} is a folder, not a cache file")
    return ins, out


def _holders(caches: list[FeatureCache]) -> dict[str, list[tuple[FeatureCache, SourceInfo]]]:
    """Source name -> the caches holding it; fields and stable provenance must agree across them."""
    holders: dict[str, list[tuple[FeatureCache, SourceInfo]]] = {}
    for c in caches:
        for info in c.sources():
            holders.setdefault(info.name, []).append((c, info))
    for name, hs in holders.items():
        c0, i0 = hs[0]
        for c, info in hs[1:]:
            if info.fields != i0.fields:
                raise CacheError(f"{c.path}: source {name} has other fields than in {c0.path}")
            a, b = stable_provenance(i0.provenance), stable_provenance(info.provenance)
            if a != b:
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise CacheError(
                    f"{c.path}: source {name} was written with other settings than in {c0.path} "
                    f"({', '.join(diff)})"
                )
    return holders


def _merge_source(
    h5: h5py.File,
    name: str,
    hs: list[tuple[FeatureCache, SourceInfo]],
    ref: FeatureCache,
    split_rows: dict[str, int],
    rows_from: dict[str, int],
    prog: Progress,
) -> None:
    specs = hs[0][1].fields
    # Shard-specific provenance (which shard wrote it) no longer describes the merged source.
    prov = {k: v for k, v in hs[0][1].provenance.items() if k != "shard"}
    create_source_group(h5, name, specs, prov, split_rows)
    for split, n in split_rows.items():
        dst = h5[f"{name}/{split}"]
        srcs = [(c, c.source_group(name)[split]) for c, _ in hs if split in c.source_group(name)]
        step = rows_per_block(specs, n)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            m = hi - lo
            st_out = np.zeros(m, dtype=np.uint8)
            fp_out = np.zeros(m, dtype=np.uint64)
            owner = np.full(m, -1, dtype=np.int64)
            err_out = np.asarray([""] * m, dtype=object)
            sts = [g["_status"][lo:hi] for _, g in srcs]
            for j, (c, g) in enumerate(srcs):
                st = sts[j]
                has = st != ROW_MISSING
                if not has.any():
                    continue
                new = has & (st_out == ROW_MISSING)
                both = has & ~new
                need_err = (st == ROW_FAILED) & has
                err = decode_strings(g["_error"][lo:hi]) if need_err.any() else None
                if both.any():
                    bad = both & (st != st_out)
                    if err is not None:
                        fb = both & (st == ROW_FAILED) & ~bad
                        bad |= fb & (err != err_out)
                    _raise_conflict(bad, lo, name, split, ref, c, srcs, owner)
                st_out[new] = st[new]
                owner[new] = j
                if "_fp" in g:
                    fp_out[new] = g["_fp"][lo:hi][new]
                if err is not None:
                    take = new & (st == ROW_FAILED)
                    err_out[take] = err[take]
                rows_from[str(c.path)] += int(new.sum())
            # Values, one field at a time: output block + one input block in memory.
            ok = st_out == ROW_OK
            for fname, spec in specs.items():
                vals = empty_rows(spec, m)
                for j, (c, g) in enumerate(srcs):
                    mine = ok & (owner == j)
                    # Rows an earlier input already supplied (owner < j): they must agree.
                    again = ok & (owner != j) & (sts[j] == ROW_OK)
                    if not (mine.any() or again.any()):
                        continue
                    block = decode_strings(g[fname][lo:hi])
                    if again.any() and not _values_equal(block[again], vals[again]):
                        _raise_value_conflict(again, block, vals, lo, name, split, fname, ref, c, srcs, owner)
                    vals[mine] = block[mine]
                dst[fname][lo:hi] = vals
            failed = np.flatnonzero(st_out == ROW_FAILED)
            if failed.size:
                dst["_error"][lo + failed[0] : lo + failed[-1] + 1] = err_out[failed[0] : failed[-1] + 1]
            dst["_fp"][lo:hi] = fp_out
            dst["_status"][lo:hi] = st_out
            prog.advance(m)
    h5.flush()


def _row_label(ref: FeatureCache, split: str, row: int) -> str:
    try:
        return f"row {row} ({ref.ids(split)[row]})"
    except (IndexError, CacheError):
        return f"row {row}"


def _raise_conflict(
    bad: np.ndarray,
    lo: int,
    name: str,
    split: str,
    ref: FeatureCache,
    c: FeatureCache,
    srcs: list[tuple[FeatureCache, h5py.Group]],
    owner: np.ndarray,
) -> None:
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    other = srcs[int(owner[i])][0].path
    raise CacheError(
        f"merge conflict: {name} split '{split}' {_row_label(ref, split, lo + i)} has another status "
        f"or failure reason in {c.path} than in {other}"
    )


def _raise_value_conflict(
    again: np.ndarray,
    block: np.ndarray,
    vals: np.ndarray,
    lo: int,
    name: str,
    split: str,
    fname: str,
    ref: FeatureCache,
    c: FeatureCache,
    srcs: list[tuple[FeatureCache, h5py.Group]],
    owner: np.ndarray,
) -> None:
    for i in np.flatnonzero(again):
        if not _values_equal(np.asarray(block[i]), np.asarray(vals[i])):
            other = srcs[int(owner[i])][0].path
            raise CacheError(
                f"merge conflict: {name} split '{split}' {_row_label(ref, split, lo + int(i))} field '{fname}' "
                f"differs between {other} and {c.path}"
            )
    raise CacheError(f"merge conflict: {name} split '{split}' field '{fname}' differs in {c.path}")
