"""The results store: one layout for records, weights and predictions, written atomically, read back by id.

Old results folders must keep reading: a folder written by hand in the layout (and JSON) of the
first stored results, moved away from where its records say their files are, still lists, renders
and pairs its predictions.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vea_bench.errors import ConfigError
from vea_bench.labels import MIKELS8
from vea_bench.metrics import split_metrics
from vea_bench.results import ResultsStore, RunOutput, RunRecord, from_scores
from vea_bench_cli.main import app

runner = CliRunner()
NAMES = list(MIKELS8.labels)
ENV = {"versions": {}, "python": "3.11", "platform": "test", "git": None, "device": "cpu"}


def _run(kind: str = "distill", seed: int = 0, n: int = 50) -> tuple[RunRecord, dict]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, n)
    logits = rng.standard_normal((n, 8)) + 3 * np.eye(8)[y]
    m = split_metrics(y, logits, NAMES)
    rec = RunRecord(kind=kind, method="distill", dataset="fi", config={"depth": 1, "alpha": 0.5, "seed": seed},
                    metrics={"test": asdict(m)}, seed=seed, label_names=NAMES, environment=ENV,
                    cache={"manifest_hashes": {"test": "m-test"}})
    return rec, {"test": from_scores(y, logits, None, logits=True), "val": from_scores(y, logits, None, logits=True)}


def test_save_writes_weights_predictions_and_the_record_in_one_layout(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    rec, preds = _run()
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    path = store.save(rec, weights={"distill": state}, weights_config={"run_id": rec.run_id, "arch": {"in": 3}},
                      predictions=preds)
    art = tmp_path / "artifacts" / rec.run_id
    assert path == tmp_path / "distill" / f"{rec.run_id}.json" == store.record_path(rec)
    assert sorted(p.name for p in art.iterdir()) == ["config.json", "distill.safetensors", "predictions.safetensors"]
    saved = json.loads(path.read_text())
    assert saved["artifacts"] == {"distill": str(art / "distill.safetensors"), "config": str(art / "config.json"),
                                  "predictions": str(art / "predictions.safetensors")}
    assert not list(tmp_path.rglob("*.tmp"))
    # read back: by id, by path, by listing; weights; predictions (only the stored splits)
    assert store.load(rec.run_id).to_dict() == RunRecord.load(path).to_dict() == store.load(path).to_dict()
    assert [r.run_id for r in store.iter()] == [rec.run_id]
    w = store.weights(rec.run_id, "distill")
    assert w.meta == {"run_id": rec.run_id, "arch": {"in": 3}} and w.folder == art
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(w.path))["w"], state["w"])
    back = store.predictions(rec)
    assert np.array_equal(back.pred, preds["test"].pred) and np.array_equal(back.y, preds["test"].y)
    assert store.predictions(rec, "val") is None            # only test predictions are kept
    assert float(back.correct.mean()) == pytest.approx(rec.metrics["test"]["accuracy"])


def test_flat_save_save_all_and_missing_runs(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    rec, preds = _run()
    assert store.save(rec, flat=True) == tmp_path / f"{rec.run_id}.json"
    assert store.find(rec.run_id) == tmp_path / f"{rec.run_id}.json"
    outs = [RunOutput(*_run("baseline", seed=s)) for s in (1, 2)]
    paths = store.save_all(outs)
    assert [p.parent.name for p in paths] == ["baseline", "baseline"]
    assert all(store.predictions(o.record) is not None for o in outs)
    with pytest.raises(ConfigError, match="no run 'nope'"):
        store.load("nope")
    with pytest.raises(ConfigError, match="no saved distill head at 'nope'"):
        store.weights("nope", "distill")


def test_a_failed_write_is_one_line_naming_the_path_and_leaves_no_record(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    rec, preds = _run()
    with pytest.raises(ConfigError) as ei:
        ResultsStore(blocker).save(rec, predictions=preds)
    msg = str(ei.value)
    assert "\n" not in msg and str(blocker) in msg
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_a_read_only_results_folder_is_one_line(tmp_path: Path) -> None:  # pragma: no cover - not root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError) as ei:
            ResultsStore(ro).save(_run()[0])
        assert "\n" not in str(ei.value) and str(ro) in str(ei.value)
    finally:
        ro.chmod(0o700)


def _old_folder(root: Path, elsewhere: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """A results folder as the first stored results wrote it, its files named at ``elsewhere`` (moved since)."""
    from safetensors.numpy import save_file

    run_id = "gate-fi-emovlm-kd-20250101-000000-abc123"
    rng = np.random.default_rng(1)
    y = rng.integers(0, 8, 40).astype(np.int16)
    pred = np.where(rng.random(40) < 0.7, y, (y + 1) % 8).astype(np.int16)
    acc = float((pred == y).mean())
    rec = {"kind": "gate", "method": "EmoVLM-KD", "dataset": "fi", "variant": "concat", "experiment_id": "e" * 16,
           "config": {"gate": "concat", "vlm_input": "onehot", "gate_fit": "train", "alpha": 0.5},
           "metrics": {"test": {"accuracy": acc, "macro_f1": None, "n": 40, "per_class": {}, "confusion": [],
                                "kl_to_teacher": None, "extra": {}}},
           "seed": 0, "params": 136, "group": None, "label_names": NAMES, "cache": {"manifest_hashes": {"test": "m"}},
           "artifacts": {"gate": str(elsewhere / "artifacts" / run_id / "gate.safetensors"),
                         "config": str(elsewhere / "artifacts" / run_id / "config.json"),
                         "predictions": str(elsewhere / "artifacts" / run_id / "predictions.safetensors")},
           "environment": ENV, "created_at": "2025-01-01T00:00:00+0000", "run_id": run_id, "wall_time_s": 1.0,
           "schema": "vea-bench/run-record/2", "convergence": None}
    (root / "gate").mkdir(parents=True)
    (root / "gate" / f"{run_id}.json").write_text(json.dumps(rec, indent=2))
    art = root / "artifacts" / run_id
    art.mkdir(parents=True)
    save_file({"test/rows": np.arange(40, dtype=np.int32), "test/y": y, "test/pred": pred},
              str(art / "predictions.safetensors"), metadata={"meta": json.dumps({"run_id": run_id})})
    save_file({"fc.weight": np.zeros((8, 16), np.float32)}, str(art / "gate.safetensors"))
    (art / "config.json").write_text(json.dumps({"run_id": run_id, "gate": {"name": "concat", "num_classes": 8}}))
    return run_id, y, pred


def test_an_old_results_folder_moved_elsewhere_still_reads(tmp_path: Path) -> None:
    run_id, y, pred = _old_folder(tmp_path / "old", tmp_path / "gone")
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "old"), moved)
    store = ResultsStore(moved)
    (rec,) = list(store.iter())
    assert rec.run_id == run_id and store.find(run_id) == moved / "gate" / f"{run_id}.json"
    p = store.predictions(rec)           # the named path is gone: found in its standard place
    assert p is not None and np.array_equal(p.pred, pred) and np.array_equal(p.y, y)
    assert store.weights(run_id, "gate").meta["gate"]["name"] == "concat"
    res = runner.invoke(app, ["table", "--results", str(moved), "--table", "4", "--format", "md"])
    assert res.exit_code == 0, res.output
    assert f"{(pred == y).mean() * 100:.2f}" in res.stdout
    res = runner.invoke(app, ["table", "--results", str(moved), "--table", "4", "--format", "md", "--ci"])
    assert res.exit_code == 0 and "[" in res.stdout, res.output   # the interval comes from the stored predictions
