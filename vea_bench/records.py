"""Run records: one JSON file per run, holding config, seed, versions, cache provenance and metrics.

Every training command, head, sweep member and baseline writes one.

Conventions the table layer relies on (``kind`` / ``method`` / ``config`` keys):
- teacher: method "VGG16" | "ResNet50" | "ViT" | the timm name; config["arch"] (timm name).
- vlm: method "QLoRA"; config["vlm"], config["adapter_dir"].
- vlm-eval: method "VLM"; config["source"] ("vlm/<key>"), config["tuned"] (bool: adapter in
  provenance), config["backend"] ("qwen2-vl", "llava-next", "instructblip").
- distill: method "distill"; config["depth"], config["hidden_dims"], config["alpha"], config["tau"].
- gate: method "EmoVLM-KD"; config["gate"] (registry name), config["vlm_input"] ("onehot" |
  "logprobs"), config["gate_fit"] ("train" | "val" | "crossfit").
- baseline: method "teacher" | "probe:<source>" | "ensemble" | "oracle" | "vlm".
- complementarity: method "complementarity"; metrics["test"]["extra"] holds counts
  teacher_only, vlm_only, both, neither.
Sweep members share ``group``; accuracies are fractions in [0, 1] (tables show percent). `vea-bench table` and
`vea-bench plot` read only these records, never models, so a table can always be traced back to
the exact runs, data and code that produced it.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError, os_error

RECORD_SCHEMA = "vea-bench/run-record/1"

# Heads' safetensors and their config JSON go under <results>/artifacts/<run_id>/, which record
# readers skip; every other *.json below a results folder is expected to be a run record.
ARTIFACTS_DIR = "artifacts"

@contextmanager
def writing_results(path: str | Path) -> Iterator[None]:
    """Turn a failed write under a results folder (full disk, read-only, permissions; from the OS
    or from safetensors) into one line naming the path and what to do."""
    try:
        yield
    except OSError as exc:
        raise _results_error(path, exc) from None
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError":  # safetensors wraps the OS error in its own type
            raise _results_error(path, exc) from None
        raise


def _results_error(path: str | Path, exc: BaseException) -> ConfigError:
    msg = str(os_error(path, exc, "write results"))
    return ConfigError(msg.replace("--cache", "--results folder"))


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
    """One run. ``method`` is the row name in tables (e.g. 'EmoVLM-KD', 'ViT', 'distill[1024]').

    ``metrics`` maps split -> SplitMetrics as dicts; ``params`` counts trainable parameters;
    ``group`` ties sweep members together; ``config`` is the full config (its hash names the run).
    """

    kind: str
    method: str
    dataset: str
    config: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
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
        if not self.run_id:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.run_id = f"{self.kind}-{_slug(self.dataset)}-{_slug(self.method)}-{stamp}-{uuid.uuid4().hex[:6]}"

    def accuracy(self, split: str = "test") -> float | None:
        m = self.metrics.get(split)
        return None if m is None else m.get("accuracy")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, results_dir: str | Path, *, subdir: str | None = None) -> Path:
        """Write ``<results>/<subdir or kind>/<run_id>.json`` atomically; returns the path."""
        out = Path(results_dir) / (subdir or self.kind)
        path = out / f"{self.run_id}.json"
        tmp = path.with_suffix(".json.tmp")
        with writing_results(path):
            try:
                out.mkdir(parents=True, exist_ok=True)
                from vea_bench.report.predictions import write_pending

                write_pending(self, results_dir)  # per-image predictions a run attached, beside the record
                tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False, default=_json_default))
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        if d.get("schema") != RECORD_SCHEMA:
            raise ConfigError(f"not a vea-bench run record (schema {d.get('schema')!r})")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

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


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in s.lower()).strip("-")[:40] or "run"


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)  # Path and anything else JSON cannot hold


def iter_records(results_dir: str | Path) -> tuple[list[tuple[Path, RunRecord]], list[tuple[Path, str]]]:
    """All records under ``results_dir`` (recursively) and the files skipped, each with why."""
    good: list[tuple[Path, RunRecord]] = []
    bad: list[tuple[Path, str]] = []
    root = Path(results_dir)
    if not root.exists():
        return good, bad
    for path in sorted(root.rglob("*.json")):
        if ARTIFACTS_DIR in path.relative_to(root).parts:
            continue  # weights' configs and other non-record JSON live there
        try:
            good.append((path, RunRecord.load(path)))
        except ConfigError as exc:
            bad.append((path, str(exc)))
    return good, bad
