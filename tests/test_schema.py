"""One schema: every config field is reachable from the experiment file and from the CLI, and both read it alike.

Parametrised over the fields of the library's config dataclasses, so a field added to one of
them is covered here without a new test: it must be reachable from a file and from the command
line, or be listed with a reason in `vea_bench.schema.NOT_IN_FILE` / `NOT_ON_CLI`.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import tomllib
import typing
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from typer.testing import CliRunner

from vea_bench.errors import ConfigError
from vea_bench.heads.config import DistillConfig, GateConfig, make_config
from vea_bench.models.base import GenerationOptions, LoadOptions
from vea_bench.pipeline.experiment import (
    Experiment,
    parse_experiment,
    section_keys,
    write_experiment,
)
from vea_bench.pipeline.stages import build_stages
from vea_bench.schema import CLI_NAMES, NOT_IN_FILE, NOT_ON_CLI, check_fields, field_default, field_types, field_words
from vea_bench.train.qlora import QLoRAConfig
from vea_bench.train.teacher import TeacherConfig
from vea_bench_cli.main import app
from vea_bench_cli.extract_cmd import EXTRACT_GROUPS
from vea_bench_cli.schema_options import Group, config_options, generated_options
from vea_bench_cli.train_models_cmd import TEACHER_GROUPS, VLM_GROUPS
from vea_bench_cli.sweep_cmd import sweep_groups
from vea_bench_cli.train_heads_cmd import TRAIN_DISTILL, TRAIN_GATE

# Each config class: its experiment-file section, and the command that trains (or loads) with it.
SCHEMA: dict[type, tuple[str, list[str]]] = {
    DistillConfig: ("distill", ["train", "distill"]),
    GateConfig: ("gate", ["train", "gate"]),
    TeacherConfig: ("teacher", ["train", "teacher"]),
    QLoRAConfig: ("qlora", ["train", "vlm"]),
    LoadOptions: ("vlm", ["extract"]),
    GenerationOptions: ("extract", ["extract"]),
}
FIELDS = [(cls, name) for cls in SCHEMA for name in field_types(cls)]
IDS = [f"{cls.__name__}.{name}" for cls, name in FIELDS]
SWEEPS = {"alpha": sweep_groups(grid="alpha", gates=False), "depth": sweep_groups(grid="depth", gates=False),
          "gate": sweep_groups(grid="gate", gates=True), "seed": sweep_groups(grid="seed", gates=True)}


def _command(path: list[str]) -> click.Command:
    cmd: Any = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _options(path: list[str]) -> set[str]:
    return {o for p in _command(path).params for o in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize(("cls", "name"), FIELDS, ids=IDS)
def test_every_field_is_reachable_from_a_file(cls: type, name: str) -> None:
    section, _ = SCHEMA[cls]
    if (cls.__name__, name) in NOT_IN_FILE:
        assert name not in section_keys(section), f"[{section}].{name} is listed as file-less but the file takes it"
        return
    assert name in section_keys(section), f"[{section}] cannot set {cls.__name__}.{name} (list it in NOT_IN_FILE?)"


@pytest.mark.parametrize(("cls", "name"), FIELDS, ids=IDS)
def test_every_field_is_reachable_from_the_cli(cls: type, name: str) -> None:
    _, path = SCHEMA[cls]
    option = CLI_NAMES.get((cls.__name__, name), "--" + name.replace("_", "-"))
    if name == "head_kwargs":
        option = "--head-arg"
    opts = _options(path)
    if (cls.__name__, name) in NOT_ON_CLI:
        assert option not in opts, f"{option} exists on `{' '.join(path)}`: drop {cls.__name__}.{name} from NOT_ON_CLI"
        return
    assert option in opts, f"`vea-bench {' '.join(path)}` has no {option} for {cls.__name__}.{name} (list it in NOT_ON_CLI?)"


def test_the_gap_lists_name_real_fields_only() -> None:
    real = {(cls.__name__, name) for cls, name in FIELDS}
    for key in (*NOT_IN_FILE, *NOT_ON_CLI, *CLI_NAMES):
        assert key in real, f"{key} is not a config field"
    assert all(NOT_IN_FILE.values()) and all(NOT_ON_CLI.values())


@pytest.mark.parametrize("kind", sorted(SWEEPS))
@pytest.mark.parametrize("cls", [DistillConfig, GateConfig], ids=["distill", "gate"])
def test_the_four_sweeps_share_one_option_definition(kind: str, cls: type) -> None:
    groups = SWEEPS[kind]
    opts = _options(["sweep", kind])
    mine = [g for g in groups if g.cls is cls]
    if not mine:
        assert cls is GateConfig and kind in ("alpha", "depth")
        return
    for name in field_types(cls):
        if name in mine[0].exclude:
            continue
        option = "--head-arg" if name == "head_kwargs" else "--" + mine[0].option(name)
        assert option in opts, f"sweep {kind} lacks {option}"


# ----------------------------------------------------------------------------- file and CLI read alike

def _sample(cls: type, name: str) -> Any:
    """A value of the field's type that is not its default."""
    tp = field_types(cls)[name]
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if origin in (typing.Union, __import__("types").UnionType) and len(args) == 1 else tp
    o = typing.get_origin(base)
    if base is bool:
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return not f.default
    if base is int:
        return 3
    if base is float:
        return 0.25
    if base is str:
        return "x-value"
    if o is dict or base is dict:
        return {"width": 7, "norm": "layer"}
    if o in (list, tuple):
        item = typing.get_args(base)[0]
        return (["a", "b"] if item is str else [1, 2]) if o is list else (("a", "b") if item is str else (1, 2))
    raise AssertionError(f"no sample for {tp}")


