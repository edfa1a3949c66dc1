"""Combining runs across caches: a head, teacher or adapter trained on another split is refused (issue 15)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vea_bench.errors import ConfigError, ModelError
from vea_bench.heads.synthetic_cache import make_complementary_cache
from vea_bench.lineage import Lineage, check_adapter, check_head, check_teacher, mismatch, of_index
from vea_bench_cli.main import app

runner = CliRunner()


def _cache(path: Path, seed: int) -> Path:
    # Same dataset name and image ids; another seed draws other labels: other manifests (another split).
    return make_complementary_cache(path, n_train=60, n_val=20, n_test=20, dim=8, seed=seed, backbones=())


def _one_line_error(res) -> str:
    assert res.exit_code != 0
    err = (res.stderr or res.output).strip()
    assert "Traceback" not in res.output and len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A distill head trained on cache A (seed 0)."""
    d = tmp_path_factory.mktemp("lineage")
    a = _cache(d / "a.h5", 0)
    res = d / "results"
    r = runner.invoke(app, ["train", "distill", "--cache", str(a), "--epochs", "1", "--device", "cpu",
                            "--results", str(res), "--quiet"])
    assert r.exit_code == 0, r.output
    run_id = Path(r.stdout.strip().splitlines()[-1]).stem
    return d, a, res, run_id


def _gate(cache: Path, res: Path, distill: str):
    return runner.invoke(app, ["train", "gate", "--cache", str(cache), "--distill", distill, "--epochs", "1",
                               "--device", "cpu", "--results", str(res), "--quiet"])


def test_gate_refuses_a_head_from_another_split(head) -> None:
    d, _, res, run_id = head
    other = _cache(d / "other-seed.h5", 7)
    err = _one_line_error(_gate(other, res, run_id))
    assert "head trained on other data" in err and "train manifest" in err and "split seed 0 vs 7" in err


def test_gate_accepts_a_head_from_the_same_splits_in_another_file(head) -> None:
    d, _, res, run_id = head
    twin = _cache(d / "twin.h5", 0)  # another cache file, same dataset and splits
    r = _gate(twin, res, run_id)
    assert r.exit_code == 0, r.output


def test_head_lineage_falls_back_to_the_run_record_and_refuses_without_one(head, tmp_path) -> None:
    d, a, res, run_id = head
    art = tmp_path / "res" / "artifacts" / run_id
    shutil.copytree(res / "artifacts" / run_id, art)
    cfg = json.loads((art / "config.json").read_text())
    del cfg["data"]  # a head saved before heads recorded their data
    (art / "config.json").write_text(json.dumps(cfg))
    err = _one_line_error(_gate(a, tmp_path / "res", str(art)))
    assert "no record of the data" in err
    (tmp_path / "res" / "distill").mkdir()
    shutil.copy(res / "distill" / f"{run_id}.json", tmp_path / "res" / "distill")
    assert _gate(a, tmp_path / "res", str(art)).exit_code == 0
    err = _one_line_error(_gate(_cache(tmp_path / "b.h5", 3), tmp_path / "res", str(art)))
    assert "head trained on other data" in err


def test_mismatch_rules() -> None:
    a = Lineage("fi", {"train": "aa", "test": "bb"}, 42)
    assert mismatch(a, Lineage("fi", {"train": "aa", "test": "bb", "val": "cc"}, 42)) is None
    assert mismatch(a, Lineage("emoset", {"train": "aa"}, 42)).startswith("dataset fi vs emoset")
    assert "test manifest" in mismatch(a, Lineage("fi", {"train": "aa", "test": "xx"}, 42))
    with pytest.raises(ConfigError, match="no record"):
        check_head("h", None, a)


def _index(tmp_path: Path, seed: int):
    from vea_bench.datasets import load_dataset
    from vea_bench.datasets.synthetic import make_synthetic

    root = tmp_path / "fi"
    if not root.exists():
        make_synthetic("fi", root, per_class=4, size=16)
    return load_dataset("fi", root, seed=seed)


def test_teacher_trained_on_another_split_is_refused_by_extract(tmp_path: Path) -> None:
    from vea_bench.extract import extract
    from vea_bench.models.teacher import make_tiny_teacher

    idx42, idx7 = _index(tmp_path, 42), _index(tmp_path, 7)
    teacher = make_tiny_teacher(tmp_path / "t", num_classes=8)
    cfg = json.loads((teacher / "config.json").read_text())
    # What `train teacher` records: the dataset and the manifests of the splits it trained on.
    cfg.update(dataset="fi", label_space="mikels8",
               train_config={"manifests": idx42.manifest_hashes(), "split_seed": 42})
    (teacher / "config.json").write_text(json.dumps(cfg))
    check_teacher(teacher, idx42)
    with pytest.raises(ModelError, match=r"trained on fi with other splits.*split seed 42 vs 7"):
        check_teacher(teacher, idx7)
    with pytest.raises(ModelError, match="other splits"):
        extract(idx7, tmp_path / "c.h5", vlm=None, teachers=[teacher], num_workers=0)
    assert not (tmp_path / "c.h5").exists()  # refused before anything is written
    check_teacher(teacher / "best.safetensors", idx42)
    # A teacher of another dataset is not leakage: allowed (its provenance says where it came from).
    cfg["dataset"] = "emoset"
    (teacher / "config.json").write_text(json.dumps(cfg))
    check_teacher(teacher, idx7)


def test_adapter_trained_on_another_split_is_refused(tmp_path: Path) -> None:
    idx42, idx7 = _index(tmp_path, 42), _index(tmp_path, 7)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    meta = {"config": {"dataset": "fi", "label_space": "mikels8", "manifest_train": idx42.manifest_hash("train")}}
    (adapter / "vea_bench_adapter.json").write_text(json.dumps(meta))
    check_adapter(adapter, idx42)
    with pytest.raises(ModelError, match="adapter .* other splits"):
        check_adapter(adapter, idx7)
    assert of_index(idx7).split_seed == 7
