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


# `--allow-outside-root`, on every command that opens a dataset (the dataset layer refuses such paths).
AllowOutsideRootOpt = Annotated[bool, typer.Option(
    "--allow-outside-root",
    help="Read images that resolve outside --root (.., absolute paths, escaping symlinks); refused by default.")]


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


def setup_logging(quiet: bool = False) -> None:
    """Render the library's log messages (skipped images, resumes, warnings) on stderr with rich, once."""
    import logging

    from rich.logging import RichHandler

    root = logging.getLogger("vea_bench")
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(RichHandler(console=err_console, show_path=False, show_time=False))
    root.setLevel(logging.WARNING if quiet else logging.INFO)


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
