"""Errors that carry a one-line, user-facing message.

The CLI catches `VeaError` and prints `str(err)` on one line with a non-zero exit code, so every
message must name the offending thing (file, label, source) and say what to do.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path


class VeaError(Exception):
    """Base class: a user-facing problem (bad input, missing file), never a programming bug."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        # Collapse to one line: the CLI contract is one line per error.
        super().__init__(" ".join(str(message).split()))


class DatasetError(VeaError):
    """A dataset root, split file, image or label could not be understood."""


class UnknownLabelError(DatasetError):
    """A label spelling that maps to nothing in the dataset's label space."""


class CacheError(VeaError):
    """A cache file is missing, truncated, foreign, incomplete or mismatched."""


class ModelError(VeaError):
    """A model, adapter or checkpoint could not be loaded or does not fit the task."""


class ConfigError(VeaError):
    """An experiment file, option combination or record is invalid."""


class DeviceError(ConfigError):
    """A ``--device`` that names no device, or an accelerator this machine does not have."""


def errno_of(exc: BaseException) -> int | None:
    """The errno of an OSError, also when HDF5 only mentions it in its message text."""
    if isinstance(exc, OSError) and exc.errno:
        return int(exc.errno)
    text = str(exc)
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EDQUOT):
        if f"errno = {code}," in text or os.strerror(code) in text:
            return code
    return None


def os_error(path: Path | str, exc: BaseException, doing: str) -> CacheError:
    """One line: the path, what failed, the OS's reason and the fix.

    Lives here, below every layer, because both the cache and the run records write files and
    must fail the same way on a full disk or a read-only mount.
    """
    code = errno_of(exc)
    where = Path(path)
    if code in (errno.ENOSPC, errno.EDQUOT):
        hint = "free space (or use a --cache on another disk), then rerun to resume; complete sources are kept"
        reason = "no space left on device"
    elif code == errno.EROFS:
        hint = "the file system is mounted read-only; copy the cache to a writable place or choose another --cache"
        reason = "read-only file system"
    elif code in (errno.EACCES, errno.EPERM):
        hint = f"make {where.parent} writable for this user or choose another --cache"
        reason = "permission denied"
    elif code == errno.ENOENT:
        hint = "check the path (its parent folder may have been removed)"
        reason = "no such file or folder"
    else:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = first[:160]
        hint = "check the disk and the path, then rerun"
    return CacheError(f"{where}: cannot {doing} ({reason}); {hint}")