def _cli_args(option: str, value: Any, words: dict[str, Any] | None = None) -> list[str]:
    if words:
        return [option, next(w for w, v in words.items() if v == value)]
    if isinstance(value, bool):
        return [option if value else "--no-" + option[2:]]
    if isinstance(value, dict):
        return [a for k, v in value.items() for a in (option, f"{k}={json.dumps(v) if not isinstance(v, str) else v}")]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in (option, str(v))]
    return [option, str(value)]


# Every generated group of the commands whose options come from the schema.
COMMAND_GROUPS = (*TRAIN_DISTILL, TRAIN_GATE[0], *EXTRACT_GROUPS, *TEACHER_GROUPS, *VLM_GROUPS)
GENERATED = [(g, name) for g in COMMAND_GROUPS for name in field_types(g.cls) if name not in g.exclude]


def _option(group: Group, name: str) -> str:
    return "--head-arg" if name == "head_kwargs" else "--" + group.option(name)


def _group_args(group: Group, name: str, value: Any) -> list[str]:
    """The command line giving ``value`` to field ``name``, plus a value for every required option."""
    args = _cli_args(_option(group, name), value, field_words(group.cls, name))
    for other in field_types(group.cls):
        if other != name and other not in group.optional and \
                field_default(group.cls, other) is dataclasses.MISSING:
            args += _cli_args(_option(group, other), _sample(group.cls, other))
    return args


@pytest.mark.parametrize(("group", "name"), GENERATED, ids=[f"{g.cls.__name__}.{n}" for g, n in GENERATED])
def test_cli_and_file_give_the_same_typed_value(group: Group, name: str) -> None:
    value = _sample(group.cls, name)
    seen: dict[str, Any] = {}
    probe = typer.Typer()

    def cmd(**given: dict[str, Any]) -> None:
        seen.update(given[group.key])

    cmd.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(group.key, inspect.Parameter.KEYWORD_ONLY, annotation=dict)])
    probe.command("cmd")(config_options(group)(cmd))
    probe.command("other")(lambda: None)   # a group, so the command is addressed by name
    res = CliRunner().invoke(probe, ["cmd", *_group_args(group, name, value)])
    assert res.exit_code == 0, res.output
    section = SCHEMA[group.cls][0]
    text = f"[{section}]\n" + write_experiment.__globals__["toml_table"]("x", {name: value}).split("\n", 1)[1]
    from_file = check_fields(group.cls, tomllib.loads(text)[section], section)
    assert seen[name] == from_file[name] == value
    assert set(seen) <= {name} | {n for n in field_types(group.cls) if field_default(group.cls, n) is dataclasses.MISSING}


