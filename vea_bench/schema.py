"""One typed schema for every stage: the library's config dataclasses, read from TOML and the CLI alike.

A stage's settings are the fields of the library dataclass that trains it (`DistillConfig`,
`GateConfig`, `TeacherConfig`, `QLoRAConfig`, `LoadOptions`, `GenerationOptions`). A file or a
command line gives some of them; a field it leaves out is *not set* and keeps the library's (or
the schedule's) default. `Settings` holds exactly the fields given, type-checked against the
dataclass's annotations, so "did the user set it" is never guessed by comparing with a default.

This module holds the machinery only: type checking with one-line errors naming the key, a TOML
writer for the demo, and the canonical dict a stage identity hashes. The CLI side (options
generated from the same fields) lives in `vea_bench_cli.schema_options`.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

from vea_bench.errors import ConfigError

C = TypeVar("C")


def doc(help: str, **meta: Any) -> dict[str, Any]:
    """Field metadata: the help text the generated CLI option shows (``field(metadata=doc(...))``).

    ``words={"4bit": True, "none": False}`` lets the command line name a value by a word (a flag
    users already type) while the file writes the field's own type.
    """
    return {"help": help, **meta}


def field_words(cls: type, name: str) -> dict[str, Any] | None:
    """The words the command line may use for a field's values (see `doc`), else None."""
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("words")
    raise KeyError(name)


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every dataclass field of ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def field_help(cls: type, name: str) -> str:
    """The help text a field declares (``metadata={"help": ...}``), else ''."""
    for f in fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


def field_default(cls: type, name: str) -> Any:
    """A field's default (calling its factory), or ``dataclasses.MISSING`` for a required field."""
    for f in fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return dataclasses.MISSING
    raise KeyError(name)


def zero_is_none(cls: type, name: str) -> bool:
    """Whether 0 stands for None in this field (TOML and a shell have no null: ``patience = 0`` is "off")."""
    return any(f.name == name and f.metadata.get("zero_is_none") for f in fields(cls))


def describe(tp: Any) -> str:
    """A type as an error message says it ("an integer", "a list of numbers")."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(describe(a) for a in inner)
    if origin in (list, tuple):
        return f"a list of {describe(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    if origin is dict or tp is dict:
        return "a table"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def check_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked (and normalised: ints to float, lists to tuple) against annotation ``tp``.

    Raises a one-line `ConfigError` naming ``key``. ``X | None`` accepts an X (a file cannot
    write null; a field left out is the "not set" state).
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{key} must be {describe(tp)}, got {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):
            return None
        for a in inner:
            try:
                return check_value(value, a, key)
            except ConfigError:
                continue
        raise bad
    if origin is typing.Literal:
        if value not in args:
            raise bad
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        item = args[0] if args else Any
        out = [check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise bad
    return value


def unknown_key(where: str, key: str, known: list[str]) -> ConfigError:
    """``where.key: unknown key; did you mean X?`` (or the known keys when nothing is close)."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(known)}"
    return ConfigError(f"{where}.{key}: unknown key; {hint}")


def check_fields(cls: type, values: dict[str, Any], where: str, *, allowed: list[str] | None = None) -> dict[str, Any]:
    """``values`` type-checked against the fields of ``cls`` (only ``allowed`` ones, if given)."""
    hints = field_types(cls)
    known = [n for n in hints if allowed is None or n in allowed]
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise unknown_key(where, key, known)
        v = check_value(value, hints[key], f"{where}.{key}")
        if v == 0 and zero_is_none(cls, key) and not isinstance(v, bool):
            v = None
        out[key] = v
    return out


@dataclass
class Settings(Generic[C]):
    """The fields of library config ``cls`` that a file or command line set (absent: not set)."""

    cls: type[C]
    values: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = check_fields(self.cls, dict(self.values), self.cls.__name__)

    def get(self, name: str, default: Any = None) -> Any:
        """A set value, else ``default``."""
        return self.values.get(name, default)

    def value(self, name: str) -> Any:
        """The value the built config will have for ``name`` before any schedule: set, else the default."""
        return self.values[name] if name in self.values else field_default(self.cls, name)

    def build(self, **fixed: Any) -> C:
        """The library config: the set fields, then ``fixed`` (what the stage decides, e.g. the seed)."""
        return self.cls(**{**self.values, **fixed})


