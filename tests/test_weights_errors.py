"""Weights errors are one line naming the file (and the fix); paths are resolved before provenance (issue 15)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from _extract_helpers import fi_root, tiny_dir  # noqa: F401  (fixtures)
from safetensors.torch import load_file
from typer.testing import CliRunner

from vea_bench.errors import ModelError
from vea_bench.models.base import LoadOptions
from vea_bench_cli.main import app

runner = CliRunner()


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg
    return msg


def _pickled_copy(src: Path, dst: Path, name: str) -> Path:
    """``src`` with its safetensors replaced by a pickled torch file ``name`` (what old checkpoints hold)."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        torch.save(load_file(str(f)), dst / name)
        f.unlink()
    return dst


def _malformed_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a json header" + b"\x00" * 64)
    return dst


def test_vlm_folder_with_only_a_pickled_bin(tmp_path, tiny_dir) -> None:  # noqa: F811
    from vea_bench.models import load_vlm

    d = _pickled_copy(tiny_dir["qwen"], tmp_path / "qwen-bin", "pytorch_model.bin")
    with pytest.raises(ModelError) as err:
        load_vlm(LoadOptions(str(d), device="cpu"))
    msg = _one_line(err.value)
    assert "pytorch_model.bin" in msg and "safetensors" in msg and "save_file" in msg


def test_vlm_folder_with_a_malformed_safetensors(tmp_path, tiny_dir) -> None:  # noqa: F811
    from vea_bench.models import load_vlm

    d = _malformed_copy(tiny_dir["qwen"], tmp_path / "qwen-bad")
    with pytest.raises(ModelError) as err:
        load_vlm(LoadOptions(str(d), device="cpu"))
    msg = _one_line(err.value)
    assert "model.safetensors is not a valid safetensors file" in msg and str(d) in msg


def test_cli_extract_names_the_bad_weights_in_one_line(tmp_path, tiny_dir, fi_root) -> None:  # noqa: F811
    d = _malformed_copy(tiny_dir["qwen"], tmp_path / "qwen-bad")
    res = runner.invoke(app, ["extract", "fi", "--root", str(fi_root), "--vlm", str(d), "--cache",
                              str(tmp_path / "c.h5"), "--device", "cpu"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "model.safetensors" in lines[0], res.output


def test_adapter_with_only_a_pickled_bin_or_a_malformed_file(tmp_path) -> None:
    from vea_bench.models.loading import read_adapter_config

    good = tmp_path / "adapter"
    good.mkdir()
    (good / "adapter_config.json").write_text('{"base_model_name_or_path": "x", "peft_type": "LORA"}')
    torch.save({"base_model.model.q_proj.lora_A.weight": torch.zeros(2, 2)}, good / "adapter_model.bin")
    with pytest.raises(ModelError) as err:
        read_adapter_config(good)
    msg = _one_line(err.value)
    assert "adapter_model.bin is a pickled torch file" in msg and "adapter_model.safetensors" in msg
    (good / "adapter_model.bin").unlink()
    (good / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="adapter_model.safetensors is not a valid safetensors file"):
        read_adapter_config(good)


def test_teacher_folder_with_only_a_pickled_bin(tmp_path, tiny_dir) -> None:  # noqa: F811
    from vea_bench.models.teacher import load_teacher

    d = _pickled_copy(tiny_dir["teacher"], tmp_path / "t-bin", "best.bin")
    with pytest.raises(ModelError) as err:
        load_teacher(d)
    msg = _one_line(err.value)
    assert "best.bin is a pickled torch file" in msg and "best.safetensors" in msg


def test_weights_file_holding_more_than_tensors(tmp_path) -> None:
    from vea_bench.models.teacher import _read_state_dict

    p = tmp_path / "w.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, p)  # a pickled module, not a state dict
    with pytest.raises(ModelError) as err:
        _read_state_dict(p)
    msg = _one_line(err.value)
    assert "w.pth" in msg and "convert it to safetensors" in msg


def test_resume_with_the_teacher_given_by_an_absolute_path(tmp_path, tiny_dir, fi_root, monkeypatch) -> None:  # noqa: F811
    from vea_bench.datasets import load_dataset
    from vea_bench.extract import extract

    index = load_dataset("fi", fi_root)
    shutil.copytree(tiny_dir["teacher"], tmp_path / "vit-fi")
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "c.h5"
    extract(index, cache, vlm=None, teachers=["vit-fi"], limit=1, num_workers=0)
    # The same teacher by its absolute path (and through a symlink) resumes instead of being refused.
    summary = extract(index, cache, vlm=None, teachers=[str(tmp_path / "vit-fi")], limit=1, num_workers=0)
    assert summary.sources[0].done_before == len(index.splits)
    (tmp_path / "link").symlink_to(tmp_path / "vit-fi", target_is_directory=True)
    summary = extract(index, cache, vlm=None, teachers=[str(tmp_path / "link")], limit=1, num_workers=0,
                      source_keys={str(tmp_path / "link"): "vit-fi"})
    assert summary.sources[0].done_before == 2 * len(index.splits)
