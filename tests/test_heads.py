"""Heads against the cache: KD loss, the gates, parameter counts, the batched trainer, records, CLI errors."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests._heads_helpers import tiny_cache
from vea_bench.cache.store import FeatureCache
from vea_bench.errors import ConfigError
from vea_bench.heads.data import load_head_data
from vea_bench.heads.distill import build_distill_head, count_params
from vea_bench.heads.gates import GATES, build_gate, distill_vector, gate_display_name
from vea_bench.heads.losses import kd_loss, kd_terms
from vea_bench.heads.pipeline import DistillConfig, GateConfig, gate_inputs, train_distill, train_gates
from vea_bench.heads.sweep import parse_grid, parse_names
from vea_bench.heads.synthetic_cache import make_complementary_cache
from vea_bench.results import ResultsStore, RunRecord
from vea_bench_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def comp_cache(tmp_path_factory) -> Path:
    return make_complementary_cache(tmp_path_factory.mktemp("comp") / "c.h5", n_train=600, n_val=300, n_test=400,
                                    dim=24, seed=1)


@pytest.fixture(scope="module")
def comp_data(comp_cache):
    with FeatureCache.open(comp_cache) as c:
        return load_head_data(c, need=("visual", "teacher", "vlm"))


# ----------------------------------------------------------------------------- KD loss

def test_kd_loss_golden_values():
    # row 1: p_t^2 = (3/4, 1/4), student uniform, y = 0; row 2: student = teacher = uniform, y = 1
    s = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[2 * math.log(3), 0.0], [0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    kl1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    kl, ce = kd_terms(s, t, y, 2.0)
    assert kl.item() == pytest.approx(kl1 / 2, abs=1e-12)
    assert ce.item() == pytest.approx(math.log(2), abs=1e-12)
    assert kd_loss(s, t, y, 0.5, 2.0).item() == pytest.approx(0.5 * 4 * kl1 / 2 + 0.5 * math.log(2), abs=1e-12)
    assert kd_loss(s, t, y, 0.5, 2.0).item() == pytest.approx(0.477386, abs=1e-6)


def test_kd_loss_alpha_limits_and_members():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    y = torch.randint(0, 8, (2, 5), generator=g)
    ce = torch.nn.functional.cross_entropy(s[0], y[0])
    kl = torch.nn.functional.kl_div(torch.log_softmax(s[0] / 3, -1), torch.log_softmax(t[0] / 3, -1),
                                    reduction="batchmean", log_target=True)
    assert torch.allclose(kd_loss(s[0], t[0], y[0], 0.0, 3.0), ce)          # alpha = 0: plain CE
    assert torch.allclose(kd_loss(s[0], t[0], y[0], 1.0, 3.0), 9 * kl)      # alpha = 1: tau^2 KL only
    per = kd_loss(s, t, y, torch.tensor([0.0, 1.0]), torch.tensor([3.0, 3.0]))
    assert per.shape == (2,)
    assert torch.allclose(per[0], ce)


# ----------------------------------------------------------------------------- heads and gates

SPEC_DISTILL = {
    1: (3_679_240, 3_677_190), 2: (4_199_944, 4_198_918), 3: (4_329_224, 4_328_710),
    4: (4_361_096, 4_360_838), 5: (4_368_840, 4_368_710),
}


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_distill_head_params_match_spec(depth):
    with torch.device("meta"):
        n8 = count_params(build_distill_head(3584, 8, depth=depth))
        n6 = count_params(build_distill_head(3584, 6, depth=depth))
    assert (n8, n6) == SPEC_DISTILL[depth]


def test_concat_gate_params_match_spec():
    assert count_params(build_gate("concat", 8)) == 136
    assert gate_display_name("concat") == "Concat & Linear"


def test_distill_head_layout():
    head = build_distill_head(16, 8, depth=2)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert [m.out_features for m in head if isinstance(m, torch.nn.Linear)] == [1024, 512, 8]
    with pytest.raises(ConfigError):
        build_distill_head(16, 8, depth=6)


def test_effective_lr_and_reference_schedule():
    from vea_bench.heads.pipeline import apply_schedule, effective_lr

    assert effective_lr(1e-5, 256, "sqrt") == pytest.approx(1.6e-4)
    assert effective_lr(1e-5, 1, "sqrt") == 1e-5 and effective_lr(1e-5, 8, "linear") == pytest.approx(8e-5)
    ref = apply_schedule(DistillConfig(schedule="reference", batch_size=64), "distill")
    assert (ref.batch_size, ref.lr, ref.effective_lr, ref.epochs, ref.keep) == (1, 1e-5, 1e-5, 5, "last")
    g = apply_schedule(GateConfig(schedule="reference"), "gate")
    assert (g.batch_size, g.lr, g.epochs, g.gate_fit) == (1, 1e-4, 10, "train")
    with pytest.raises(ConfigError):
        apply_schedule(DistillConfig(schedule="reference"), "distill", explicit={"batch_size": 8})


PAPER_GATES = {"concat": "Concat & Linear", "moe": "MoE", "bilinear": "Bilinear", "dynamic": "DynamicWeighting",
               "crossgating": "CrossGating"}


def test_paper_gates_registered_with_paper_names():
    # the paper's five are there under their Table 4 names; a sixth gate may follow them
    assert GATES.names()[:len(PAPER_GATES)] == list(PAPER_GATES)
    assert {n: gate_display_name(n) for n in PAPER_GATES} == PAPER_GATES
    assert all(getattr(GATES.get(n), "display_name", "") for n in GATES.names())   # every gate names its row
    assert GATES.canonical("Concat & Linear") == "concat" and GATES.canonical("cross") == "crossgating"


@pytest.mark.parametrize("name", GATES.names())
@pytest.mark.parametrize("c", [2, 6, 8])
def test_gate_forward_shapes_and_gradients(name, c):
    torch.manual_seed(0)
    gate = build_gate(name, c)
    v1 = torch.randn(5, c)
    v2 = torch.eye(c)[torch.randint(0, c, (5,))]
    out = gate(v1, v2)
    assert out.shape == (5, c) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in gate.parameters())


def test_gate_architectures_follow_spec():
    moe = build_gate("moe", 8)
    assert len(moe.experts) == 3 and moe.router.out_features == 3 and moe.experts[0].in_features == 16
    bil = build_gate("bilinear", 8)
    assert tuple(bil.bilinear.weight.shape) == (8, 8, 8)
    x1, x2 = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.allclose(bil(x1, x2), bil.fc(bil.bilinear(x1, x2)), atol=1e-5)
    dyn = build_gate("dynamic", 8)
    assert dyn.weigher.out_features == 2 and dyn.fc.in_features == 8


# ----------------------------------------------------------------------------- grids

def test_parse_grid():
    assert parse_grid("0:1:0.1") == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert 0.3 in parse_grid("0:1:0.1") and 0.7 in parse_grid("0:1:0.1")
    assert parse_grid("0,1,2", int) == [0, 1, 2]
    assert parse_grid("1:5:1", int) == [1, 2, 3, 4, 5]
    assert parse_grid("0:0.2:0.1,0.5,0.1") == [0.0, 0.1, 0.2, 0.5]
    assert parse_grid("1e-5,1e-3") == [1e-5, 1e-3]
    for bad in ("", "a", "0:1", "0:1:0", "1:0:0.1", "0:1:-1", "1,,2"):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    with pytest.raises(ConfigError):
        parse_grid("0.5", int)
    assert parse_names("concat,Cross,MoE") == ["concat", "crossgating", "moe"]


# ----------------------------------------------------------------------------- trainer

def test_batched_members_equal_single_runs_and_are_deterministic(comp_data):
    cfgs = [DistillConfig(seed=s, alpha=a, lr=1e-3, epochs=2, min_steps=0, batch_size=64, lr_scaling="none") for s, a in [(0, 0.0), (1, 0.5), (0, 1.0)]]
    together = train_distill(comp_data, cfgs)
    for cfg, r in zip(cfgs, together):
        alone = train_distill(comp_data, [cfg])[0]
        for k, v in r.state.items():
            assert torch.allclose(v, alone.state[k], atol=1e-6), k
        for s in ("val", "test"):
            assert np.allclose(r.logits[s], alone.logits[s], atol=1e-5)
    again = train_distill(comp_data, cfgs[:1])[0]
    assert all(torch.equal(v, again.state[k]) for k, v in train_distill(comp_data, cfgs[:1])[0].state.items())
    # different seeds give different heads
    assert not torch.equal(together[0].state["0.weight"], together[1].state["0.weight"])


def test_keep_best_selects_on_val(comp_data):
    cfg = DistillConfig(seed=0, lr=1e-3, epochs=3, batch_size=64, keep="best", lr_scaling="none", min_steps=0)
    r = train_distill(comp_data, [cfg])[0]
    assert 1 <= r.best_epoch <= 3
    r2 = train_distill(comp_data, [replace(cfg, epochs=r.best_epoch)])[0]
    assert np.allclose(r.logits["val"], r2.logits["val"], atol=1e-5)


def test_concat_gate_beats_both_sources_on_synthetic_cache(comp_data):
    dist = train_distill(comp_data, [DistillConfig(seed=0, lr=1e-3, batch_size=32, lr_scaling="none")],
                         eval_splits=["train", "val", "test"])
    v1 = gate_inputs(comp_data, dist, "train", 5, device="cpu", progress=None)
    gate = train_gates(comp_data, [GateConfig(gate="concat", seed=0, lr=1e-2, batch_size=32, lr_scaling="none")], v1)[0]
    te = comp_data.splits["test"]
    vlm_acc = float(((te.vlm.sum(1) > 0) & (te.vlm.argmax(1) == te.y)).mean())
    teacher_acc = float((te.teacher.argmax(1) == te.y).mean())
    distill_acc = dist[0].metrics["test"]["accuracy"]
    gate_acc = gate.metrics["test"]["accuracy"]
    assert gate_acc >= max(vlm_acc, teacher_acc, distill_acc) + 0.05, (gate_acc, vlm_acc, teacher_acc, distill_acc)


@pytest.mark.parametrize("fit", ["val", "crossfit"])
def test_honest_gate_fits_train_and_differ(comp_data, fit):
    dist = train_distill(comp_data, [DistillConfig(seed=0, lr=1e-3, epochs=2, min_steps=0, batch_size=64, lr_scaling="none")],
                         eval_splits=["train", "val", "test"])
    v1 = gate_inputs(comp_data, dist, fit, 3, device="cpu", progress=None)
    if fit == "crossfit":
        assert not np.allclose(v1[0]["train"], dist[0].logits["train"])   # out-of-fold, not in-sample
        assert np.allclose(v1[0]["test"], dist[0].logits["test"])
    g = train_gates(comp_data, [GateConfig(seed=0, lr=1e-2, gate_fit=fit, folds=3, batch_size=32, lr_scaling="none")], v1)[0]
    assert g.metrics["test"]["accuracy"] > 0.5


@pytest.fixture(scope="module")
def comp_distill(comp_data):
    return train_distill(comp_data, [DistillConfig(seed=0, lr=1e-3, epochs=1, min_steps=0, batch_size=64, lr_scaling="none")],
                         eval_splits=["train", "val", "test"])[0]


@pytest.mark.parametrize("name", GATES.names())
def test_every_gate_trains_batched_and_learns(comp_data, comp_distill, name):
    """Every registered gate: two seeds batched, each as it would train alone, well above chance."""
    cfgs = [GateConfig(gate=name, seed=s, lr=1e-2, epochs=10, batch_size=64, lr_scaling="none") for s in (0, 1)]
    res = train_gates(comp_data, cfgs, [comp_distill.logits] * len(cfgs))
    n_test = len(comp_data.splits["test"])
    for r in res:
        assert r.logits["test"].shape == (n_test, 8) and np.isfinite(r.logits["test"]).all()
        assert r.params == count_params(build_gate(name, 8))
        assert r.metrics["test"]["accuracy"] > 0.4, r.metrics["test"]["accuracy"]   # chance is 1/8
    alone = train_gates(comp_data, cfgs[1:], [comp_distill.logits])[0]
    for k, v in res[1].state.items():
        assert torch.allclose(v, alone.state[k], atol=1e-6), k
    assert any(not torch.equal(v, res[0].state[k]) for k, v in res[1].state.items())   # seeds differ


def test_distill_vector_is_the_log_softmax_and_ignores_a_constant():
    x = np.array([[2.0, 0.0, -1.0], [100.0, 100.0, 100.0]], dtype=np.float32)
    lp = distill_vector(x, "logprobs")
    assert np.allclose(np.exp(lp).sum(1), 1.0, atol=1e-6)
    assert np.allclose(lp[1], np.log(1 / 3), atol=1e-5)            # no overflow at large logits
    assert np.allclose(lp[0], torch.log_softmax(torch.from_numpy(x[0]), -1).numpy(), atol=1e-6)
    assert np.allclose(distill_vector(x + 7.5, "logprobs"), lp, atol=1e-5)
    assert np.array_equal(distill_vector(x, "logits"), x)


@pytest.mark.parametrize("name", GATES.names())
def test_default_gate_does_not_depend_on_the_distill_logits_constant(comp_data, comp_distill, name):
    """Softmax ignores a constant added to the distill logits, so the default gate must too (Bilinear did not)."""
    cfg = GateConfig(gate=name, seed=0, lr=1e-2, epochs=5, batch_size=64, lr_scaling="none")
    shifted = {k: v - 3.0 for k, v in comp_distill.logits.items()}
    a, b = train_gates(comp_data, [cfg, cfg], [comp_distill.logits, shifted])
    assert np.allclose(a.logits["test"], b.logits["test"], atol=1e-4)
    raw = replace(cfg, distill_input="logits")
    c, d = train_gates(comp_data, [raw, raw], [comp_distill.logits, shifted])
    assert c.config.distill_input == "logits"
    if name != "concat":      # Concat & Linear absorbs a constant in its bias; the others read it
        assert not np.allclose(c.logits["test"], d.logits["test"], atol=1e-4)


def test_reference_schedule_feeds_gates_raw_logits():
    from vea_bench.heads.config import make_config

    assert make_config("gate", {}).distill_input == "logprobs"
    assert make_config("gate", {"schedule": "reference"}).distill_input == "logits"
    with pytest.raises(ConfigError, match="pins distill-input"):
        make_config("gate", {"schedule": "reference", "distill_input": "logprobs"})
    with pytest.raises(ConfigError, match="unknown --distill-input"):
        make_config("gate", {"distill_input": "probs"})
    with pytest.raises(ConfigError, match="unknown --early-stop"):
        make_config("distill", {"early_stop": "loss"})


def test_smoothed_early_stop_reads_a_moving_average_of_val_accuracy():
    """Under smoothed-acc a one-epoch spike in val accuracy neither wins the kept epoch nor stops a run that
    keeps improving on average; under val-loss it is kept and three flat epochs after it stop the run."""
    from vea_bench.heads.trainer import SMOOTHING, MemberSelection

    accs = [0.50, 0.52, 0.70, 0.53, 0.60, 0.62, 0.63, 0.63, 0.62, 0.62, 0.62]
    w = [torch.zeros(1, 1)]
    kept = {}
    for signal in ("val-loss", "smoothed-acc"):
        sel = MemberSelection(w, 1, keep="best", patience=3, min_delta=1e-4, epochs=len(accs), select_split="val",
                              signal=signal)
        for e, a in enumerate(accs, 1):
            stopped = sel.observe(e, type("M", (), {"params": w})(), [1.0], ([a], [1.0]))
            if stopped:
                break
        kept[signal] = (sel.history[0].best_val_epoch, e)
    assert kept["val-loss"] == (3, 6)         # the spike is kept; three flat epochs after it stop the run
    ema, best, best_e = None, -1.0, 0
    for e, a in enumerate(accs, 1):
        ema = a if ema is None else SMOOTHING * ema + (1 - SMOOTHING) * a
        if ema > best + 1e-12:
            best, best_e = ema, e
    assert kept["smoothed-acc"] == (best_e, len(accs)) and best_e > 6   # still rising: no early stop
    with pytest.raises(ConfigError, match="unknown --early-stop"):
        MemberSelection(w, 1, keep="best", patience=3, min_delta=0.0, epochs=3, select_split="val", signal="x")


# ----------------------------------------------------------------------------- CLI and records

def _one_line_error(res) -> str:
    assert res.exit_code != 0, res.output
    err = res.stderr.strip()
    assert "Traceback" not in res.output and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_distill_and_gate_write_records_and_weights(comp_cache, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "res"
    r = runner.invoke(app, ["train", "distill", "--cache", str(comp_cache), "--lr", "1e-3", "--epochs", "2",
                            "--device", "cpu", "--results", str(out), "--quiet"])
    assert r.exit_code == 0, r.output + r.stderr
    rec = RunRecord.load(r.stdout.strip().splitlines()[-1])
    assert rec.kind == "distill" and rec.method == "distill" and rec.seed == 0
    for key in ("depth", "hidden_dims", "alpha", "tau", "lr", "epochs", "batch_size", "schedule", "visual", "teacher"):
        assert key in rec.config
    assert rec.config["hidden_dims"] == [1024] and rec.params == count_params(build_distill_head(24, 8))
    for split in ("val", "test"):
        m = rec.metrics[split]
        assert 0 <= m["accuracy"] <= 1 and m["macro_f1"] is not None and m["kl_to_teacher"] is not None
        assert len(m["confusion"]) == 8 and set(m["per_class"]) == set(rec.label_names)
    assert rec.cache["path"] == str(comp_cache) and "visual/synthetic" in rec.cache["sources"]
    head = build_distill_head(24, 8)
    head.load_state_dict(load_file(rec.artifacts["distill"]))
    assert json.loads(Path(rec.artifacts["config"]).read_text())["distill"]["hidden_dims"] == [1024]

    g = runner.invoke(app, ["train", "gate", "--cache", str(comp_cache), "--distill", rec.run_id, "--lr", "1e-2",
                            "--gate-fit", "val", "--device", "cpu", "--results", str(out), "--quiet"])
    assert g.exit_code == 0, g.output + g.stderr
    grec = RunRecord.load(g.stdout.strip().splitlines()[-1])
    assert grec.kind == "gate" and grec.method == "EmoVLM-KD"
    assert (grec.config["gate"], grec.config["gate_fit"], grec.config["vlm_input"]) == ("concat", "val", "onehot")
    assert grec.config["distill_run"] == rec.run_id and grec.params == 136
    assert set(load_file(grec.artifacts["gate"])) == {"fc.weight", "fc.bias"}
    records, bad = ResultsStore(out).scan()
    assert not bad and {x.kind for _, x in records} == {"distill", "gate"}


def test_cli_gate_logprobs_and_reference_schedule_pins(comp_cache, tmp_path):
    r = runner.invoke(app, ["train", "gate", "--cache", str(comp_cache), "--gate", "moe", "--vlm-input", "logprobs",
                            "--distill-lr", "1e-3", "--distill-epochs", "1", "--epochs", "1", "--device", "cpu",
                            "--results", str(tmp_path), "--quiet"])
    assert r.exit_code == 0, r.output + r.stderr
    rec = RunRecord.load(r.stdout.strip().splitlines()[-1])
    assert rec.config["vlm_input"] == "logprobs" and rec.config["gate"] == "moe"
    bad = runner.invoke(app, ["train", "distill", "--cache", str(comp_cache), "--schedule", "reference",
                              "--batch-size", "8", "--results", str(tmp_path)])
    assert "pins batch-size" in _one_line_error(bad)


@pytest.mark.parametrize("case,args,expect", [
    ("no-teacher", ["train", "distill"], "no teacher source"),
    ("teacher-width", ["train", "distill"], "another label space"),
    ("nan", ["train", "distill"], "NaN"),
    ("vlm-width", ["train", "gate"], "another label space"),
    ("no-vlm", ["train", "gate"], "no vlm source"),
    ("ok", ["train", "gate", "--gate", "concatt"], "did you mean 'concat'"),
    ("ok", ["train", "gate", "--gate-fit", "test"], "unknown --gate-fit"),
    ("ok", ["train", "gate", "--vlm-input", "logprobs"], "score mode"),
    ("ok", ["train", "distill", "--depth", "7"], "depth must be 1..5"),
    ("ok", ["train", "distill", "--teacher", "nope"], "no teacher source 'nope'"),
    ("ok", ["sweep", "alpha", "--alphas", "0:1"], "start:stop:step"),
    ("ok", ["sweep", "gate", "--gates", "concat,mooe"], "did you mean 'moe'"),
    ("ok", ["train", "gate", "--distill", "no-such-run"], "no saved distill head"),
])
def test_cli_bad_input_is_one_line(tmp_path, case, args, expect):
    kw = {"no-teacher": dict(with_teacher=False), "teacher-width": dict(teacher_width=6), "nan": dict(nan_row=3),
          "vlm-width": dict(vlm_width=6), "no-vlm": dict(with_vlm=False), "ok": {}}[case]
    cache = tiny_cache(tmp_path / "c.h5", **kw)
    res = runner.invoke(app, [*args, "--cache", str(cache), "--device", "cpu", "--results", str(tmp_path / "r")])
    assert expect in _one_line_error(res)


def test_cli_missing_cache_file(tmp_path):
    res = runner.invoke(app, ["train", "distill", "--cache", str(tmp_path / "none.h5")])
    assert "no cache file" in _one_line_error(res)
