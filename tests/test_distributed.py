"""Data-parallel runs: the launch read from the environment, and real 2-process torchrun jobs (gloo, CPU).

The jobs run tiny real models on a few synthetic rows: a launched extraction equals a single-process
one and survives a killed rank, and 2-process teacher / LoRA training reach a single process's weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _extract_helpers import cache_arrays, fi_root, tiny_dir  # noqa: F401  (fixtures)

from vea_bench.cache import ROW_MISSING, FeatureCache
from vea_bench.cache.store import stable_provenance
from vea_bench.distributed import Launch, first_host, launch_env
from vea_bench.errors import ConfigError

torch.set_num_threads(1)

WORKER = Path(__file__).with_name("_dist_worker.py")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_ID", "SLURM_STEPID")
TINY_VIT = {"arch": "vit_tiny_patch16_224", "img_size": 32, "random_init": True,
            "timm_kwargs": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}}


def _launch(nproc: int, spec: dict[str, Any], tmp: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node N tests/_dist_worker.py SPEC`` (a free port, one thread each)."""
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="error::DeprecationWarning:vea_bench")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(WORKER), str(path)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


# ------------------------------------------------------------------------------------ the launch
def test_launch_is_read_from_torchrun_and_srun_variables() -> None:
    assert launch_env({}) == Launch()
    assert launch_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Launch(3, 8, 1, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"}
    assert launch_env(slurm) == Launch(5, 8, 1, "slurm")
    # torchrun inside a Slurm allocation: torchrun's own variables win.
    assert launch_env({**slurm, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}).world_size == 2
    # A plain command in an sbatch script (no srun step) is one process, whatever the allocation.
    assert launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) == Launch()
    assert Launch(0, 4, 0, "slurm").facts() == {"processes": 4, "launcher": "slurm"}
    with pytest.raises(ConfigError, match="rank 4 of 4"):
        launch_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="not an integer"):
        launch_env({"RANK": "x", "WORLD_SIZE": "4"})


def test_one_process_on_several_gpus_says_how_to_use_them_all(monkeypatch, caplog) -> None:
    from vea_bench.distributed import hint_more_gpus

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with caplog.at_level("INFO", logger="vea_bench"):
        hint_more_gpus("auto")
        hint_more_gpus("cpu")  # asked for the CPU: nothing to say
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["4 GPUs visible, this runs on one: prefix the command with "
                     "`torchrun --nproc-per-node 4 --no-python` to use them all"]


def test_slurm_rendezvous_host_is_the_first_node() -> None:
    assert first_host("gpu[03-05,07],cpu1") == "gpu03"
    assert first_host("node7") == "node7"
    assert first_host("a-b[10,12]") == "a-b10"


# ------------------------------------------------------------------------------------ extraction
def test_shard_option_under_a_launch_is_a_one_line_error(tmp_path, monkeypatch, fi_root, tiny_dir) -> None:  # noqa: F811
    from vea_bench.datasets import load_dataset
    from vea_bench.extract import extract

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="leave --shard out"):
        extract(load_dataset("fi", fi_root), tmp_path / "c.h5", vlm=None, teachers=[tiny_dir["teacher"]], shard="0/2")
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_limit_under_a_launch_takes_the_jobs_first_rows(tmp_path, fi_root, tiny_dir) -> None:  # noqa: F811
    """Each process's part of a launched ``--limit 5`` (run here one process after the other), then the merge."""
    import dataclasses

    from vea_bench.datasets import load_dataset
    from vea_bench.extract import _extract_file, _fold_shards, _request

    cache = tmp_path / "fi.h5"
    req = _request(load_dataset("fi", fi_root), cache, vlm=None, answer_modes=(), generation=None,
                   teachers=[tiny_dir["teacher"]], backbones=(), splits=["val"], limit=5, shard=None, batch_size=2,
                   num_workers=0, source_keys=None, overwrite=False, retry_failed=False, device="cpu",
                   vlm_backend=None, parse="strict", exif="apply")
    for rank in (0, 1):
        s = _extract_file(dataclasses.replace(req, shard=(rank, 2), final=cache), None)
        assert s.source("teacher/vit-fi").done + s.source("teacher/vit-fi").failed == (3 if rank == 0 else 2)
    _fold_shards(cache, None)
    with FeatureCache.open(cache) as c:
        assert list(np.flatnonzero(c.fingerprints("teacher", "vit-fi", "val")[1] != ROW_MISSING)) == [0, 1, 2, 3, 4]
    assert not list(tmp_path.glob("fi.shard-*"))


