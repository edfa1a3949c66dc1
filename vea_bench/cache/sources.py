"""The per-source files of a cache: where each lives, creating one, the handles open on them,
the disk reserve that lets a writer close cleanly, and the rebuild after a crash.

Why one file per source: a fault while writing (SIGKILL in the middle of an HDF5 metadata flush,
a full disk, a crash of the HDF5 library) can damage at most the file being written. A new
source's file is created under a temporary name, fsynced and renamed before the index links to
it. While a writer has a file open, a ``.writing`` marker sits beside it; a marker left behind
says the writer died mid-write, and the next writer copies the file's readable rows into a fresh
file (`rebuild_file`) before going on.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py

from vea_bench.cache.guard import check_free_space, fsync_path, is_lock_error
from vea_bench.cache.layout import (
    SOURCES_SUFFIX,
    copy_readable_rows,
    create_source_group,
    discard,
    field_specs,
    first_line,
    sources_dir,
    split_name,
)
from vea_bench.cache.messages import busy, damaged, foreign_folder, lost_file, not_copied
from vea_bench.errors import CacheError, errno_of, os_error

log = logging.getLogger(__name__)

# Space a writer holds in reserve (a file it deletes on "no space left"), so that HDF5 can still
# flush and close the file it was writing when the disk fills up under it: without room for that
# last metadata flush the library may crash (SIGSEGV) and leave the file unreadable.
BALLAST_BYTES = 2 << 20
BALLAST_NAME = ".space-reserve"
# A write is refused (and the reserve freed for a clean close) once the disk has less free than
# this: HDF5 writes metadata at moments Python cannot intercept (object deallocation), and an
# ENOSPC there cannot be recovered from.
LOW_SPACE_BYTES = 1 << 20


def writing_marker(path: Path) -> Path:
    """Exists while a writer has ``path`` open; left behind, it says the writer died mid-write."""
    return path.with_name(path.name + ".writing")


class Reserve:
    """``BALLAST_BYTES`` held on the cache's disk while sources are open for writing."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / BALLAST_NAME

    def take(self) -> None:
        """Best effort: a disk too full for the reserve is caught by the free-space checks."""
        if self.path.exists():
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as f:
                f.write(b"\0" * BALLAST_BYTES)  # written, not sparse: the blocks are really taken
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            discard(self.path)

    def release(self) -> None:
        discard(self.path)

    def low_space(self) -> OSError | None:
        """An ENOSPC to raise when the disk is nearly full (see `LOW_SPACE_BYTES`), else None."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return None
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if free < LOW_SPACE_BYTES else None


def create_file(final: Path, fill: Callable[[h5py.File], None], *, reserve: Reserve | None = None,
                action: str = "create a source file", where: Path | None = None) -> None:
    """Create an HDF5 file under a temporary name with ``fill``, fsync it, then rename it to ``final``.

    When ``fill`` fails, ``reserve`` is freed before the file is closed, so HDF5 has room for its
    last metadata flush. An OS error is one line naming ``where`` (default: ``final``'s folder).
    """
    tmp = final.with_name(final.name + ".creating")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(tmp, "w")
        try:
            fill(f)
            f.flush()
        except BaseException:
            if reserve is not None:
                reserve.release()
            raise
        finally:
            f.close()
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent, folder=True)
    except OSError as exc:
        discard(tmp)
        raise os_error(where or final.parent, exc, action) from None
    except BaseException:
        discard(tmp)
        raise


class SourceFiles:
    """The source files of the cache whose index is ``index_path``, and the handles open on them."""

    def __init__(self, index_path: Path) -> None:
        self.index_path = index_path
        self.folder = sources_dir(index_path)
        self.reserve = Reserve(self.folder)
        self.writers: dict[str, h5py.File] = {}  # source name -> its file, open for writing
        self.readers: dict[str, h5py.File] = {}  # source name -> its file, open read-only

    # ------------------------------------------------------------------------------ where
    def own(self, name: str, rel: str) -> Path:
        """Where the linked file lies in this index's own ``.sources`` folder."""
        return self.folder / split_name(name)[0] / Path(rel).name

    def locate(self, name: str, rel: str) -> Path:
        """A source's file: in this index's own folder (so a cache copied or renamed together
        with its folder works), else where the link itself points."""
        own = self.own(name, rel)
        return own if own.exists() else self.index_path.parent / rel

    def link_text(self, name: str, rel: str) -> str:
        """The link to store for a source: into the own folder whenever the file is there."""
        if self.own(name, rel).exists():
            return f"{self.index_path.name}{SOURCES_SUFFIX}/{split_name(name)[0]}/{Path(rel).name}"
        return rel

    def new_file(self, kind: str, key: str) -> tuple[Path, str]:
        """A fresh file name for a source, and the link text that points to it."""
        safe = re.sub(r"[^A-Za-z0-9._+-]", "_", key)[:80] or "source"
        fname = f"{safe}.{secrets.token_hex(4)}.h5"
        return self.folder / kind / fname, f"{self.index_path.name}{SOURCES_SUFFIX}/{kind}/{fname}"

    def check_own(self, links: dict[str, str | None]) -> None:
        """Refuse to write through links into another index's folder (see `foreign_folder`)."""
        folder = self.foreign_folder(links)
        if folder is not None:
            raise foreign_folder(self.index_path, folder)

    def foreign_folder(self, links: dict[str, str | None]) -> Path | None:
        """The folder of another index the links lead to, when this index's own folder lacks a
        source's file (an index copied alone beside the original)."""
        for name, rel in links.items():
            if rel is not None and not self.own(name, rel).exists() and (self.index_path.parent / rel).exists():
                return (self.index_path.parent / rel).parent.parent
        return None

    def missing_error(self, name: str, rel: str, path: Path) -> CacheError:
        """Why ``path`` is not there: its folder was not copied with the index, or it was lost."""
        kind = split_name(name)[0]
        linked = self.index_path.parent / rel
        if not (self.folder / kind).is_dir() and not linked.parent.is_dir():
            missing = self.folder if not self.folder.is_dir() else self.folder / kind
            return not_copied(self.index_path, Path(rel).parts[0], missing)
        return lost_file(self.index_path, name, path)

    # ---------------------------------------------------------------------------- reading
    def read_group(self, name: str, rel: str) -> h5py.Group:
        """A source's group, from a handle already open or by opening its file read-only."""
        f = self.writers.get(name) or self.readers.get(name)
        if f is not None and f.id.valid:
            return f[name]
        p = self.locate(name, rel)
        if not p.exists():
            raise self.missing_error(name, rel, p)
        try:
            f = h5py.File(p, "r")
            self.readers[name] = f
            return f[name]
        except (KeyError, OSError) as exc:
            if is_lock_error(exc):
                raise busy(self.index_path, name) from None
            reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else first_line(exc)
            raise damaged(self.index_path, name, reason) from None

    def close_readers(self) -> None:
        for f in self.readers.values():
            if f.id.valid:
                f.close()
        self.readers.clear()

    # ---------------------------------------------------------------------------- writing
    def open_writer(self, name: str, p: Path) -> h5py.File:
        """Open ``p`` for writing, with its marker; a damaged file is a one-line error."""
        r = self.readers.pop(name, None)
        if r is not None and r.id.valid:
            r.close()  # HDF5 refuses to reopen for writing a file this process has open read-only
        if not self.writers:
            self.reserve.take()
        try:
            marker = writing_marker(p)
            marker.touch()
            fsync_path(marker.parent, folder=True)
            f = h5py.File(p, "r+")
        except OSError as exc:
            if not self.writers:
                self.reserve.release()
            discard(writing_marker(p))
            if is_lock_error(exc):
                raise busy(self.index_path, name) from None
            if p.exists() and errno_of(exc) is None:
                raise damaged(self.index_path, name, first_line(exc)[:100]) from None
            raise os_error(p, exc, f"open source {name} for writing") from None
        self.writers[name] = f
        return f

    def close_writer(self, name: str) -> None:
        f = self.writers.pop(name, None)
        if f is None:
            return
        path = Path(f.filename)
        if f.id.valid:
            f.close()
        discard(writing_marker(path))  # closed cleanly

    def close_writers(self) -> None:
        if self.writers:
            self.reserve.release()  # room for the final flush, whatever happened before
        for name in list(self.writers):
            try:
                self.close_writer(name)
            except OSError as exc:  # a full disk can refuse the final flush; the rows before it are kept
                log.warning("%s", os_error(self.index_path, exc, "close a source file"))
        self.writers.clear()

    def collect_garbage(self, used: set[Path]) -> None:
        """Delete source files not in ``used`` (replaced, dropped, or left by a killed creation)."""
        if not self.folder.is_dir():
            return
        keep = {u.resolve() for u in used}
        keep |= {writing_marker(u) for u in keep}  # a writer's marker lives as long as its file
        for f in self.folder.rglob("*"):
            if f.is_file() and f.resolve() not in keep and not (f.name == BALLAST_NAME and self.writers):
                try:
                    f.unlink()
                except OSError:
                    pass


def rebuild_file(index_path: Path, name: str, old_path: Path, final: Path, reserve: Reserve) -> None:
    """Copy the readable rows of a source file its last writer never closed into ``final``."""
    try:
        old = h5py.File(old_path, "r")
    except OSError as exc:
        raise damaged(index_path, name, first_line(exc)[:100]) from None
    with old:
        g = old[name]
        specs = field_specs(g)
        prov = json.loads(g.attrs.get("provenance", "{}"))
        split_rows = {s: int(g[s]["_status"].shape[0]) for s in g}
        check_free_space(final.parent, old_path.stat().st_size, f"rebuilding source {name}")

        def fill(f: h5py.File) -> None:
            ng = create_source_group(f, name, specs, prov, split_rows)
            for split in split_rows:
                copy_readable_rows(g[split], ng[split], specs)

        create_file(final, fill, reserve=reserve)
