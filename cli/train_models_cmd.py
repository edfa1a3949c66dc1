"""`vea-bench train teacher|vlm`: fine-tune a conventional model (baseline / KD teacher), QLoRA-tune the VLM."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vea_bench.schema import NOT_ON_CLI, Settings
from vea_bench.train.qlora import QLoRAConfig
from vea_bench.train.teacher import TeacherConfig
from vea_bench_cli.common import (
    AllowOutsideRootOpt,
    ImageColumnOpt,
    LabelColumnOpt,
    column_options,
    StrictOpt,
    setup_logging,
    RichProgress,
    console,
    echo_path,
    run_guarded,
)
from vea_bench_cli.schema_options import Group, config_options
from vea_bench_cli.tracker_option import TrackerOpt, tracking
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


def _not_on_cli(cls: type) -> tuple[str, ...]:
    """The fields of ``cls`` an experiment file sets but the command line does not (`NOT_ON_CLI`)."""
    return tuple(name for (owner, name) in NOT_ON_CLI if owner == cls.__name__)


# TeacherConfig's and QLoRAConfig's fields as options: their help and defaults are the fields' own
# (`vea_bench.train.teacher`, `vea_bench.train.qlora`); `NOT_ON_CLI` lists those left to a file.
TEACHER_GROUPS = (Group("teacher_options", TeacherConfig, exclude=_not_on_cli(TeacherConfig), show_defaults=True),)
VLM_GROUPS = (Group("qlora_options", QLoRAConfig, exclude=_not_on_cli(QLoRAConfig), show_defaults=True),)


@app.command("teacher")
@config_options(*TEACHER_GROUPS)
def teacher_cmd(
    dataset: DatasetArg,
    root: RootOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder: best/last safetensors, config.json, resume state, run record.")],
    teacher_options: dict[str, Any],
    device: DeviceOpt = "auto",
    workers: Annotated[int, typer.Option(help="Data-loader worker processes.")] = 0,
    results: ResultsOpt = Path("results"),
    split_seed: SplitSeedOpt = 42,
    label_space: LabelSpaceOpt = None,
    allow_outside_root: AllowOutsideRootOpt = False,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
    tracker: TrackerOpt = None,
) -> None:
    """Fine-tune a conventional vision model: Table 1's baselines and the distillation teacher.

    Pretrained weights come from the hub when reachable, or from [bold]--weights[/]; without either
    pass [bold]--random-init[/]. Rerun the same command to resume an interrupted run.

    [bold]Example[/]: vea-bench train teacher fi --root data/FI --arch vit-384 --weights vit_b16_384.safetensors --out runs/fi-vit
    """
    _logging(quiet)

    def go() -> None:
        from vea_bench.datasets import load_dataset
        from vea_bench.distributed import launch_env
        from vea_bench.train.teacher import train_teacher

        cfg = Settings(TeacherConfig, teacher_options).build()
        cfg.validate()
        index = load_dataset(dataset, root, seed=split_seed, label_space=label_space,
                             allow_outside_root=allow_outside_root, strict=strict, **column_options(image_column, label_column))
        main = launch_env().is_main  # under a launcher rank 0 alone tracks and speaks for the job
        with tracking(tracker if main else None) as tr:
            tr.start(f"teacher-{index.name}-{cfg.arch}", vars(cfg))
            result = train_teacher(index, cfg, out, device=device, workers=workers, results_dir=results,
                                   progress=RichProgress("img", quiet=quiet), tracker=tr)
            tr.record(result.record)
        if not main:
            return
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
@config_options(*VLM_GROUPS)
def vlm_cmd(
    dataset: DatasetArg,
    root: RootOpt,
    instructions: Annotated[Path, typer.Option("--instructions", help="Instruction data: reference JSON list, `instruct generate` JSONL or `instruct build` triplets.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: adapter/ (peft), checkpoint/ (resume), run record.")],
    qlora_options: dict[str, Any],
    no_quant: Annotated[bool, typer.Option("--no-quant", help="Same as --quant none.")] = False,
    device: DeviceOpt = "auto",
    save_every: Annotated[int, typer.Option("--save-every", help="Also checkpoint every N steps (0: at epoch ends only).")] = 0,
    eval_limit: Annotated[int | None, typer.Option("--eval-limit", help="Evaluate on the first N test images only.")] = None,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="Skip the test-split check after training.")] = False,
    results: ResultsOpt = Path("results"),
    split_seed: SplitSeedOpt = 42,
    label_space: LabelSpaceOpt = None,
    allow_outside_root: AllowOutsideRootOpt = False,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
    tracker: TrackerOpt = None,
) -> None:
    """QLoRA instruction tuning of the VLM (stage 1) on categorical, conversation and reasoning instructions.

    SPEC's recipe: 4-bit NF4 + double quantisation, LoRA r 8 / alpha 8 / dropout 0.05 on the
    language model's q/k/v/o projections, AdamW 1e-4, clip 0.3, warmup 3 %, constant rate.
    The adapter lands in OUT/adapter; use it with [bold]vea-bench extract --adapter OUT/adapter[/].

    [bold]Example[/]: vea-bench train vlm fi --root data/FI --vlm Qwen/Qwen2-VL-7B-Instruct --instructions fi.jsonl --out runs/fi-qlora
    """
    _logging(quiet)

    def go() -> None:
        from vea_bench.datasets import load_dataset
        from vea_bench.distributed import launch_env
        from vea_bench.errors import ConfigError
        from vea_bench.train.qlora import train_vlm

        given = dict(qlora_options)
        if no_quant:
            if given.get("quantize", False):
                raise ConfigError("--no-quant contradicts --quant 4bit; pass one")
            given["quantize"] = False
        cfg = Settings(QLoRAConfig, given).build()
        cfg.validate()
        index = load_dataset(dataset, root, seed=split_seed, label_space=label_space,
                             allow_outside_root=allow_outside_root, strict=strict, **column_options(image_column, label_column))
        main = launch_env().is_main  # under a launcher rank 0 alone tracks and speaks for the job
        with tracking(tracker if main else None) as tr:
            tr.start(f"qlora-{index.name}", vars(cfg))
            result = train_vlm(index, cfg, instructions, out, device=device, save_every=save_every,
                               eval_split=None if no_eval else "test", eval_limit=eval_limit, results_dir=results,
                               progress=RichProgress("step", quiet=quiet), tracker=tr)
            tr.record(result.record)
        if not main:
            return
        if quiet:
            echo_path(result.adapter_dir, quiet)
            return
        c = result.record.config
        console.print(f"[bold green]QLoRA[/] {cfg.vlm} on {index.name}: {result.steps} steps, loss "
                      f"{c['train_loss_first']:.4f} -> {c['train_loss_last']:.4f}")
        if "test" in result.record.metrics:
            m = result.record.metrics["test"]
            console.print(f"test accuracy (greedy categorical answer) [bold]{m['accuracy']:.4f}[/] (n={m['n']})")
        console.print(f"adapter: {result.adapter_dir}  record: {', '.join(str(p) for p in result.record_paths)}")

    run_guarded(go)
