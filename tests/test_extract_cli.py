"""`vea-bench extract` and `vea-bench models` through the real CLI, with tiny real models."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from _extract_helpers import cache_arrays, fi_root, tiny_dir  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from vea_bench.cache import FeatureCache
from vea_bench_cli.main import app

torch.set_num_threads(1)
runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "NO_COLOR": "1"})


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    err = result.stderr.strip()
    assert "Traceback" not in result.output
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:"), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_extract_cli_fills_cache_and_prints_summary(tmp_path, fi_root, tiny_dir) -> None:  # noqa: F811
    cache = tmp_path / "fi.h5"
    result = _invoke("extract", "fi", "--root", fi_root, "--cache", cache, "--vlm", tiny_dir["qwen"],
                     "--teacher", tiny_dir["teacher"], "--answer", "generate,score", "--max-new-tokens", "4",
                     "--batch-size", "4", "--workers", "0", "--split", "test", "--device", "cpu")
    assert result.exit_code == 0, result.output
    for needle in ("visual/qwen", "vlm/qwen", "teacher/vit-fi", "images/s"):
        assert needle in result.stdout, needle
    with FeatureCache.open(cache) as c:
        assert {s.name for s in c.sources()} == {"visual/qwen", "vlm/qwen", "teacher/vit-fi"}
        assert c.source("vlm", "qwen").counts["test"]["missing"] == 0
        assert c.source("vlm", "qwen").counts["train"]["missing"] == c.num_rows("train")  # --split honoured
        assert set(c.source("vlm", "qwen").fields) == {"text", "onehot", "parse", "logprobs"}
    # Rerun with --quiet: nothing left to do on test, prints only the cache path.
    result = _invoke("extract", "fi", "--root", fi_root, "--cache", cache, "--teacher", tiny_dir["teacher"],
                     "--split", "test", "--workers", "0", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(cache)


def test_wrong_model_path_is_one_line(tmp_path, fi_root) -> None:  # noqa: F811
    result = _invoke("extract", "fi", "--root", fi_root, "--cache", tmp_path / "c.h5", "--vlm", tmp_path / "nope")
    _assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "c.h5").exists()  # refused before a cache file was made
    result = _invoke("extract", "fi", "--root", fi_root, "--cache", tmp_path / "c.h5", "--teacher", tmp_path / "nope")
    _assert_one_line_error(result, "teacher checkpoint", "does not exist")
    result = _invoke("extract", "fi", "--root", fi_root, "--cache", tmp_path / "c.h5", "--vlm", "x", "--shard", "3/2")
    _assert_one_line_error(result, "--shard")
    result = _invoke("extract", "fi", "--root", fi_root, "--cache", tmp_path / "c.h5")
    _assert_one_line_error(result, "nothing to extract")


def test_adapter_for_another_base_model_is_one_line(tmp_path, fi_root, tiny_dir) -> None:  # noqa: F811
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_dir["qwen"])
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "Qwen/Qwen2-VL-7B-Instruct"
    cfg_path.write_text(json.dumps(cfg))
    result = _invoke("extract", "fi", "--root", fi_root, "--cache", tmp_path / "c.h5", "--vlm", tiny_dir["qwen"],
                     "--adapter", tmp_path / "adapter", "--workers", "0", "--device", "cpu")
    _assert_one_line_error(result, "adapter", "Qwen/Qwen2-VL-7B-Instruct")


def test_cache_of_another_label_space_is_one_line(tmp_path, fi_root, tiny_dir) -> None:  # noqa: F811
    cache = tmp_path / "c.h5"
    ok = _invoke("extract", "fi", "--root", fi_root, "--cache", cache, "--teacher", tiny_dir["teacher"],
                 "--limit", "1", "--workers", "0", "--quiet")
    assert ok.exit_code == 0, ok.output
    result = _invoke("extract", "fi", "--root", fi_root, "--cache", cache, "--teacher", tiny_dir["teacher"],
                     "--label-space", "binary", "--workers", "0")
    _assert_one_line_error(result, "label space", str(cache))
    # A teacher of another label space is refused too.
    result = _invoke("extract", "fi", "--root", fi_root, "--cache", cache, "--teacher", tiny_dir["teacher6"],
                     "--workers", "0")
    _assert_one_line_error(result, "not the label space")


def _status_count(path: Path) -> int:
    """Rows resolved so far in a cache another process is writing (0 while it cannot be read)."""
    try:
        with h5py.File(path, "r", locking=False) as h5:
            if "teacher" not in h5:
                return 0
            key = next(iter(h5["teacher"]))
            return sum(int((h5[f"teacher/{key}/{s}/_status"][()] != 0).sum()) for s in h5[f"teacher/{key}"])
    except Exception:  # noqa: BLE001  mid-write or not created yet
        return 0


def test_sigkilled_cli_run_resumes_to_the_uninterrupted_result(tmp_path, fi_root, tiny_dir) -> None:  # noqa: F811
    """SIGKILL the CLI after some rows are flushed; the rerun computes only the rest and matches a clean run."""
    args = ["extract", "fi", "--root", str(fi_root), "--teacher", str(tiny_dir["teacher"]),
            "--backbone", "resnet18@random", "--batch-size", "1", "--workers", "0", "--quiet"]
    killed = tmp_path / "killed.h5"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "vea_bench_cli.main", *args, "--cache", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _status_count(killed) < 3:
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _status_count(killed)
    n_rows = 25
    assert 3 <= before < n_rows
    resumed = _invoke(*args, "--cache", killed)
    assert resumed.exit_code == 0, resumed.output
    clean = tmp_path / "clean.h5"
    assert _invoke(*args, "--cache", clean).exit_code == 0
    a, b = cache_arrays(clean), cache_arrays(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    with FeatureCache.open(killed) as c:
        prov = c.source("teacher", "vit-fi").provenance
        assert prov["model"] == str(Path(tiny_dir["teacher"]).resolve())


def test_models_list_and_make_tiny(tmp_path) -> None:
    result = _invoke("models", "list")
    assert result.exit_code == 0, result.output
    for needle in ("qwen2-vl", "llava-next", "instructblip", "qwen2_vl", "vit_base_patch16_224", "resnet50",
                   "vgg16", "teacher"):
        assert needle in result.stdout, needle
    result = _invoke("models", "make-tiny", "teacher", tmp_path / "t", "--num-classes", "6", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["num_classes"] == 6 and cfg["label_space"] == "ekman6"
    result = _invoke("models", "make-tiny", "qwen9-vl", tmp_path / "q")
    _assert_one_line_error(result, "qwen9-vl")


@pytest.mark.parametrize("flag", ["--help"])
def test_extract_help_lists_the_issue_flags(flag) -> None:
    result = _invoke("extract", flag)
    assert result.exit_code == 0
    for opt in ("--root", "--cache", "--vlm", "--adapter", "--teacher", "--backbone", "--answer", "--decoding",
                "--max-new-tokens", "--zero-shot-max-new-tokens", "--seed", "--split-seed", "--score-memory-gb", "--max-pixels", "--batch-size", "--workers", "--dtype", "--quant", "--limit",
                "--shard", "--split", "--revision", "--trust-remote-code", "--quiet"):
        assert opt in result.stdout, opt


def test_extract_cli_decoding_and_seeds(tmp_path, fi_root, tiny_dir) -> None:  # noqa: F811
    """--decoding is recorded in the cache; --seed (sampling) leaves the split alone, --split-seed moves it."""
    cache = tmp_path / "fi.h5"
    base = ("extract", "fi", "--root", fi_root, "--cache", cache, "--vlm", tiny_dir["qwen"], "--max-new-tokens", "4",
            "--workers", "0", "--split", "test", "--device", "cpu", "--quiet")
    assert _invoke(*base, "--decoding", "reference", "--seed", "1", "--limit", "2").exit_code == 0
    with FeatureCache.open(cache) as c:
        dec = c.source("vlm", "qwen").provenance["decoding"]
        assert (dec["decoding"], dec["top_k"], dec["repetition_penalty"], dec["seed"]) == ("reference", 1, 1.05, 1)
        assert c.attrs()["split_seed"] == 42
    # Another sampling seed (greedy: the seed is not even recorded) resumes the same cache, same split.
    result = _invoke(*base, "--seed", "7", "--key", "vlm=greedy")
    assert result.exit_code == 0, result.output
    with FeatureCache.open(cache) as c:
        assert c.attrs()["split_seed"] == 42 and c.source("vlm", "greedy").counts["test"]["missing"] == 0
        assert c.source("vlm", "greedy").provenance["decoding"]["decoding"] == "greedy"
    _assert_one_line_error(_invoke(*base, "--split-seed", "5"), "split")
    _assert_one_line_error(_invoke(*base, "--decoding", "beam"), "unknown decoding 'beam'")
    result = _invoke(*base, "--sample", "--key", "vlm=sampled", "--limit", "1")
    assert result.exit_code == 0 and "deprecated" in result.stderr
    with FeatureCache.open(cache) as c:
        assert c.source("vlm", "sampled").provenance["decoding"]["decoding"] == "sample"
