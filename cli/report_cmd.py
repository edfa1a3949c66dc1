"""`vea-bench table|plot|params` and `vea-bench results list|show`: the paper's tables and figures from run records."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from vea_bench_cli.common import console, err_console, fail, run_guarded, write_output

results_app = typer.Typer(no_args_is_help=True)

ResultsOpt = Annotated[Path, typer.Option("--results", "-r", help="Folder of run records (searched recursively).")]


def _format_choices() -> tuple[type[Enum], str]:
    """`--format`'s choices and help: every registered table format (`vea_bench.report.formats`)."""
    from vea_bench.report.formats import TABLE_FORMATS

    names = TABLE_FORMATS.names()
    helps = ", ".join(f"{n} ({TABLE_FORMATS.get(n).help})" if TABLE_FORMATS.get(n).help else n for n in names)
    return Enum("TableFormat", {n: n for n in names}, type=str), f"Table format: {helps}."  # type: ignore[return-value]


TableFormat, _FORMAT_HELP = _format_choices()


class TableChoice(str, Enum):
    t1 = "1"
    t2 = "2"
    t3 = "3"
    t4 = "4"
    ext = "ext"
    all = "all"


class ConfusionChoice(str, Enum):
    latest = "latest"
    all = "all"
    none = "none"


def _load(results: Path) -> Any:
    """Load records; every skipped file is one stderr warning naming it."""
    import logging

    from vea_bench.report.tables import load_results

    # The library also logs each skip; here they are printed once, as rich warnings, so its own
    # log records are held back for the duration of this call only.
    logger = logging.getLogger("vea_bench.report.tables")
    hold = logging.Filter("vea_bench.report.tables.__none__")
    logger.addFilter(hold)
    try:
        res = run_guarded(load_results, results)
    finally:
        logger.removeFilter(hold)
    for path, why in res.skipped:
        msg = why if str(path) in why else f"{path}: {why}"
        err_console.print(f"[yellow]warning:[/] skipped {msg}", highlight=False, soft_wrap=True)
    return res


def table(
    results: ResultsOpt = Path("results"),
    fmt: Annotated[TableFormat, typer.Option("--format", "-f", help=_FORMAT_HELP)] = TableFormat("rich"),  # type: ignore[valid-type]
    compare_paper: Annotated[bool, typer.Option("--compare-paper", help="Add the paper's numbers and the difference (Δ).")] = False,
    which: Annotated[TableChoice, typer.Option("--table", "-t", help="Which table: 1, 2, 3, 4, ext (extensions) or all.")] = TableChoice.all,
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset of Tables 2 and 4.")] = "fi",
    split: Annotated[str, typer.Option("--split", help="Split whose metrics fill the cells.")] = "test",
    vlm: Annotated[str, typer.Option("--vlm", help="VLM preset or config path whose architecture gives Tables 2-3's counts.")] = "qwen2-vl-7b-instruct",
    teacher: Annotated[str | None, typer.Option("--teacher", help="Teacher architecture for Table 2 (default: the teacher records' arch, else ViT-B/16 at 224 px).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file instead of the terminal.")] = None,
    ci: Annotated[bool, typer.Option("--ci", help="Add each cell's 95 % interval (bootstrap over test images; t over seeds).")] = False,
    significance: Annotated[bool, typer.Option("--significance", help="Mark the best row per column (▲) and rows not significantly different from it (≈, Holm-corrected).")] = False,
) -> None:
    """Render the paper's Tables 1-4 (and extensions) from run records, optionally against the paper."""
    from vea_bench.report.formats import table_format
    from vea_bench.report.tables import build_tables

    if (ci or significance) and split != "test":
        fail("--ci and --significance use the stored test predictions; drop --split or use --split test")
    res = _load(results)
    tables = run_guarded(build_tables, res, which.value, dataset=dataset, split=split, vlm=vlm, teacher=teacher)
    if ci or significance:
        from vea_bench.report.compare import annotate_tables

        for note in run_guarded(annotate_tables, tables, res, ci=ci, marks=significance):
            err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    form = run_guarded(table_format, fmt.value)
    shown = form.renderables(tables, compare=compare_paper) if out is None else None
    if shown is not None:
        for t in shown:
            console.print(t)
        return
    text = form.render(tables, compare=compare_paper)
    if out is None:
        typer.echo(text, nl=False)
        return
    run_guarded(write_output, out, text)
    err_console.print(f"wrote {out}")


