"""`--tracker wandb|mlflow`: one option definition for every training command, sweep and `run`."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Optional

import typer



def _check(name: str | None) -> str | None:
    """Refuse an unknown tracker, or one whose package is missing, before any work starts."""
    if name is None:
        return None
    from vea_bench.errors import VeaError
    from vea_bench.tracking import make_tracker
    from vea_bench_cli.common import fail

    try:
        make_tracker(name)
    except VeaError as exc:
        fail(str(exc), exc.exit_code)
    return name


TrackerOpt = Annotated[Optional[str], typer.Option(
    "--tracker", callback=_check,
    help="Also log to an experiment tracker: wandb (offline where WANDB_MODE=offline) or mlflow (the store in "
         "MLFLOW_TRACKING_URI): per-step loss and lr, per-epoch val figures, each run record.")]


@contextmanager
def tracking(name: str | None, *, group: str | None = None) -> Iterator[Any]:
    """The tracker ``name`` (a do-nothing one for None) for one command, closed at its end."""
    from vea_bench.tracking import make_tracker

    tracker = make_tracker(name, group=group)
    try:
        yield tracker
    finally:
        tracker.close()


def log_records(name: str | None, records: Iterable[Any]) -> None:
    """Send finished run records (distill heads, gates, sweeps) to tracker ``name``, one run each."""
    if name is None:
        return
    with tracking(name) as tracker:
        tracker.records(records)
