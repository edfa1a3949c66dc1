"""The HDF5 feature cache's public face, `FeatureCache`: one index file per dataset plus one file per
source (see `vea_bench.cache.layout` for both on-disk layouts), filled once per image.

Where things are: the index and its atomic commits in `index`; per-source files, their handles,
the disk reserve and the rebuild after a crash in `sources`; writing rows in `writer`; every
one-line message about a source in `messages`; the writer's lock and free-space checks in
`guard`; whole-cache operations (merge, verify, pack, copy, move, repair) in `ops`.

Readers open the index read-only and reach sources through its links (plain h5py works too); a
writer holds the lock file while open, so two writers of one cache are refused in one line. A
source whose file is damaged is refused in one line, and `vea-bench cache repair` (or the next
`extract` of it) drops it so it can be recomputed; an index whose sources folder was not copied
with it is refused in one line saying so, and nothing is dropped. A packed file is read as it
is; the first time it is opened for writing, its sources are copied out into their own files.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vea_bench.cache.guard import CacheLock, check_free_space
from vea_bench.cache.index import Index, IndexMetadata, new_index_builder, stale_index_files, write_image
from vea_bench.cache.layout import (  # the layout's names are re-exported: callers import them from here
    ROW_FAILED, ROW_MISSING, ROW_OK, SCHEMA_VERSION, SOURCE_KINDS, SOURCES_SUFFIX, STR_DTYPE, VOLATILE_PROVENANCE,
    FieldSpec, SourceData, SourceInfo, cache_files, create_source_group, decode_strings, discard, empty_rows, field_specs,
    first_line, json_roundtrip, remove_cache, row_bytes, sources_dir, split_name, stable_provenance, stored_bytes,
)
from vea_bench.cache.messages import (
    DamagedSourceError, SourcesNotCopiedError, closed, damaged, no_source, read_only,
)
from vea_bench.cache.sources import SourceFiles, create_file, rebuild_file, writing_marker
from vea_bench.cache.writer import SourceWriter, check_new_fields, check_resume
from vea_bench.errors import CacheError, os_error
from vea_bench.splits import SplitSpec
from vea_bench.versions import package_versions

log = logging.getLogger(__name__)

__all__ = [
    "ROW_FAILED", "ROW_MISSING", "ROW_OK", "SCHEMA_VERSION", "SOURCE_KINDS", "SOURCES_SUFFIX", "STR_DTYPE",
    "VOLATILE_PROVENANCE", "DamagedSourceError", "FeatureCache", "FieldSpec", "SourceData", "SourceInfo",
    "SourceWriter", "SourcesNotCopiedError", "SplitSpec", "cache_files", "create_source_group",
    "decode_strings", "empty_rows", "remove_cache", "sources_dir", "stable_provenance",
]


class FeatureCache(IndexMetadata):
    """An open cache file. Use `FeatureCache.create` for writers and `FeatureCache.open` for readers."""

    def __init__(self, path: str | Path, index: Index, *, lock: CacheLock | None = None) -> None:
        self.path = Path(path)
        self._index = index  # the index, always opened read-only (it is replaced, never edited)
        self._lock = lock  # held while open for writing
        self._files = SourceFiles(self.path)

    @property
    def _h5(self) -> h5py.File:
        """The index file (read-only), for the metadata readers of `IndexMetadata`."""
        return self._index.h5

    @property
    def writable(self) -> bool:
        return self._lock is not None

    @property
    def sources_dir(self) -> Path:
        return sources_dir(self.path)

    # ----------------------------------------------------------------- opening
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        dataset: str,
        label_space: str,
        label_names: Sequence[str],
        splits: Mapping[str, SplitSpec],
        split_seed: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> FeatureCache:
        """Create a cache for a dataset's splits, or reopen an existing one that matches exactly.

        An existing file of another dataset, label space or split manifest is refused rather
        than silently mixed (stale features are the worst kind of wrong result).
        """
        path = Path(path)
        build = new_index_builder(dataset, label_space, label_names, splits, split_seed, extra)
        cls._create_index(path, build)
        cache = cls.open(path, mode="a", expect_dataset=dataset, expect_label_names=label_names,
                         expect_manifests={s: sp.manifest_hash for s, sp in splits.items()})
        missing = set(splits) - set(cache.splits)
        if missing:
            cache.close()
            raise CacheError(f"{path}: cache lacks split(s) {sorted(missing)}; use a new cache file")
        return cache

    @classmethod
    def create_like(cls, path: str | Path, template: FeatureCache) -> FeatureCache:
        """Create an empty cache of ``template``'s dataset and splits (same index attributes),
        open for writing: the start of a merge's or a copy's output."""
        path = Path(path)
        cls._create_index(path, template._index.links_builder({}))
        return cls.open(path, "a", expect_dataset=template.dataset, expect_label_names=template.label_names,
                        expect_manifests=template.manifest_hashes)

    @staticmethod
    def _create_index(path: Path, build: Callable[[h5py.File], None]) -> None:
        """Write a new index at ``path`` unless one is there (the index is laid out in memory and
        written with plain file I/O: a full disk at this first write is one line, as later)."""
        if path.is_dir():
            raise CacheError(f"{path} is a folder, not a cache file; give a file name such as {path / 'cache.h5'}")
        if path.exists():
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(path.parent, exc, "create the cache's folder") from None
        lock = CacheLock(path)
        lock.acquire()
        try:
            if not path.exists():  # not created by another process meanwhile
                write_image(path, build, where=path, action="create the cache file")
        finally:
            lock.release()

    @classmethod
    def open(
        cls,
        path: str | Path,
        mode: str = "r",
        *,
        expect_dataset: str | None = None,
        expect_label_names: Sequence[str] | None = None,
        expect_manifests: Mapping[str, str] | None = None,
    ) -> FeatureCache:
        """Open and validate a cache; every mismatch is a one-line `CacheError`.

        ``mode="a"`` (or ``"r+"``) opens it for writing: the writer's lock is taken (a second
        writer is refused), a packed file gets its own source files, and the links of a renamed
        copy are pointed at its own ``.sources`` folder.
        """
        path = Path(path)
        if mode not in ("r", "a", "r+"):
            raise CacheError(f"cache mode must be 'r' or 'a', got {mode!r}")
        if not path.exists():
            raise CacheError(f"no cache file at {path}; run `vea-bench extract` first")
        if path.is_dir():
            raise CacheError(f"{path} is a folder, not a cache file")
        lock = None
        if mode != "r":
            lock = CacheLock(path)
            lock.acquire()
        try:
            index = Index.open(path, expect_dataset=expect_dataset, expect_label_names=expect_label_names,
                               expect_manifests=expect_manifests)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        cache = cls(path, index, lock=lock)
        if lock is not None:
            try:
                links = cache._index.links()
                cache._files.check_own(links)
                cache._collect_garbage()
                if any(rel is None or cache._files.link_text(n, rel) != rel for n, rel in links.items()):
                    cache._commit_index({})  # unpack a packed file; relink a renamed copy
            except BaseException:
                cache.close()
                raise
        return cache

    def close(self) -> None:
        self._files.close_writers()
        self._files.close_readers()
        self._index.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def release_handles(self) -> None:
        """Close every source file this process holds (they reopen on next use). Call before
        forking workers: a child inheriting an HDF5 file keeps its lock after the parent exits."""
        self._files.close_writers()
        self._files.close_readers()

    # ------------------------------------------------------------ index writes
    def _require_writable(self) -> None:
        if not self.writable:
            raise read_only(self.path)

    def _commit_index(self, changes: Mapping[str, str | None]) -> None:
        """Replace the index atomically with one whose links are the current ones updated by ``changes``.

        ``changes`` maps a source name to its new file (relative to the index) or None to drop
        it. Sources still stored inline (packed) are first copied out into their own files; one
        that cannot be copied (damaged) is dropped with a warning.
        """
        self._require_writable()
        links = self._index.links()
        for name, rel in list(links.items()):
            if rel is None and name not in changes:
                links[name] = self._externalize(name)
        links.update(changes)
        keep = {n: self._files.link_text(n, r) for n, r in links.items() if r is not None}
        self._files.close_readers()
        self._index.replace(keep)
        for name in [n for n in self._files.writers if n not in keep]:
            self._files.close_writer(name)
        self._collect_garbage()

    def _externalize(self, name: str) -> str | None:
        """Copy a source stored inside the index (packed) into its own file; its link text."""
        kind, key = split_name(name)
        final, rel = self._files.new_file(kind, key)
        try:
            check_free_space(self.sources_dir, stored_bytes(self._h5[name]), f"unpacking source {name}")
            create_file(final, lambda f: self._h5.copy(self._h5[name], f.require_group(kind), key),
                        reserve=self._files.reserve)
        except CacheError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged inline source is dropped, the rest kept
            log.warning("%s: dropping damaged source %s while moving it to its own file (%s)",
                        self.path, name, first_line(exc))
            return None
        return rel

    def _collect_garbage(self) -> None:
        """Delete source files no link points to (replaced, dropped, or left by a killed creation)."""
        if not self.writable:
            return
        used = {self._files.locate(n, r) for n, r in self._index.links().items() if r is not None}
        self._files.collect_garbage(used)
        for stale in stale_index_files(self.path):
            discard(stale)

    def _open_for_writing(self, name: str) -> h5py.File:
        if not self._index.is_open:
            raise closed(self.path)
        f = self._files.writers.get(name)
        if f is not None and f.id.valid:
            return f
        rel = self._index.links().get(name)
        if rel is None:
            raise CacheError(f"{self.path}: source {name} is stored in the index itself")
        p = self._files.locate(name, rel)
        if not p.exists():
            raise self._files.missing_error(name, rel, p)
        if writing_marker(p).exists():
            # The last writer of this file died without closing it (SIGKILL, a crash, power
            # loss): HDF5's string heap may be half-written. Copy its readable rows into a
            # fresh file; rows that do not read back are recomputed.
            p = self._rebuild(name, p)
        return self._files.open_writer(name, p)

    def _rebuild(self, name: str, old_path: Path) -> Path:
        """Copy a source's readable rows into a new file and link it; returns the new file."""
        final, rel = self._files.new_file(*split_name(name))
        rebuild_file(self.path, name, old_path, final, self._files.reserve)
        self._commit_index({name: rel})
        log.warning("%s: source %s was not closed by its last writer; copied its readable rows to %s",
                    self.path, name, final.name)
        return final

    def source_group(self, name: str) -> h5py.Group:
        """A source's group: from its file open for writing, else through the index's link."""
        links = self._index.links()
        if name not in links:
            raise damaged(self.path, name, f"no source {name}")
        rel = links[name]
        if rel is None:
            try:
                return self._h5[name]  # packed: stored in the index itself
            except (KeyError, OSError) as exc:
                raise damaged(self.path, name, first_line(exc)) from None
        return self._files.read_group(name, rel)

    def source_files(self) -> dict[str, Path | None]:
        """Each source's own file (None for a source stored inside the index: a packed cache)."""
        return {n: None if r is None else self._files.locate(n, r) for n, r in self._index.links().items()}

    def write_index_copy(self, path: Path, links: Mapping[str, str]) -> None:
        """Write at ``path`` an index with this one's metadata whose sources are exactly ``links``
        (link texts relative to ``path``'s folder): the index of a copy or a move."""
        write_image(path, self._index.links_builder(links), where=path, action="write the cache index")

    # ------------------------------------------------------- staged sources (merge)
    def stage_source(self, name: str, fill: Any, *, size: int = 0) -> Path:
        """Create a new file for source ``name`` laid out by ``fill(h5_file)``, not yet linked.

        `link_sources` links staged files in one atomic commit; a staged file never linked is
        deleted by the next writer. ``size`` (bytes) is checked against the free space first.
        """
        self._require_writable()
        kind, key = split_name(name)
        if kind not in SOURCE_KINDS:
            raise CacheError(f"unknown source kind '{kind}' (choices: {', '.join(SOURCE_KINDS)})")
        final, _ = self._files.new_file(kind, key)
        check_free_space(self.sources_dir, size, f"source {name}")
        create_file(final, fill, reserve=self._files.reserve)
        return final

    def link_sources(self, files: Mapping[str, Path | None]) -> None:
        """Point sources at staged files (or drop them, for None), all in one atomic index commit."""
        changes: dict[str, str | None] = {}
        for name, p in files.items():
            if p is None:
                changes[name] = None
            else:
                changes[name] = f"{self.path.name}{SOURCES_SUFFIX}/{split_name(name)[0]}/{Path(p).name}"
        self._commit_index(changes)

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- metadata
    def copy_index_into(self, h5: h5py.File) -> None:
        """Copy the index's attributes and splits (not the sources) into another open file:
        the start of a new cache of the same dataset, e.g. a merge's output."""
        self._index.copy_into(h5)

    def provenance(self) -> dict[str, Any]:
        """What a run record stores about the cache it read: file, dataset, hashes, sources."""
        return {
            "path": str(self.path),
            "dataset": self.dataset,
            "label_names": self.label_names,
            "manifest_hashes": self.manifest_hashes,
            "split_seed": self.split_seed,
            "sources": {s.name: s.provenance for s in self.sources()},
        }

    # ----------------------------------------------------------------- sources
    def has_source(self, kind: str, key: str) -> bool:
        return f"{kind}/{key}" in self._index.links()

    def source_keys(self, kind: str) -> list[str]:
        return sorted(self._h5[kind]) if kind in self._h5 else []

    def sources(self, kind: str | None = None) -> list[SourceInfo]:
        kinds = [kind] if kind else list(SOURCE_KINDS)
        return [self.source(k, key) for k in kinds for key in self.source_keys(k)]

    def source(self, kind: str, key: str) -> SourceInfo:
        if not self.has_source(kind, key):
            raise no_source(self.path, f"{kind}/{key}", sorted(self._index.links()))
        name = f"{kind}/{key}"
        g = self.source_group(name)
        try:
            fields = field_specs(g)
            prov = json.loads(g.attrs.get("provenance", "{}"))
            counts: dict[str, dict[str, int]] = {}
            for split in self.splits:
                if split not in g:
                    raise KeyError(f"no group for split '{split}'")
                sg = g[split]
                lacking = [f for f in (*fields, "_status", "_error") if f not in sg]
                if lacking:
                    raise KeyError(f"'{split}' lacks dataset(s) {', '.join(lacking)}")
                st = sg["_status"][()]
                counts[split] = {
                    "rows": int(st.size),
                    "done": int((st == ROW_OK).sum()),
                    "failed": int((st == ROW_FAILED).sum()),
                    "missing": int((st == ROW_MISSING).sum()),
                }
        except (KeyError, OSError, ValueError, TypeError, IndexError, CacheError) as exc:
            reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else first_line(exc)
            raise damaged(self.path, name, reason) from None
        return SourceInfo(kind, key, fields, prov, counts)

    def resolve_key(self, kind: str, key: str | None = None) -> str:
        """The key to use for ``kind``: the given one, or the only one present (else a one-line error)."""
        keys = self.source_keys(kind)
        if key is not None:
            if key not in keys:
                raise CacheError(
                    f"{self.path}: no {kind} source '{key}' (has: {', '.join(keys) or 'none'}); "
                    f"run `vea-bench extract` with it"
                )
            return key
        if not keys:
            raise CacheError(f"{self.path}: no {kind} source; run `vea-bench extract` to add one")
        if len(keys) > 1:
            raise CacheError(f"{self.path}: several {kind} sources ({', '.join(keys)}); choose one by key")
        return keys[0]

    def writer(
        self,
        kind: str,
        key: str,
        fields: Mapping[str, FieldSpec | tuple[tuple[int, ...], str]],
        provenance: Mapping[str, Any],
        *,
        overwrite: bool = False,
    ) -> SourceWriter:
        """A writer for source ``kind/key``; reopening an existing one resumes it.

        Resuming is allowed only with the same fields and the same stable provenance (model,
        revision, prompt, decoding, image size): otherwise rows of two models would mix.
        """
        if kind not in SOURCE_KINDS:
            raise CacheError(f"unknown source kind '{kind}' (choices: {', '.join(SOURCE_KINDS)})")
        if not key or "/" in key:
            raise CacheError(f"invalid source key '{key}' (non-empty, no '/')")
        self._require_writable()
        specs = {n: f if isinstance(f, FieldSpec) else FieldSpec(tuple(f[0]), str(f[1])) for n, f in fields.items()}
        prov = dict(provenance)
        prov.setdefault("versions", package_versions())
        prov.setdefault("time", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        prov = json_roundtrip(prov)  # compare exactly what was stored, not tuples against lists
        name = f"{kind}/{key}"
        if name in self._index.links() and not overwrite:
            try:
                info = self.source(kind, key)
            except DamagedSourceError as exc:
                # Its rows cannot be trusted or read: recompute the source from scratch.
                log.warning("%s; recomputing it", exc.finding)
                self._files.writers.pop(name, None)
                info = None
            if info is not None:
                check_resume(self.path, info, specs, prov, self.sources_dir)
                return SourceWriter(self, kind, key, specs)
        check_new_fields(name, specs)
        split_rows = {s: self.num_rows(s) for s in self.splits}
        n = sum(split_rows.values())
        per_row = row_bytes(specs)
        check_free_space(self.sources_dir, n * per_row, f"source {name} ({n:,} rows x ~{per_row:,} bytes/row)")
        final, rel = self._files.new_file(kind, key)
        create_file(final, lambda f: create_source_group(f, name, specs, prov, split_rows), reserve=self._files.reserve)
        self._files.close_writer(name)
        self._commit_index({name: rel})
        return SourceWriter(self, kind, key, specs)

    def delete_source(self, kind: str, key: str) -> None:
        """Drop a source (its link and its file); a damaged one can always be dropped."""
        self._require_writable()
        name = f"{kind}/{key}"
        if name not in self._index.links():
            self.source(kind, key)  # the one-line "no source" error
        self._commit_index({name: None})

    def fingerprints(self, kind: str, key: str, split: str) -> tuple[np.ndarray | None, np.ndarray]:
        """A source's stored per-row image fingerprints (None if not recorded) and its row status."""
        self._check_split(split)
        g = self.source_group(f"{kind}/{key}")[split]
        return (g["_fp"][()] if "_fp" in g else None), g["_status"][()]

    def read(
        self,
        kind: str,
        key: str | None,
        split: str,
        fields: Sequence[str] | None = None,
        *,
        allow_incomplete: bool = False,
    ) -> SourceData:
        """Arrays of a source for a split; an incomplete source is refused unless asked for."""
        key = self.resolve_key(kind, key)
        info = self.source(kind, key)
        self._check_split(split)
        c = info.counts.get(split)
        if c is None:
            raise CacheError(f"{self.path}: source {info.name} has no split '{split}'")
        if c["missing"] and not allow_incomplete:
            raise CacheError(
                f"{self.path}: source {info.name} is incomplete on '{split}' "
                f"({c['missing']} of {c['rows']} rows missing); resume `vea-bench extract`"
            )
        g = self.source_group(info.name)[split]
        names = list(fields) if fields is not None else list(info.fields)
        unknown = [n for n in names if n not in info.fields]
        if unknown:
            raise CacheError(f"{self.path}: source {info.name} has no field(s) {unknown}")
        try:
            arrays = {n: decode_strings(g[n][()]) for n in names}
            status = g["_status"][()]
        except (OSError, KeyError, ValueError) as exc:
            raise damaged(self.path, info.name, first_line(exc)[:100]) from None
        missing = status == ROW_MISSING
        if missing.any():  # never written: show zeros / '' rather than whatever the disk held
            for n in names:
                arrays[n][missing] = "" if info.fields[n].dtype == STR_DTYPE else 0
        errors = [e.decode("utf-8") if isinstance(e, bytes) else e for e in g["_error"][()]]
        return SourceData(arrays, status, errors)
