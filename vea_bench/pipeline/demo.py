"""The embedded default: the whole study on a synthetic FI-layout set and tiny models, offline, on CPU.

`prepare_demo` writes everything a real study would have on disk (a dataset in FI's native
layout, a tiny random-weight Qwen2-VL saved like a hub model, an instruction file, an experiment
file), then `vea-bench demo` runs that experiment with the same code path as `vea-bench run`.
The numbers measure tiny random models on synthetic images: they show the pipeline works and is
reproducible, not what EmoVLM-KD scores on real data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vea_bench.pipeline.experiment import (
    BaselinesSection,
    DatasetSection,
    DistillSection,
    Experiment,
    ExperimentSection,
    ExtractSection,
    GateSection,
    QLoRASection,
    ReportSection,
    SweepSection,
    TeacherSection,
    VLMSection,
    write_experiment,
)
from vea_bench.progress import Progress, ensure
from vea_bench.schema import Settings

DEMO_DATASET = "fi"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and rates chosen so that the demo tells the method's story in minutes on 2 CPU cores.

    Why these values: enough images per class that the test split does not swing by whole points
    per image; enough LoRA steps at a raised rate that the tiny VLM's answers follow the image,
    not only the answer format; a teacher trained a few epochs, near the paper's ViT rather than
    above everything it teaches; one torch thread, because a second one on shared cores makes
    these tiny models far slower (OpenMP oversubscription). `vea-bench demo --markdown PATH`
    writes the figures this gives (the README's demo section comes from it).
    """

    per_class: int = 80
    image_size: int = 64
    seed: int = 0
    threads: int = 1
    teacher_epochs: int = 6
    teacher_lr: float = 1e-3
    qlora_steps: int = 1500
    qlora_lr: float = 3e-3
    qlora_kinds: tuple[str, ...] = ("categorical",)
    distill_epochs: int = 60
    distill_lr: float = 3e-4
    distill_batch: int = 32
    gate_epochs: int = 30
    gate_lr: float = 1e-2
    gate_fit: str = "train"
    alpha_seeds: tuple[int, ...] = (0, 1)


def _instructions(root: Path, out: Path, seed: int) -> Path:
    """A generated-response file in `instruct generate`'s JSONL shape, for the synthetic train images.

    A real study gets these from a chat model (`vea-bench instruct generate`); here the text says
    plainly what the synthetic images are, so the QLoRA stage has honest, well-formed input. The
    sentences are short and reuse the tiny tokenizer's words, so each LoRA step stays cheap.
    """
    from vea_bench.datasets import load_dataset

    index = load_dataset(DEMO_DATASET, root, seed=42)
    space = index.label_space
    with out.open("w") as f:
        for s in index.split("train"):
            label = space.labels[s.label]
            response = (
                f"Key elements: the image shows the {label} pattern, with its own hue, texture and shape.\n"
                f"Reasoning: the hue, texture and shape match the {label} pattern, so the emotion is {label}."
            )
            f.write(json.dumps({"image": s.path, "label": label, "response": response}) + "\n")
    return out


def prepare_demo(out: str | Path, settings: DemoSettings | None = None, *, progress: Progress | None = None) -> Path:
    """Write the demo's dataset, tiny VLM, instructions and experiment file under ``out``; returns the file."""
    from vea_bench.datasets.synthetic import make_synthetic
    from vea_bench.models.tiny import make_tiny

    st = settings or DemoSettings()
    progress = ensure(progress)
    out = Path(out).resolve()
    inputs = out / "artifacts" / "inputs"  # under artifacts/: record readers skip it
    progress.start("demo: synthetic data and tiny models", 3)
    data = inputs / "data" / DEMO_DATASET
    if not data.exists():
        make_synthetic(DEMO_DATASET, data, per_class=st.per_class, size=st.image_size, seed=st.seed)
    progress.advance()
    vlm = inputs / "models" / "tiny-qwen2-vl"
    if not (vlm / "config.json").exists():
        make_tiny("qwen2-vl", vlm, seed=st.seed)
    progress.advance()
    instructions = _instructions(data, inputs / "instructions.jsonl", st.seed)
    progress.advance()
    progress.finish()

    exp = demo_experiment(out, data, vlm, instructions, st)
    path = out / "experiment.toml"
    path.write_text(write_experiment(exp, _COMMENTS, _HEADER.format(path=path)))
    return path


_HEADER = """# vea-bench demo: the whole EmoVLM-KD study on a synthetic FI-layout set with tiny random models.
# Written by `vea-bench demo`; rerun it with `vea-bench run {path}`.
# Rates and epochs differ from SPEC's (QLoRA 1e-4 x 5 epochs, distill 1e-5 x 5, gate 1e-4 x 10)
# because the models start from random weights and the set is tiny: SPEC's values barely move them.
# threads = 1: tiny models gain nothing from a second thread and lose a lot on shared cores.
"""
_COMMENTS = {
    "qlora": "The tiny VLM learns the dictionary answer in few steps, but tying it to the image takes many\n"
             "more at this rate; the categorical kind alone is what the cache's answers are, so the demo spends\n"
             "its steps there (a real study keeps all three kinds, the default). Gradient checkpointing off:\n"
             "the same numbers, faster, and a tiny model has memory to spare.",
    "distill": "Mini-batches of 32: the default, 256, is one step per epoch on the demo's training rows.",
}