def _extract_spec(fi_root: Path, tiny_dir: dict[str, Path], cache: Path, report: Path, **kw: Any) -> dict[str, Any]:  # noqa: F811
    spec = {"task": "extract", "dataset": "fi", "root": str(fi_root), "cache": str(cache), "report": str(report),
            "teachers": [str(tiny_dir["teacher"])], "batch_size": 1}
    spec.update(kw)
    return spec


def _single_extract(spec: dict[str, Any]) -> Path:
    """The same extraction in this (unlaunched) process."""
    sys.path.insert(0, str(WORKER.parent))
    from _dist_worker import _extract

    _extract(spec)
    return Path(spec["cache"])


def _assert_same_cache(a: Path, b: Path) -> None:
    x, y = cache_arrays(a), cache_arrays(b)
    assert x.keys() == y.keys() and x
    for k in x:
        assert np.array_equal(x[k], y[k]), k
    with FeatureCache.open(a) as ca, FeatureCache.open(b) as cb:
        assert [s.name for s in ca.sources()] == [s.name for s in cb.sources()]
        for s in ca.sources():
            # Everything but the launch facts (volatile: time, shard) is the same.
            assert stable_provenance(s.provenance) == stable_provenance(cb.source(*s.name.split("/", 1)).provenance)
        assert {k: v for k, v in ca.attrs().items() if k != "created_at"} == \
               {k: v for k, v in cb.attrs().items() if k != "created_at"}


def test_two_process_extraction_equals_one_process(tmp_path, fi_root, tiny_dir) -> None:  # noqa: F811
    from vea_bench.datasets import load_dataset

    spec = _extract_spec(fi_root, tiny_dir, tmp_path / "two" / "fi.h5", tmp_path / "two.json",
                         vlm=str(tiny_dir["qwen"]), answer=["generate", "score"])
    _ok(_launch(2, spec, tmp_path, "two"))
    one = _single_extract({**spec, "cache": str(tmp_path / "one" / "fi.h5")})
    _assert_same_cache(one, Path(spec["cache"]))
    # One merged cache and nothing else: no shard file is left for the user to merge.
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if "shard" in p.name) == []
    report = json.loads((tmp_path / "two.json").read_text())
    assert report["complete"] and report["path"] == spec["cache"]
    rows = sum(len(v) for v in load_dataset("fi", fi_root).splits.values())
    for name, s in report["sources"].items():
        # Both processes' rows are counted: 24 images written, the one corrupt image failed.
        assert (s["rows"], s["done"], s["failed"], s["missing"], s["done_before"]) == (rows, rows - 1, 1, 0, 0), name


def test_killed_rank_rerun_completes_without_recomputing(tmp_path, fi_root, tiny_dir) -> None:  # noqa: F811
    cache = tmp_path / "job" / "fi.h5"
    spec = _extract_spec(fi_root, tiny_dir, cache, tmp_path / "killed.json", kill_after=4)
    proc = _launch(2, spec, tmp_path, "killed")
    assert proc.returncode != 0 and not cache.exists()
    # What the dead job left: each process's shard file, partly filled.
    done_before = 0
    shards = sorted(cache.parent.glob("fi.shard-*-of-2.h5"))
    assert len(shards) == 2
    for p in shards:  # a process killed before its first batch left a shard without the source
        with FeatureCache.open(p) as c:
            if c.has_source("teacher", "vit-fi"):
                done_before += sum(int((c.fingerprints("teacher", "vit-fi", sp)[1] != ROW_MISSING).sum())
                                   for sp in c.splits)
    rows = 25
    assert 4 <= done_before < rows
    # Rerun the same command with another number of processes: only the missing rows are computed.
    spec.pop("kill_after")
    spec["report"] = str(tmp_path / "rerun.json")
    _ok(_launch(3, spec, tmp_path, "rerun"))
    s = json.loads((tmp_path / "rerun.json").read_text())["sources"]["teacher/vit-fi"]
    assert s["done"] + s["failed"] == rows - done_before and s["done_before"] == done_before and s["missing"] == 0
    assert not list(cache.parent.glob("fi.shard-*"))
    one = _single_extract({**spec, "cache": str(tmp_path / "one" / "fi.h5"), "report": str(tmp_path / "x.json")})
    _assert_same_cache(one, cache)


