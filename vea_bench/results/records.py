"""Run records: one JSON file per run, holding config, seed, versions, cache provenance and metrics.

Every training command, head, sweep member and baseline writes one.

Every record names what it is with typed fields, so readers never parse strings or guess:
``kind`` (the stage), ``method`` (the paper's name for it), ``variant`` (the registry entry within
the method: the gate, head or VLM family that ran), ``experiment_id`` (the config's hash without
seeds, run ids and output places: the seeds of one experiment share it) and ``params`` (the
trained module's parameter count, counted where the record is written).

- teacher: method "VGG16" | "ResNet50" | "ViT" | the timm name; variant = method; config["arch"].
- vlm: method "QLoRA"; config["vlm"], config["adapter_dir"].
- vlm-eval: method "VLM"; variant = config["backend"] (the VLM family's registry name);
  config["source"] ("vlm/<key>"), config["tuned"] (bool: adapter in provenance).
- distill: method "distill"; variant = config["head"] (the head's registry name); config["hidden_dims"],
  config["alpha"], config["tau"].
- gate: method "EmoVLM-KD"; variant = the gate's registry name (also config["gate"]);
  config["vlm_input"] ("onehot" | "logprobs"), config["gate_fit"] ("train" | "val" | "crossfit").
- baseline: method = variant "teacher" | "probe:<source>" | "ensemble" | "oracle" | "vlm" | "distill".
- complementarity: method "complementarity"; metrics["test"]["extra"] holds counts
  teacher_only, vlm_only, both, neither.
Sweep members share ``group``; accuracies are fractions in [0, 1] (tables show percent). Records
of an older schema are upgraded on load (`RunRecord.from_dict`), so old results folders still
render. `vea-bench table` and `vea-bench plot` read only these records, never models, so a table
can always be traced back to the exact runs, data and code that produced it.

This module says what a record holds; where it is written (and its weights and predictions) is
`vea_bench.results.store.ResultsStore`'s alone.
"""
from __future__ import annotations

import json
import platform
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError
from vea_bench.hashing import config_hash

RECORD_SCHEMA = "vea-bench/run-record/2"
# Older shapes `from_dict` still reads; their missing fields are derived from their config.
_UPGRADABLE = ("vea-bench/run-record/1",)

# Run kinds a record may have; the table layer groups by these.
RUN_KINDS = (
    "teacher",      # fine-tuned conventional model (Table 1 conventional rows, the KD teacher)
    "vlm",          # QLoRA instruction tuning of the VLM (stage 1)
    "vlm-eval",     # VLM alone from the cache (zero-shot or tuned; Table 1 / Table 2 row 1)
    "distill",      # distill head (stage 2; Tables 2, 3 and Figure 3)
    "gate",         # gate over distill + VLM (stage 3; EmoVLM-KD; Table 4)
    "baseline",     # cache baselines: probes, teacher alone, ensemble, oracle
    "complementarity",  # Figure 1 counts
)


