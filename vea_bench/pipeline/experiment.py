"""Experiment files: one TOML names the dataset, the models and the stages; `vea-bench run` does the rest.

The file is data, not code: every section maps onto a dataclass below, unknown keys are errors
(a typo must not silently fall back to a default). Relative paths resolve against the working
folder `vea-bench run` is started from (the repository root in the README's recipes), like every
other vea-bench path option.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from vea_bench.errors import ConfigError

T = TypeVar("T")


@dataclass
class ExperimentSection:
    name: str = "experiment"
    workdir: str = ""            # default: results/<name>
    seed: int = 0
    device: str = "auto"
    threads: int = 0             # torch CPU threads while stages run (0: torch's default)


@dataclass
class DatasetSection:
    name: str = ""
    root: str = ""
    cache: str = ""              # default: cache/<dataset>.h5
    split_seed: int = 42
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherSection:
    """Either fine-tune ``arch`` (stage 0) or use an existing ``checkpoint``."""

    arch: str = ""
    checkpoint: str = ""
    weights: str = ""
    random_init: bool = False
    epochs: int = 10
    lr: float = 3e-5
    weight_decay: float = 1e-5
    batch_size: int = 10
    img_size: int = 0
    workers: int = 2
    timm_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class VLMSection:
    model: str = ""
    revision: str = ""
    adapter: str = ""            # an existing stage-1 adapter (else [qlora] trains one)
    backend: str = ""
    dtype: str = "auto"
    quantization: str = ""       # "", "4bit", "8bit"
    trust_remote_code: bool = False
    image_position: str = "first"        # "last": question before the image (the reference); stage 1 too
    instructblip_prompt: str = "raw"     # "vicuna": system + USER/ASSISTANT wrapper (InstructBLIP only)


@dataclass
class QLoRASection:
    instructions: str = ""
    epochs: int = 5
    max_steps: int = 0
    lr: float = 1e-4
    quantize: bool = True
    loss_on: str = "answer"              # "all": every non-pad, non-image token (the reference)
    kinds: list[str] = field(default_factory=lambda: ["categorical", "conversation", "reasoning"])
    gradient_checkpointing: bool = True   # memory for speed; the same numbers either way


@dataclass
class ExtractSection:
    answer: list[str] = field(default_factory=lambda: ["generate"])
    batch_size: int = 8
    workers: int = 2
    max_pixels: int = 0
    sample: bool = False
    max_new_tokens: int = 24
    backbones: list[str] = field(default_factory=list)
    limit: int = 0


@dataclass
class DistillSection:
    depth: int = 1
    alpha: float = 0.5
    tau: float = 2.0
    epochs: int = 0              # 0: the schedule's own (default: an early-stopped budget; reference: SPEC's 5)
    lr: float = 0.0              # 0: the trainer's default (SPEC)
    batch_size: int = 0
    schedule: str = "default"
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class GateSection:
    """Gates to train, one per distill head (so per [distill].seeds seed, seeded alike)."""

    names: list[str] = field(default_factory=lambda: ["concat"])
    fit: str = "train"
    vlm_input: str = "onehot"
    epochs: int = 0              # 0: the schedule's own (default: an early-stopped budget; reference: SPEC's 10)
    lr: float = 0.0


@dataclass
class SweepSection:
    alpha: list[float] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class BaselinesSection:
    enabled: bool = True


@dataclass
class ReportSection:
    formats: list[str] = field(default_factory=lambda: ["md"])
    plots: bool = True
    compare_paper: bool = True
    html: bool = True   # the browsable report (`vea-bench report`) in <workdir>/report/index.html


@dataclass
class Experiment:
    """A parsed experiment file. ``path`` is where it was read from (relative paths resolve there)."""

    experiment: ExperimentSection
    dataset: DatasetSection
    vlm: VLMSection
    extract: ExtractSection
    distill: DistillSection
    gate: GateSection
    sweep: SweepSection
    baselines: BaselinesSection
    report: ReportSection
    teacher: TeacherSection | None = None
    qlora: QLoRASection | None = None
    path: Path | None = None

    base: Path = field(default_factory=Path.cwd)

    def resolve(self, p: str) -> Path:
        """A path from the file, relative to ``base`` (the working folder; absolute paths unchanged)."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.base / q)

    @property
    def workdir(self) -> Path:
        return self.resolve(self.experiment.workdir or f"results/{self.experiment.name}")

    @property
    def cache_path(self) -> Path:
        return self.resolve(self.dataset.cache or f"cache/{self.dataset.name}.h5")