def demo_experiment(out: Path, data: Path, vlm: Path, instructions: Path, st: DemoSettings) -> Experiment:
    """The demo's experiment as one typed object (what `prepare_demo` writes as experiment.toml)."""
    from vea_bench.heads.pipeline import DistillConfig, GateConfig
    from vea_bench.models.base import GenerationOptions, LoadOptions
    from vea_bench.models.teacher import TINY_TEACHER_ARCH, TINY_TEACHER_IMG_SIZE, TINY_TEACHER_KWARGS
    from vea_bench.train.qlora import QLoRAConfig
    from vea_bench.train.teacher import TeacherConfig

    seeds = list(st.alpha_seeds)
    return Experiment(
        experiment=ExperimentSection(name="demo", workdir=str(out), seed=st.seed, device="cpu", threads=st.threads),
        dataset=DatasetSection(name=DEMO_DATASET, root=str(data), cache=str(out / "cache" / f"{DEMO_DATASET}.h5"),
                               split_seed=42),
        teacher=TeacherSection(settings=Settings(TeacherConfig, {
            "arch": TINY_TEACHER_ARCH, "timm_kwargs": dict(TINY_TEACHER_KWARGS), "img_size": TINY_TEACHER_IMG_SIZE,
            "random_init": True, "epochs": st.teacher_epochs, "lr": st.teacher_lr, "batch_size": 16}), workers=0),
        vlm=VLMSection(settings=Settings(LoadOptions, {"model": str(vlm), "dtype": "fp32"})),
        qlora=QLoRASection(settings=Settings(QLoRAConfig, {
            "kinds": tuple(st.qlora_kinds), "max_steps": st.qlora_steps, "lr": st.qlora_lr, "quantize": False,
            "gradient_checkpointing": False}), instructions=str(instructions)),
        extract=ExtractSection(settings=Settings(GenerationOptions), answer=["generate", "score"], batch_size=16,
                               workers=0),
        distill=DistillSection(settings=Settings(DistillConfig, {
            "depth": 1, "alpha": 0.5, "tau": 2.0, "epochs": st.distill_epochs, "lr": st.distill_lr,
            "batch_size": st.distill_batch}), seeds=seeds),
        gate=GateSection(settings=Settings(GateConfig, {
            "gate_fit": st.gate_fit, "vlm_input": "onehot", "epochs": st.gate_epochs, "lr": st.gate_lr}),
            names=["concat", "moe"]),
        sweep=SweepSection(alpha=[round(a / 10, 1) for a in range(11)], seeds=seeds),
        baselines=BaselinesSection(enabled=True),
        report=ReportSection(formats=["md", "latex"], plots=True, compare_paper=True),
        base=out,
    )


def _mean_std(values: list[float]) -> str:
    """``66.2 ± 6.6`` in percent (sample std over seeds), or one figure for one run."""
    pct = [100 * v for v in values]
    mean = sum(pct) / len(pct)
    if len(pct) < 2:
        return f"{mean:.1f}"
    std = (sum((v - mean) ** 2 for v in pct) / (len(pct) - 1)) ** 0.5
    return f"{mean:.1f} ± {std:.1f}"


def demo_markdown(workdir: str | Path) -> str:
    """The README's demo results section, from the demo's own records and stage ledger.

    One row per stage run and method: test accuracy, mean ± std over the seeds it trained; the
    alpha sweep is Figure 3 (see the report) and stays out. Wall time is the sum of the stage
    times the ledger recorded when each stage ran, so a rerun that skips every stage reports the
    run that made the records.
    """
    from vea_bench.errors import ConfigError
    from vea_bench.pipeline.ledger import Ledger
    from vea_bench.results import ResultsStore

    work = Path(workdir)
    ledger = Ledger.load(work / "artifacts" / "stages.json")
    if not ledger.entries:
        raise ConfigError(f"no demo run in {work} (run `vea-bench demo --out {work}` first)")
    rows: list[tuple[str, str, str, int]] = []
    test_n = None
    for stage, entry in ledger.entries.items():
        if stage.startswith("sweep:"):
            continue
        by_method: dict[str, list[float]] = {}
        for run_id in entry.get("outputs", {}).get("run_ids", []):
            # records sit in <workdir>/<kind>/<run id>.json (found by id: the folder may have moved)
            path = ResultsStore(work).find(run_id)
            if path is None:
                continue
            rec = json.loads(path.read_text())
            test = (rec.get("metrics") or {}).get("test") or {}
            if not isinstance(test.get("accuracy"), (int, float)):
                continue
            test_n = test.get("n", test_n)
            method = str(rec.get("method") or rec.get("kind"))
            by_method.setdefault(method, []).append(float(test["accuracy"]))
        for method, accs in by_method.items():
            rows.append((stage, method, _mean_std(accs), len(accs)))
    seconds = sum(float(e.get("seconds", 0.0)) for e in ledger.entries.values())
    lines = [
        "| stage | method | test accuracy (%) | runs |",
        "|---|---|---:|---:|",
        *[f"| {s} | {m} | {a} | {n} |" for s, m, a, n in rows],
        "",
        f"Test split: {test_n} images; mean ± sample std over the runs (one per seed). Stages took "
        f"{seconds:.0f} s in all (the stage ledger's times; `vea-bench demo --markdown PATH` writes this "
        "section from the demo's records).",
    ]
    return "\n".join(lines) + "\n"
