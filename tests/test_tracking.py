"""Experiment trackers: a teacher and a gate run logged to W&B offline (read back from the run
folder's log) and to MLflow with a local SQLite store (read back with MLflow's client); a tracker
that fails mid-run costs a warning, never the run."""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

pytest.importorskip("wandb")
pytest.importorskip("mlflow")

from _tracking_helpers import offline_runs  # noqa: E402

from vea_bench.results import ResultsStore, RunRecord  # noqa: E402
from vea_bench.tracking import Tracker  # noqa: E402
from vea_bench_cli.main import app  # noqa: E402

runner = CliRunner()
EPOCHS, BATCH = 2, 10


def _invoke(*args: object):
    res = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "NO_COLOR": "1"})
    return res


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vea_bench.datasets.synthetic import make_synthetic

    return make_synthetic("imagefolder", tmp_path_factory.mktemp("track") / "data", per_class=5, size=32, seed=2,
                          label_space="binary")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vea_bench.heads.synthetic_cache import make_complementary_cache

    return make_complementary_cache(tmp_path_factory.mktemp("track-cache") / "c.h5", n_train=120, n_val=60,
                                    n_test=60, dim=16, seed=1)


def _train(images: Path, cache: Path, tmp: Path, tracker: str) -> tuple[RunRecord, list[RunRecord]]:
    """A tiny teacher and a gate (with its distill head), both through the CLI with ``--tracker``."""
    res = tmp / "results"
    t = _invoke("train", "teacher", "imagefolder", "--root", images, "--arch", "test_resnet", "--img-size", 32,
                "--random-init", "--epochs", EPOCHS, "--batch-size", BATCH, "--lr", "1e-3", "--device", "cpu",
                "--out", tmp / "teacher", "--results", res, "--tracker", tracker, "--quiet")
    assert t.exit_code == 0, t.output
    g = _invoke("train", "gate", "--cache", cache, "--lr", "1e-2", "--distill-epochs", 3, "--epochs", 3,
                "--device", "cpu", "--results", res, "--tracker", tracker, "--quiet")
    assert g.exit_code == 0, g.output
    recs = [r for _, r in ResultsStore(res).scan()[0]]
    teacher = next(r for r in recs if r.kind == "teacher")
    heads = sorted((r for r in recs if r.kind in ("distill", "gate")), key=lambda r: r.kind)
    assert [r.kind for r in heads] == ["distill", "gate"]
    return teacher, heads


def _teacher_steps(images: Path) -> int:
    from vea_bench.datasets import load_dataset

    return EPOCHS * math.ceil(len(load_dataset("imagefolder", images).split("train")) / BATCH)


