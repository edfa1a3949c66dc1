"""Data-parallel scaling: extraction, teacher and LoRA training with 1 process against N, in one run.

Each measurement is a real job started the way a user starts one (``torchrun --standalone
--nproc-per-node P``), on a fresh output folder: extraction reports images/s over its image loop
(the slowest process's loop, merge excluded), training reports optimiser steps/s and images/s
over the training epochs (validation, test and model loading excluded). Efficiency is
``rate(N) / (N x rate(1))``; 100% is perfect scaling. The global batch is the same for 1 and N
processes, so the N-process job does the same optimiser steps as the single one.

Runs on CPU with tiny random models by default (built on the fly; one thread per process, so N
processes use N cores), and on GPUs when they are visible (one process per GPU)::

    python benchmarks/scaling.py                       # CPU: 1 vs 2 processes
    python benchmarks/scaling.py --procs 8 --images 4096 --arch vit_base_patch16_384 --vlm Qwen/Qwen2-VL-2B-Instruct

prints which device it ran on, then one line per task and process count.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `vea_bench` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = ("extract", "teacher", "vlm")
TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, default=0, help="N processes to compare with 1 [default: GPUs visible, else 2]")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    p.add_argument("--images", type=int, default=48, help="images per class of the synthetic set (8 classes)")
    p.add_argument("--size", type=int, default=64, help="side of the synthetic images in pixels")
    p.add_argument("--arch", default="vit_tiny_patch16_224",
                   help="teacher architecture (timm) [default: a tiny ViT at 32 px, random init]")
    p.add_argument("--vlm", help="VLM for the LoRA run [default: a tiny random Qwen2-VL built here]")
    p.add_argument("--batch-size", type=int, default=16, help="global batch of teacher training and extraction")
    p.add_argument("--vlm-batch-size", type=int, default=4, help="global batch of the LoRA run")
    p.add_argument("--vlm-steps", type=int, default=12, help="optimiser steps of the LoRA run")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ one process
class _Clock:
    """A progress sink that adds up the time spent in phases whose name starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seconds = 0.0
        self._t: float | None = None

    def start(self, description: str, total: int | None = None) -> None:
        self._t = time.perf_counter() if description.startswith(self.prefix) else None

    def advance(self, n: int = 1, **info: Any) -> None:
        pass

    def finish(self) -> None:
        if self._t is not None:
            self.seconds += time.perf_counter() - self._t
            self._t = None