def plot(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the figures.")],
    results: ResultsOpt = Path("results"),
    dataset: Annotated[list[str] | None, typer.Option("--dataset", "-d", help="Only these datasets (repeat or comma-separate).")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="Comma-separated: png, pdf, svg.")] = "png,pdf",
    width: Annotated[float, typer.Option("--width", help="Figure width in inches (3.5 = one column, 7.0 = two).")] = 3.5,
    dpi: Annotated[int, typer.Option("--dpi", help="Raster resolution.")] = 300,
    font_size: Annotated[float, typer.Option("--font-size", help="Base font size in points (>= 7 for print).")] = 7.5,
    confusion: Annotated[ConfusionChoice, typer.Option("--confusion", help="Confusion matrices of gate/distill runs: latest per config, all, none.")] = ConfusionChoice.latest,
    loss_curves: Annotated[list[str] | None, typer.Option("--loss-curves", help="Also draw the per-epoch loss curves of these runs (id or prefix; repeat), or 'all'.")] = None,
) -> None:
    """Draw Figure 1 (complementarity), Figure 3 (alpha sweep), confusion matrices and loss curves as PNG/PDF."""
    from vea_bench.report.plots import FigureStyle, render_plots
    from vea_bench.report.tables import require_records

    if width <= 0 or dpi <= 0:
        raise typer.BadParameter("--width and --dpi must be positive")
    if font_size < 7:
        raise typer.BadParameter("--font-size below 7 pt is unreadable in print")
    formats = [f.strip().lower() for f in fmt.split(",") if f.strip()]
    datasets = [d.strip() for item in (dataset or []) for d in item.split(",") if d.strip()] or None
    res = _load(results)
    run_guarded(require_records, res)
    style = FigureStyle(width=width, dpi=dpi, font_size=font_size)
    written, missing = run_guarded(render_plots, res, out, datasets=datasets, formats=formats, style=style,
                                   confusion=confusion.value, loss_curves=list(loss_curves or []))
    for why in missing:
        err_console.print(f"[yellow]not drawn:[/] {why}", highlight=False, soft_wrap=True)
    if not written:
        fail("no figure could be drawn from these records (see above)")
    for p in written:
        console.print(str(p), highlight=False, soft_wrap=True)


def params(
    vlm: Annotated[str, typer.Option("--vlm", help="VLM preset (qwen2-vl-7b-instruct, llava-next-mistral-7b, instructblip-vicuna-7b), its hub id (Qwen/Qwen2-VL-7B-Instruct, offline) or config path.")] = "qwen2-vl-7b-instruct",
    classes: Annotated[int, typer.Option("--classes", "-c", help="Number of classes C (FI 8, Emotion6 6, binary 2).")] = 8,
    depth: Annotated[int, typer.Option("--depth", help="Distill head depth 1-5 (hidden dims [1024, 512, 256, 128, 64][:depth]).")] = 1,
    teacher: Annotated[str, typer.Option("--teacher", help="Teacher: preset (vit, resnet50, vgg16) or timm name.")] = "vit_base_patch16_224",
    gate: Annotated[str, typer.Option("--gate", help="Gate: concat, moe, bilinear, dynamic, cross.")] = "concat",
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank for the adapter count.")] = 8,
) -> None:
    """Parameter counts computed from the architectures (meta device; offline for the paper's models)."""
    from rich.table import Table

    from vea_bench.report.params import param_report

    rep = run_guarded(param_report, vlm, classes, depth=depth, teacher=teacher, gate=gate, lora_r=lora_r)
    v = rep.vlm
    t = Table(title=f"Parameters: {vlm}, C = {classes}, distill depth {depth}", title_justify="left")
    t.add_column("module")
    t.add_column("parameters", justify="right")
    t.add_column("what", style="dim")
    t.add_row("VLM total", f"{v.total:,}", f"{v.model_type}, all weights")
    t.add_row("  vision tower", f"{v.vision_tower:,}", "encoder + merger / projector")
    t.add_row("  language model", f"{v.language_model:,}", "decoder stack + embeddings")
    t.add_row("  merger width D", f"{v.embed_dim:,}", "pooled visual embedding = distill input")
    t.add_row("VLM trainable (paper)", f"{v.quantised_trainable:,}", "all but the quantised Linears: non-Linear params + lm_head")
    t.add_row("  trainable after 4-bit load", f"{v.quantised_trainable_actual:,}",
              f"transformers 5.x: + the quantised Linears' biases ({v.quantised_linear_biases:,})")
    t.add_row(f"  LoRA adapter r={v.lora_r}", f"{v.lora:,}", "q/k/v/o of the language model")
    t.add_row(f"distill head {rep.hidden_dims}", f"{rep.distill_head:,}", f"Linear({v.embed_dim}, ...) -> {classes}")
    t.add_row(f"gate {gate}", f"{rep.gate_params:,}", "over \\[distill logits, VLM one-hot]")
    t.add_row(f"teacher {teacher}", f"{rep.teacher_params:,}", "timm, meta device")
    t.add_row("EmoVLM-KD trainable", f"{rep.emovlm_kd_trainable:,}", "VLM trainable + distill head + gate", style="bold")
    console.print(t)