_SECTIONS: dict[str, type] = {
    "experiment": ExperimentSection,
    "dataset": DatasetSection,
    "teacher": TeacherSection,
    "vlm": VLMSection,
    "qlora": QLoRASection,
    "extract": ExtractSection,
    "distill": DistillSection,
    "gate": GateSection,
    "sweep": SweepSection,
    "baselines": BaselinesSection,
    "report": ReportSection,
}
_OPTIONAL = {"teacher", "qlora"}


def _section(cls: type[T], name: str, data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} in [{name}] (known: {', '.join(known)})")
    obj = cls(**data)
    for fname, f in known.items():
        default = getattr(cls(), fname)
        value = getattr(obj, fname)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}: [{name}].{fname} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}: [{name}].{fname} must be a number, got {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}: [{name}].{fname} must be a string, got {value!r}")
        if isinstance(default, list) and not isinstance(value, list):
            raise ConfigError(f"{where}: [{name}].{fname} must be a list, got {value!r}")
    return obj


def parse_experiment(data: dict[str, Any], *, path: Path | None = None, base: Path | None = None) -> Experiment:
    """Validate a TOML mapping into an `Experiment` (one-line errors naming the key)."""
    where = str(path) if path else "experiment"
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown} (known: {', '.join(_SECTIONS)})")
    parsed: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        if name in data:
            parsed[name] = _section(cls, name, data[name], where)
        elif name not in _OPTIONAL:
            parsed[name] = cls()
    exp = Experiment(**parsed, path=path, base=(base or Path.cwd()).resolve())
    if not exp.dataset.name or not exp.dataset.root:
        raise ConfigError(f"{where}: [dataset] needs name and root")
    if not exp.vlm.model:
        raise ConfigError(f"{where}: [vlm] needs model (a hub id or a local path)")
    if exp.teacher is not None and not (exp.teacher.arch or exp.teacher.checkpoint):
        raise ConfigError(f"{where}: [teacher] needs arch (to fine-tune) or checkpoint (to reuse)")
    if exp.qlora is not None and not exp.qlora.instructions:
        raise ConfigError(f"{where}: [qlora] needs instructions (a file from `vea-bench instruct`)")
    if exp.qlora is not None and exp.vlm.adapter:
        raise ConfigError(f"{where}: give [vlm].adapter or a [qlora] section, not both")
    choices = [("[vlm].image_position", exp.vlm.image_position, ("first", "last")),
               ("[vlm].instructblip_prompt", exp.vlm.instructblip_prompt, ("raw", "vicuna"))]
    if exp.qlora is not None:
        choices.append(("[qlora].loss_on", exp.qlora.loss_on, ("answer", "all")))
    for key, value, allowed in choices:
        if value not in allowed:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}, got '{value}'")
    bad = sorted(set(exp.extract.answer) - {"generate", "score"})
    if bad or not exp.extract.answer:
        raise ConfigError(f"{where}: [extract].answer must list generate and/or score, got {exp.extract.answer}")
    if exp.gate.vlm_input == "logprobs" and "score" not in exp.extract.answer:
        raise ConfigError(f"{where}: [gate].vlm_input = 'logprobs' needs 'score' in [extract].answer")
    return exp


def load_experiment(path: str | Path, *, base: str | Path | None = None) -> Experiment:
    """Read and validate an experiment TOML file; relative paths resolve against ``base`` (default: cwd)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no experiment file at {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_experiment(data, path=path.resolve(), base=Path(base) if base else None)