@pytest.mark.parametrize("path", [["extract"], ["train", "teacher"], ["train", "vlm"]], ids=" ".join)
def test_schema_commands_restate_no_default(path: list[str]) -> None:
    """A generated option is "not set" until given, so the field's own default is the only one."""
    callback = _command(path).callback
    groups = getattr(callback, "__schema_groups__", ())
    assert groups, f"`{' '.join(path)}` does not take its options from the schema"
    params = {p.name: p for p in _command(path).params}
    for g in groups:
        for param, (opt, _targets, _tp, _m) in generated_options(g).items():
            assert params[param].default is None, f"--{opt} restates a default"
    help_text = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
    assert "Traceback" not in help_text and "[default: 0]" in help_text   # every seed defaults to 0


def test_words_stand_for_field_values_and_bad_words_are_one_line() -> None:
    seen: dict[str, Any] = {}
    probe = typer.Typer()

    @probe.command()
    @config_options(*VLM_GROUPS)
    def cmd(qlora_options: dict[str, Any]) -> None:
        seen.update(qlora_options)

    probe.command("other")(lambda: None)
    for word, value in (("4bit", True), ("none", False), ("NF4", True)):
        assert CliRunner().invoke(probe, ["cmd", "--vlm", "m", "--quant", word]).exit_code == 0
        assert seen["quantize"] is value
    res = CliRunner().invoke(probe, ["cmd", "--vlm", "m", "--quant", "3bit"])
    assert res.exit_code == 2 and "'3bit' is not one of 4bit, nf4, none" in res.output and "Traceback" not in res.output


def test_options_left_out_are_not_set() -> None:
    seen: dict[str, Any] = {}
    probe = typer.Typer()

    @probe.command()
    @config_options(*TRAIN_GATE)
    def cmd(gate_options: dict[str, Any], distill_options: dict[str, Any]) -> None:
        seen.update(gate_options=gate_options, distill_options=distill_options)

    probe.command("other")(lambda: None)
    res = CliRunner().invoke(probe, ["cmd", "--schedule", "reference", "--distill-epochs", "4"])
    assert res.exit_code == 0, res.output
    # one --schedule sets both configs; nothing else is set, so the schedule decides the rest
    assert seen == {"gate_options": {"schedule": "reference"},
                    "distill_options": {"schedule": "reference", "epochs": 4}}


def test_reference_schedule_refuses_a_value_it_pins_but_keeps_what_was_not_set() -> None:
    ref = make_config("gate", {"schedule": "reference"})
    assert (ref.lr, ref.epochs, ref.batch_size, ref.keep) == (1e-4, 10, 1, "last")
    # set to the default schedule's own value: still a set value, still refused (no guessing by default)
    with pytest.raises(ConfigError, match="pins lr"):
        make_config("distill", {"schedule": "reference", "lr": 3e-4})
    assert make_config("distill", {"patience": 0}).patience is None   # 0: early stopping off, in both places


# ----------------------------------------------------------------------------- experiment files

BASE = {"dataset": {"name": "fi", "root": "/data"}, "vlm": {"model": "m"}}