@results_app.command("list")
def results_list(
    results: ResultsOpt = Path("results"),
    kind: Annotated[str | None, typer.Option("--kind", "-k", help="Only this run kind (teacher, vlm, vlm-eval, distill, gate, baseline, complementarity).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Only this dataset.")] = None,
) -> None:
    """List run records: run id, kind, method, variant, dataset, seed, test accuracy, created."""
    from rich.table import Table

    from vea_bench.results import RUN_KINDS
    from vea_bench.report.selection import metric_of

    if kind is not None and kind not in RUN_KINDS:
        fail(f"unknown run kind '{kind}' (choices: {', '.join(RUN_KINDS)})")
    res = _load(results)
    recs = [r for r in res.records if (kind is None or r.kind == kind) and (dataset is None or r.dataset == dataset)]
    if not recs:
        what = " matching the filters" if res.records else ""
        fail(f"no run records{what} under {results}")
    recs.sort(key=lambda r: (r.created_at, r.run_id))
    t = Table(title=f"{len(recs)} run(s) under {results}", title_justify="left")
    for col, just in (("run id", "left"), ("kind", "left"), ("method", "left"), ("variant", "left"), ("dataset", "left"),
                      ("seed", "right"), ("test acc", "right"), ("created", "left")):
        t.add_column(col, justify=just, overflow="fold", no_wrap=col != "run id")
    for r in recs:
        acc = metric_of(r, "test")
        t.add_row(r.run_id, r.kind, r.method, "" if r.variant == r.method else r.variant, r.dataset, "" if r.seed is None else str(r.seed),
                  "" if acc is None else f"{acc * 100:.2f}", r.created_at[:16].replace("T", " "))
    console.print(t)


