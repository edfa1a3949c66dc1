"""What every experiment tracker does, and the guard that keeps a failing tracker from costing a run.

A `Tracker` is one object handed to the trainers and the CLI: it opens one tracker run per trained
model (a teacher, a QLoRA stage, each distill head or gate of a sweep), logs per-step loss and
learning rate while the heavy stages train (`step`), per-epoch figures (`epoch`), and each run
record's config and metrics (`record`); `artifacts` uploads rendered tables and the report. A
backend implements the five `_`-methods; the base class turns any exception a backend raises
into one logged warning and switches that tracker off, so the training goes on untouched.
`NullTracker` (no ``--tracker``) does nothing at all.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vea_bench.errors import ConfigError
from vea_bench.registry import Registry

if TYPE_CHECKING:
    from vea_bench.results import RunRecord

log = logging.getLogger("vea_bench.tracking")

DEFAULT_PROJECT = "vea-bench"


def _flatten(tree: Mapping[str, Any], sep: str, keep: Callable[[Any], bool], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, sep, keep, name + sep))
        elif keep(value):
            out[name] = value
    return out


def flat_numbers(tree: Mapping[str, Any]) -> dict[str, float]:
    """Every int/float leaf of a nested mapping as ``a/b/c -> value`` (lists and text are left out)."""
    nums = _flatten(tree, "/", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    return {k: float(v) for k, v in nums.items()}


def flat_config(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A nested config as ``a.b -> value`` (lists kept whole): what tracker params hold."""
    return _flatten(tree, ".", lambda v: True)


def epoch_curves(record: RunRecord) -> list[tuple[int, dict[str, float]]]:
    """Per-epoch figures a record carries (``convergence`` arrays of the heads): ``[(epoch, metrics)]``."""
    conv = record.convergence or {}
    series = {k: conv[k] for k in ("train_loss", "val_loss", "val_accuracy") if isinstance(conv.get(k), list)}
    epochs = max((len(v) for v in series.values()), default=0)
    return [(e + 1, {k: float(v[e]) for k, v in series.items() if e < len(v)}) for e in range(epochs)]


