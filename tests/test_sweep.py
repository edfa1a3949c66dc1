"""Sweeps: member m of a batched sweep equals the single run with the same config and seed."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vea_bench.heads.gates import GATES
from vea_bench.heads.synthetic_cache import make_complementary_cache
from vea_bench.progress import RecordingProgress
from vea_bench.results import ResultsStore, RunRecord
from vea_bench_cli.main import app

runner = CliRunner()
COMMON = ["--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_complementary_cache(tmp_path_factory.mktemp("sweep") / "c.h5", n_train=96, n_val=48, n_test=48,
                                    dim=8, seed=3)


def _paths(res) -> list[str]:
    assert res.exit_code == 0, res.output + res.stderr
    return [line for line in res.stdout.split() if line.endswith(".json")]


def _same_metrics(a: dict, b: dict) -> None:
    for split in ("val", "test"):
        ma, mb = a[split], b[split]
        for key in ("accuracy", "macro_f1", "kl_to_teacher"):
            assert ma[key] == pytest.approx(mb[key], abs=1e-5), (split, key)
        assert ma["confusion"] == mb["confusion"]
        for name, v in ma["per_class"].items():
            assert v == pytest.approx(mb["per_class"][name], abs=1e-5, nan_ok=True)


def test_sweep_alpha_members_equal_single_runs(cache, tmp_path):
    res = runner.invoke(app, ["sweep", "alpha", "--cache", str(cache), "--alphas", "0:1:0.1", "--seeds", "0,1,2",
                              "--results", str(tmp_path / "sweep"), *COMMON])
    members = [RunRecord.load(p) for p in _paths(res)]
    assert len(members) == 33 and len({m.group for m in members}) == 1
    assert sorted({m.config["alpha"] for m in members}) == [round(0.1 * k, 1) for k in range(11)]
    for m in members:
        single = runner.invoke(app, ["train", "distill", "--cache", str(cache), "--alpha", str(m.config["alpha"]),
                                     "--seed", str(m.seed), "--results", str(tmp_path / "single"), *COMMON])
        (path,) = _paths(single)
        _same_metrics(m.metrics, RunRecord.load(path).metrics)
    # seeds matter: members differing only in seed are different runs
    a = [m for m in members if m.config["alpha"] == 0.5]
    assert len({round(m.metrics["val"]["kl_to_teacher"], 8) for m in a}) == 3


def test_sweep_depth_and_gate_and_seed(cache, tmp_path):
    out = tmp_path / "r"
    depth = _paths(runner.invoke(app, ["sweep", "depth", "--cache", str(cache), "--depths", "1:3:1", "--seeds", "0",
                                       "--results", str(out), *COMMON]))
    assert sorted(RunRecord.load(p).config["depth"] for p in depth) == [1, 2, 3]
    gate = _paths(runner.invoke(app, ["sweep", "gate", "--cache", str(cache), "--seeds", "0,1", "--gate-epochs", "2",
                                      "--gate-fit", "crossfit", "--folds", "3", "--results", str(out), *COMMON]))
    recs = [RunRecord.load(p) for p in gate]
    gates = [r for r in recs if r.kind == "gate"]
    assert len(gates) == 2 * len(GATES) and len([r for r in recs if r.kind == "distill"]) == 2
    assert {r.config["gate"] for r in gates} == set(GATES.names())   # every registered gate, a sixth too
    assert {r.config["gate_fit"] for r in gates} == {"crossfit"}
    seed = _paths(runner.invoke(app, ["sweep", "seed", "--cache", str(cache), "--seeds", "0:2:1", "--gate-epochs", "1",
                                      "--results", str(out), *COMMON]))
    assert sorted(RunRecord.load(p).seed for p in seed if "gate" in Path(p).parts[-2]) == [0, 1, 2]
    records, bad = ResultsStore(out).scan()
    assert not bad and len(records) == 3 + (2 + 2 * len(GATES)) + 6


def test_sweep_reports_through_progress(cache, tmp_path):
    from vea_bench.cache.store import FeatureCache
    from vea_bench.heads.data import load_head_data
    from vea_bench.heads.pipeline import DistillConfig, GateConfig
    from vea_bench.heads.sweep import plan_sweep, run_plan

    with FeatureCache.open(cache) as c:
        data = load_head_data(c)
    plan = plan_sweep("alpha", DistillConfig(epochs=1, batch_size=32, min_steps=0), GateConfig(), seeds=[0, 1], alphas=[0.0, 1.0])
    prog = RecordingProgress()
    recs = run_plan(plan, data, results_dir=tmp_path, progress=prog)
    assert len(recs) == 4
    assert prog.advanced == 3   # 96 rows / 32 = 3 steps, one epoch, one batched group
    members = [e[1][1] for e in prog.events if e[0] == "advance" and "member" in e[1][1]]
    assert len(members) == 4 and all("test_acc" in m and "val_acc" in m for m in members)


def test_sweep_live_table_renders_members(cache, tmp_path):
    res = runner.invoke(app, ["sweep", "alpha", "--cache", str(cache), "--alphas", "0,1", "--seeds", "4", "--epochs",
                              "1", "--device", "cpu", "--results", str(tmp_path)])
    assert res.exit_code == 0, res.output + res.stderr
    text = res.stdout + res.stderr
    assert "alpha=0 " in text and "alpha=1 " in text and "2 records" in text


@pytest.mark.parametrize("args,needles", [
    (["alpha", "--alphas", "0:2:0.5"], ["alpha 1.5", "alpha 2", "--alpha must be in [0, 1]"]),
    (["depth", "--depths", "1,2,7"], ["depth 7", "1..5"]),
    (["alpha", "--alphas", "0.5", "--lrs", "1e-3,-1"], ["lr -1", "--lr must be positive"]),
    (["alpha", "--alphas", "0,0.5", "--lrs", "1e-3", "--schedule", "reference"], ["lr 0.001", "pins lr"]),
    (["gate", "--gates", "concat,dynamic", "--solver", "lbfgs"], ["gate dynamic", "lbfgs"]),
], ids=["alpha-range", "depth", "lrs", "reference-lrs", "gate-solver"])
def test_a_grid_with_one_bad_value_is_refused_whole_before_training(cache, tmp_path, args, needles):
    """Every member is validated as its single run would be; nothing trains, nothing is recorded."""
    out = tmp_path / "r"
    budget = [] if "reference" in args else ["--epochs", "2", "--batch-size", "16"]
    res = runner.invoke(app, ["sweep", args[0], "--cache", str(cache), *args[1:], "--seeds", "0,1",
                              "--results", str(out), "--device", "cpu", "--quiet", *budget])
    assert res.exit_code != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "refused" in lines[0] and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not out.exists() or not list(out.rglob("*.json"))


def test_experiment_file_sweep_grid_is_refused_when_parsed(tmp_path):
    from vea_bench.errors import ConfigError
    from vea_bench.pipeline.experiment import parse_experiment

    data = {"dataset": {"name": "fi", "root": str(tmp_path)}, "vlm": {"model": "Qwen/Qwen2-VL-7B-Instruct"},
            "sweep": {"alpha": [0.0, 0.5, 1.5], "seeds": [0, 1]}}
    with pytest.raises(ConfigError) as ei:
        parse_experiment(data, base=tmp_path)
    assert "alpha 1.5" in str(ei.value) and "\n" not in str(ei.value)
    data["sweep"] = {"depth": [1, 6]}
    with pytest.raises(ConfigError, match="depth 6"):
        parse_experiment(data, base=tmp_path)
    data["sweep"] = {"alpha": [0.0, 1.0], "depth": [1, 5]}
    assert parse_experiment(data, base=tmp_path).sweep.alpha == [0.0, 1.0]
