"""Cache baselines: each source alone, probes, ensemble, oracle and the Figure 1 counts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests._heads_helpers import tiny_cache
from vea_bench.cache.store import FeatureCache
from vea_bench.heads.baselines import complementarity_counts, ensemble_scores, oracle_predictions, pick_ensemble_weight
from vea_bench.heads.synthetic_cache import make_complementary_cache
from vea_bench.results import ResultsStore
from vea_bench_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_complementary_cache(tmp_path_factory.mktemp("base") / "c.h5", n_train=400, n_val=200, n_test=200,
                                    dim=16, seed=5)


def test_counts_oracle_and_ensemble_by_hand():
    y = np.array([0, 1, 2, 0])
    teacher = np.array([0, 1, 0, 1])                # right on rows 0, 1
    vlm = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=np.float32)   # right on 0, 2; row 3 unparsed
    assert complementarity_counts(y, teacher, vlm) == {"teacher_only": 1, "vlm_only": 1, "both": 1, "neither": 1}
    assert oracle_predictions(y, teacher, vlm).tolist() == [0, 1, 2, 1]
    logits = np.log(np.array([[0.6, 0.3, 0.1]] * 4))
    assert ensemble_scores(logits, vlm, 1.0).argmax(1).tolist() == [0, 0, 0, 0]
    assert ensemble_scores(logits, vlm, 0.0)[1].argmax() == 2
    # Rows 0 and 3 are right for every weight; row 2 only while the VLM's vote outweighs the
    # teacher's (w < 2/3): the best accuracy starts at w = 0 and the first of ties is taken.
    assert pick_ensemble_weight(y, logits, vlm) == 0.0
    # Teacher right everywhere, VLM wrong everywhere: the teacher wins a row once
    # 0.6 w > 0.3 w + (1 - w), i.e. w > 1/1.3, so the first grid weight above it, 0.8, is picked.
    wrong = np.array([[0, 1, 0]] * 4, dtype=np.float32)
    assert pick_ensemble_weight(np.zeros(4, dtype=np.int64), logits, wrong) == 0.8
    assert pick_ensemble_weight(np.zeros(4, dtype=np.int64), logits, wrong, grid=(0.0, 0.5, 1.0)) == 1.0


def test_baselines_command_writes_all_records(cache, tmp_path):
    out = tmp_path / "r"
    d = runner.invoke(app, ["train", "distill", "--cache", str(cache), "--lr", "1e-3", "--epochs", "1", "--device",
                            "cpu", "--results", str(out), "--quiet"])
    assert d.exit_code == 0, d.output + d.stderr
    run_id = Path(d.stdout.strip()).stem
    res = runner.invoke(app, ["baselines", "--cache", str(cache), "--distill", run_id, "--results", str(out),
                              "--probe-iters", "30"])
    assert res.exit_code == 0, res.output + res.stderr
    records = {r.method: r for _, r in ResultsStore(out).scan()[0] if r.kind in ("baseline", "complementarity")}
    vlm_eval = [r for _, r in ResultsStore(out).scan()[0] if r.kind == "vlm-eval"]
    assert len(vlm_eval) == 1 and vlm_eval[0].method == "VLM" and vlm_eval[0].config["tuned"] is False
    records["vlm"] = vlm_eval[0]  # the VLM alone: Table 1's VLM rows and Table 2's row (1)
    assert set(records) == {"vlm", "teacher", "distill", "probe:visual/synthetic", "probe:backbone/vit", "ensemble",
                            "oracle", "complementarity"}
    with FeatureCache.open(cache) as c:
        y = c.labels("test")
        onehot = c.read("vlm", None, "test", ["onehot"])["onehot"]
        logits = c.read("teacher", None, "test", ["logits"])["logits"]
    vlm_ok = (onehot.sum(1) > 0) & (onehot.argmax(1) == y)
    t_ok = logits.argmax(1) == y
    assert records["vlm"].metrics["test"]["accuracy"] == pytest.approx(vlm_ok.mean())
    assert records["teacher"].metrics["test"]["accuracy"] == pytest.approx(t_ok.mean())
    assert records["oracle"].metrics["test"]["accuracy"] == pytest.approx((vlm_ok | t_ok).mean())
    counts = records["complementarity"].metrics["test"]["extra"]
    assert counts == {"teacher_only": int((t_ok & ~vlm_ok).sum()), "vlm_only": int((vlm_ok & ~t_ok).sum()),
                      "both": int((t_ok & vlm_ok).sum()), "neither": int((~t_ok & ~vlm_ok).sum())}
    # the embedding carries the class on the teacher's part: its probe learns well above chance
    assert records["probe:visual/synthetic"].metrics["test"]["accuracy"] > 0.4
    assert records["probe:visual/synthetic"].config["solver"] == "lbfgs-softmax-regression"
    # The ensemble's weight is the brute-force best on val (first of ties), recomputed here.
    ens = records["ensemble"]
    assert ens.config["weight_picked_on"] == "val" and ens.config["vlm_input"] == "onehot"

    def ensemble_acc(split: str, w: float) -> float:
        with FeatureCache.open(cache) as c:
            yy = c.labels(split)
            oh = c.read("vlm", None, split, ["onehot"])["onehot"].astype(np.float64)
            lg = c.read("teacher", None, split, ["logits"])["logits"].astype(np.float64)
        p = np.exp(lg - lg.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return float(((w * p + (1 - w) * oh).argmax(1) == yy).mean())

    grid = [round(0.05 * k, 2) for k in range(21)]
    val_accs = [ensemble_acc("val", w) for w in grid]
    assert ens.config["teacher_weight"] == grid[int(np.argmax(val_accs))]
    assert ens.metrics["test"]["accuracy"] == pytest.approx(ensemble_acc("test", ens.config["teacher_weight"]))
    assert records["distill"].config["distill_run"] == run_id


def test_baselines_skip_absent_sources_and_refuse_empty(tmp_path):
    cache = tiny_cache(tmp_path / "c.h5", with_teacher=False)
    res = runner.invoke(app, ["baselines", "--cache", str(cache), "--results", str(tmp_path / "r"), "--only",
                              "vlm,ensemble"])
    assert res.exit_code == 0, res.output + res.stderr
    assert "skipped" in res.stdout and "ensemble" in res.stdout
    bad = runner.invoke(app, ["baselines", "--cache", str(cache), "--results", str(tmp_path / "r"), "--only",
                              "teacher"])
    assert bad.exit_code != 0 and len(bad.stderr.strip().splitlines()) == 1 and "no baseline" in bad.stderr
    bad2 = runner.invoke(app, ["baselines", "--cache", str(cache), "--only", "nope"])
    assert bad2.exit_code != 0 and "unknown baseline" in bad2.stderr
