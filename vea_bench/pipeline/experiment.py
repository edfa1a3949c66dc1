"""Experiment files: one TOML names the dataset, the models and the stages; `vea-bench run` does the rest.

The file is data, not code. A stage's section is the library config that trains it, field for
field (`[distill]` is `DistillConfig`, `[gate]` is `GateConfig`, `[teacher]` is `TeacherConfig`,
`[qlora]` is `QLoRAConfig`, `[vlm]` is `LoadOptions`, `[extract]` is `GenerationOptions`), plus
the few keys that exist only at the experiment level (seeds, gate names, file paths). A key left
out is not set: the library's (or the schedule's) default applies. Unknown keys and wrong types
are one-line errors naming the key. `write_experiment` is the inverse of `parse_experiment`.

Relative paths resolve against the working folder `vea-bench run` is started from (the
repository root in the README's recipes), like every other vea-bench path option.
"""
from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError
from vea_bench.schema import NOT_IN_FILE, Settings, check_fields, check_value, field_types, toml_table, unknown_key


def _distill_cls() -> type:
    from vea_bench.heads.pipeline import DistillConfig

    return DistillConfig


def _gate_cls() -> type:
    from vea_bench.heads.pipeline import GateConfig

    return GateConfig


def _teacher_cls() -> type:
    from vea_bench.train.teacher import TeacherConfig

    return TeacherConfig


def _qlora_cls() -> type:
    from vea_bench.train.qlora import QLoRAConfig

    return QLoRAConfig


def _load_cls() -> type:
    from vea_bench.models.base import LoadOptions

    return LoadOptions


def _generation_cls() -> type:
    from vea_bench.models.base import GenerationOptions

    return GenerationOptions


# ----------------------------------------------------------------------------- sections

@dataclass
class ExperimentSection:
    name: str = "experiment"
    workdir: str | None = None   # default: results/<name>
    seed: int = 0
    device: str = "auto"
    threads: int | None = None   # torch CPU threads while stages run (default: torch's own)
    tracker: str | None = None   # wandb or mlflow: also log curves, records and the report there


@dataclass
class DatasetSection:
    name: str = ""
    root: str = ""
    cache: str | None = None     # default: cache/<dataset>.h5
    split_seed: int = 42
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherSection:
    """[teacher]: `TeacherConfig`'s fields to fine-tune ``arch`` (stage 0), or an existing ``checkpoint``."""

    settings: Settings = field(default_factory=lambda: Settings(_teacher_cls()))
    checkpoint: str | None = None
    workers: int = 2             # data-loader processes: speed only, not in the stage identity


@dataclass
class VLMSection:
    """[vlm]: `LoadOptions`' fields; ``image_position`` is shared by stage 1 and extraction.

    The backend is the one the model's config calls for (its `model_type`): every family
    declares the types it serves, so there is nothing left to force.
    """

    settings: Settings = field(default_factory=lambda: Settings(_load_cls()))


@dataclass
class QLoRASection:
    """[qlora]: `QLoRAConfig`'s fields and the instruction file."""

    settings: Settings = field(default_factory=lambda: Settings(_qlora_cls()))
    instructions: str = ""


@dataclass
class ExtractSection:
    """[extract]: `GenerationOptions`' fields and what extraction computes."""

    settings: Settings = field(default_factory=lambda: Settings(_generation_cls()))
    answer: list[str] = field(default_factory=lambda: ["generate"])
    batch_size: int = 8          # batch size and workers change speed, not rows: not in the stage identity
    workers: int = 2
    backbones: list[str] = field(default_factory=list)
    limit: int | None = None
    engine: str = "transformers"  # how the VLM runs (`vea_bench.models.engines`): transformers or embed-only


