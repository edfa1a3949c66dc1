"""`vea-bench run EXPERIMENT.toml`: the whole study from one file, and nothing recomputed that need not be.

Runs a small experiment end to end on tiny real models (tiny Qwen2-VL, tiny timm ViT teacher) and
a synthetic FI-layout set, through the CLI, then checks the stage ledger's promises.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vea_bench.models.teacher import TINY_TEACHER_ARCH, TINY_TEACHER_IMG_SIZE, TINY_TEACHER_KWARGS
from vea_bench.pipeline.demo import _instructions, demo_markdown
from vea_bench.pipeline.experiment import load_experiment
from vea_bench.pipeline.stages import run_experiment
from vea_bench.results import ResultsStore
from vea_bench_cli.main import app

runner = CliRunner()


def _experiment(tmp: Path, data: Path, vlm: Path, instructions: Path, gates: list[str], teacher_epochs: int = 1) -> Path:
    kwargs = ", ".join(f"{k} = {json.dumps(v)}" for k, v in TINY_TEACHER_KWARGS.items())
    text = f"""
[experiment]
name = "small"
workdir = "{tmp / 'work'}"
device = "cpu"

[dataset]
name = "fi"
root = "{data}"
cache = "{tmp / 'cache' / 'fi.h5'}"

[teacher]
arch = "{TINY_TEACHER_ARCH}"
timm_kwargs = {{ {kwargs} }}
img_size = {TINY_TEACHER_IMG_SIZE}
random_init = true
epochs = {teacher_epochs}
lr = 1e-3
batch_size = 16
workers = 0

[vlm]
model = "{vlm}"
dtype = "fp32"

[qlora]
instructions = "{instructions}"
max_steps = 2
quantize = false

[extract]
answer = ["generate", "score"]
batch_size = 8
workers = 0
max_new_tokens = 8

[distill]
epochs = 2
lr = 1e-3

[gate]
names = {json.dumps(gates)}
epochs = 2

[sweep]
alpha = [0.0, 1.0]

[report]
formats = ["md"]
plots = false
"""
    path = tmp / "experiment.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, synthetic_root) -> dict[str, Path]:
    from vea_bench.models.tiny import make_tiny

    tmp = tmp_path_factory.mktemp("pipeline")
    data = synthetic_root("fi")
    vlm = make_tiny("qwen2-vl", tmp / "tiny-qwen2-vl")
    instructions = _instructions(data, tmp / "instructions.jsonl", seed=0)
    return {"tmp": tmp, "data": data, "vlm": vlm, "instructions": instructions}


def _stage_lines(output: str) -> dict[str, str]:
    """Stage name -> 'ran' | 'skipped' from the CLI's per-stage lines."""
    out: dict[str, str] = {}
    for line in output.splitlines():
        line = line.strip()
        if ": ran in" in line:
            out[line.split(": ran in")[0].lstrip("✓ ").strip()] = "ran"
        elif ": up to date, skipped" in line:
            out[line.split(": up to date")[0].lstrip("- ").strip()] = "skipped"
    return out


