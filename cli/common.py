"""Shared pieces of the CLI: consoles, the rich progress renderer, one-line error handling."""
from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.markup import escape
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console()
err_console = Console(stderr=True)


# `--allow-outside-root` and `--strict`, on every command that opens a dataset.
AllowOutsideRootOpt = Annotated[bool, typer.Option(
    "--allow-outside-root",
    help="Read images that resolve outside --root (.., absolute paths, escaping symlinks); skipped by default.")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict",
    help="Refuse the dataset if any row is skipped (outside-root, missing, zero-byte...; ties and neutral "
         "votes apart) instead of skipping it with a warning.")]


# `--image-column` / `--label-column`, on every command that opens a dataset (the hf layout's columns).
ImageColumnOpt = Annotated[str | None, typer.Option(
    "--image-column", help="hf datasets: the image column (default: the one Image feature).")]
LabelColumnOpt = Annotated[str | None, typer.Option(
    "--label-column", help="hf datasets: the label column (default: the one ClassLabel, else 'label').")]


def column_options(image_column: str | None, label_column: str | None) -> dict[str, str]:
    """Loader options for the column flags given (layouts without columns refuse them in one line)."""
    return {k: v for k, v in (("image_column", image_column), ("label_column", label_column)) if v is not None}


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error to stderr and exit non-zero (never a traceback)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class RichProgress:
    """Renders the library's `Progress` protocol as a rich progress bar with rate, ETA and live info."""

    def __init__(self, unit: str = "it", *, quiet: bool = False) -> None:
        self.unit = unit
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, description: str, total: int | None = None) -> None:
        self.finish()
        if self.quiet:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=err_console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, rate="", info="")

    def advance(self, n: int = 1, **info: Any) -> None:
        if self._progress is None or self._task is None:
            return
        task = self._progress.tasks[0]
        speed = task.speed
        rate = f"{speed:.1f} {self.unit}/s" if speed else ""
        text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self._progress.update(self._task, advance=n, rate=rate, info=text)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = None
        self._task = None


class LineHandler(logging.Handler):
    """Renders each library log message as one stderr line (``warning:`` in front of warnings), unwrapped."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = escape(" ".join(self.format(record).split()))
            prefix = "[yellow]warning:[/] " if record.levelno >= logging.WARNING else ""
            err_console.print(prefix + msg, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001  logging must never break the command
            self.handleError(record)


def show_warnings() -> None:
    """Make sure the library's warnings (skipped rows, ...) reach stderr, one line each."""
    lib = logging.getLogger("vea_bench")
    if not any(isinstance(h, LineHandler) for h in lib.handlers):
        lib.addHandler(LineHandler())
    if lib.level == logging.NOTSET:
        lib.setLevel(logging.WARNING)


def setup_logging(quiet: bool = False) -> None:
    """Render the library's log messages (skipped images, resumes, warnings) on stderr, once."""
    show_warnings()
    logging.getLogger("vea_bench").setLevel(logging.WARNING if quiet else logging.INFO)


# Third-party notices that say nothing about the user's run, hidden unless `vea-bench --verbose`:
# (logger, text the message holds).
THIRD_PARTY_NOTICES: tuple[tuple[str, str], ...] = (
    # bitsandbytes on a CPU with AVX512-BF16 tries an optional hub kernel package at import time.
    ("bitsandbytes.backends.cpu.ops", "kernels-community"),
)