@dataclass
class DistillSection:
    """[distill]: `DistillConfig`'s fields and the seeds to train (one head per seed)."""

    settings: Settings = field(default_factory=lambda: Settings(_distill_cls()))
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class GateSection:
    """[gate]: `GateConfig`'s fields and the gates to train, one per distill head (seeded alike)."""

    settings: Settings = field(default_factory=lambda: Settings(_gate_cls()))
    names: list[str] = field(default_factory=lambda: ["concat"])


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
    """A parsed experiment file. ``path`` is where it was read from; relative paths resolve against ``base``."""

    experiment: ExperimentSection = field(default_factory=ExperimentSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    vlm: VLMSection = field(default_factory=VLMSection)
    extract: ExtractSection = field(default_factory=ExtractSection)
    distill: DistillSection = field(default_factory=DistillSection)
    gate: GateSection = field(default_factory=GateSection)
    sweep: SweepSection = field(default_factory=SweepSection)
    baselines: BaselinesSection = field(default_factory=BaselinesSection)
    report: ReportSection = field(default_factory=ReportSection)
    teacher: TeacherSection | None = None
    qlora: QLoRASection | None = None
    path: Path | None = field(default=None, compare=False)
    base: Path = field(default_factory=Path.cwd, compare=False)

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


# Which library config each section reads into (None: an experiment-level section only).
_SECTIONS: dict[str, tuple[type, Any]] = {
    "experiment": (ExperimentSection, None),
    "dataset": (DatasetSection, None),
    "teacher": (TeacherSection, _teacher_cls),
    "vlm": (VLMSection, _load_cls),
    "qlora": (QLoRASection, _qlora_cls),
    "extract": (ExtractSection, _generation_cls),
    "distill": (DistillSection, _distill_cls),
    "gate": (GateSection, _gate_cls),
    "sweep": (SweepSection, None),
    "baselines": (BaselinesSection, None),
    "report": (ReportSection, None),
}
_OPTIONAL = {"teacher", "qlora"}

# Keys renamed by the one-schema change: an old file gets a one-line pointer to the new key.
_RENAMED = {("gate", "fit"): "gate_fit", ("extract", "max_pixels"): "[vlm].max_pixels",
            ("extract", "sample"): 'decoding = "sample"'}


def section_keys(name: str) -> list[str]:
    """Every key ``[name]`` accepts: its experiment-level keys, then its library config's fields."""
    cls, lib = _SECTIONS[name]
    own = [f.name for f in fields(cls) if f.name != "settings"]
    if lib is None:
        return own
    lib_cls = lib()
    return own + [n for n in field_types(lib_cls) if (lib_cls.__name__, n) not in NOT_IN_FILE]


def _section(name: str, data: Any, where: str) -> Any:
    cls, lib = _SECTIONS[name]
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    known = section_keys(name)
    for key in data:
        if key not in known:
            if (name, key) in _RENAMED:
                raise ConfigError(f"{where}: [{name}].{key}: unknown key; it is now {_RENAMED[name, key]}")
            raise unknown_key(f"{where}: [{name}]", key, known)
    own_types = field_types(cls)
    own = {k: check_value(v, own_types[k], f"{where}: [{name}].{k}") for k, v in data.items() if k in own_types}
    if lib is None:
        return cls(**own)
    lib_cls = lib()
    rest = {k: v for k, v in data.items() if k not in own_types}
    values = check_fields(lib_cls, rest, f"{where}: [{name}]")
    return cls(settings=Settings(lib_cls, values), **own)


def parse_experiment(data: dict[str, Any], *, path: Path | None = None, base: Path | None = None) -> Experiment:
    """Validate a TOML mapping into an `Experiment` (one-line errors naming the key)."""
    where = str(path) if path else "experiment"
    for name in data:
        if name not in _SECTIONS:
            close = difflib.get_close_matches(name, list(_SECTIONS), n=1, cutoff=0.6)
            hint = f"did you mean [{close[0]}]?" if close else f"known: {', '.join(_SECTIONS)}"
            raise ConfigError(f"{where}: [{name}]: unknown section; {hint}")
    parsed: dict[str, Any] = {}
    for name in _SECTIONS:
        if name in data:
            parsed[name] = _section(name, data[name], where)
        elif name not in _OPTIONAL:
            parsed[name] = _SECTIONS[name][0]()
    exp = Experiment(**parsed, path=path, base=(base or Path.cwd()).resolve())
    validate(exp, where)
    return exp


def validate(exp: Experiment, where: str = "experiment") -> None:
    """What no single section can check alone: required keys, choices, sections that exclude each other."""
    if not exp.dataset.name or not exp.dataset.root:
        raise ConfigError(f"{where}: [dataset] needs name and root")
    vlm = exp.vlm.settings
    if not vlm.get("model"):
        raise ConfigError(f"{where}: [vlm] needs model (a hub id or a local path)")
    if exp.teacher is not None:
        if not (exp.teacher.settings.get("arch") or exp.teacher.checkpoint):
            raise ConfigError(f"{where}: [teacher] needs arch (to fine-tune) or checkpoint (to reuse)")
        if exp.teacher.settings.get("arch") and exp.teacher.checkpoint:
            raise ConfigError(f"{where}: [teacher] takes arch (to fine-tune) or checkpoint (to reuse), not both")
    if exp.qlora is not None and not exp.qlora.instructions:
        raise ConfigError(f"{where}: [qlora] needs instructions (a file from `vea-bench instruct`)")
    if exp.qlora is not None and vlm.get("adapter"):
        raise ConfigError(f"{where}: give [vlm].adapter or a [qlora] section, not both")
    choices = [("[vlm].image_position", vlm.value("image_position"), ("first", "last")),
               ("[vlm].instructblip_prompt", vlm.value("instructblip_prompt"), ("raw", "vicuna"))]
    if exp.qlora is not None:
        choices.append(("[qlora].loss_on", exp.qlora.settings.value("loss_on"), ("answer", "all")))
    for key, value, allowed in choices:
        if value not in allowed:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(allowed)}, got '{value}'")
    bad = sorted(set(exp.extract.answer) - {"generate", "score"})
    if bad or not exp.extract.answer:
        raise ConfigError(f"{where}: [extract].answer must list generate and/or score, got {exp.extract.answer}")
    _check_engine(exp, where)
    if exp.experiment.threads is not None and exp.experiment.threads < 1:
        raise ConfigError(f"{where}: [experiment].threads must be positive (leave it out for torch's default)")
    if not exp.distill.seeds:
        raise ConfigError(f"{where}: [distill].seeds must list at least one seed")
    try:
        # every stage's config checks its own ranges now, not hours into the run
        exp.extract.settings.build(seed=exp.experiment.seed)
        if exp.teacher is not None and exp.teacher.settings.get("arch"):
            exp.teacher.settings.build(seed=exp.experiment.seed).validate()
        if exp.qlora is not None:
            exp.qlora.settings.build(vlm=vlm.get("model"), seed=exp.experiment.seed,
                                     image_position=vlm.value("image_position")).validate()
        for name in exp.gate.names:
            gate_config(exp, name, exp.distill.seeds[0])
        distill_config(exp, exp.distill.seeds[0])
        for kind, grid in (("alpha", {"alphas": exp.sweep.alpha}), ("depth", {"depths": exp.sweep.depth})):
            if next(iter(grid.values())) and exp.sweep.seeds:  # every member as its single run would be
                from vea_bench.heads.sweep import plan_sweep

                plan_sweep(kind, distill_config(exp, exp.sweep.seeds[0]), gate_config(exp, "concat", 0),
                           seeds=exp.sweep.seeds, **grid)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if exp.gate.settings.value("vlm_input") == "logprobs" and "score" not in exp.extract.answer:
        raise ConfigError(f"{where}: [gate].vlm_input = 'logprobs' needs 'score' in [extract].answer")