def _git_hash() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Versions, git hash, host facts: enough to say what produced a number."""
    from vea_bench.versions import package_versions

    env: dict[str, Any] = {
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": _git_hash(),
    }
    try:
        import torch

        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        env["device"] = "cpu"
    return env


@dataclass
class SplitMetrics:
    """Metrics of one split. ``per_class`` maps label name -> accuracy; ``confusion`` is C x C (rows = truth)."""

    accuracy: float
    macro_f1: float | None = None
    n: int = 0
    per_class: dict[str, float] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    kl_to_teacher: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    """One run. ``method`` is the paper's name for it (e.g. 'EmoVLM-KD', 'ViT', 'distill'), ``variant``
    the registry entry that ran (e.g. the gate 'moe'), ``experiment_id`` what its seeds share.

    ``metrics`` maps split -> SplitMetrics as dicts; ``params`` counts the trained module's
    parameters; ``group`` ties sweep members together; ``config`` is the stage's typed config as a
    dict plus the data it read.
    """

    kind: str
    method: str
    dataset: str
    config: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    variant: str = ""                # the registry entry within the method; "" derives it (`default_variant`)
    experiment_id: str = ""          # "" derives it from the config (`experiment_id`)
    seed: int | None = None
    params: int | None = None
    group: str | None = None
    label_names: list[str] = field(default_factory=list)
    cache: dict[str, Any] | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=environment)
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    run_id: str = ""
    wall_time_s: float | None = None
    schema: str = RECORD_SCHEMA
    # How a trained head converged (epochs run, epoch kept and why, per-epoch losses, stop reason).
    convergence: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in RUN_KINDS:
            raise ConfigError(f"unknown run kind '{self.kind}' (choices: {', '.join(RUN_KINDS)})")
        if not self.variant:
            self.variant = default_variant(self.kind, self.method, self.config)
        if not self.experiment_id:
            self.experiment_id = experiment_id(self.kind, self.method, self.variant, self.dataset, self.config)
        if not self.run_id:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.run_id = f"{self.kind}-{_slug(self.dataset)}-{_slug(self.method)}-{stamp}-{uuid.uuid4().hex[:6]}"

    def accuracy(self, split: str = "test") -> float | None:
        m = self.metrics.get(split)
        return None if m is None else m.get("accuracy")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """A record from its JSON dict; an older schema is upgraded (missing variant and
        experiment id derived from its config, as `__post_init__` does for a new one)."""
        schema = d.get("schema")
        if schema != RECORD_SCHEMA and schema not in _UPGRADABLE:
            raise ConfigError(f"not a vea-bench run record (schema {schema!r})")
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in d.items() if k in known}
        if schema != RECORD_SCHEMA:
            fields.update(schema=RECORD_SCHEMA, variant="", experiment_id="")
        return cls(**fields)

    @classmethod
    def load(cls, path: str | Path) -> RunRecord:
        """Load a record; a corrupt or foreign file is a one-line `ConfigError` naming it."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: unreadable run record ({exc.__class__.__name__})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: not a vea-bench run record")
        try:
            return cls.from_dict(d)
        except (TypeError, ConfigError) as exc:
            raise ConfigError(f"{path}: {exc}") from None


# Config keys naming a replicate (a seed), another run or an output place rather than the
# experiment; `experiment_id` leaves them out at any depth, so the seeds of one config (a gate's
# per-seed distill head included) share an id. Any other difference makes another experiment.
REPLICATE_KEYS = frozenset({"seed", "run_id", "out", "out_dir", "output", "output_dir", "results", "results_dir",
                            "device"})
REPLICATE_SUFFIXES = ("_seed", "_run", "_run_id", "_run_ids")


def experiment_config(config: Any) -> Any:
    """``config`` without its replicate keys (`REPLICATE_KEYS`, `REPLICATE_SUFFIXES`), at any depth."""
    if isinstance(config, dict):
        return {k: experiment_config(v) for k, v in config.items()
                if k not in REPLICATE_KEYS and not str(k).endswith(REPLICATE_SUFFIXES)}
    if isinstance(config, list):
        return [experiment_config(v) for v in config]
    return config


def experiment_id(kind: str, method: str, variant: str, dataset: str, config: dict[str, Any]) -> str:
    """The id the seeds of one experiment share: the hash of what ran, on what, with the seeds left out."""
    return config_hash({"kind": kind, "method": method, "variant": variant, "dataset": dataset,
                        "config": experiment_config(config)})


# The head every distill record of schema 1 used: they predate the heads registry's second entry.
SCHEMA1_HEAD = "distill"


def default_variant(kind: str, method: str, config: dict[str, Any]) -> str:
    """The variant a record states implicitly in its config (records of schema 1 had no field).

    A gate's is ``config["gate"]``, a VLM evaluation's the family (``config["backend"]``), a distill
    head's ``config["head"]`` (`SCHEMA1_HEAD` where absent); any other record's is its method. Names
    are as the config spells them: writers pass the registered name, and the table layer, which
    knows the registries, resolves an alias in a hand-made or older record
    (`vea_bench.report.tables.load_results`).
    """
    cfg = config if isinstance(config, dict) else {}
    if kind == "gate" and cfg.get("gate"):
        return str(cfg["gate"])
    if kind == "vlm-eval" and cfg.get("backend"):
        return str(cfg["backend"])
    if kind == "distill":
        return str(cfg.get("head") or SCHEMA1_HEAD)
    return method


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in s.lower()).strip("-")[:40] or "run"


def json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)  # Path and anything else JSON cannot hold
