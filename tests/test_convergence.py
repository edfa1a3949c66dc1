"""The default schedule converges: early stopping per member on val, its record, warnings, bf16, L-BFGS."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests._heads_helpers import complementary_data
from vea_bench.cache.store import FeatureCache
from vea_bench.errors import ConfigError
from vea_bench.heads.data import load_head_data
from vea_bench.heads.config import scaled_budget
from vea_bench.heads.pipeline import (
    DistillConfig,
    GateConfig,
    apply_schedule,
    resolve_precision,
    train_distill,
    train_gates,
)
from vea_bench.heads.synthetic_cache import make_complementary_cache
from vea_bench.results import RunRecord
from vea_bench_cli.main import app


runner = CliRunner()


@pytest.fixture(scope="module")
def vlm80(tmp_path_factory) -> Path:
    """The VLM is right on 80 % of rows, the teacher (and the embedding's signal) on 45 %."""
    return make_complementary_cache(tmp_path_factory.mktemp("vlm80") / "c.h5", n_train=600, n_val=300, n_test=600,
                                    dim=16, seed=4, teacher_part=(0.0, 0.45), vlm_part=(0.2, 1.0), unparsed=0.0)


@pytest.fixture(scope="module")
def data80(vlm80):
    with FeatureCache.open(vlm80) as c:
        return load_head_data(c, need=("visual", "teacher", "vlm"))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return complementary_data(tmp_path_factory.mktemp("small") / "c.h5", n_train=200, n_val=100, n_test=100,
                              dim=12, seed=6)


def _vlm_acc(sa) -> float:
    return float(((sa.vlm.sum(1) > 0) & (sa.vlm.argmax(1) == sa.y)).mean())


def test_default_gate_reaches_the_vlm_it_is_given(data80):
    """VLM right on 80 % of rows: the default Concat & Linear gate is at least that good on test."""
    assert _vlm_acc(data80.splits["test"]) >= 0.78
    dist = train_distill(data80, [DistillConfig(seed=0)], eval_splits=["train", "val", "test"])
    gate = train_gates(data80, [GateConfig(gate="concat", seed=0)], [dist[0].logits])[0]
    assert gate.metrics["test"]["accuracy"] >= 0.80, gate.convergence
    assert gate.convergence["stop_reason"].startswith("patience")   # it converged within the budget


def test_early_stopped_member_equals_that_member_alone(small):
    # a high lr overfits 200 rows fast; the lower-lr members keep improving for longer
    cfgs = [DistillConfig(seed=s, lr=lr, patience=2, epochs=25, min_steps=0, batch_size=32) for s, lr in [(0, 3e-3), (1, 1e-4), (2, 1e-3)]]
    together = train_distill(small, cfgs)
    runs = [r.convergence["epochs_run"] for r in together]
    assert min(runs) < max(runs), runs                     # one stopped while the others trained on
    early = int(np.argmin(runs))
    assert together[early].convergence["stop_reason"].startswith("patience")
    alone = train_distill(small, [cfgs[early]])[0]
    a, b = together[early], alone
    assert a.convergence == b.convergence
    for k, v in a.state.items():
        assert torch.allclose(v, b.state[k], atol=1e-6, rtol=0), k
    for s in ("val", "test"):
        assert np.allclose(a.logits[s], b.logits[s], atol=1e-5)
        assert a.metrics[s]["accuracy"] == b.metrics[s]["accuracy"]


def test_early_stopped_gate_member_equals_alone(small):
    dist = train_distill(small, [DistillConfig(seed=0, epochs=3, min_steps=0)], eval_splits=["train", "val", "test"])
    cfgs = [GateConfig(gate="moe", seed=s, lr=lr, patience=3, epochs=60) for s, lr in [(0, 3e-2), (1, 1e-3)]]
    together = train_gates(small, cfgs, [dist[0].logits] * 2)
    runs = [r.convergence["epochs_run"] for r in together]
    early = int(np.argmin(runs))
    assert runs[early] < max(runs), runs
    alone = train_gates(small, [cfgs[early]], [dist[0].logits])[0]
    assert together[early].convergence == alone.convergence
    for k, v in together[early].state.items():
        assert torch.allclose(v, alone.state[k], atol=1e-6, rtol=0), k


def test_epoch_is_chosen_on_val_and_test_is_never_read(small):
    cfg = DistillConfig(seed=0, lr=1e-3, epochs=12, min_steps=0, patience=3, batch_size=32)
    r = train_distill(small, [cfg])[0]
    conv = r.convergence
    acc, loss = np.array(conv["val_accuracy"]), np.array(conv["val_loss"])
    best = max(range(len(acc)), key=lambda e: (acc[e], -loss[e]))
    assert conv["kept_epoch"] == best + 1 and conv["select_split"] == "val"
    assert r.metrics["val"]["accuracy"] == pytest.approx(acc[best], abs=1e-6)   # the best epoch was restored
    # scramble the test split entirely: nothing about training or selection may change
    noisy = replace(small, splits=dict(small.splits))
    te = small.splits["test"]
    rng = np.random.default_rng(0)
    noisy.splits["test"] = replace(te, y=rng.permutation(te.y), x=rng.standard_normal(te.x.shape).astype(np.float32),
                                   teacher=rng.standard_normal(te.teacher.shape).astype(np.float32))
    r2 = train_distill(noisy, [cfg])[0]
    assert r2.convergence == conv
    assert all(torch.equal(v, r2.state[k]) for k, v in r.state.items())


def test_reference_schedule_pins_and_keeps_no_early_stopping():
    ref = apply_schedule(DistillConfig(schedule="reference"), "distill")
    assert (ref.batch_size, ref.lr, ref.epochs, ref.keep, ref.patience, ref.precision) == (1, 1e-5, 5, "last", None, "fp32")
    g = apply_schedule(GateConfig(schedule="reference"), "gate")
    assert (g.batch_size, g.lr, g.epochs, g.keep, g.patience, g.solver) == (1, 1e-4, 10, "last", None, "adam")
    with pytest.raises(ConfigError, match="pins patience"):
        apply_schedule(DistillConfig(schedule="reference"), "distill", explicit={"patience": 3})
    with pytest.raises(ConfigError, match="pins precision"):
        apply_schedule(DistillConfig(schedule="reference", precision="bf16"), "distill", explicit={"precision": "bf16"})
    d = apply_schedule(DistillConfig(), "distill")
    assert d.keep == "best" and d.patience and d.epochs > 5


def test_bf16_trains_with_fp32_master_weights(small):
    cfg = DistillConfig(seed=0, lr=1e-3, epochs=4, min_steps=0, batch_size=32, patience=None, keep="last")
    r16 = train_distill(small, [replace(cfg, precision="bf16")])[0]
    r32 = train_distill(small, [cfg])[0]
    assert r16.convergence["precision"] == "bf16" and r32.convergence["precision"] == "fp32"
    assert all(v.dtype == torch.float32 for v in r16.state.values())
    tl = r16.convergence["train_loss"]
    assert tl[-1] < tl[0]
    assert not torch.equal(r16.state["0.weight"], r32.state["0.weight"])      # bf16 products really ran
    assert abs(r16.metrics["val"]["accuracy"] - r32.metrics["val"]["accuracy"]) <= 0.1
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ConfigError):
        resolve_precision("fp8", "cpu")