def _check_engine(exp: Experiment, where: str) -> None:
    """``[extract].engine`` names a registered engine, and one that answers if a later stage needs answers."""
    from vea_bench.models.engines import ENGINES
    from vea_bench.registry import RegistryError

    try:
        engine = ENGINES.get(exp.extract.engine)
    except RegistryError as e:
        raise ConfigError(f"{where}: [extract].engine: {e}") from None
    if not engine.answers and (exp.gate.names or exp.baselines.enabled):
        raise ConfigError(f"{where}: [extract].engine = '{exp.extract.engine}' gives no VLM answers, which the "
                          "gates and baselines read; leave out [gate].names and [baselines] or use an engine "
                          "that answers")


def distill_config(exp: Experiment, seed: int) -> Any:
    """The scheduled `DistillConfig` of ``[distill]`` for one seed."""
    from vea_bench.heads.config import make_config

    return make_config("distill", exp.distill.settings.values, seed=seed)


def gate_config(exp: Experiment, name: str, seed: int) -> Any:
    """The scheduled `GateConfig` of ``[gate]`` for gate ``name`` over the head of ``seed``."""
    from vea_bench.heads.config import make_config

    return make_config("gate", exp.gate.settings.values, gate=name, seed=seed)


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


def section_values(obj: Any) -> dict[str, Any]:
    """A section's keys as a file writes them: experiment-level keys first, then the set library fields."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name == "settings":
            continue
        out[f.name] = getattr(obj, f.name)
    settings = getattr(obj, "settings", None)
    if settings is not None:
        out.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.values.items()})
    return out


def write_experiment(exp: Experiment, comments: dict[str, str] | None = None, header: str = "") -> str:
    """``exp`` as experiment TOML (``parse_experiment`` of the result equals ``exp``).

    Only set library fields are written, so a schedule's own values stay the schedule's. A None
    value is left out (not set); a patience of None (no early stopping) is written as 0.
    """
    comments = comments or {}
    parts = [header.rstrip("\n") + "\n"] if header else []
    for name in _SECTIONS:
        obj = getattr(exp, name)
        if obj is None:
            continue
        values = section_values(obj)
        settings = getattr(obj, "settings", None)
        if settings is not None:
            from vea_bench.schema import zero_is_none

            for k in list(values):
                if k in settings.values and settings.values[k] is None and zero_is_none(settings.cls, k):
                    values[k] = 0
        parts.append(toml_table(name, values, comments.get(name, "")))
    return "\n".join(parts)
