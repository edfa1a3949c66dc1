"""`vea-bench train teacher|vlm`: fine-tune a conventional model (baseline / KD teacher), QLoRA-tune the VLM."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from vea_bench_cli.common import (
    AllowOutsideRootOpt,
    StrictOpt,
    setup_logging,
    RichProgress,
    console,
    echo_path,
    run_guarded,
)
from vea_bench_cli.train_cmd import app

DatasetArg = Annotated[str, typer.Argument(help="Registered dataset name (see `vea-bench datasets list`).")]
RootOpt = Annotated[Path, typer.Option("--root", "-r", help="The dataset's root folder.")]
SplitSeedOpt = Annotated[int, typer.Option("--split-seed", help="Seed of the stratified split where the dataset has none.")]
LabelSpaceOpt = Annotated[str | None, typer.Option("--label-space", help="Force a label space (e.g. binary for FI / EmoSet).")]
ResultsOpt = Annotated[Path, typer.Option("--results", help="Run records also go here (results/<kind>/<run>.json).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output folder.")]


def _logging(quiet: bool) -> None:
    setup_logging(quiet)


@app.command("teacher")
def teacher_cmd(
    dataset: DatasetArg,
    root: RootOpt,
    arch: Annotated[str, typer.Option("--arch", help="timm architecture or preset: vit (ViT-B/16 224), vit-384, resnet50, vgg16, or any timm name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder: best/last safetensors, config.json, resume state, run record.")],
    weights: Annotated[Path | None, typer.Option("--weights", help="Local pretrained weights (safetensors or torch state dict) to start from.")] = None,
    random_init: Annotated[bool, typer.Option("--random-init", help="Train from random weights (far below the paper's numbers).")] = False,
    epochs: Annotated[int, typer.Option(help="Epochs (SPEC: 10).")] = 10,
    lr: Annotated[float, typer.Option(help="Adam learning rate (SPEC: 3e-5).")] = 3e-5,
    wd: Annotated[float, typer.Option("--wd", help="Adam weight decay (SPEC: 1e-5).")] = 1e-5,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size (SPEC: 10).")] = 10,
    img_size: Annotated[int | None, typer.Option("--img-size", help="Input size (default: the architecture's own, e.g. 384 for vit_base_patch16_384).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed (init of the head, shuffling, augmentation).")] = 42,
    device: DeviceOpt = "auto",
    workers: Annotated[int, typer.Option(help="Data-loader worker processes.")] = 0,
    results: ResultsOpt = Path("results"),
    split_seed: SplitSeedOpt = 42,
    label_space: LabelSpaceOpt = None,
    allow_outside_root: AllowOutsideRootOpt = False,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune a conventional vision model: Table 1's baselines and the distillation teacher.

    Pretrained weights come from the hub when reachable, or from [bold]--weights[/]; without either
    pass [bold]--random-init[/]. Rerun the same command to resume an interrupted run.

    [bold]Example[/]: vea-bench train teacher fi --root data/FI --arch vit-384 --weights vit_b16_384.safetensors --out runs/fi-vit
    """
    if weights is not None and random_init:
        raise typer.BadParameter("give either --weights or --random-init, not both", param_hint="--weights")
    _logging(quiet)

    def go() -> None:
        from vea_bench.datasets import load_dataset
        from vea_bench.train.teacher import TeacherConfig, train_teacher

        index = load_dataset(dataset, root, seed=split_seed, label_space=label_space,
                             allow_outside_root=allow_outside_root, strict=strict)
        cfg = TeacherConfig(arch=arch, epochs=epochs, lr=lr, weight_decay=wd, batch_size=batch_size, img_size=img_size,
                            seed=seed, weights=str(weights) if weights else None, random_init=random_init)
        result = train_teacher(index, cfg, out, device=device, workers=workers, results_dir=results,
                               progress=RichProgress("img", quiet=quiet))
        if quiet:
            echo_path(result.out, quiet)
            return
        test = result.record.metrics["test"]
        val = result.record.metrics["val"]
        console.print(
            f"[bold green]{result.record.method}[/] on {index.name}: test accuracy [bold]{test['accuracy']:.4f}[/] "
            f"(macro-F1 {test['macro_f1']:.4f}, n={test['n']}), val {val['accuracy']:.4f}, best epoch {result.best_epoch}"
        )
        console.print(f"checkpoint: {result.out}  record: {', '.join(str(p) for p in result.record_paths)}")

    run_guarded(go)


