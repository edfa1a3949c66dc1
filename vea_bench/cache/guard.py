"""Guards around cache writes: a writer lock, free-space estimates, one-line OS errors, clean stops.

Kept apart from the file format (`vea_bench.cache.store`) so that extraction can use the signal
handling without the HDF5 layer, and merging can take the writer lock:

- `CacheLock`: an exclusive ``flock`` on ``<cache>.lock``; a second writer of the same cache (or
  shard file) is refused in one line naming the process that holds it, never interleaved.
- `check_free_space`: refuses a new source (or the text rows left to resume) whose arrays would
  not fit, with the estimate it used.
- `os_error` (defined in `vea_bench.errors`, re-exported here): turns an `OSError` (permission,
  read-only mount, no space, missing parent) into a one-line `CacheError` naming the path and
  what to do.
- `stop_on_signals`: SIGTERM and SIGINT set a flag that the extraction loop reads after each
  batch, so a scheduler's preemption stops the run between two flushed batches (exit 143 / 130)
  instead of killing it in the middle of an HDF5 write; a second signal stops at once.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from vea_bench.errors import CacheError, VeaError, os_error

# Free space kept beyond the estimate: the writer's 2 MB reserve file (sources.BALLAST_BYTES), HDF5
# metadata, the index rewrite.
_RESERVE_BYTES = 4 << 20

_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def is_lock_error(exc: BaseException) -> bool:
    """HDF5's own file lock refused the open: another process has the file open for writing."""
    return "unable to lock file" in str(exc).lower()


class CacheLock:
    """Exclusive advisory lock held by the one process allowed to write a cache."""

    def __init__(self, cache_path: Path) -> None:
        self.path = cache_path.with_name(cache_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise os_error(self.path, exc, "create the cache's lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
            except OSError:
                holder = "another process"
            os.close(fd)
            raise CacheError(
                f"{self.path.with_suffix('')}: being written by {holder} (lock {self.path.name}); "
                f"wait for it to finish or write to another --cache"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}".encode())
        except OSError:
            pass  # the lock is what matters; the pid is only for the message
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def check_free_space(folder: Path, need_bytes: int, what: str) -> None:
    """Refuse to start writing ``need_bytes`` into ``folder`` when the disk holds less than that plus
    a reserve; the message gives the figure compared (data and reserve), not the data alone."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return  # no statistics on this file system: the write itself reports ENOSPC
    required = need_bytes + _RESERVE_BYTES
    if required > free:
        raise CacheError(
            f"{folder}: not enough free space for {what}: needs about {_fmt_bytes(required)} "
            f"({_fmt_bytes(need_bytes)} of data + {_fmt_bytes(_RESERVE_BYTES)} kept free for HDF5's metadata "
            f"and a clean close), {_fmt_bytes(free)} free; free space or choose a --cache on another disk"
        )


def fsync_path(path: Path, *, folder: bool = False) -> None:
    """Push a file (or a folder's entries, after a rename) to the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (tmpfs, network mounts) refuse fsync on folders
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------- signals
class Stopped(VeaError):
    """A run stopped by SIGTERM or SIGINT between two batches; its exit code says which."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StopFlag:
    """Set by the first SIGTERM / SIGINT; the loop checks it after each batch."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def error(self, detail: str, *, at_once: bool = False) -> Stopped:
        code = _SIGNAL_EXIT.get(self.signum or 0, 128 + int(self.signum or 0))
        when = "at once on a second signal" if at_once else "after the current batch"
        return Stopped(f"stopped by {self.name} {when}: {detail}; rerun the same command to resume", code)


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Turn SIGTERM / SIGINT into a stop request for the duration of the block (main thread only).

    Processes forked inside the block (data-loader workers) inherit the handlers, so a signal to
    the whole process group (Slurm, Ctrl-C) no longer kills them under the main process.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.requested:  # asked twice: stop now (files are closed by the callers' finally blocks)
            raise flag.error("every batch written before it is kept", at_once=True)
        flag.signum = signum

    old = {s: signal.getsignal(s) for s in _SIGNAL_EXIT}
    for s in _SIGNAL_EXIT:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def ignore_stop_signals() -> None:
    """In a worker process: leave SIGTERM / SIGINT to the main process, which stops the run cleanly."""
    for s in _SIGNAL_EXIT:
        signal.signal(s, signal.SIG_IGN)


__all__ = ["CacheLock", "StopFlag", "Stopped", "check_free_space", "fsync_path", "ignore_stop_signals",
           "is_lock_error", "os_error", "stop_on_signals"]