def _worker(spec: dict[str, Any]) -> None:
    """One process of a launched job; rank 0 writes the job's figures to ``spec['report']``."""
    import torch

    from vea_bench.datasets import load_dataset

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    index = load_dataset(spec["layout"], spec["root"])
    device = "auto"
    task = spec["task"]
    if task == "extract":
        from vea_bench.extract import extract

        s = extract(index, spec["out"], vlm=None, teachers=[spec["teacher"]], batch_size=spec["batch_size"],
                    num_workers=spec["workers"])
        out = {"images": s.images, "seconds": s.loop_s}
    elif task == "teacher":
        from vea_bench.train.teacher import TeacherConfig, train_teacher

        clock = _Clock("epoch")
        cfg = TeacherConfig(**spec["config"])
        train_teacher(index, cfg, spec["out"], device=device, workers=spec["workers"], results_dir=None, progress=clock)
        n = len(index.split("train"))
        out = {"images": n * cfg.epochs, "steps": -(-n // cfg.batch_size) * cfg.epochs, "seconds": clock.seconds}
    else:
        from vea_bench.train.qlora import QLoRAConfig, train_vlm

        clock = _Clock("QLoRA")
        cfg = QLoRAConfig(**spec["config"])
        res = train_vlm(index, cfg, spec["instructions"], spec["out"], device=device, eval_split=None,
                        results_dir=None, progress=clock)
        out = {"images": res.steps * cfg.batch_size, "steps": res.steps, "seconds": clock.seconds}
    if os.environ.get("RANK", "0") == "0":
        Path(spec["report"]).write_text(json.dumps(out))


# ------------------------------------------------------------------------------ the driver
def _launch(procs: int, spec: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    spec = dict(spec, out=str(work / name / "out"), report=str(work / name / "report.json"))
    (work / name).mkdir(parents=True)
    path = work / name / "spec.json"
    path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           str(Path(__file__).resolve()), "--worker", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the {procs}-process {spec['task']} job failed:\n{proc.stderr[-2000:]}")
    return json.loads(Path(spec["report"]).read_text())


def _inputs(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """A synthetic FI-layout set, a tiny teacher to extract with, the demo's instructions, a tiny VLM (unless given)."""
    from vea_bench.datasets import load_dataset
    from vea_bench.datasets.synthetic import make_synthetic
    from vea_bench.models.tiny import make_tiny
    from vea_bench.pipeline.demo import _instructions

    root = make_synthetic("fi", work / "data", per_class=args.images, size=args.size, seed=0)
    index = load_dataset("fi", root, seed=42)
    inst = _instructions(root, work / "instructions.jsonl", 0)  # the demo's: short answers the tiny tokenizer knows
    vlm = args.vlm or str(make_tiny("qwen2-vl", work / "tiny-qwen", seed=0))
    return {"root": str(root), "teacher": str(make_tiny("teacher", work / "teacher", seed=1, num_classes=8)),
            "instructions": str(inst), "vlm": vlm, "train": len(index.split("train"))}


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.worker:
        _worker(json.loads(Path(args.worker).read_text()))
        return 0
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    procs = args.procs or (gpus if gpus > 1 else 2)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or procs < 2:
        print(f"error: --tasks takes {', '.join(TASKS)}; --procs must be at least 2", file=sys.stderr)
        return 2
    if gpus and procs > gpus:
        print(f"error: {procs} processes but {gpus} GPU(s) visible", file=sys.stderr)
        return 2
    on = (f"{gpus} x {torch.cuda.get_device_name(0)}, one process per GPU" if gpus
          else f"CPU ({os.cpu_count()} cores), one thread per process, gloo")
    with tempfile.TemporaryDirectory(prefix="vea-scaling-") as tmp:
        work = Path(tmp)
        inp = _inputs(args, work)
        tiny = args.arch == "vit_tiny_patch16_224"
        specs = {
            "extract": {"task": "extract", "batch_size": args.batch_size},
            "teacher": {"task": "teacher", "config": {
                "arch": args.arch, "epochs": 1, "batch_size": args.batch_size, "random_init": True, "lr": 1e-3,
                **({"img_size": 32, "timm_kwargs": TINY_VIT} if tiny else {})}},
            "vlm": {"task": "vlm", "instructions": inp["instructions"], "config": {
                "vlm": inp["vlm"], "quantize": bool(gpus) and bool(args.vlm), "max_steps": args.vlm_steps,
                "batch_size": args.vlm_batch_size, "kinds": ["categorical"], "gradient_checkpointing": bool(args.vlm)}},
        }
        print(f"device: {on}; {inp['train']} training images of {8 * args.images}, {args.size} px")
        print(f"{'task':8s} {'procs':>5s} {'images/s':>10s} {'steps/s':>9s} {'speed-up':>9s} {'efficiency':>10s}")
        for task in tasks:
            # Loader workers on GPUs; on CPU the processes themselves take the cores.
            spec = {"layout": "fi", "root": inp["root"], "teacher": inp["teacher"], "workers": 2 if gpus else 0,
                    **specs[task]}
            base = None
            for p in (1, procs):
                r = _launch(p, spec, work, f"{task}-{p}")
                ips = r["images"] / r["seconds"] if r["seconds"] else 0.0
                sps = r["steps"] / r["seconds"] if r.get("steps") and r["seconds"] else None
                base = base or ips
                up = ips / base if base else 0.0
                print(f"{task:8s} {p:5d} {ips:10.2f} {'-' if sps is None else f'{sps:.2f}':>9s} {up:8.2f}x {up / p:10.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