@app.command("vlm")
def vlm_cmd(
    dataset: DatasetArg,
    root: RootOpt,
    vlm: Annotated[str, typer.Option("--vlm", help="Base VLM: hub id (Qwen/Qwen2-VL-7B-Instruct) or local folder.")],
    instructions: Annotated[Path, typer.Option("--instructions", help="Instruction data: reference JSON list, `instruct generate` JSONL or `instruct build` triplets.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: adapter/ (peft), checkpoint/ (resume), run record.")],
    quant: Annotated[str, typer.Option("--quant", help="4bit: NF4 + double quantisation (SPEC; GPU, or CPU through bitsandbytes' CPU kernels); none: plain LoRA on unquantised weights.")] = "4bit",
    no_quant: Annotated[bool, typer.Option("--no-quant", help="Same as --quant none.")] = False,
    loss_on: Annotated[str, typer.Option("--loss-on", help="answer: loss on the answer tokens only (default); all: on every non-pad, non-image token, as the reference trains.")] = "answer",
    image_position: Annotated[str, typer.Option("--image-position", help="first: image before the question in the user turn (default); last: after it, as the reference does. Pass the same to extract.")] = "first",
    epochs: Annotated[int, typer.Option(help="Epochs (SPEC: 5).")] = 5,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (SPEC: 1e-4).")] = 1e-4,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many optimiser steps.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of LoRA init, data order and dropout.")] = 42,
    device: DeviceOpt = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Trade compute for memory (SPEC: on).")] = True,
    max_side: Annotated[int, typer.Option("--max-side", help="Longer image side cap before the processor (SPEC: 1024).")] = 1024,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", help="Optional pixel budget per image; pass the same to extract.")] = None,
    save_every: Annotated[int, typer.Option("--save-every", help="Also checkpoint every N steps (0: at epoch ends only).")] = 0,
    eval_limit: Annotated[int | None, typer.Option("--eval-limit", help="Evaluate on the first N test images only.")] = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the test-split check after training.")] = False,
    results: ResultsOpt = Path("results"),
    split_seed: SplitSeedOpt = 42,
    label_space: LabelSpaceOpt = None,
    allow_outside_root: AllowOutsideRootOpt = False,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """QLoRA instruction tuning of the VLM (stage 1) on categorical, conversation and reasoning instructions.

    SPEC's recipe: 4-bit NF4 + double quantisation, LoRA r 8 / alpha 8 / dropout 0.05 on the
    language model's q/k/v/o projections, AdamW 1e-4, clip 0.3, warmup 3 %, constant rate.
    The adapter lands in OUT/adapter; use it with [bold]vea-bench extract --adapter OUT/adapter[/].

    [bold]Example[/]: vea-bench train vlm fi --root data/FI --vlm Qwen/Qwen2-VL-7B-Instruct --instructions fi.jsonl --out runs/fi-qlora
    """
    if quant.lower() not in ("4bit", "nf4", "none"):
        raise typer.BadParameter(f"'{quant}' is not 4bit or none", param_hint="--quant")
    _logging(quiet)

    def go() -> None:
        from vea_bench.datasets import load_dataset
        from vea_bench.train.qlora import QLoRAConfig, train_vlm

        cfg = QLoRAConfig(vlm=vlm, quantize=not no_quant and quant.lower() != "none", epochs=epochs, lr=lr,
                          max_steps=max_steps, seed=seed, gradient_checkpointing=gradient_checkpointing,
                          max_side=max_side, max_pixels=max_pixels, loss_on=loss_on, image_position=image_position)
        cfg.validate()
        index = load_dataset(dataset, root, seed=split_seed, label_space=label_space,
                             allow_outside_root=allow_outside_root, strict=strict)
        result = train_vlm(index, cfg, instructions, out, device=device, save_every=save_every,
                           eval_split=None if no_eval else "test", eval_limit=eval_limit, results_dir=results,
                           progress=RichProgress("step", quiet=quiet))
        if quiet:
            echo_path(result.adapter_dir, quiet)
            return
        c = result.record.config
        console.print(f"[bold green]QLoRA[/] {vlm} on {index.name}: {result.steps} steps, loss "
                      f"{c['train_loss_first']:.4f} -> {c['train_loss_last']:.4f}")
        if "test" in result.record.metrics:
            m = result.record.metrics["test"]
            console.print(f"test accuracy (greedy categorical answer) [bold]{m['accuracy']:.4f}[/] (n={m['n']})")
        console.print(f"adapter: {result.adapter_dir}  record: {', '.join(str(p) for p in result.record_paths)}")

    run_guarded(go)
