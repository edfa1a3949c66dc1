"""Stored per-image predictions, `vea-bench compare`, and the tables' intervals and significance marks."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from test_stats import exact_mcnemar_by_hand, planted
from vea_bench.labels import MIKELS8
from vea_bench.metrics import split_metrics
from vea_bench.results import ResultsStore, RunRecord, from_scores, load_for, read_predictions
from vea_bench.report.compare import annotate_tables
from vea_bench.report.tables import build_tables, load_results
from vea_bench_cli.main import app

runner = CliRunner()
NAMES = list(MIKELS8.labels)
ENV = {"versions": {}, "python": "3.11", "platform": "test", "git": None, "device": "cpu"}


def save_run(root: Path, kind: str, method: str, config: dict, y: np.ndarray, pred: np.ndarray, *,
             seed: int | None = 0, group: str | None = None, manifest: str = "m-test", rows: np.ndarray | None = None,
             logits: np.ndarray | None = None) -> RunRecord:
    """A record whose metrics and stored predictions both come from ``pred`` (as real runs write them)."""
    scores = logits if logits is not None else np.eye(len(NAMES))[pred] * 4.0
    m = split_metrics(y, scores, NAMES)
    rec = RunRecord(kind=kind, method=method, dataset="fi", config={**config, "seed": seed}, metrics={"test": asdict(m)},
                    seed=seed, group=group, label_names=NAMES, environment=ENV,
                    cache={"path": "", "manifest_hashes": {"test": manifest}})
    ResultsStore(root).save(rec, predictions={"test": from_scores(y, scores, rows, logits=True)})
    return rec


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, RunRecord, RunRecord, tuple]:
    y, a, b = planted(100, 40, 20, 40, classes=8)
    ra = save_run(tmp_path, "gate", "EmoVLM-KD", {"gate": "concat"}, y, a)
    rb = save_run(tmp_path, "distill", "distill", {"depth": 1, "alpha": 0.5}, y, b)
    return tmp_path, ra, rb, (y, a, b)


def test_predictions_are_stored_beside_the_record_without_pickle(pair) -> None:
    root, ra, _, (y, a, _) = pair
    path = root / "artifacts" / ra.run_id / "predictions.safetensors"
    saved = json.loads((root / "gate" / f"{ra.run_id}.json").read_text())
    assert saved["artifacts"]["predictions"] == str(path) and path.is_file()
    preds, meta = read_predictions(path)
    assert meta["run_id"] == ra.run_id and meta["manifest_hashes"] == {"test": "m-test"}
    p = preds["test"]
    assert np.array_equal(p.y, y) and np.array_equal(p.pred, a) and np.array_equal(p.rows, np.arange(len(y)))
    assert p.prob.shape == (len(y), 8) and np.allclose(p.prob.sum(1), 1, atol=1e-2)
    assert load_for(RunRecord.load(root / "gate" / f"{ra.run_id}.json"), root).pred.tolist() == a.tolist()


def test_compare_prints_difference_interval_and_mcnemar_p(pair) -> None:
    root, ra, rb, _ = pair
    res = runner.invoke(app, ["compare", ra.run_id, rb.run_id[:-2], "-r", str(root)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "difference A - B: +10.00 pp" in out
    assert f"McNemar exact p = {exact_mcnemar_by_hand(40, 20):.4g}" in out
    assert "only A right 40, only B right 20" in out
    lo, hi = (float(x) for x in out.split("seed 0) [")[1].split("]")[0].split(", "))
    assert 0 < lo < 10 < hi


def test_compare_groups_gives_the_seed_t_interval(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 150)
    for s in (0, 1, 2):
        good = np.where(rng.random(150) < 0.8, y, (y + 1) % 8)
        bad = np.where(rng.random(150) < 0.6, y, (y + 2) % 8)
        save_run(tmp_path, "gate", "EmoVLM-KD", {"gate": "concat"}, y, good, seed=s, group="g-gate")
        save_run(tmp_path, "distill", "distill", {"depth": 1}, y, bad, seed=s, group="g-distill")
    res = runner.invoke(app, ["compare", "g-gate", "g-distill", "-r", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "across 3 seed pairs: mean difference +" in res.output and "95% t interval" in res.output
    assert res.output.count("McNemar exact p") == 3


def test_compare_errors_are_one_line(pair, tmp_path: Path) -> None:
    root, ra, rb, (y, a, b) = pair
    res = runner.invoke(app, ["compare", ra.run_id, "nope", "-r", str(root)])
    assert res.exit_code != 0 and "no run or group 'nope'" in res.output and "Traceback" not in res.output
    other = save_run(root, "baseline", "teacher", {"source": "t"}, y, b, manifest="m-other")
    res = runner.invoke(app, ["compare", ra.run_id, other.run_id, "-r", str(root)])
    assert res.exit_code != 0 and "not tested on the same images" in res.output
    fewer = save_run(root, "baseline", "probe", {"source": "p"}, y[:-1], b[:-1], rows=np.arange(len(y) - 1))
    res = runner.invoke(app, ["compare", ra.run_id, fewer.run_id, "-r", str(root)])
    assert res.exit_code != 0 and "differ in their test rows" in res.output
    res = runner.invoke(app, ["compare", ra.run_id, rb.run_id, "-r", str(root), "--method", "bogus"])
    assert res.exit_code != 0 and "unknown interval method" in res.output


def test_table_marks_best_and_rows_not_significantly_different(tmp_path: Path) -> None:
    y, best, close = planted(150, 6, 4, 40, classes=8, seed=1)      # best vs close: McNemar p ~ 0.75
    save_run(tmp_path, "baseline", "ensemble", {"w": 1}, y, best)
    save_run(tmp_path, "baseline", "oracle", {"w": 2}, y, close)
    save_run(tmp_path, "baseline", "teacher", {"w": 3}, y, np.where(np.random.default_rng(2).random(len(y)) < 0.3, y, (y + 1) % 8))
    res = load_results(tmp_path)
    tables = build_tables(res, "ext")
    annotate_tables(tables, res, ci=True, marks=True, n_resamples=300)
    t = tables[0]
    cells = {r.label: r.cells["fi"] for r in t.rows}
    assert cells["baseline ensemble"].mark == "best"
    assert cells["baseline oracle"].mark == "tie"
    assert cells["baseline teacher"].mark == ""
    lo, hi = cells["baseline ensemble"].ci
    assert lo < cells["baseline ensemble"].value < hi
    out = runner.invoke(app, ["table", "-t", "ext", "-f", "md", "--ci", "--significance", "-r", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "▲" in out.output and "≈" in out.output and "Holm" in out.output
    csv_out = runner.invoke(app, ["table", "-t", "ext", "-f", "csv", "--ci", "--significance", "-r", str(tmp_path)])
    assert csv_out.exit_code == 0 and csv_out.output.splitlines()[0].endswith("ci_low,ci_high,mark")
    assert any(line.endswith(",best") for line in csv_out.output.splitlines())
    bad = runner.invoke(app, ["table", "--ci", "--split", "val", "-r", str(tmp_path)])
    assert bad.exit_code != 0 and "stored test predictions" in bad.output


def test_report_command_errors_are_one_line(pair, tmp_path: Path) -> None:
    root = pair[0]
    empty = runner.invoke(app, ["report", "--out", str(tmp_path / "r"), "-r", str(tmp_path / "none")])
    assert empty.exit_code != 0 and "vea-bench demo" in empty.output and "Traceback" not in empty.output
    wrong = runner.invoke(app, ["report", "--out", str(tmp_path / "r"), "-r", str(root), "--dataset", "emoset"])
    assert wrong.exit_code != 0 and "no run on dataset 'emoset'" in wrong.output
    gate = runner.invoke(app, ["report", "--out", str(tmp_path / "r"), "-r", str(root), "--gate", "moe"])
    assert gate.exit_code != 0 and "no 'moe' gate run on fi" in gate.output