class _DropNotice(logging.Filter):
    """Drops one logger's records whose message holds ``needle``; everything else passes."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle

    def filter(self, record: logging.LogRecord) -> bool:
        return self.needle not in record.getMessage()


def quiet_third_party(verbose: bool = False) -> None:
    """Install (or, with ``verbose``, remove) the filters of `THIRD_PARTY_NOTICES`; idempotent."""
    for name, needle in THIRD_PARTY_NOTICES:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, _DropNotice)]:
            logger.removeFilter(f)
        if not verbose:
            logger.addFilter(_DropNotice(needle))


# Where a failed write's path is looked for when the OS error does not carry it: the innermost
# frames' locals of these names (pathlib's ``self``, PIL's ``fp``, safetensors' ``filename``...).
_PATH_LOCALS = ("filename", "fname", "fp", "file", "f", "path", "self")
# Output options of the commands, the last resort for naming where a write failed.
_OUTPUT_PARAMS = ("out", "results", "output", "workdir")


def _as_path(value: Any) -> str | None:
    """A file-system path held by ``value`` (a path, a path string, an open file), else None."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)  # type: ignore[return-value]
    if isinstance(value, str) and os.sep in value and "\n" not in value and len(value) < 4096:
        return value
    name = getattr(value, "name", None)
    if isinstance(name, str) and os.sep in name and isinstance(getattr(value, "mode", None), str):
        return name
    return None


def _failed_path(exc: BaseException) -> str | None:
    """The path a write failed on: the error's own, the innermost frame holding one, or the command's output."""
    for attr in ("filename", "filename2"):
        if getattr(exc, attr, None):
            return os.fspath(getattr(exc, attr))
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in _PATH_LOCALS:
            found = _as_path(frame.f_locals.get(name))
            if found:
                return found
    ctx = click.get_current_context(silent=True)
    given = [os.fspath(ctx.params[k]) for k in _OUTPUT_PARAMS if ctx is not None and ctx.params.get(k) is not None]
    return " or ".join(given) or None


def write_failure(exc: BaseException) -> str | None:
    """One line for a disk-full, read-only or permission failure, naming the path; None for other errors.

    Every writer outside the cache (records, reports, tables, plots, checkpoints, synthetic sets,
    instructions) ends here on such a failure, whatever library raised it (Python, PIL, matplotlib,
    safetensors, torch), so the rule is the same for all of them.
    """
    from vea_bench.errors import errno_of

    torch_write = isinstance(exc, RuntimeError) and "file write failed" in str(exc)
    if not (isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError" or torch_write):
        return None
    code = errno_of(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or (torch_write and code is None):
        reason, hint = "no space left on device", "free space or write to another disk, then rerun"
    elif code == errno.EROFS:
        reason, hint = "read-only file system", "choose a folder on a writable file system"
    elif code in (errno.EACCES, errno.EPERM):
        reason, hint = "permission denied", "make it (or its folder) writable for this user, or choose another place"
    else:
        return None
    path = _failed_path(exc) or "output"
    path = path[: -len(".tmp")] if path.endswith(".tmp") else path  # name the file being replaced
    doing = "cannot write" if reason != "permission denied" else "cannot open"
    return f"{path}: {doing} ({reason}); {hint}; files already complete are kept"


class SignalStop(KeyboardInterrupt):
    """SIGINT / SIGTERM outside a loop that stops between batches: unwinds like Ctrl-C, knows its signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def on_stop_signal(signum: int, frame: Any) -> None:
    """The CLI process's SIGINT and SIGTERM handler (guarded loops install their own while they run)."""
    raise SignalStop(signum)


def stopped(exc: KeyboardInterrupt) -> int:
    """Say in one line that the command stopped and that rerunning resumes; the conventional exit code."""
    import signal

    signum = int(getattr(exc, "signum", signal.SIGINT))
    err_console.print(f"[yellow]stopped by {signal.Signals(signum).name}[/]: what was written is kept; "
                      "rerun the same command to resume")
    return 128 + signum


def run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; user-facing errors (and full or read-only disks) become one stderr line and a non-zero exit."""
    from vea_bench.errors import VeaError

    show_warnings()
    try:
        return fn(*args, **kwargs)
    except VeaError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt as exc:
        raise typer.Exit(stopped(exc)) from None
    except Exception as exc:
        message = write_failure(exc)
        if message is None:
            raise
        fail(message, 2)


def write_output(path: Path, text: str) -> None:
    """Write a rendered file whole or not at all (a full disk never leaves a truncated one behind)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def echo_path(path: Any, quiet: bool) -> None:
    """In --quiet mode print only the output path (for scripts)."""
    if quiet:
        sys.stdout.write(f"{path}\n")