def canonical(obj: Any) -> Any:
    """A JSON-ready dict of a config object (dataclasses, tuples as lists): what stage identities hash."""
    if isinstance(obj, Settings):
        return {"cls": obj.cls.__name__, "values": canonical(obj.values)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: canonical(getattr(obj, f.name)) for f in fields(obj) if f.compare}
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- where each field is reachable

# The one list of deliberate gaps, with the reason (tests/test_schema.py fails on any other field a
# file or the command line cannot reach). Keys: (config class name, field).
NOT_IN_FILE: dict[tuple[str, str], str] = {
    ("DistillConfig", "seed"): "[distill].seeds lists the seeds, one head per seed",
    ("GateConfig", "seed"): "each gate is seeded like the distill head it sits on ([distill].seeds)",
    ("GateConfig", "gate"): "[gate].names lists the gates, one stage each",
    ("TeacherConfig", "seed"): "[experiment].seed seeds every stage",
    ("QLoRAConfig", "seed"): "[experiment].seed seeds every stage",
    ("QLoRAConfig", "vlm"): "[vlm].model names the model",
    ("QLoRAConfig", "image_position"): "[vlm].image_position: stage 1 and extraction must agree",
    ("LoadOptions", "device"): "[experiment].device places every stage",
    ("GenerationOptions", "seed"): "[experiment].seed seeds every stage",
}
NOT_ON_CLI: dict[tuple[str, str], str] = {
    ("TeacherConfig", "timm_kwargs"): "a table of timm constructor arguments (tiny test models): file only",
    ("QLoRAConfig", "batch_size"): "SPEC's recipe (batch 1); an experiment file can change it",
    ("QLoRAConfig", "lora_r"): "SPEC's recipe (LoRA r 8); an experiment file can change it",
    ("QLoRAConfig", "lora_alpha"): "SPEC's recipe (LoRA alpha 8); an experiment file can change it",
    ("QLoRAConfig", "lora_dropout"): "SPEC's recipe (LoRA dropout 0.05); an experiment file can change it",
    ("QLoRAConfig", "target_modules"): "the family's LoRA targets (SPEC: q/k/v/o); an experiment file can change them",
    ("QLoRAConfig", "max_grad_norm"): "SPEC's recipe (clip 0.3); an experiment file can change it",
    ("QLoRAConfig", "warmup_ratio"): "SPEC's recipe (warmup 3 %); an experiment file can change it",
    ("QLoRAConfig", "weight_decay"): "SPEC's recipe (none); an experiment file can change it",
    ("QLoRAConfig", "kinds"): "all three instruction kinds, as SPEC trains; an experiment file can pick some",
    ("QLoRAConfig", "dtype"): "follows the device (bf16 on GPU, fp32 on CPU); an experiment file can force one",
    ("LoadOptions", "attn_implementation"): "transformers' own choice; an experiment file can force one",
}
# Options whose name is not the field's (``--<field-with-dashes>``); the generated options take these names.
CLI_NAMES: dict[tuple[str, str], str] = {
    ("TeacherConfig", "weight_decay"): "--wd",
    ("QLoRAConfig", "quantize"): "--quant",
    ("LoadOptions", "model"): "--vlm",
    ("LoadOptions", "quantization"): "--quant",
    ("GenerationOptions", "seed"): "--seed",
}


# ----------------------------------------------------------------------------- TOML writing

def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {v!r} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def toml_table(name: str, values: dict[str, Any], comment: str = "") -> str:
    """One ``[name]`` table (None values are left out: not set)."""
    lines = [f"[{name}]"]
    if comment:
        lines[:0] = [f"# {c}" if c else "#" for c in comment.splitlines()]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"
