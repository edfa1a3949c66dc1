"""Moving a cache around: one packed file, or a copy / move that keeps index and sources together.

A cache in the per-source layout is its index *and* the ``<index>.sources`` folder, and the
index's external links name that folder by the index's file name. Copying the index alone loses
the sources; renaming a copy (``fi_v2.h5`` beside ``fi.h5``) leaves links that plain h5py follows
into ``fi.h5.sources``, the original's data. So:

- `pack_cache` writes one self-contained HDF5 file (every source copied into it, provenance and
  row status kept) that every command reads as it is: the form for moving and archiving.
- `copy_cache` / `move_cache` copy or move the index with its sources into ``<new>.sources`` and
  write the new index with links into that folder, so the new cache reads the same through plain
  h5py as through vea-bench.

Each holds the source cache's writer lock while it runs, so no writer changes it meanwhile (a
pack or copy from a read-only place, where no writer can be, goes without it).
"""
from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py

from vea_bench.cache.guard import CacheLock, check_free_space, fsync_path
from vea_bench.cache.layout import SOURCES_SUFFIX, remove_cache, sources_dir, split_name
from vea_bench.cache.messages import exists_already
from vea_bench.cache.sources import create_file, writing_marker
from vea_bench.cache.store import FeatureCache
from vea_bench.errors import CacheError, os_error

__all__ = ["PortableReport", "copy_cache", "move_cache", "pack_cache"]


@dataclass
class PortableReport:
    """What a pack, copy or move wrote: the new cache, its sources and its size on disk."""

    source: Path
    output: Path
    sources: list[str]
    size_bytes: int
    packed: bool


def _check_output(src: Path, out: Path, what: str) -> None:
    if not src.exists():
        FeatureCache.open(src)  # the one-line "no cache file" error
    if out.resolve() == src.resolve():
        raise CacheError(f"{out}: the {what} cannot be the cache itself")
    if out.is_dir():
        raise CacheError(f"{out} is a folder; give a file name such as {out / src.name}")
    for p in (out, sources_dir(out)):
        if p.exists():
            raise exists_already(p, what)


def _lock_unless_read_only(src: Path) -> CacheLock | None:
    """The source cache's writer lock, or None where nobody can write it (a read-only mount, a
    folder without write permission): an archive can be packed or copied from there."""
    try:
        read_only = bool(os.statvfs(src.parent).f_flag & os.ST_RDONLY) or not os.access(src.parent, os.W_OK)
    except OSError:
        read_only = False
    if read_only:
        return None
    lock = CacheLock(src)
    lock.acquire()
    return lock


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def pack_cache(cache: str | Path, output: str | Path) -> PortableReport:
    """Write ``cache`` as one self-contained HDF5 file at ``output`` (the packed layout).

    The index's attributes and splits are copied as they are and every source group is copied
    into the file whole (arrays, row status, failure reasons, fingerprints, provenance). A
    damaged source, or an index whose sources folder is missing, is refused in one line.
    """
    src, out = Path(cache), Path(output)
    _check_output(src, out, "packed file")
    lock = _lock_unless_read_only(src)
    try:
        with FeatureCache.open(src) as c:
            names = [s.name for s in c.sources()]  # damaged or not copied: one line, before writing
            need = _size([src, *(p for p in c.source_files().values() if p is not None)])
            check_free_space(out.parent, need, f"the packed file {out.name}")

            def fill(f: h5py.File) -> None:
                c.copy_index_into(f)
                for name in names:
                    kind, key = split_name(name)
                    f.copy(c.source_group(name), f.require_group(kind), key)

            create_file(out, fill, action="write the packed cache", where=out)
    finally:
        if lock is not None:
            lock.release()
    return PortableReport(src, out, names, out.stat().st_size, True)


def copy_cache(cache: str | Path, output: str | Path) -> PortableReport:
    """Copy ``cache`` (index and sources) to ``output``; the copy's links point into its own folder."""
    return _transfer(Path(cache), Path(output), move=False)


def move_cache(cache: str | Path, output: str | Path) -> PortableReport:
    """Move (rename) ``cache`` to ``output`` with its sources; the links follow the new name."""
    return _transfer(Path(cache), Path(output), move=True)


def _transfer(src: Path, out: Path, *, move: bool) -> PortableReport:
    what = "moved cache" if move else "copy"
    _check_output(src, out, what)
    lock: CacheLock | None = CacheLock(src) if move else None
    if lock is not None:
        lock.acquire()  # a move deletes the original: no writer may hold it
    else:
        lock = _lock_unless_read_only(src)
    try:
        with FeatureCache.open(src) as c:
            names = [s.name for s in c.sources()]  # damaged or not copied: one line, before writing
            files = c.source_files()
            if all(p is None for p in files.values()):  # packed: one file
                _transfer_file(src, out, move=move)
                packed = True
            else:
                _transfer_sources(c, files, out, move=move)
                packed = False
    finally:
        if lock is not None:
            lock.release()
    if move:
        remove_cache(src)  # the index and the lock file; its folder is gone already
    size = _size([out, *sources_dir(out).rglob("*")]) if sources_dir(out).is_dir() else _size([out])
    return PortableReport(src, out, names, size, packed)


def _transfer_file(src: Path, out: Path, *, move: bool) -> None:
    tmp = out.with_name(out.name + ".copying")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if move:
            try:
                os.rename(src, out)
                return
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
        check_free_space(out.parent, src.stat().st_size, f"a copy of {src.name}")
        shutil.copy2(src, tmp)
        fsync_path(tmp)
        os.replace(tmp, out)
        fsync_path(out.parent, folder=True)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_error(out, exc, "move the cache" if move else "copy the cache") from None


def _transfer_sources(c: FeatureCache, files: dict[str, Path | None], out: Path, *, move: bool) -> None:
    """The folder first (renamed, or copied under a temporary name and renamed), then the index."""
    if any(p is None for p in files.values()):
        raise CacheError(f"{c.path}: some sources are inside the index and some beside it; "
                         f"run `vea-bench cache repair {c.path}` once to put them all in their own files")
    dst = sources_dir(out)
    links = {n: f"{out.name}{SOURCES_SUFFIX}/{split_name(n)[0]}/{p.name}" for n, p in files.items() if p is not None}
    renamed = False
    tmp = dst.with_name(dst.name + ".copying")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if move and all(p.parent.parent == c.sources_dir for p in files.values() if p is not None):
            try:
                os.rename(c.sources_dir, dst)
                renamed = True
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
        if not renamed:
            check_free_space(out.parent, _size([p for p in files.values() if p is not None]), f"a copy of {c.path.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            for name, p in files.items():
                if p is None:
                    continue
                target = tmp / split_name(name)[0] / p.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, target)
                if writing_marker(p).exists():  # a file its writer never closed is rebuilt on next write
                    shutil.copy2(writing_marker(p), writing_marker(target))
            os.rename(tmp, dst)
        c.write_index_copy(out, links)
    except (OSError, CacheError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if renamed:
            os.rename(dst, c.sources_dir)
        elif dst.exists() and not out.exists():
            shutil.rmtree(dst, ignore_errors=True)
        if isinstance(exc, CacheError):
            raise
        raise os_error(out, exc, "move the cache" if move else "copy the cache") from None
    if move:
        shutil.rmtree(c.sources_dir, ignore_errors=True)  # left only when the move had to copy
