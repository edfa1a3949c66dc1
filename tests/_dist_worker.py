"""One process of a data-parallel test job: ``torchrun --nproc-per-node N tests/_dist_worker.py SPEC.json``.

SPEC (JSON) names the task (``extract``, ``teacher`` or ``vlm``) and its arguments; rank 0 writes
what the job returned to ``SPEC["report"]``. ``kill_after`` (extract) makes rank 0 kill itself
with SIGKILL once it has written that many images: a rank that dies mid-job, as on a preempted
node (the launcher then stops the other ranks).
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `vea_bench` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _DieAfter:
    """A progress sink that kills its own process after ``n`` images (a crash, not a clean stop)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1, **info: Any) -> None:
        self.seen += n
        if self.seen >= self.n:
            os.kill(os.getpid(), signal.SIGKILL)

    def finish(self) -> None:
        pass


def _extract(spec: dict[str, Any]) -> dict[str, Any]:
    from vea_bench.datasets import load_dataset
    from vea_bench.extract import extract
    from vea_bench.models.base import GenerationOptions, LoadOptions

    index = load_dataset(spec["dataset"], spec["root"])
    vlm = LoadOptions(spec["vlm"], device="cpu") if spec.get("vlm") else None
    progress = _DieAfter(spec["kill_after"]) if spec.get("kill_after") else None
    s = extract(index, spec["cache"], vlm=vlm, answer_modes=spec.get("answer", ["generate"]),
                generation=GenerationOptions(max_new_tokens=6), teachers=spec.get("teachers", []),
                batch_size=spec.get("batch_size", 2), num_workers=0, progress=progress)
    return {"path": str(s.cache_path), "images": s.images, "complete": s.complete,
            "sources": {x.name: {"rows": x.rows, "done_before": x.done_before, "done": x.done, "failed": x.failed,
                                 "missing": x.missing} for x in s.sources}}


def _teacher(spec: dict[str, Any]) -> dict[str, Any]:
    from vea_bench.datasets import load_dataset
    from vea_bench.train.teacher import TeacherConfig, train_teacher

    index = load_dataset(spec["dataset"], spec["root"])
    res = train_teacher(index, TeacherConfig(**spec["config"]), spec["out"], device="cpu", results_dir=None)
    return {"config": res.record.config, "history": res.history, "processes": res.record.environment["processes"]}


def _vlm(spec: dict[str, Any]) -> dict[str, Any]:
    from vea_bench.datasets import load_dataset
    from vea_bench.train.qlora import QLoRAConfig, train_vlm

    index = load_dataset(spec["dataset"], spec["root"])
    res = train_vlm(index, QLoRAConfig(**spec["config"]), spec["instructions"], spec["out"], device="cpu",
                    eval_split=spec.get("eval_split"), results_dir=None)
    return {"config": res.record.config, "losses": res.losses, "steps": res.steps, "metrics": res.record.metrics,
            "processes": res.record.environment["processes"]}


def main() -> None:
    import torch

    torch.set_num_threads(1)
    spec = json.loads(Path(sys.argv[1]).read_text())
    report = {"extract": _extract, "teacher": _teacher, "vlm": _vlm}[spec["task"]](spec)
    if os.environ.get("RANK", "0") == "0":
        Path(spec["report"]).write_text(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
