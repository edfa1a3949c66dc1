"""`vea-bench`: extract once into an HDF5 cache, then train every head, sweep and baseline in seconds.

Each command group lives in its own module; heavy libraries (torch, transformers) are imported
inside command bodies so that `--help` is instant.
"""
from __future__ import annotations

import sys
from typing import Any

import typer
from rich.markup import escape

from vea_bench_cli.common import err_console, on_stop_signal, stopped


class _VeaTyper(typer.Typer):
    """Typer whose every user-facing error is one stderr line and a non-zero exit, never a traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from vea_bench.errors import VeaError

        try:
            return super().__call__(*args, **kwargs)
        except VeaError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            sys.exit(stopped(exc))
        except Exception as exc:  # a full or read-only disk outside any guarded call: still one line
            from vea_bench_cli.common import write_failure

            message = write_failure(exc)
            if message is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            sys.exit(2)


app = _VeaTyper(
    name="vea-bench",
    help=(
        "Reproduce, ablate and extend VLM + knowledge-distillation methods (EmoVLM-KD) for visual "
        "emotion analysis. `extract` runs the expensive models once per image into an HDF5 cache; "
        "`train`, `sweep` and baselines then run against the cache in seconds; `table` and `plot` "
        "render the paper's tables and figures from run records. Start with `vea-bench demo`."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", help="Also show third-party notices (e.g. bitsandbytes' CPU kernel message)."),
) -> None:
    """Options for every command."""
    from vea_bench_cli.common import quiet_third_party

    quiet_third_party(verbose)


# Command groups and top-level commands, one module each.
from vea_bench_cli import (  # noqa: E402
    baselines_cmd,
    cache_cmd,
    datasets_cmd,
    extract_cmd,
    instruct_cmd,
    models_cmd,
    pipeline_cmd,
    report_cmd,
    sweep_cmd,
    train_cmd,
    train_heads_cmd,
    train_models_cmd,
)

app.add_typer(datasets_cmd.app, name="datasets", help="List, check and synthesise datasets in their native layouts.")
app.add_typer(cache_cmd.app, name="cache", help="Inspect, verify and merge HDF5 feature caches.")
app.add_typer(models_cmd.app, name="models", help="List VLM backends and teachers; build tiny offline models.")
app.add_typer(train_cmd.app, name="train", help="Train teachers, the VLM (QLoRA), distill heads and gates.")
app.add_typer(sweep_cmd.app, name="sweep", help="Batched sweeps over alpha, depth, gate or seed against the cache.")
app.add_typer(instruct_cmd.app, name="instruct", help="Generate emotion instruction data from a chat endpoint.")
app.add_typer(report_cmd.results_app, name="results", help="Browse run records.")
extract_cmd.register(app)
baselines_cmd.register(app)
report_cmd.register(app)
pipeline_cmd.register(app)
_ = (train_heads_cmd, train_models_cmd)  # they add commands to train_cmd.app on import


def main() -> None:
    """Console-script entry point.

    Why the signal handling: a scheduler's SIGTERM ends a command as quietly as Ctrl-C, in one line
    with the conventional code (143, 130), wherever it lands; and once the command is over, a signal
    that arrives while the interpreter shuts down is ignored, instead of printing a traceback from
    its exit handlers after the work was written.
    """
    import signal

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_stop_signal)
    try:
        app()
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)


if __name__ == "__main__":
    main()
