"""Shared pieces of the CLI: consoles, the rich progress renderer, one-line error handling."""
from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

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


def run_guarded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; user-facing errors become one stderr line and a non-zero exit."""
    from vea_bench.errors import VeaError

    show_warnings()
    try:
        return fn(*args, **kwargs)
    except VeaError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: what was written is kept; rerun the same command to resume")
        raise typer.Exit(130) from None


def echo_path(path: Any, quiet: bool) -> None:
    """In --quiet mode print only the output path (for scripts)."""
    if quiet:
        sys.stdout.write(f"{path}\n")