class Tracker:
    """One tracker for a whole command: runs opened and closed in turn, failures contained."""

    name = "none"

    def __init__(self, *, project: str | None = None, group: str | None = None) -> None:
        self.project = project or DEFAULT_PROJECT
        self.group = group
        self.active = False      # a run is open
        self.disabled = False    # the backend failed once: the rest of the command runs without it
        self.logged: set[str] = set()   # run ids whose records went out already

    # --- backend hooks ------------------------------------------------------------------------
    def _start(self, run_name: str, config: dict[str, Any], group: str | None) -> None:
        raise NotImplementedError

    def _log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _summary(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def _artifacts(self, name: str, paths: list[Path]) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    # --- guarded calls ------------------------------------------------------------------------
    def _guard(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        if self.disabled:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001  a tracker's failure (network, disk, its own bugs) never costs the run
            self.disabled = True
            self.active = False
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("%s tracker failed while %s (%s); the run goes on without it", self.name, what, msg)

    def start(self, run_name: str, config: Mapping[str, Any] | None = None, *, group: str | None = None) -> None:
        """Open a run (closing an open one first)."""
        if self.active:
            self.finish()
        self._guard("starting a run", self._start, run_name, flat_config(config or {}), group or self.group)
        self.active = not self.disabled

    def step(self, step: int, **metrics: float) -> None:
        """Per-step figures of the open run (``loss``, ``lr``), logged as ``train/<name>``."""
        if self.active:
            self._guard("logging a step", self._log, {f"train/{k}": float(v) for k, v in metrics.items()}, int(step))

    def epoch(self, epoch: int, metrics: Mapping[str, Any], *, step: int | None = None) -> None:
        """Per-epoch figures of the open run, logged as ``epoch/<name>`` at ``step`` (default: the epoch)."""
        if self.active:
            values = {"epoch": float(epoch), **{f"epoch/{k}": float(v) for k, v in flat_numbers(metrics).items()
                                                 if k != "epoch"}}
            self._guard("logging an epoch", self._log, values, int(epoch if step is None else step))

    def record(self, record: RunRecord) -> None:
        """Log a run record's config and metrics into the open run, or into a run of its own; close it."""
        if record.run_id in self.logged or self.disabled:
            return
        if not self.active:
            self.start(record.run_id, {}, group=record.group or self.group)
            for epoch, values in epoch_curves(record):
                self.epoch(epoch, values)
        config = {"kind": record.kind, "method": record.method, "dataset": record.dataset, "seed": record.seed,
                  "run_id": record.run_id, "params": record.params, **flat_config(record.config)}
        metrics = flat_numbers(record.metrics)
        if record.wall_time_s is not None:
            metrics["wall_time_s"] = float(record.wall_time_s)
        if self.active:
            self._guard("logging a record", self._summary, config, metrics)
        self.logged.add(record.run_id)
        self.finish()

    def records(self, records: Iterable[RunRecord]) -> None:
        """`record` for each (a sweep's or a pipeline stage's records)."""
        for r in records:
            self.record(r)

    def artifacts(self, name: str, paths: Iterable[str | Path]) -> None:
        """Upload files (rendered tables, the HTML report folder) as one run's artifacts."""
        files = [Path(p) for p in paths if Path(p).exists()]
        if not files or self.disabled:
            return
        if not self.active:
            self.start(name, {})
        if self.active:
            self._guard("uploading artifacts", self._artifacts, name, files)
        self.finish()

    def stage(self, name: str, status: str, outputs: Mapping[str, Any]) -> None:
        """A pipeline stage that ran: its run records, or (the report stage) its tables and pages as artifacts."""
        if status != "ran" or self.disabled:
            return
        paths = [Path(p) for p in outputs.get("paths", [])]
        if outputs.get("run_ids"):
            from vea_bench.results import RunRecord

            self.records(RunRecord.load(p) for p in paths if p.suffix == ".json" and p.is_file())
        elif name == "report":
            self.artifacts("report", list(dict.fromkeys(p.parent if p.name == "index.html" else p for p in paths)))

    def finish(self) -> None:
        """Close the open run, if any."""
        if self.active:
            self.active = False
            self._guard("closing a run", self._finish)

    def close(self) -> None:
        """End of the command: close whatever is open."""
        self.finish()


class NullTracker(Tracker):
    """No tracker: every call returns at once and nothing is imported or written."""

    name = "none"

    def start(self, run_name: str, config: Mapping[str, Any] | None = None, *, group: str | None = None) -> None:
        return None

    def record(self, record: RunRecord) -> None:
        return None

    def artifacts(self, name: str, paths: Iterable[str | Path]) -> None:
        return None


TRACKERS: Registry[type[Tracker]] = Registry("tracker", plugins="vea_bench.tracking")


def ensure_tracker(tracker: Tracker | None) -> Tracker:
    """``tracker`` or the do-nothing default (what the trainers call)."""
    return tracker if tracker is not None else NullTracker()


def make_tracker(name: str | None, *, project: str | None = None, group: str | None = None) -> Tracker:
    """The tracker registered as ``name`` (None or ``none``: `NullTracker`); its package is needed now.

    A missing package is a one-line `ConfigError` naming the extra that installs it.
    """
    if name is None or name.lower() in ("", "none"):
        return NullTracker()
    import vea_bench.tracking  # noqa: F401  (the built-in trackers register on import)

    cls = TRACKERS.get(name)
    try:
        cls.require()  # type: ignore[attr-defined]
    except ImportError:
        raise ConfigError(f"--tracker {cls.name} needs its package (pip install 'vea-bench[{cls.name}]')") from None
    return cls(project=project, group=group)