def test_experiment_runs_then_skips_then_trains_only_the_new_gate(setup: dict[str, Path]) -> None:
    tmp = setup["tmp"]
    exp_file = _experiment(tmp, setup["data"], setup["vlm"], setup["instructions"], ["concat"])

    first = runner.invoke(app, ["run", str(exp_file)])
    assert first.exit_code == 0, first.output
    ran = _stage_lines(first.output)
    assert ran == {s: "ran" for s in ["teacher", "qlora", "extract", "distill", "gate:concat", "sweep:alpha",
                                      "baselines", "report"]}
    work = tmp / "work"
    records, skipped = ResultsStore(work).scan()
    assert not skipped, skipped
    kinds = sorted({r.kind for _, r in records})
    assert kinds == ["baseline", "complementarity", "distill", "gate", "teacher", "vlm", "vlm-eval"]
    vlm_alone = [r for _, r in records if r.kind == "vlm-eval"]
    assert len(vlm_alone) == 1 and vlm_alone[0].config["tuned"] is True  # extracted with the LoRA adapter
    gate = [r for _, r in records if r.kind == "gate"]
    assert len(gate) == 1 and gate[0].config["gate"] == "concat" and 0.0 <= gate[0].accuracy("test") <= 1.0
    assert (work / "tables" / "tables.md").read_text().count("EmoVLM-KD") >= 1
    n_records = len(records)
    cache_mtime = (tmp / "cache" / "fi.h5").stat().st_mtime_ns

    # Second run: every stage is up to date; no record is added and the cache is untouched.
    second = runner.invoke(app, ["run", str(exp_file)])
    assert second.exit_code == 0, second.output
    assert set(_stage_lines(second.output).values()) == {"skipped"}
    assert len(ResultsStore(work).scan()[0]) == n_records
    assert (tmp / "cache" / "fi.h5").stat().st_mtime_ns == cache_mtime

    # Add one gate: only that gate trains (and the report re-renders).
    _experiment(tmp, setup["data"], setup["vlm"], setup["instructions"], ["concat", "moe"])
    third = runner.invoke(app, ["run", str(exp_file)])
    assert third.exit_code == 0, third.output
    lines = _stage_lines(third.output)
    assert {k for k, v in lines.items() if v == "ran"} == {"gate:moe", "report"}
    new = [r for _, r in ResultsStore(work).scan()[0] if r.kind == "gate" and r.config["gate"] == "moe"]
    assert len(new) == 1
    assert len(ResultsStore(work).scan()[0]) == n_records + 1
    assert (tmp / "cache" / "fi.h5").stat().st_mtime_ns == cache_mtime
    # The typed [distill] config (head and its kwargs included) is what the records carry.
    heads = [r for _, r in ResultsStore(work).scan()[0] if r.kind == "distill"]
    assert heads and all(r.config["head"] == "distill" and r.config["head_kwargs"] == {} for r in heads)

    # The README's results section comes from these records: one row per stage and method.
    md = demo_markdown(work)
    assert f"| gate:moe | {new[0].method} | {100 * new[0].accuracy('test'):.1f} | 1 |" in md
    assert "| distill |" in md and "sweep:" not in md

    # Edit the teacher: it retrains (into a new folder), and everything downstream of it reruns;
    # the VLM's LoRA stage does not depend on the teacher and is kept.
    _experiment(tmp, setup["data"], setup["vlm"], setup["instructions"], ["concat", "moe"], teacher_epochs=2)
    fourth = runner.invoke(app, ["run", str(exp_file)])
    assert fourth.exit_code == 0, fourth.output
    lines = _stage_lines(fourth.output)
    assert lines.pop("qlora") == "skipped"
    assert set(lines.values()) == {"ran"}
    assert len(list((work / "artifacts").glob("teacher-*"))) == 2


def test_experiment_file_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[dataset]\nname = "fi"\nroot = "/nope"\n[vlm]\nmodel = "x"\n[gate]\nnmes = ["concat"]\n')
    res = runner.invoke(app, ["run", str(bad)])
    assert res.exit_code != 0
    assert "[gate].nmes: unknown key; did you mean names?" in res.output
    assert "Traceback" not in res.output

    notoml = tmp_path / "x.toml"
    notoml.write_text("[dataset\n")
    res = runner.invoke(app, ["run", str(notoml)])
    assert res.exit_code != 0 and "not valid TOML" in res.output

    res = runner.invoke(app, ["run", str(tmp_path / "missing.toml")])
    assert res.exit_code != 0 and "no experiment file" in res.output


def test_missing_dataset_root_fails_cleanly_and_keeps_nothing_half_done(tmp_path: Path, setup: dict[str, Path]) -> None:
    exp_file = _experiment(tmp_path, tmp_path / "no-such-data", setup["vlm"], setup["instructions"], ["concat"])
    exp = load_experiment(exp_file)
    from vea_bench.errors import VeaError

    with pytest.raises(VeaError):
        run_experiment(exp)
    ledger = tmp_path / "work" / "artifacts" / "stages.json"
    assert not ledger.exists() or json.loads(ledger.read_text())["stages"] == {}


def test_run_under_a_launcher_is_refused_in_one_line(tmp_path: Path, setup: dict[str, Path], monkeypatch) -> None:
    """Every rank would train the same heads into the same files: `run` says what to launch instead."""
    exp_file = _experiment(tmp_path, setup["data"], setup["vlm"], setup["instructions"], ["concat"])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = runner.invoke(app, ["run", str(exp_file)])
    assert res.exit_code != 0
    assert "runs as one process" in res.output and "torchrun" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "work" / "artifacts" / "stages.json").exists()