def _numbers(metrics: dict[str, Any], split: str) -> dict[str, float]:
    return {f"{split}/{k}": float(v) for k, v in metrics[split].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_teacher_and_gate_log_to_wandb_offline(images: Path, cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "vea-bench-test")
    monkeypatch.chdir(tmp_path)
    teacher, heads = _train(images, cache, tmp_path, "wandb")
    runs = offline_runs(tmp_path)
    assert set(runs) == {"teacher-imagefolder-test_resnet", *(r.run_id for r in heads)}
    t = runs["teacher-imagefolder-test_resnet"]
    steps = [h for h in t.history if "train/loss" in h]
    assert [h["_step"] for h in steps] == list(range(_teacher_steps(images)))
    assert all(h["train/lr"] == pytest.approx(1e-3) and h["train/loss"] > 0 for h in steps)
    epochs = [h for h in t.history if "epoch/val_accuracy" in h]
    assert [h["epoch"] for h in epochs] == [1.0, 2.0]
    assert max(h["epoch/val_accuracy"] for h in epochs) == pytest.approx(teacher.metrics["val"]["accuracy"])
    for split in ("val", "test"):
        for key, value in _numbers(teacher.metrics, split).items():
            assert t.summary[key] == pytest.approx(value), key
    assert t.config["arch"] == "test_resnet" and t.config["run_id"] == teacher.run_id
    for rec in heads:
        run = runs[rec.run_id]
        assert run.summary["test/accuracy"] == pytest.approx(rec.metrics["test"]["accuracy"])
        assert run.summary["val/macro_f1"] == pytest.approx(rec.metrics["val"]["macro_f1"])
        curve = [h["epoch/val_accuracy"] for h in run.history if "epoch/val_accuracy" in h]
        assert curve == pytest.approx(rec.convergence["val_accuracy"]) and len(curve) == 3
        assert run.config["kind"] == rec.kind


def test_teacher_and_gate_log_to_mlflow_sqlite(images: Path, cache: Path, tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "fi-study")
    monkeypatch.chdir(tmp_path)
    teacher, heads = _train(images, cache, tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("fi-study")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"teacher-imagefolder-test_resnet", *(r.run_id for r in heads)}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    t = runs["teacher-imagefolder-test_resnet"]
    loss = client.get_metric_history(t.info.run_id, "train/loss")
    assert sorted(m.step for m in loss) == list(range(_teacher_steps(images)))
    lr = client.get_metric_history(t.info.run_id, "train/lr")
    assert len(lr) == len(loss) and all(m.value == pytest.approx(1e-3) for m in lr)
    val = client.get_metric_history(t.info.run_id, "epoch/val_accuracy")
    assert len(val) == EPOCHS and max(m.value for m in val) == pytest.approx(teacher.metrics["val"]["accuracy"])
    for split in ("val", "test"):
        for key, value in _numbers(teacher.metrics, split).items():
            assert t.data.metrics[key] == pytest.approx(value), key
    assert t.data.params["arch"] == "test_resnet" and t.data.params["run_id"] == teacher.run_id
    for rec in heads:
        run = runs[rec.run_id]
        for key, value in _numbers(rec.metrics, "test").items():
            assert run.data.metrics[key] == pytest.approx(value), key
        curve = sorted(client.get_metric_history(run.info.run_id, "epoch/val_accuracy"), key=lambda m: m.step)
        assert [m.value for m in curve] == pytest.approx(rec.convergence["val_accuracy"])
        assert run.data.params["kind"] == rec.kind


class _DiesOnItsThirdCall(Tracker):
    """A tracker whose backend breaks mid-run (a full disk, a dropped connection)."""

    name = "flaky"

    def _start(self, run_name: str, config: dict[str, Any], group: str | None) -> None:
        self.calls = 0

    def _log(self, metrics: dict[str, float], step: int) -> None:
        self.calls += 1
        if self.calls > 2:   # epoch 1: a step and the epoch; epoch 2: its first step
            raise OSError("No space left on device")

    def _summary(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        raise AssertionError("a disabled tracker is never called again")

    def _artifacts(self, name: str, paths: list[Path]) -> None:
        raise AssertionError("a disabled tracker is never called again")

    def _finish(self) -> None:
        return None


def test_a_tracker_failing_mid_run_costs_a_warning_not_the_run(images: Path, tmp_path: Path, caplog) -> None:
    from vea_bench.datasets import load_dataset
    from vea_bench.train.teacher import TeacherConfig, train_teacher

    index = load_dataset("imagefolder", images)
    cfg = {"arch": "test_resnet", "img_size": 32, "random_init": True, "batch_size": BATCH, "epochs": EPOCHS}
    flaky = _DiesOnItsThirdCall()
    flaky.start("teacher")
    with caplog.at_level(logging.WARNING, logger="vea_bench.tracking"):
        tracked = train_teacher(index, TeacherConfig(**cfg), tmp_path / "a", device="cpu", results_dir=None,
                                tracker=flaky)
        flaky.record(tracked.record)
    plain = train_teacher(index, TeacherConfig(**cfg), tmp_path / "b", device="cpu", results_dir=None)
    assert tracked.record.metrics == plain.record.metrics      # the tracker changed nothing
    warnings = [r.getMessage() for r in caplog.records if r.name == "vea_bench.tracking"]
    assert warnings == ["flaky tracker failed while logging a step (No space left on device); "
                        "the run goes on without it"]
    assert flaky.disabled and flaky.calls == 3


def test_unknown_tracker_and_missing_package_are_one_line(cache: Path, tmp_path: Path, monkeypatch) -> None:
    res = _invoke("train", "distill", "--cache", cache, "--epochs", 1, "--device", "cpu", "--results", tmp_path,
                  "--tracker", "tensorboardx")
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "tensorboardx" in res.stderr
    monkeypatch.setitem(sys.modules, "wandb", None)
    res = _invoke("train", "distill", "--cache", cache, "--epochs", 1, "--device", "cpu", "--results", tmp_path,
                  "--tracker", "wandb")
    assert res.exit_code != 0 and "vea-bench[wandb]" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_qlora_steps_and_the_reports_files_reach_mlflow(images: Path, tmp_path: Path, monkeypatch) -> None:
    """Stage 1 logs loss and lr every step; a pipeline's report stage uploads its tables and page."""
    import json

    from mlflow import MlflowClient

    from vea_bench.datasets import load_dataset
    from vea_bench.models.tiny import make_tiny
    from vea_bench.tracking import make_tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    vlm = make_tiny("qwen2-vl", tmp_path / "qwen", seed=0)
    index = load_dataset("imagefolder", images)
    rows = [{"img_path": s.path, "img": Path(s.path).name, "label": index.label_space.labels[s.label],
             "gpt_response": "1. Key elements\nA calm scene with bright shapes and a tree.\n\n"
                             "2. Reasoning\nThe shapes and colours make the viewer feel at ease."}
            for s in index.split("train")]
    (tmp_path / "inst.json").write_text(json.dumps(rows))
    r = _invoke("train", "vlm", "imagefolder", "--root", images, "--vlm", vlm, "--instructions", tmp_path / "inst.json",
                "--out", tmp_path / "q", "--quant", "none", "--device", "cpu", "--max-steps", 3, "--no-eval",
                "--results", tmp_path / "results", "--tracker", "mlflow", "--quiet")
    assert r.exit_code == 0, r.output
    rec = next(rec for _, rec in ResultsStore(tmp_path / "results").scan()[0] if rec.kind == "vlm")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("vea-bench")
    run = next(x for x in client.search_runs([exp.experiment_id]) if x.info.run_name == "qlora-imagefolder")
    loss = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in loss] == [1, 2, 3]
    assert loss[-1].value == pytest.approx(rec.config["train_loss_last"])
    assert all(m.value > 0 for m in client.get_metric_history(run.info.run_id, "train/lr"))
    assert run.data.params["run_id"] == rec.run_id
    # The report stage's outputs: tables as files, the HTML report as its folder.
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "tables.md").write_text("| a |\n")
    (tmp_path / "report" / "figures").mkdir(parents=True)
    (tmp_path / "report" / "index.html").write_text("<html></html>")
    (tmp_path / "report" / "figures" / "f.png").write_bytes(b"png")
    tracker = make_tracker("mlflow", group="study")
    tracker.stage("report", "skipped", {"paths": [str(tmp_path / "tables" / "tables.md")]})   # nothing: it did not run
    tracker.stage("report", "ran", {"paths": [str(tmp_path / "tables" / "tables.md"), str(tmp_path / "report" / "index.html")]})
    tracker.close()
    reports = [x for x in client.search_runs([exp.experiment_id]) if x.info.run_name == "report"]
    assert len(reports) == 1
    listed = {a.path for a in client.list_artifacts(reports[0].info.run_id)}
    assert listed == {"tables.md", "report"}
    assert {a.path for a in client.list_artifacts(reports[0].info.run_id, "report")} == {"report/index.html", "report/figures"}