@results_app.command("show")
def results_show(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix) or the record's JSON path.")],
    results: ResultsOpt = Path("results"),
) -> None:
    """Show one run: config, provenance, per-split metrics and confusion matrix."""
    import json

    from rich.table import Table

    from vea_bench.report.tables import find_record

    path, r = run_guarded(find_record, results, run)
    console.print(f"[bold]{r.run_id}[/]  ({path})", highlight=False)
    console.print(f"kind {r.kind}  method {r.method}  variant {r.variant}  dataset {r.dataset}  seed {r.seed}  "
                  f"group {r.group}  experiment {r.experiment_id[:12]}  "
                  f"params {r.params if r.params is None else f'{r.params:,}'}  created {r.created_at}  "
                  f"wall {r.wall_time_s}", highlight=False)
    console.rule("config")
    console.print_json(json.dumps(r.config, default=str))
    console.rule("provenance")
    console.print_json(json.dumps({"cache": r.cache, "artifacts": r.artifacts, "environment": r.environment}, default=str))
    console.rule("metrics")
    t = Table()
    for col in ("split", "n", "accuracy", "macro-F1", "KL to teacher"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for split, m in r.metrics.items():
        if not isinstance(m, dict):
            continue
        acc, f1, kl = m.get("accuracy"), m.get("macro_f1"), m.get("kl_to_teacher")
        t.add_row(split, str(m.get("n", "")), "" if acc is None else f"{acc * 100:.2f}",
                  "" if f1 is None else f"{f1 * 100:.2f}", "" if kl is None else f"{kl:.4f}")
    console.print(t)
    for split, m in r.metrics.items():
        cm = m.get("confusion") if isinstance(m, dict) else None
        if not cm:
            continue
        names = r.label_names if len(r.label_names) == len(cm) else [str(i) for i in range(len(cm))]
        ct = Table(title=f"{split} confusion (rows = truth)", title_justify="left")
        ct.add_column("true \\ pred")
        for n in names:
            ct.add_column(n[:6], justify="right")
        for n, row in zip(names, cm):
            ct.add_row(n, *[str(v) for v in row])
        console.print(ct)
        extra = m.get("extra")
        if extra:
            console.print(f"{split} extra: {json.dumps(extra, default=str)}", highlight=False)
    if r.convergence:
        _show_convergence(r.convergence)


def _show_convergence(conv: dict[str, Any]) -> None:
    """How a head converged: the stop reason, the epoch kept and why, and the per-epoch losses."""
    from rich.table import Table

    console.rule("convergence")
    console.print(f"solver {conv.get('solver')}  precision {conv.get('precision')}  schedule {conv.get('schedule')}  "
                  f"epochs run {conv.get('epochs_run')} of {conv.get('max_epochs')}  patience {conv.get('patience')}",
                  highlight=False)
    console.print(f"kept epoch {conv.get('kept_epoch')}: {conv.get('kept_because')}", highlight=False)
    console.print(f"stopped: {conv.get('stop_reason')}", highlight=False)
    if conv.get("still_improving"):
        console.print("[yellow]warning:[/] still improving at its last epoch; a larger --epochs budget may help",
                      highlight=False)
    inp, gv = conv.get("inputs_val_accuracy"), conv.get("gate_val_accuracy")
    if inp and gv is not None:
        parts = ", ".join(f"{k} alone {100 * v:.2f}" for k, v in inp.items())
        console.print(f"val accuracy: gate {100 * gv:.2f}, {parts}", highlight=False)
        if gv < max(inp.values()):
            console.print("[yellow]warning:[/] the gate ends below the better of its two inputs on val", highlight=False)
    tl, vl, va = conv.get("train_loss") or [], conv.get("val_loss") or [], conv.get("val_accuracy") or []
    if tl:
        t = Table(title="per epoch", title_justify="left")
        for col in ("epoch", "train loss", "val loss", "val acc", ""):
            t.add_column(col, justify="right" if col else "left")
        for e, loss in enumerate(tl, start=1):
            t.add_row(str(e), f"{loss:.4f}", f"{vl[e - 1]:.4f}" if e <= len(vl) else "",
                      f"{100 * va[e - 1]:.2f}" if e <= len(va) else "", "kept" if e == conv.get("kept_epoch") else "")
        console.print(t)


def compare(
    run_a: Annotated[str, typer.Argument(help="Run id (or unique prefix) or a group of seed runs (the record's 'group').")],
    run_b: Annotated[str, typer.Argument(help="The run or group to compare against (differences are A - B).")],
    results: ResultsOpt = Path("results"),
    method: Annotated[str, typer.Option("--method", help="Bootstrap interval: percentile or BCa.")] = "percentile",
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed.")] = 0,
) -> None:
    """Is A better than B? Paired difference on the same test images, its 95 % interval, McNemar's exact p."""
    from vea_bench.report.compare import compare as do_compare
    from vea_bench.report.compare import format_comparison

    res = _load(results)
    cmp = run_guarded(do_compare, res, run_a, run_b, method=method, seed=seed, n_resamples=resamples)
    for line in format_comparison(cmp):
        console.print(line, highlight=False, soft_wrap=True)


def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for index.html and its images.")],
    results: ResultsOpt = Path("results"),
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Dataset of Tables 2/4 and Figure 4 (default: the one with gate runs).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap and of Figure 4's choice of images.")] = 0,
    examples: Annotated[int, typer.Option("--examples", help="Figure 4 images per direction.")] = 4,
    gate: Annotated[str | None, typer.Option("--gate", help="Gate of Figure 4 and the comparisons (default concat; dynamic and cross show source weights).")] = None,
) -> None:
    """One static HTML page (opens offline from disk): tables with intervals and marks, figures, Figure 4, provenance."""
    from vea_bench.report.html import build_report

    if examples < 1:
        raise typer.BadParameter("--examples must be at least 1")
    res = _load(results)
    rep = run_guarded(build_report, res, out, dataset=dataset, seed=seed, examples=examples, gate=gate)
    for why in rep.missing:
        err_console.print(f"[yellow]not in report:[/] {why}", highlight=False, soft_wrap=True)
    console.print(str(rep.index), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the top-level reporting commands to ``app``."""
    app.command("table")(table)
    app.command("plot")(plot)
    app.command("params")(params)
    app.command("compare")(compare)
    app.command("report")(report)
