"""The pipeline's stages come from the STAGES registry: one builder per stage kind, in pipeline order,
each stage running one small module-level function. Planning only: nothing is trained here."""
from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from vea_bench.pipeline import stages as stages_module
from vea_bench.pipeline.demo import DemoSettings, demo_experiment
from vea_bench.pipeline.experiment import BaselinesSection, SweepSection
from vea_bench.pipeline.ledger import Stage
from vea_bench.pipeline.stages import STAGES, Plan, build_stages


@pytest.fixture()
def exp(tmp_path: Path):
    return demo_experiment(tmp_path, tmp_path / "data", tmp_path / "vlm", tmp_path / "i.jsonl", DemoSettings())


def test_the_demo_plans_every_stage_in_pipeline_order(exp) -> None:
    names = [s.name for s in build_stages(exp)]
    assert names == ["teacher", "qlora", "extract", "distill", "gate:concat", "gate:moe", "sweep:alpha",
                     "baselines", "report"]
    planned: set[str] = set()
    for s in build_stages(exp):
        assert set(s.deps) <= planned, f"{s.name} depends on a stage planned after it"
        planned.add(s.name)
    assert set(build_stages(exp)[-1].deps) == planned - {"report"}   # the report follows everything


@pytest.mark.parametrize("name", STAGES.names())
def test_every_builder_is_small_and_its_stages_run_module_functions(name: str, exp) -> None:
    builder = STAGES.get(name)
    source = textwrap.dedent(inspect.getsource(builder))
    assert len(source.splitlines()) <= 30, f"stage builder '{name}' grew past 30 lines"
    top = ast.parse(source).body[0]
    nested = [getattr(n, "name", "lambda") for n in ast.walk(top)
              if n is not top and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
    assert not nested, f"stage builder '{name}' defines {nested}: give its stages a module-level function"
    earlier = [s for s in build_stages(exp) if s.name in ("teacher", "qlora", "extract", "distill")]
    for stage in builder(Plan(exp, earlier)):
        assert isinstance(stage, Stage)
        fn = getattr(stage.run, "func", stage.run)
        assert inspect.getmodule(fn) is stages_module and "<locals>" not in fn.__qualname__


def test_sections_left_out_plan_no_stage_and_dependencies_follow(exp) -> None:
    bare = replace(exp, teacher=None, qlora=None, sweep=SweepSection(), baselines=BaselinesSection(enabled=False))
    stages = {s.name: s for s in build_stages(bare)}
    assert list(stages) == ["extract", "distill", "gate:concat", "gate:moe", "report"]
    assert list(stages["extract"].deps) == []
    full = {s.name: s for s in build_stages(exp)}
    assert list(full["extract"].deps) == ["teacher", "qlora"]
    # the stages that stay keep their identity: the teacher and adapter enter only through deps
    assert stages["extract"].config == full["extract"].config and stages["distill"].config == full["distill"].config


def test_a_registered_builder_adds_its_stage(exp) -> None:
    def audit_stages(plan: Plan) -> list[Stage]:
        return [Stage("audit", {"n": len(plan.stages)}, _audit, deps=["extract"])]

    STAGES.add("audit", audit_stages)
    try:
        stages = build_stages(exp)
        assert stages[-1].name == "audit" and stages[-1].config == {"n": len(stages) - 1}
    finally:
        STAGES.remove("audit")
    assert "audit" not in [s.name for s in build_stages(exp)]


def _audit(ctx) -> dict:
    return {"paths": []}


def test_the_extract_engine_enters_the_identity_only_when_not_the_default(exp) -> None:
    def extract_config(engine: str) -> dict:
        e = replace(exp, extract=replace(exp.extract, engine=engine))
        return next(s.config for s in build_stages(e) if s.name == "extract")

    assert "engine" not in extract_config("transformers") and extract_config("hf") == extract_config("transformers")
    assert extract_config("embed-only")["engine"] == "embed-only"


@pytest.mark.parametrize(("extract", "message"), [
    ({"engine": "vllm-someday"}, r"\[extract\]\.engine: unknown VLM engine 'vllm-someday'"),
    ({"engine": "embed-only"}, r"gives no VLM answers, which the gates and baselines read"),
])
def test_engine_errors_are_one_line_when_the_file_is_read(extract: dict, message: str) -> None:
    from vea_bench.errors import ConfigError
    from vea_bench.pipeline.experiment import parse_experiment

    data = {"dataset": {"name": "fi", "root": "/data"}, "vlm": {"model": "m"}, "extract": extract,
            "gate": {"names": ["concat"]}}
    with pytest.raises(ConfigError, match=message):
        parse_experiment(data)
    if extract["engine"] == "embed-only":   # the visual source alone serves the distill heads
        parse_experiment({**data, "gate": {"names": []}, "baselines": {"enabled": False}})