def test_lbfgs_concat_gate_is_an_exact_fit(small):
    dist = train_distill(small, [DistillConfig(seed=0, epochs=3, min_steps=0)], eval_splits=["train", "val", "test"])
    g = train_gates(small, [GateConfig(gate="concat", seed=0, solver="lbfgs")], [dist[0].logits])[0]
    info = g.convergence["lbfgs"]
    assert info["max_abs_gradient"] <= 1e-5 and info["stop_reason"].startswith("converged")
    g1 = train_gates(small, [GateConfig(gate="concat", seed=1, solver="lbfgs")], [dist[0].logits])[0]
    assert all(torch.allclose(v, g1.state[k], atol=1e-5) for k, v in g.state.items())   # init does not matter
    with pytest.raises(ConfigError, match="lbfgs"):
        apply_schedule(GateConfig(gate="moe", solver="lbfgs"), "gate")


def test_warnings_still_improving_and_gate_below_input(small, caplog):
    from vea_bench.heads.pipeline import warn_convergence

    r = train_distill(small, [DistillConfig(seed=0, lr=1e-5, epochs=2, min_steps=0)])[0]
    assert r.convergence["still_improving"] and r.convergence["stop_reason"] == "epoch budget reached"
    with caplog.at_level(logging.WARNING, logger="vea_bench"):
        warn_convergence("run-x", r.convergence)
        warn_convergence("gate-y", {"inputs_val_accuracy": {"distill": 0.5, "vlm": 0.7}, "gate_val_accuracy": 0.6})
        warn_convergence("gate-z", {"inputs_val_accuracy": {"distill": 0.5, "vlm": 0.7}, "gate_val_accuracy": 0.75})
    text = caplog.text
    assert "run-x: still improving" in text and "gate-y: gate ends below its better input" in text
    assert "gate-z" not in text


