"""Every one-line message the cache gives about a source and its files, each built in one place.

The CLI prints a `CacheError` as it is, so these name the cache, the source and what to do. OS
failures (full disk, read-only mount, permissions) are `vea_bench.errors.os_error`.
"""
from __future__ import annotations

from pathlib import Path

from vea_bench.errors import CacheError


class DamagedSourceError(CacheError):
    """A source's file or datasets cannot be read: drop it (`cache repair`) and recompute it."""

    def __init__(self, cache: Path | str, source: str, reason: str) -> None:
        self.cache = Path(cache)
        self.source = source
        self.reason = " ".join(reason.split())
        super().__init__(f"{self.finding}; run `vea-bench cache repair {cache}` to drop it, then extract it again")

    @property
    def finding(self) -> str:
        """The message without the fix (for lists of findings that give their own)."""
        return f"{self.cache}: source {self.source} is damaged ({self.reason})"


class SourcesNotCopiedError(CacheError):
    """The index was copied or moved without the folder that holds its sources: nothing is damaged."""


def damaged(cache: Path | str, source: str, reason: str) -> DamagedSourceError:
    """A source whose data or layout does not read back (``reason``: what failed, one line)."""
    return DamagedSourceError(cache, source, reason[:120])


def lost_file(cache: Path | str, source: str, file: Path) -> DamagedSourceError:
    """A source whose own file is gone while its folder is there."""
    return DamagedSourceError(cache, source, f"its file {file.name} is missing")


def not_copied(cache: Path, linked_folder: str, missing: Path) -> SourcesNotCopiedError:
    """The folder ``missing`` (the sources folder or one kind's subfolder) is not beside the index.

    ``linked_folder`` is the folder name the index's links were written with (``fi.h5.sources``
    also for a renamed copy ``fi_v2.h5``, whose own folder would be ``fi_v2.h5.sources``).
    """
    own = cache.name + ".sources"
    as_own = f" (as `{own}`)" if linked_folder != own else ""
    what = "its sources folder" if missing.name == own else f"the folder {missing.parent.name}/{missing.name}"
    return SourcesNotCopiedError(
        f"{cache}: {what} is not beside it (a cache is the index file plus that folder); "
        f"copy the folder `{linked_folder}` with it{as_own}, or use `vea-bench cache pack` to make one "
        f"self-contained file"
    )


def foreign_folder(cache: Path, folder: Path) -> CacheError:
    """A writer of an index copied alone beside the original would write into the original's files."""
    return CacheError(
        f"{cache}: its sources are in {folder.name}, the folder of another cache, so writing would change "
        f"that cache's files; make an independent copy with `vea-bench cache copy`, or rename the folder "
        f"to {cache.name}.sources if it belongs to this index alone"
    )


def busy(cache: Path | str, source: str) -> CacheError:
    """Another process has the source's file open for writing (HDF5's own file lock)."""
    return CacheError(f"{cache}: source {source} is being written by another process; wait for it to finish")


def read_only(cache: Path | str) -> CacheError:
    return CacheError(f"{cache}: opened read-only")


def closed(cache: Path | str) -> CacheError:
    return CacheError(f"{cache}: the cache is closed")


def no_source(cache: Path | str, source: str, have: list[str]) -> CacheError:
    return CacheError(f"{cache}: no source {source} (sources: {', '.join(have) or 'none'})")


def exists_already(path: Path, what: str) -> CacheError:
    return CacheError(f"{path}: already exists; choose another name for the {what} or remove it first")