@pytest.mark.parametrize(("section", "body", "message"), [
    ("distill", {"alpah": 0.3}, r"\[distill\]\.alpah: unknown key; did you mean alpha\?"),
    ("gate", {"fit": "val"}, r"\[gate\]\.fit: unknown key; it is now gate_fit"),
    ("vlm", {"model": "m", "backend": "qwen2-vl"}, r"\[vlm\]\.backend: unknown key"),
    ("distill", {"patience": "5"}, r"\[distill\]\.patience must be an integer, got '5'"),
    ("distill", {"seeds": [0, "1"]}, r"\[distill\]\.seeds\[1\] must be an integer"),
    ("distill", {"head_kwargs": 3}, r"\[distill\]\.head_kwargs must be a table"),
    ("gate", {"batch_size": 1.5}, r"\[gate\]\.batch_size must be an integer"),
    ("qlora", {"instructions": "i.jsonl", "kinds": "categorical"}, r"\[qlora\]\.kinds must be a list of strings"),
])
def test_file_errors_name_the_key(section: str, body: dict[str, Any], message: str) -> None:
    data = {**BASE, section: body}
    with pytest.raises(ConfigError, match=message):
        parse_experiment(data)


def test_gate_section_reaches_every_gate_config_field_that_a_stage_uses(tmp_path: Path) -> None:
    data = {**BASE, "gate": {"names": ["concat", "moe"], "batch_size": 16, "folds": 3, "gate_fit": "crossfit",
                             "keep": "last", "schedule": "default", "patience": 4, "solver": "adam", "lr": 0.02}}
    exp = parse_experiment(data, base=tmp_path)
    cfgs = {s.name: s.config["gate"] for s in build_stages(exp) if s.name.startswith("gate:")}
    assert set(cfgs) == {"gate:concat", "gate:moe"}
    for name, cfg in cfgs.items():
        assert cfg["gate"] == name.split(":")[1]
        assert (cfg["batch_size"], cfg["folds"], cfg["gate_fit"], cfg["keep"], cfg["lr"]) == (16, 3, "crossfit", "last", 0.02)
        assert cfg["patience"] is None   # keep = last trains the whole budget


def test_stage_identity_is_the_hash_of_the_typed_config(tmp_path: Path) -> None:
    def ids(extra: dict[str, Any]) -> dict[str, Any]:
        exp = parse_experiment({**BASE, "distill": extra}, base=tmp_path)
        return {s.name: s.config for s in build_stages(exp)}

    plain = ids({})
    # writing a field's own default is the same run
    assert ids({"tau": 2.0}) == plain
    changed = ids({"head": "resmlp", "head_kwargs": {"activation": "relu"}})
    assert changed["distill"] != plain["distill"]
    assert changed["distill"]["distill"]["head_kwargs"] == {"activation": "relu"}
    assert changed["extract"] == plain["extract"]


def test_demo_experiment_round_trips_through_its_file(tmp_path: Path) -> None:
    from vea_bench.pipeline.demo import _COMMENTS, DemoSettings, demo_experiment

    exp = demo_experiment(tmp_path, tmp_path / "data", tmp_path / "vlm", tmp_path / "i.jsonl", DemoSettings())
    text = write_experiment(exp, _COMMENTS, "# header\n")
    back = parse_experiment(tomllib.loads(text), base=tmp_path)
    assert back == exp
    assert isinstance(back, Experiment) and back.qlora is not None
    assert back.qlora.settings.build(vlm="m").kinds == ("categorical",)
    assert [s.config for s in build_stages(back)] == [s.config for s in build_stages(exp)]


@pytest.mark.parametrize(("args", "message"), [
    (["--head-arg", "novalue"], "--head-arg takes KEY=VALUE, got 'novalue'"),
    (["--head", "nope"], "unknown head 'nope'"),
    (["--schedule", "reference", "--epochs", "7"], "--schedule reference pins epochs = 5"),
])
def test_cli_config_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, ["train", "distill", "--cache", str(tmp_path / "none.h5"), *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(("section", "body", "message"), [
    ("teacher", {"arch": "resnet18", "img_size": 0}, r"--img-size must be positive"),
    ("qlora", {"instructions": "i.jsonl", "max_steps": 0}, r"--max-steps must be at least 1"),
    ("extract", {"top_p": 2.0}, r"top-p must be in"),
    ("distill", {"alpha": 1.5}, r"--alpha must be in \[0, 1\]"),
])
def test_file_values_are_checked_when_the_file_is_read(section: str, body: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_experiment({**BASE, section: body})