# ------------------------------------------------------------------------------------ training
def test_two_process_teacher_reaches_the_single_process_weights(tmp_path, fi_root) -> None:  # noqa: F811
    from safetensors.torch import load_file

    from vea_bench.datasets import load_dataset
    from vea_bench.train.teacher import TeacherConfig, train_teacher

    # 9 training images (one corrupt) in batches of 4: a last batch of one image leaves a process
    # without an image of its own for that step.
    cfg = {**TINY_VIT, "epochs": 2, "lr": 1e-3, "batch_size": 4, "seed": 0}
    one = train_teacher(load_dataset("fi", fi_root), TeacherConfig(**cfg), tmp_path / "one", device="cpu",
                        results_dir=None)
    spec = {"task": "teacher", "dataset": "fi", "root": str(fi_root), "out": str(tmp_path / "two"),
            "report": str(tmp_path / "two.json"), "config": cfg}
    _ok(_launch(2, spec, tmp_path, "teacher"))
    a, b = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=5e-5, rtol=1e-4)
    report = json.loads((tmp_path / "two.json").read_text())
    assert report["processes"] == 2 and one.record.environment["processes"] == 1
    for h1, h2 in zip(one.history, report["history"]):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
        assert h2["skipped_train"] == h1["skipped_train"] == 1  # the corrupt image, counted once
    # Rank 0 alone wrote: one record, one resume state, no stray temporary folders.
    out = tmp_path / "two"
    assert len(list(out.glob("teacher-*.json"))) == 1 and not list(out.glob(".*tmp-*"))

    # A run interrupted in one process resumes in two, to the same weights.
    class StopInEpoch2:
        def start(self, description: str, total: int | None = None) -> None:
            if description.startswith("epoch 2/"):
                raise KeyboardInterrupt

        def advance(self, n: int = 1, **info: Any) -> None:
            pass

        def finish(self) -> None:
            pass

    with pytest.raises(KeyboardInterrupt):
        train_teacher(load_dataset("fi", fi_root), TeacherConfig(**cfg), tmp_path / "mixed", device="cpu",
                      results_dir=None, progress=StopInEpoch2())
    _ok(_launch(2, {**spec, "out": str(tmp_path / "mixed"), "report": str(tmp_path / "mixed.json")}, tmp_path, "mixed"))
    c = load_file(str(tmp_path / "mixed" / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(c[k], a[k], atol=5e-5, rtol=1e-4)
    assert json.loads((tmp_path / "mixed.json").read_text())["history"][0] == one.history[0]  # epoch 1 kept as written


def test_two_process_lora_reaches_the_single_process_adapter(tmp_path, tiny_dir) -> None:  # noqa: F811
    from safetensors.torch import load_file

    from vea_bench.datasets import load_dataset
    from vea_bench.datasets.synthetic import make_synthetic
    from vea_bench.train.qlora import QLoRAConfig, train_vlm

    root = make_synthetic("imagefolder", tmp_path / "data", per_class=5, size=32, seed=0, label_space="binary")
    index = load_dataset("imagefolder", root)
    rows = [{"img_path": s.path, "img": Path(s.path).name, "label": index.label_space.labels[s.label],
             "gpt_response": f"1. Key elements\nA {index.label_space.labels[s.label]} scene.\n\n"
                             f"2. Reasoning\nIt feels {index.label_space.labels[s.label]}."} for s in index.split("train")]
    inst = tmp_path / "instructions.json"
    inst.write_text(json.dumps(rows))
    # 6 examples in global batches of 5 over 2 processes: 3 + 2 examples, then 1 + none (a stand-in, weighted 0).
    cfg = {"vlm": str(tiny_dir["qwen"]), "quantize": False, "lr": 2e-2, "max_steps": 3, "batch_size": 5, "seed": 0,
           "lora_dropout": 0.0, "gradient_checkpointing": False, "kinds": ["categorical"]}
    one = train_vlm(index, QLoRAConfig(**cfg), inst, tmp_path / "one", device="cpu", eval_split="test",
                    results_dir=None)
    spec = {"task": "vlm", "dataset": "imagefolder", "root": str(root), "instructions": str(inst),
            "out": str(tmp_path / "two"), "report": str(tmp_path / "two.json"), "config": cfg, "eval_split": "test"}
    _ok(_launch(2, spec, tmp_path, "lora"))
    a = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    # Adam divides each step by the gradient's running scale, so float rounding of the token sums
    # (one batch vs two halves) moves a few weights by ~1e-5 at this learning rate, far less than they travel.
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-3)
    report = json.loads((tmp_path / "two.json").read_text())
    assert report["steps"] == one.steps == 3 and report["processes"] == 2
    assert report["losses"] == pytest.approx(one.losses, rel=1e-5)
    # The test split was answered half by each process, and scored as one process scores it.
    m1, m2 = one.record.metrics["test"], report["metrics"]["test"]
    assert m2["n"] == m1["n"] == len(index.split("test")) and m2["accuracy"] == m1["accuracy"]
    # The adapter moved away from its initialisation (lora_B starts at zero): the comparison is not vacuous.
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-3
