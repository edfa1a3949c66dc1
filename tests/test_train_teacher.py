"""Teacher / baseline fine-tuning: learns above chance, reloads exactly, resumes exactly, refuses bad setups."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vea_bench.datasets import load_dataset
from vea_bench.datasets.synthetic import make_synthetic
from vea_bench.errors import ConfigError, ModelError
from vea_bench.models.teacher import build_teacher, load_teacher
from vea_bench.train.teacher import TeacherConfig, _ImageSet, predict, train_teacher

torch.set_num_threads(1)

TINY = {"arch": "test_resnet", "img_size": 32, "random_init": True, "batch_size": 10}


@pytest.fixture(scope="module")
def learnable(tmp_path_factory: pytest.TempPathFactory):
    root = make_synthetic("imagefolder", tmp_path_factory.mktemp("t") / "data", per_class=25, size=32, seed=1,
                          faults=("corrupt",), label_space="ekman6")
    return load_dataset("imagefolder", root)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):
    root = make_synthetic("imagefolder", tmp_path_factory.mktemp("s") / "data", per_class=5, size=32, seed=2,
                          label_space="binary")
    return load_dataset("imagefolder", root)


def test_vit_b16_with_8_classes_has_the_paper_parameter_count() -> None:
    with torch.device("meta"):
        model = build_teacher("vit_base_patch16_224", 8)
    assert sum(p.numel() for p in model.parameters()) == 85_804_808


def test_tiny_teacher_beats_chance_and_reloads_identically(learnable, tmp_path) -> None:
    out = tmp_path / "teacher"
    res = train_teacher(learnable, TeacherConfig(**TINY, epochs=5, lr=3e-3, seed=0), out, device="cpu",
                        results_dir=tmp_path / "results")
    test = res.record.metrics["test"]
    chance = 1 / learnable.label_space.num_classes
    assert test["accuracy"] >= 2.5 * chance, res.history
    assert test["n"] == len(learnable.split("test"))
    # The corrupt training image was skipped and counted, not fatal.
    assert res.history[-1]["skipped_train"] == 1
    # Record in --out and in results/teacher, with the conventions the table layer reads.
    rec = json.loads(next(out.glob("teacher-*.json")).read_text())
    assert rec["kind"] == "teacher" and rec["method"] == "test_resnet" and rec["config"]["arch"] == "test_resnet"
    assert rec["config"]["lr"] == 3e-3 and rec["config"]["init"] == "random"
    assert len(list((tmp_path / "results" / "teacher").glob("*.json"))) == 1
    assert (out / "best.safetensors").is_file() and (out / "last.safetensors").is_file()

    # Reloaded from disk twice: identical logits, and exactly the recorded test accuracy.
    m1, meta = load_teacher(out, name="best")
    m2, _ = load_teacher(out / "best.safetensors")
    from vea_bench.models.teacher import teacher_transform

    ds = _ImageSet(learnable, "test", teacher_transform(meta, train=False))
    l1, y, _ = predict(m1, ds, device="cpu", batch_size=16, workers=0)
    l2, _, _ = predict(m2, ds, device="cpu", batch_size=16, workers=0)
    assert np.array_equal(l1, l2)
    assert float((l1.argmax(1) == y).mean()) == pytest.approx(test["accuracy"])
    assert meta["label_names"] == list(learnable.label_space.labels)


def test_interrupted_run_resumes_to_the_same_weights(small, tmp_path) -> None:
    cfg = dict(**TINY, epochs=3, lr=1e-3, seed=3)

    class StopInEpoch3:
        def start(self, description, total=None):
            if description.startswith("epoch 3/"):
                raise KeyboardInterrupt

        def advance(self, n=1, **info):
            pass

        def finish(self):
            pass

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_teacher(small, TeacherConfig(**cfg), out, device="cpu", results_dir=None, progress=StopInEpoch3())
    state = json.loads((out / "resume" / "state.json").read_text())
    assert state["epoch"] == 2 and not state["finished"]
    resumed = train_teacher(small, TeacherConfig(**cfg), out, device="cpu", results_dir=None)
    assert resumed.resumed_from == 2
    straight = train_teacher(small, TeacherConfig(**cfg), tmp_path / "straight", device="cpu", results_dir=None)
    from safetensors.torch import load_file

    a, b = load_file(str(out / "last.safetensors")), load_file(str(tmp_path / "straight" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.record.metrics["test"]["accuracy"] == straight.record.metrics["test"]["accuracy"]
    # Finished: the heavy resume tensors are gone; a rerun returns the record without training.
    assert not (out / "resume" / "model.safetensors").exists()
    assert train_teacher(small, TeacherConfig(**cfg), out, device="cpu", results_dir=None).record.run_id == resumed.record.run_id
    # Another config in the same folder: refused in one line naming what differs.
    with pytest.raises(ConfigError, match="lr"):
        train_teacher(small, TeacherConfig(**{**cfg, "lr": 5e-4}), out, device="cpu", results_dir=None)


def _no_hub(monkeypatch) -> None:
    """Simulate an offline machine (the network probe, not the model, is replaced)."""
    import vea_bench.train.teacher as mod

    monkeypatch.setattr(mod, "hub_reachable", lambda timeout=3.0: False)


def test_no_weights_and_no_flag_is_a_one_line_error(small, tmp_path, monkeypatch) -> None:
    _no_hub(monkeypatch)  # the default (pretrained) path must fail fast, naming the options
    with pytest.raises(ModelError) as err:
        train_teacher(small, TeacherConfig(arch="test_resnet", img_size=32, epochs=1), tmp_path / "x", device="cpu",
                      results_dir=None)
    msg = str(err.value)
    assert "--weights" in msg and "--random-init" in msg and "\n" not in msg
    with pytest.raises(ConfigError):
        TeacherConfig(arch="test_resnet", weights="w.safetensors", random_init=True).validate()


def test_local_weights_file_is_the_starting_point(small, tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(7)
    src = build_teacher("test_resnet", 10)  # another class count: the head is re-initialised
    wfile = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(wfile))
    res = train_teacher(small, TeacherConfig(arch="test_resnet", img_size=32, weights=str(wfile), epochs=1, lr=1e-9),
                        tmp_path / "w", device="cpu", results_dir=None)
    assert res.record.config["init"].startswith("weights:")
    trained, _ = load_teacher(tmp_path / "w")
    stem = "stem.conv1.weight" if "stem.conv1.weight" in src.state_dict() else next(iter(src.state_dict()))
    assert torch.allclose(trained.state_dict()[stem], src.state_dict()[stem], atol=1e-6)


def test_cli_trains_and_reports_one_line_errors(small, tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner
    from vea_bench_cli.main import app

    _no_hub(monkeypatch)
    runner = CliRunner()
    base = ["train", "teacher", "imagefolder", "--root", str(small.root), "--arch", "test_resnet", "--img-size", "32",
            "--epochs", "1", "--device", "cpu", "--results", str(tmp_path / "results")]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "cli"), "--random-init"])
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output
    assert list((tmp_path / "results" / "teacher").glob("*.json"))
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "cli2")])
    assert r.exit_code != 0 and "Traceback" not in r.output and "--random-init" in r.output
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "cli3"), "--random-init", "--arch", "resnet5O"])
    assert r.exit_code != 0 and "Traceback" not in r.output and "resnet5O" in r.output
