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

from vea_bench.progress import Progress, ensure

DEMO_DATASET = "fi"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes chosen so the whole demo runs in a few minutes on 2 CPU cores."""

    per_class: int = 40
    image_size: int = 64
    seed: int = 0
    teacher_epochs: int = 6
    qlora_steps: int = 24
    distill_epochs: int = 30
    gate_epochs: int = 30
    alpha_seeds: tuple[int, ...] = (0, 1)


def _instructions(root: Path, out: Path, seed: int) -> Path:
    """A generated-response file in `instruct generate`'s JSONL shape, for the synthetic train images.

    A real study gets these from a chat model (`vea-bench instruct generate`); here the text says
    plainly what the synthetic images are, so the QLoRA stage has honest, well-formed input.
    """
    from vea_bench.datasets import load_dataset

    index = load_dataset(DEMO_DATASET, root, seed=42)
    space = index.label_space
    with out.open("w") as f:
        for s in index.split("train"):
            label = space.labels[s.label]
            response = (
                f"Key elements: a synthetic test pattern whose hue, stripe texture and central shape are the "
                f"ones the generator draws for the class '{label}', with random noise and jitter.\n"
                f"Reasoning: the hue, texture and shape together match the pattern of '{label}', so the "
                f"emotion category of this image is {label}."
            )
            f.write(json.dumps({"image": s.path, "label": label, "response": response}) + "\n")
    return out


def prepare_demo(out: str | Path, settings: DemoSettings | None = None, *, progress: Progress | None = None) -> Path:
    """Write the demo's dataset, tiny VLM, instructions and experiment file under ``out``; returns the file."""
    from vea_bench.datasets.synthetic import make_synthetic
    from vea_bench.models.teacher import TINY_TEACHER_ARCH, TINY_TEACHER_IMG_SIZE, TINY_TEACHER_KWARGS
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

    kwargs = ", ".join(f"{k} = {json.dumps(v)}" for k, v in TINY_TEACHER_KWARGS.items())
    alphas = ", ".join(f"{a / 10:.1f}" for a in range(11))
    seeds = ", ".join(str(s) for s in st.alpha_seeds)
    toml = f"""# vea-bench demo: the whole EmoVLM-KD study on a synthetic FI-layout set with tiny random models.
# Written by `vea-bench demo`; rerun it with `vea-bench run {out / 'experiment.toml'}`.
# Learning rates and epochs are raised from SPEC's (1e-5 / 1e-4) because the set is tiny.

[experiment]
name = "demo"
workdir = "{out}"
seed = {st.seed}
device = "cpu"

[dataset]
name = "{DEMO_DATASET}"
root = "{data}"
cache = "{out / 'cache' / (DEMO_DATASET + '.h5')}"
split_seed = 42

[teacher]
arch = "{TINY_TEACHER_ARCH}"
timm_kwargs = {{ {kwargs} }}
img_size = {TINY_TEACHER_IMG_SIZE}
random_init = true
epochs = {st.teacher_epochs}
lr = 1e-3
batch_size = 16
workers = 0

[vlm]
model = "{vlm}"
dtype = "fp32"

[qlora]
instructions = "{instructions}"
max_steps = {st.qlora_steps}
lr = 1e-3
quantize = false

[extract]
answer = ["generate", "score"]
batch_size = 16
workers = 0

[distill]
depth = 1
alpha = 0.5
tau = 2.0
epochs = {st.distill_epochs}
lr = 1e-3
seeds = [{seeds}]

[gate]
names = ["concat", "moe"]
fit = "train"
vlm_input = "onehot"
epochs = {st.gate_epochs}
lr = 1e-2

[sweep]
alpha = [{alphas}]
seeds = [{seeds}]

[baselines]
enabled = true

[report]
formats = ["md", "latex"]
plots = true
compare_paper = true
"""
    path = out / "experiment.toml"
    path.write_text(toml)
    return path
