"""The paper's Tables 1-4 (and an Extensions table) from run records, as the table model every format renders.

Tables read only run records (`vea_bench.results.records`), never models, so every number traces back to
the runs, data and code that produced it. How cells are filled:

- **Which records.** Rows are data: a `Select` over the record's typed fields (``kind``,
  ``method``, ``variant``, config values; conventions in `vea_bench.results.records`), one dataset per
  column. The paper's rows carry theirs in the bundled paper data; a gate or head registered
  later gets its rows (Table 4, Extensions) without a change here.
- **Seeds and reruns.** Records of a cell are grouped by their ``experiment_id`` (the config
  without seeds, run ids, device and output places; `vea_bench.results.records.experiment_id`).
  When a cell has several experiments (a rerun with another learning rate, say) the one holding
  the most recently created record wins: the table shows your latest experiment, and older ones
  stay available through `vea-bench results list`. Within the group, a seed run more than once
  counts once (its latest record). The cell is the mean over seeds; ``±`` is the sample standard
  deviation over seeds (``np.std(..., ddof=1)``), shown only with two or more seeds.
- **Paper settings first.** Where a table is about the paper's setting (Tables 2-4 and Table 1's
  EmoVLM-KD; the paper's alpha, gate, head and VLM are in its data, `report.paper.paper_setting`),
  records at the paper's alpha are preferred in a cell when present.
- **Percent.** Records hold fractions; tables show percent with two decimals.
- **Missing cells say why**: ``not run`` (no record), ``reported only`` (a literature number,
  with ``--compare-paper``), ``— in paper`` (the paper has a dash there).
- Literature rows (WSCNet, Stimuli-aware, MDAN, PDANet, EmoVIT) come from the bundled paper data
  and are always marked ``(reported)``.

Which records fill a cell is `report.selection`'s; the model (`Table`, `Row`, `Cell`) is
`report.table_model`'s; turning it into text is each registered format's (`report.formats`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vea_bench.errors import ConfigError
from vea_bench.report.paper import dataset_title, paper_results, paper_setting
from vea_bench.report.selection import (
    NAMED_SELECTS,
    STD_DDOF,
    Results,
    Select,
    _gate_params,
    _hidden_dims,
    _params_of,
    aggregate,
    datasets_in,
    emovlm_kd,
    latest_group,
    num_classes_for,
    paper_distill,
    paper_gate_setting,
)
from vea_bench.report.table_model import Cell, Column, Row, Table
from vea_bench.results import ResultsStore, RunRecord, experiment_id

log = logging.getLogger(__name__)

TABLE_IDS = ("1", "2", "3", "4", "ext")

EMPTY_HINT = (
    "run `vea-bench demo` for a tiny end-to-end example, or train runs (`vea-bench train ...`, "
    "`vea-bench sweep ...`) with --results pointing here"
)

# ============================================================================ loading

def load_results(results_dir: str | Path) -> Results:
    """Read every run record under ``results_dir``; corrupt or foreign JSON is skipped with a warning."""
    root = Path(results_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: not a folder (give the results folder that holds run records)")
    good, bad = ResultsStore(root).scan()
    for path, why in bad:
        log.warning("skipped %s: %s", path, why)
    registered_variants([r for _, r in good])
    return Results(root=root, records=[r for _, r in good], paths={r.run_id: p for p, r in good}, skipped=bad)


def registered_variants(records: Sequence[RunRecord]) -> None:
    """Spell every gate's and head's variant by its registered name, in place.

    A hand-made or older record may name its gate or head by an alias ("cross"); its rows are the
    registered entry's ("crossgating"), and its experiment id follows the name it now has.
    """
    if not any(r.kind in ("gate", "distill") for r in records):
        return
    from vea_bench.heads.distill import HEADS
    from vea_bench.heads.gates import GATES

    registries = {"gate": GATES, "distill": HEADS}
    for r in records:
        reg = registries.get(r.kind)
        if reg is None or r.variant not in reg or reg.canonical(r.variant) == r.variant:
            continue   # not a registry's entry (a gate since removed keeps its name), or already its name
        r.variant = reg.canonical(r.variant)
        r.experiment_id = experiment_id(r.kind, r.method, r.variant, r.dataset, r.config)


def require_records(results: Results) -> None:
    """An empty results folder is a one-line error saying what to run."""
    if not results.records:
        where = "does not exist" if not results.root.exists() else "holds no run records"
        raise ConfigError(f"{results.root} {where}: {EMPTY_HINT}")


def find_record(results_dir: str | Path, run: str) -> tuple[Path, RunRecord]:
    """A record by path, run id or unique run-id prefix."""
    p = Path(run)
    if p.suffix == ".json" and p.exists():
        return p, RunRecord.load(p)
    res = load_results(results_dir)
    hits = [(res.paths[r.run_id], r) for r in res.records if r.run_id == run]
    if not hits:
        hits = [(res.paths[r.run_id], r) for r in res.records if r.run_id.startswith(run)]
    if not hits:
        raise ConfigError(f"no run '{run}' under {res.root} (see `vea-bench results list`)")
    if len(hits) > 1:
        raise ConfigError(f"'{run}' matches {len(hits)} runs under {res.root}; give more of the run id")
    return hits[0]


def _acc_cell(records: Sequence[RunRecord], split: str, paper: float | None, *, paper_has_row: bool = True) -> Cell:
    agg = aggregate(records, split)
    cell = Cell(kind="acc", paper=paper, paper_note="" if paper is not None else ("— in paper" if paper_has_row else "not in paper"))
    if agg is None:
        cell.note = "not run"
        return cell
    cell.value, cell.std, cell.n, cell.run_ids = agg.mean * 100, (None if agg.std is None else agg.std * 100), agg.n, agg.run_ids
    return cell


def _reported_cell(paper: float | None) -> Cell:
    if paper is None:
        return Cell(kind="acc", note="— in paper", reported=True, paper_note="— in paper")
    return Cell(kind="acc", value=paper, reported=True, paper=paper)


# ============================================================================ Table 1

@dataclass(frozen=True)
class ExtraRows:
    """Rows a Table 1 group adds for records no paper row shows: one per distinct ``by`` value."""

    select: Select
    by: str                 # "method" or "variant"
    label: str = "{}"
    key: str = "{}"


# Records the paper's rows of a group leave over (another teacher, another VLM family) get rows here.
TABLE1_EXTRA: dict[str, ExtraRows] = {
    "conventional": ExtraRows(Select(kind="teacher"), by="method"),
    "zero-shot": ExtraRows(Select(kind="vlm-eval", config=(("tuned", False),)), by="variant"),
    "instruction-tuned": ExtraRows(Select(kind="vlm-eval", config=(("tuned", True),)), by="variant",
                                   label="{} + QLoRA (VLM alone)", key="{}-tuned"),
}


def table1(results: Results, *, split: str = "test") -> Table:
    """Methods x datasets, grouped as the paper (conventional, VEA-specific, zero-shot, instruction-tuned).

    Each paper row of ours carries its selector in the paper data (``select``; the EmoVLM-KD row
    names `emovlm_kd`). Records no row of their group shows get rows from `TABLE1_EXTRA`.
    """
    paper = paper_results()["table1"]
    datasets = datasets_in(results)
    cols = [Column(d, dataset_title(d)) for d in datasets]
    groups = {g["key"]: g["title"] for g in paper["groups"]}
    recs = results.records
    rows: list[Row] = []

    def our_row(key: str, label: str, group: str, sel: Select, keep: Callable[[RunRecord], bool],
                paper_acc: dict[str, Any] | None) -> Row:
        cells = {}
        for d in datasets:
            pv = paper_acc.get(d) if paper_acc else None
            chosen = [r for r in sel.pick(recs, d) if keep(r)]
            cells[d] = _acc_cell(chosen, split, pv, paper_has_row=paper_acc is not None and d in paper_acc)
        return Row(label=label, cells=cells, group=group, key=key)

    for group in groups:
        shown: list[Select] = []
        for prow in [p for p in paper["rows"] if p["group"] == group]:
            key, label = prow["key"], prow["label"]
            if prow["reported"]:
                rows.append(Row(label=f"{label} (reported)", cells={d: _reported_cell(prow["acc"].get(d)) for d in datasets},
                                group=group, reported=True, key=key))
                continue
            spec = prow["select"]
            sel = NAMED_SELECTS[spec]() if isinstance(spec, str) else Select.of(spec)
            shown.append(sel)
            rows.append(our_row(key, label, group, sel, lambda r: True, prow["acc"]))
        extra = TABLE1_EXTRA.get(group)
        if extra is None:
            continue
        rest = [r for r in extra.select.pick(recs) if not any(s.matches(r) for s in shown)]
        for v in sorted({str(getattr(r, extra.by)) for r in rest}, key=str.lower):
            rows.append(our_row(extra.key.format(v), extra.label.format(v), group, extra.select,
                                lambda r, v=v: str(getattr(r, extra.by)) == v and not any(s.matches(r) for s in shown),
                                None))
    return Table(
        id="1", title=f"Table 1: {paper['caption']}", columns=cols, rows=rows, groups=groups,
        notes=_standard_notes(split) + [
            f"EmoVLM-KD: {_gate_title(paper_setting()['gate'])} gate over the VLM's one-hot answer, fitted on train "
            f"(alpha = {paper_setting()['alpha']:g} runs preferred).",
        ],
    )


def _gate_title(name: str) -> str:
    from vea_bench.heads.gates import gate_display_name

    return gate_display_name(name)


def _standard_notes(split: str) -> list[str]:
    return [
        f"Accuracy (%) on the {split} split; mean ± sample std (ddof={STD_DDOF}) over seeds, n = number of seeds.",
        "(reported): numbers quoted by the paper from other work, not re-run here.",
    ]


# ============================================================================ Table 2

def table2(results: Results, *, dataset: str = "fi", split: str = "test", vlm: str | None = None,
           teacher: str | None = None) -> Table:
    """Trainable parameters and accuracy of VLM, distill head, teacher, EmoVLM-KD.

    Parameters are counted at the paper's scale, from the architectures of ``vlm`` (default: the
    paper's VLM) and ``teacher``, so they compare with the paper whatever size the runs had.
    """
    from vea_bench.report import params as P

    paper = paper_results()["table2"]
    setting = paper_setting()
    on_paper_ds = dataset == paper["dataset"]
    prow = {p["key"]: p for p in paper["rows"]} if on_paper_ds else {}
    c = num_classes_for(results, dataset)
    vlm = vlm or P.DEFAULT_VLM
    counts = P.vlm_counts_cached(vlm)
    recs = results.records
    dims = tuple(paper["distill_dims"])

    tuned = Select(kind="vlm-eval", config=(("tuned", True),)).pick(recs, dataset)
    tuned = [r for r in tuned if r.variant == setting["vlm_backend"]] or tuned   # the paper's VLM first
    teachers = Select(kind="teacher", method=paper["teacher_method"]).pick(recs, dataset)

    teacher_arch = teacher
    if teacher_arch is None:
        chosen = latest_group(teachers)
        teacher_arch = str(chosen[0].config.get("arch") or P.DEFAULT_TEACHER) if chosen else P.DEFAULT_TEACHER
    n_distill = P.distill_head_params(counts.embed_dim, c, dims)
    n_gate = _gate_params(setting["gate"], c)
    n_teacher = P.teacher_params(teacher_arch, c)
    n_vlm = counts.quantised_trainable

    def row(key: str, label: str, n_params: int, sel: list[RunRecord]) -> Row:
        p = prow.get(key, {})
        pc = Cell(kind="count", value=n_params, paper=p.get("params"), paper_note="" if p else "not in paper")
        ac = _acc_cell(sel, split, p.get("acc"), paper_has_row=bool(p))
        return Row(label=label, cells={"params": pc, "acc": ac}, key=key)

    rows = [
        row("vlm", "(1) VLM", n_vlm, tuned),
        row("distill", "(2) Distill", n_distill, paper_distill(dims).pick(recs, dataset)),
        row("teacher", "(3) ViT" if teacher_arch.startswith("vit") else f"(3) {teacher_arch}", n_teacher, teachers),
        row("emovlm-kd", "(4) EmoVLM-KD", n_vlm + n_distill + n_gate, emovlm_kd().pick(recs, dataset)),
    ]
    return Table(
        id="2", title=f"Table 2: {paper['caption']} ({dataset_title(dataset)}, {c} classes)",
        columns=[Column("params", "Parameters", kind="count"), Column("acc", "Accuracy")], rows=rows,
        notes=[
            f"Parameters computed from the architectures: VLM {vlm} on the meta device, distill head "
            f"Linear({counts.embed_dim}, 1024)-GELU-Dropout-Linear(1024, {c}), teacher {teacher_arch}, "
            f"Concat & Linear gate Linear({2 * c}, {c}).",
            f"(1) counts what stays trainable after 4-bit loading (everything but the quantised nn.Linear "
            f"layers; lm_head kept), the paper's definition; its LoRA adapter (r={counts.lora_r} on q/k/v/o) "
            f"alone is {counts.lora:,}. (4) = (1) + (2) + gate ({n_gate}).",
            _standard_notes(split)[0],
        ],
    )


# ============================================================================ Table 3

def table3(results: Results, *, split: str = "test", vlm: str | None = None) -> Table:
    """Distill-head depth: hidden dims, parameter count (at the paper's scale, from ``vlm``) and accuracy."""
    from vea_bench.report import params as P

    paper = paper_results()["table3"]
    distill = Select(kind="distill", variant=paper_setting()["distill_head"]).pick(results.records)
    first = tuple(paper_results()["table2"]["distill_dims"])
    sweep_ds = {r.dataset for r in distill if _hidden_dims(r) not in (None, first)}
    datasets = list(paper["datasets"]) + sorted(sweep_ds - set(paper["datasets"]))
    counts = P.vlm_counts_cached(vlm or P.DEFAULT_VLM)
    classes = {d: num_classes_for(results, d) for d in datasets}
    paper_rows = {tuple(p["hidden_dims"]): p for p in paper["rows"]}
    all_dims = list(paper_rows) + sorted({h for r in distill if (h := _hidden_dims(r)) is not None} - set(paper_rows))

    cols = [Column(f"params:{d}", f"Params {dataset_title(d)}", kind="count") for d in datasets]
    cols += [Column(f"acc:{d}", f"Acc. {dataset_title(d)}") for d in datasets]
    rows = []
    for dims in all_dims:
        p = paper_rows.get(dims)
        cells: dict[str, Cell] = {}
        for d in datasets:
            pp = p["params"].get(d) if p else None
            cells[f"params:{d}"] = Cell(kind="count", value=P.distill_head_params(counts.embed_dim, classes[d], dims),
                                        paper=pp, paper_note="" if pp is not None else "not in paper")
            pa = p["acc"].get(d) if p else None
            cells[f"acc:{d}"] = _acc_cell(paper_distill(dims).pick(distill, d), split, pa, paper_has_row=pa is not None)
        rows.append(Row(label="[" + ", ".join(str(h) for h in dims) + "]", cells=cells, key=f"depth{len(dims)}"))
    return Table(
        id="3", title=f"Table 3: {paper['caption']}", columns=cols, rows=rows,
        notes=[f"Distill input width D = {counts.embed_dim} ({vlm or P.DEFAULT_VLM}); "
               f"alpha = {paper_setting()['alpha']:g} runs preferred.",
               _standard_notes(split)[0]],
    )


# ============================================================================ Table 4

def table4(results: Results, *, dataset: str = "fi", split: str = "test") -> Table:
    """Every gate in the paper's setting (VLM one-hot input, fitted on train): the paper's five, then any
    other gate with runs. Parameter counts are the records' own (a gate not run: built from `GATES`)."""
    from vea_bench.heads.gates import GATES, gate_display_name

    paper = paper_results()["table4"]
    on_paper_ds = dataset == paper["dataset"]
    c = num_classes_for(results, dataset)
    setting = Select(kind="gate", config=paper_gate_setting(), paper_alpha=True)
    gates = [r for r in results.records if setting.matches(r) and r.dataset == dataset]
    keys = [GATES.canonical(p["gate"]) for p in paper["rows"]]
    labels = {GATES.canonical(p["gate"]): p["label"] for p in paper["rows"]}
    accs = {GATES.canonical(p["gate"]): p["acc"] for p in paper["rows"]} if on_paper_ds else {}
    keys += sorted({r.variant for r in gates} - set(keys))
    rows = []
    for k in keys:
        sel = Select(kind="gate", variant=k, config=paper_gate_setting(), paper_alpha=True).pick(gates)
        n = _params_of(sel)
        if n is None and k in GATES:
            n = _gate_params(k, c)
        pc = Cell(kind="count", value=n, paper_note="not in paper") if n is not None else \
            Cell(kind="count", note="unknown", paper_note="not in paper")
        ac = _acc_cell(sel, split, accs.get(k), paper_has_row=k in accs)
        label = labels.get(k) or (gate_display_name(k) if k in GATES else k)
        rows.append(Row(label=label, cells={"params": pc, "acc": ac}, key=k))
    return Table(
        id="4", title=f"Table 4: {paper['caption']} ({dataset_title(dataset)})",
        columns=[Column("params", "Parameters", kind="count", compare=False), Column("acc", "Accuracy")], rows=rows,
        notes=["Gates over [distill logits, VLM one-hot], fitted on train; parameters computed for "
               f"C = {c}.", _standard_notes(split)[0]],
    )


# ============================================================================ Extensions

def table_extensions(results: Results, *, split: str = "test") -> Table:
    """Rows beyond the paper: distill heads alone (any registered head), gates in other settings, baselines."""
    datasets = datasets_in(results)
    recs = results.records
    rows: list[Row] = []
    setting = paper_setting()

    def add(key: str, label: str, sel: Select, keep: Callable[[RunRecord], bool]) -> None:
        cells = {d: _acc_cell([r for r in sel.pick(recs, d) if keep(r)], split, None, paper_has_row=False)
                 for d in datasets}
        rows.append(Row(label=label, cells=cells, key=key, group="ext"))

    heads = sorted({(r.variant, h) for r in recs if r.kind == "distill" and (h := _hidden_dims(r)) is not None},
                   key=lambda vh: (vh[0] != setting["distill_head"], vh[0], len(vh[1])))
    for v, dims in heads:
        name = "distill" if v == setting["distill_head"] else v
        add(f"{name}{list(dims)}", f"{name} head {list(dims)} alone",
            Select(kind="distill", variant=v, dims=dims, paper_alpha=True), lambda r: True)

    # Table 4's setting (one-hot VLM input, fitted on train) is shown there; the rest here.
    in_t4 = Select(kind="gate", config=paper_gate_setting())
    others = [r for r in recs if r.kind == "gate" and not in_t4.matches(r)]
    for g, vin, fit in sorted({(r.variant, str(r.config.get("vlm_input")), str(r.config.get("gate_fit")))
                               for r in others}):
        add(f"gate:{g}:{vin}:{fit}", f"gate {g} (VLM {vin}, fit on {fit})",
            Select(kind="gate", variant=g, paper_alpha=True),
            lambda r, vin=vin, fit=fit: (not in_t4.matches(r) and str(r.config.get("vlm_input")) == vin
                                         and str(r.config.get("gate_fit")) == fit))

    for m in sorted({r.method for r in recs if r.kind == "baseline"}):
        add(f"baseline:{m}", f"baseline {m}", Select(kind="baseline", method=m), lambda r: True)
    return Table(id="ext", title="Extensions: rows beyond the paper", columns=[Column(d, dataset_title(d), compare=False) for d in datasets],
                 rows=rows, notes=_standard_notes(split)[:1])

def build_tables(results: Results, which: str = "all", *, dataset: str = "fi", split: str = "test",
                 vlm: str | None = None, teacher: str | None = None) -> list[Table]:
    """Tables ``which`` ('1', '2', '3', '4', 'ext' or 'all') from ``results``."""
    require_records(results)
    builders: dict[str, Callable[[], Table]] = {
        "1": lambda: table1(results, split=split),
        "2": lambda: table2(results, dataset=dataset, split=split, vlm=vlm, teacher=teacher),
        "3": lambda: table3(results, split=split, vlm=vlm),
        "4": lambda: table4(results, dataset=dataset, split=split),
        "ext": lambda: table_extensions(results, split=split),
    }
    if which == "all":
        tables = [builders[k]() for k in TABLE_IDS]
        return [t for t in tables if t.id != "ext" or t.rows]
    if which not in builders:
        raise ConfigError(f"unknown table '{which}' (choices: {', '.join(TABLE_IDS)}, all)")
    return [builders[which]()]