def test_experiment_files_name_a_tracker(tmp_path: Path) -> None:
    from vea_bench.pipeline.experiment import parse_experiment

    base = {"dataset": {"name": "fi", "root": "d"}, "vlm": {"model": "m"}}
    exp = parse_experiment({**base, "experiment": {"name": "s", "tracker": "mlflow"}}, base=tmp_path)
    assert exp.experiment.tracker == "mlflow"
    assert parse_experiment(base, base=tmp_path).experiment.tracker is None


def test_the_guides_tracker_registers_and_logs_a_teacher(images: Path, tmp_path: Path, monkeypatch) -> None:
    import json
    import re

    from vea_bench.datasets import load_dataset
    from vea_bench.tracking import TRACKERS, make_tracker
    from vea_bench.train.teacher import TeacherConfig, train_teacher

    guide = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
    section = guide.read_text().split("## Add an experiment tracker in one file", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    exec(compile(code, str(guide), "exec"), {})
    try:
        monkeypatch.setenv("VEA_TRACK_DIR", str(tmp_path / "runs"))
        tracker = make_tracker("jsonl", group="guide")
        cfg = TeacherConfig(arch="test_resnet", img_size=32, random_init=True, batch_size=BATCH, epochs=EPOCHS)
        tracker.start("teacher", vars(cfg))
        res = train_teacher(load_dataset("imagefolder", images), cfg, tmp_path / "t", device="cpu", results_dir=None,
                            tracker=tracker)
        tracker.record(res.record)
        events = [json.loads(x) for x in (tmp_path / "runs" / "teacher.jsonl").read_text().splitlines()]
        assert [e["event"] for e in events][0] == "start" and events[-1]["event"] == "finish"
        steps = [e for e in events if e["event"] == "log" and "train/loss" in e["metrics"]]
        assert len(steps) == _teacher_steps(images)
        (rec,) = [e for e in events if e["event"] == "record"]
        assert rec["metrics"]["test/accuracy"] == pytest.approx(res.record.metrics["test"]["accuracy"])
    finally:
        TRACKERS.remove("jsonl")