def test_cli_records_convergence_show_prints_it_and_plot_draws_it(vlm80, tmp_path):
    out = tmp_path / "res"
    r = runner.invoke(app, ["train", "gate", "--cache", str(vlm80), "--distill-epochs", "2", "--device", "cpu",
                            "--results", str(out), "--quiet"])
    assert r.exit_code == 0, r.output + r.stderr
    assert "still improving" in r.stderr        # the 2-epoch distill head: a warning, not an error
    rec = RunRecord.load(r.stdout.strip().splitlines()[-1])
    conv = rec.convergence
    for key in ("epochs_run", "kept_epoch", "kept_because", "stop_reason", "train_loss", "val_loss", "val_accuracy",
                "precision", "inputs_val_accuracy"):
        assert key in conv, key
    assert len(conv["train_loss"]) == len(conv["val_loss"]) == conv["epochs_run"]
    show = runner.invoke(app, ["results", "show", rec.run_id, "--results", str(out)])
    assert show.exit_code == 0, show.output
    assert "convergence" in show.stdout and f"kept epoch {conv['kept_epoch']}" in show.stdout
    assert "stopped: " + conv["stop_reason"][:20] in show.stdout and "per epoch" in show.stdout
    figs = tmp_path / "figs"
    p = runner.invoke(app, ["plot", "--out", str(figs), "--results", str(out), "--format", "png", "--confusion", "none",
                            "--loss-curves", rec.run_id])
    assert p.exit_code == 0, p.output + p.stderr
    assert (figs / f"loss-{rec.run_id}.png").stat().st_size > 0
    bad = runner.invoke(app, ["plot", "--out", str(figs), "--results", str(out), "--loss-curves", "nope"])
    assert bad.exit_code != 0 and "matches 0 runs" in bad.stderr


def test_cli_precision_and_solver_options(vlm80, tmp_path):
    r = runner.invoke(app, ["train", "gate", "--cache", str(vlm80), "--solver", "lbfgs", "--distill-epochs", "1",
                            "--precision", "bf16", "--device", "cpu", "--results", str(tmp_path), "--quiet"])
    assert r.exit_code == 0, r.output + r.stderr
    paths = list((tmp_path / "distill").glob("*.json"))
    d = RunRecord.load(paths[0])
    assert d.config["precision"] == "bf16" and d.convergence["precision"] == "bf16"
    g = RunRecord.load(r.stdout.strip().splitlines()[-1])
    assert g.config["solver"] == "lbfgs" and g.convergence["lbfgs"]["iterations"] > 0
    for args, expect in ((["--gate", "moe", "--solver", "lbfgs"], "lbfgs"), (["--patience", "-1"], "--patience"),
                         (["--schedule", "reference", "--patience", "4"], "pins patience = off")):
        bad = runner.invoke(app, ["train", "gate", "--cache", str(vlm80), *args, "--results", str(tmp_path)])
        assert bad.exit_code != 0 and "Traceback" not in bad.output
        assert len(bad.stderr.strip().splitlines()) == 1 and expect in bad.stderr, bad.stderr


def test_scaled_budget_counts_steps_on_small_sets_only():
    # 1,200 rows at batch 256 are 5 steps an epoch: 60 epochs would be 300 steps
    assert scaled_budget(60, 5, 5, 3000) == (600, 50)
    assert scaled_budget(60, 5, 71, 3000) == (60, 5)        # FI-sized: 4,260 steps already
    assert scaled_budget(60, None, 5, 3000) == (600, None)
    assert scaled_budget(60, 5, 5, 0) == (60, 5)            # 0: epochs only
    ref = apply_schedule(DistillConfig(schedule="reference"), "distill")
    assert ref.min_steps == 0
    with pytest.raises(ConfigError, match="pins min-steps"):
        apply_schedule(DistillConfig(schedule="reference"), "distill", explicit={"min_steps": 100})
    with pytest.raises(ConfigError, match="--min-steps"):
        apply_schedule(DistillConfig(min_steps=-1), "distill")


def test_small_set_trains_the_step_budget_and_keep_last_its_epochs(small):
    # 200 rows at batch 64: 4 steps an epoch; a 40-step minimum makes 2 epochs 10, patience 1 -> 5
    cfg = DistillConfig(seed=0, lr=1e-3, epochs=2, patience=1, batch_size=64, min_steps=40)
    conv = train_distill(small, [cfg])[0].convergence
    assert (conv["max_epochs"], conv["patience"]) == (10, 5)
    assert conv["epochs_run"] > 2
    last = train_distill(small, [replace(cfg, keep="last", patience=None)])[0].convergence
    assert (last["max_epochs"], last["epochs_run"]) == (2, 2)


def test_default_distill_head_reaches_a_ten_times_longer_run():
    """About 1,000 learnable train rows: the default schedule ends where a run of 10x its budget ends (0.5 points).

    The long run is 30,000 optimiser steps (the suite's longest test, a few minutes on two cores).
    """
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        data = complementary_data(Path(d) / "c.h5", n_train=1000, n_val=125, n_test=2000, dim=8, seed=11)
    default = train_distill(data, [DistillConfig(seed=0)])[0]
    conv = default.convergence
    assert (conv["max_epochs"], conv["patience"]) == (750, 63)          # 3,000 steps of 4 per epoch
    assert conv["stop_reason"].startswith("patience") and not conv["still_improving"], conv["stop_reason"]
    long = train_distill(data, [DistillConfig(seed=0, epochs=10 * conv["max_epochs"], patience=None, min_steps=0)])[0]
    assert long.convergence["epochs_run"] == 7500
    acc, long_acc = default.metrics["test"]["accuracy"], long.metrics["test"]["accuracy"]
    assert acc >= long_acc - 0.005, (acc, long_acc)
    assert acc > 0.5                                                     # chance is 1/8; the ceiling about 0.65
