"""`vea-bench table` and `results`: right numbers in the right cells, seeds, reruns, reported rows, bad input."""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _report_helpers import record, write_realistic_results
from vea_bench.errors import ConfigError
from vea_bench.heads.distill import count_params
from vea_bench.heads.gates import GATES, Gate, build_gate, gate_display_name
from vea_bench.results import RECORD_SCHEMA, ResultsStore, RunRecord
from vea_bench.report.formats import render, to_latex, to_markdown
from vea_bench.report.selection import STD_DDOF, aggregate
from vea_bench.report.tables import build_tables, load_results, table1, table4, table_extensions
from vea_bench_cli.main import app

runner = CliRunner()


def md_cell(md: str, row_label: str, column: str) -> str:
    """The text of one cell of a rendered Markdown table."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == row_label:
            return cells[header.index(column)]
    raise AssertionError(f"row {row_label!r} not in table")


def tex_row(tex: str, row_label: str) -> list[str]:
    for line in tex.splitlines():
        cells = [c.strip() for c in line.rstrip("\\ ").split(" & ")]
        if cells[0] == row_label:
            return cells
    raise AssertionError(f"row {row_label!r} not in LaTeX")


@pytest.fixture()
def vit_seeds(tmp_path: Path) -> tuple[Path, list[float]]:
    """Three ViT teacher seeds on FI and one on Emotion6; returns the FI accuracies as written."""
    rng = np.random.default_rng(3)
    accs = []
    for s, a in zip((0, 1, 2), (0.66, 0.70, 0.71)):
        rec = record("teacher", "ViT", "fi", {"arch": "vit_base_patch16_224", "lr": 3e-5}, a, rng, seed=s)
        ResultsStore(tmp_path).save(rec)
        accs.append(rec.metrics["test"]["accuracy"])
    ResultsStore(tmp_path).save(record("teacher", "ViT", "emotion6", {"arch": "vit_base_patch16_224", "lr": 3e-5}, 0.6, rng, seed=0))
    return tmp_path, accs


def test_mean_and_sample_std_over_seeds_in_markdown_and_latex(vit_seeds: tuple[Path, list[float]]) -> None:
    root, accs = vit_seeds
    t = table1(load_results(root))
    mean = np.mean(accs) * 100
    std = np.std(np.asarray(accs) * 100, ddof=1)
    assert STD_DDOF == 1
    cell = t.cell("ViT", "fi")
    assert cell.n == 3 and cell.value == pytest.approx(mean) and cell.std == pytest.approx(std)
    md = to_markdown(t)
    assert md_cell(md, "ViT", "FI") == f"{mean:.2f} ± {std:.2f} (n=3)"
    # A single seed shows no spread; other columns stay in place.
    single = load_results(root).records
    e6 = next(r for r in single if r.dataset == "emotion6").metrics["test"]["accuracy"] * 100
    assert md_cell(md, "ViT", "Emotion6") == f"{e6:.2f}"
    tex = to_latex(t)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    row = tex_row(tex, "ViT")
    assert row[2].startswith(f"{mean:.2f} $\\pm$ {std:.2f}")   # columns: label, EmoSet, FI, ...
    assert row[3] == f"{e6:.2f}"


def test_missing_cells_say_why_and_reported_rows_are_marked(vit_seeds: tuple[Path, list[float]]) -> None:
    root, _ = vit_seeds
    t = table1(load_results(root))
    md = to_markdown(t)
    assert md_cell(md, "VGG16", "FI") == "_not run_"
    assert md_cell(md, "ViT", "EmoSet") == "_not run_"
    assert md_cell(md, "WSCNet (reported)", "FI") == "70.07"
    assert md_cell(md, "Stimuli-aware (reported)", "Emotion6") == "_— in paper_"
    assert md_cell(md, "EmoVIT (reported)", "Flickr") == "_— in paper_"
    assert all(r.reported for r in t.rows if r.label.endswith("(reported)"))
    assert {r.label for r in t.rows if r.reported} == {
        "WSCNet (reported)", "Stimuli-aware (reported)", "MDAN (reported)", "PDANet (reported)", "EmoVIT (reported)"}
    tex = to_latex(t)
    assert tex_row(tex, "VGG16")[2] == r"\textit{not run}"
    # With --compare-paper a literature row holds no number of ours.
    cmp = to_markdown(t, compare=True)
    assert md_cell(cmp, "MDAN (reported)", "FI") == "_reported only_"
    assert md_cell(cmp, "MDAN (reported)", "FI (paper)") == "76.41"


def test_compare_paper_adds_paper_numbers_and_delta(vit_seeds: tuple[Path, list[float]]) -> None:
    root, accs = vit_seeds
    t = table1(load_results(root))
    md = to_markdown(t, compare=True)
    mean = np.mean(accs) * 100
    assert md_cell(md, "ViT", "FI (paper)") == "68.86"
    assert md_cell(md, "ViT", "FI Δ") == f"{mean - 68.86:+.2f}"
    assert md_cell(md, "ViT", "EmoSet Δ") == ""          # not run: no difference
    rows = list(csv.DictReader(io.StringIO(render([t], "csv", compare=True))))
    vit_fi = next(r for r in rows if r["row"] == "ViT" and r["column"] == "fi")
    assert float(vit_fi["value"]) == pytest.approx(mean, abs=1e-4)
    assert float(vit_fi["paper"]) == 68.86
    assert float(vit_fi["delta"]) == pytest.approx(mean - 68.86, abs=1e-4)
    assert vit_fi["n"] == "3" and float(vit_fi["std"]) == pytest.approx(np.std(np.asarray(accs) * 100, ddof=1), abs=1e-4)
    vgg = next(r for r in rows if r["row"] == "VGG16" and r["column"] == "fi")
    assert vgg["value"] == "" and vgg["note"] == "not run"


def test_reruns_latest_config_group_and_latest_record_per_seed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cfg = {"gate": "concat", "vlm_input": "onehot", "gate_fit": "train", "alpha": 0.5, "lr": 1e-4}
    old = [record("gate", "EmoVLM-KD", "fi", cfg, 0.5, rng, seed=s, created_at="2025-01-01T10:00:00+0000") for s in (0, 1)]
    rerun = record("gate", "EmoVLM-KD", "fi", cfg, 0.9, rng, seed=1, created_at="2025-01-02T10:00:00+0000")
    for r in [*old, rerun]:
        ResultsStore(tmp_path).save(r)
    res = load_results(tmp_path)
    agg = aggregate([r for r in res.records if r.kind == "gate"])
    assert agg.n == 2 and rerun.run_id in agg.run_ids and old[1].run_id not in agg.run_ids
    assert agg.mean == pytest.approx((old[0].accuracy() + rerun.accuracy()) / 2)
    # A newer config group (other lr) replaces the older group in the cell.
    newer = record("gate", "EmoVLM-KD", "fi", {**cfg, "lr": 1e-3}, 0.7, rng, seed=0, created_at="2025-02-01T00:00:00+0000")
    ResultsStore(tmp_path).save(newer)
    cell = table1(load_results(tmp_path)).cell("EmoVLM-KD", "fi")
    assert cell.run_ids == [newer.run_id] and cell.value == pytest.approx(newer.accuracy() * 100)


def test_seed_keys_nested_in_config_do_not_split_groups(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for s in (0, 1, 2):
        cfg = {"gate": "concat", "vlm_input": "onehot", "gate_fit": "train",
               "distill": {"depth": 1, "seed": s, "source_run_id": f"distill-{s}"}, "data_seed": s}
        ResultsStore(tmp_path).save(record("gate", "EmoVLM-KD", "emotion6", cfg, 0.7, rng, seed=s))
    assert table1(load_results(tmp_path)).cell("EmoVLM-KD", "emotion6").n == 3


def test_table4_gates_and_extension_rows(tmp_path: Path) -> None:
    recs = write_realistic_results(tmp_path, seeds=(0, 1))
    res = load_results(tmp_path)
    t4 = table4(res)
    moe = [r for r in recs if r.kind == "gate" and r.config["gate"] == "moe"]
    accs = np.array([r.accuracy() for r in moe]) * 100
    md = to_markdown(t4, compare=True)
    assert md_cell(md, "(2) MoE", "Accuracy") == f"{accs.mean():.2f} ± {accs.std(ddof=1):.2f} (n=2)"
    assert md_cell(md, "(2) MoE", "Accuracy (paper)") == "79.24"
    assert md_cell(md, "(1) Concat & Linear", "Parameters") == "136"
    ext = to_markdown(table_extensions(res))
    lp = [r.accuracy() * 100 for r in recs if r.kind == "gate" and r.config["vlm_input"] == "logprobs"]
    assert md_cell(ext, "gate concat (VLM logprobs, fit on train)", "FI").startswith(f"{np.mean(lp):.2f} ± ")
    assert md_cell(ext, "gate concat (VLM logprobs, fit on train)", "EmoSet") == "_not run_"
    oracle = next(r for r in recs if r.method == "oracle" and r.dataset == "flickr").accuracy() * 100
    assert md_cell(ext, "baseline oracle", "Flickr") == f"{oracle:.2f}"


def test_corrupt_and_foreign_records_are_skipped_with_a_warning(vit_seeds, caplog: pytest.LogCaptureFixture) -> None:
    root, _ = vit_seeds
    (root / "teacher" / "broken.json").write_text("{not json")
    (root / "notes.json").write_text('{"hello": "world"}')
    (root / "artifacts" / "x").mkdir(parents=True)
    (root / "artifacts" / "x" / "config.json").write_text('{"hidden_dims": [1024]}')   # weights' config: not a record
    with caplog.at_level(logging.WARNING, logger="vea_bench.report.tables"):
        res = load_results(root)
    assert len(res.records) == 4
    assert sorted(p.name for p, _ in res.skipped) == ["broken.json", "notes.json"]
    assert "broken.json" in caplog.text and "notes.json" in caplog.text
    out = runner.invoke(app, ["table", "--results", str(root), "-t", "1", "-f", "md"])
    assert out.exit_code == 0, out.output
    assert "warning: skipped" in out.stderr and "broken.json" in out.stderr and "notes.json" in out.stderr
    assert "| ViT |" in out.stdout


def test_empty_results_folder_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="vea-bench demo"):
        build_tables(load_results(tmp_path), "1")
    out = runner.invoke(app, ["table", "--results", str(tmp_path / "nothing-here")])
    assert out.exit_code != 0
    assert "no run records" in out.stderr or "does not exist" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.output


def test_cli_table_formats_and_out_file(vit_seeds) -> None:
    root, accs = vit_seeds
    dest = root.parent / "t1.tex"
    out = runner.invoke(app, ["table", "-r", str(root), "-t", "1", "-f", "latex", "--compare-paper", "-o", str(dest)])
    assert out.exit_code == 0, out.output
    tex = dest.read_text()
    assert r"\begin{tabular}" in tex and "68.86" in tex and f"{np.mean(accs) * 100 - 68.86:+.2f}" in tex
    out = runner.invoke(app, ["table", "-r", str(root), "-t", "1", "-f", "csv"])
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert any(r["row"] == "ViT" and r["column"] == "fi" and r["n"] == "3" for r in rows)
    out = runner.invoke(app, ["table", "-r", str(root), "-t", "1"])
    assert out.exit_code == 0 and "ViT" in out.stdout and "reported" in out.stdout
    out = runner.invoke(app, ["table", "-r", str(root), "-t", "9"])
    assert out.exit_code != 0


def test_results_list_and_show(vit_seeds) -> None:
    root, _ = vit_seeds
    out = runner.invoke(app, ["results", "list", "-r", str(root), "--dataset", "fi"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    recs = load_results(root).records
    fi = [r for r in recs if r.dataset == "fi"]
    for r in fi:
        assert r.run_id in out.stdout and f"{r.accuracy() * 100:.2f}" in out.stdout
    assert "emotion6" not in out.stdout.replace("run(s)", "")
    target = fi[0]
    out = runner.invoke(app, ["results", "show", target.run_id[:-2], "-r", str(root)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "vit_base_patch16_224" in out.stdout and "confusion" in out.stdout and "amusement" in out.stdout
    out = runner.invoke(app, ["results", "show", "teacher-", "-r", str(root)])
    assert out.exit_code != 0 and "matches 4 runs" in out.stderr
    out = runner.invoke(app, ["results", "list", "-r", str(root), "--kind", "nonsense"])
    assert out.exit_code != 0 and "unknown run kind" in out.stderr


def test_tables_from_real_tiny_distill_and_gate_runs(tmp_path: Path) -> None:
    """Records written by the heads' own trainer (tiny synthetic cache) land in the right cells."""
    from vea_bench.cache.store import FeatureCache
    from vea_bench.heads import pipeline
    from vea_bench.heads import synthetic_cache as synth
    from vea_bench.heads.data import load_head_data

    path = synth.make_complementary_cache(tmp_path / "cache.h5", n_train=160, n_val=40, n_test=80, dim=16,
                                          num_classes=8, seed=0, dataset="fi")
    cache = FeatureCache.open(path)
    data = load_head_data(cache, need=("visual", "teacher", "vlm"))
    results = tmp_path / "results"
    seeds = (0, 1)
    dres = pipeline.train_distill(data, [pipeline.DistillConfig(seed=s, epochs=3, lr=1e-3, min_steps=0) for s in seeds],
                                  eval_splits=("train", "val", "test"))
    drecs = [pipeline.distill_record(data, r, results_dir=results) for r in dres]
    v1 = pipeline.gate_inputs(data, dres, "train", 2, device="cpu", progress=None)
    gres = pipeline.train_gates(data, [pipeline.GateConfig(seed=s, epochs=5, lr=1e-2) for s in seeds], v1)
    grecs = [pipeline.gate_record(data, g, d, results_dir=results, distill_run=dr.run_id)
             for g, d, dr in zip(gres, dres, drecs)]
    res = load_results(results)
    assert res.skipped == [] and len(res.records) == 4      # artifacts/ (weights' configs) are not records
    t1 = table1(res)
    g = np.array([r.accuracy() for r in grecs]) * 100
    cell = t1.cell("EmoVLM-KD", "fi")
    assert cell.n == 2 and cell.value == pytest.approx(g.mean()) and cell.std == pytest.approx(g.std(ddof=1))
    md = to_markdown(t1)
    assert md_cell(md, "EmoVLM-KD", "FI") == f"{g.mean():.2f} ± {g.std(ddof=1):.2f} (n=2)"
    assert md_cell(md, "EmoVLM-KD", "Emotion6") == "_not run_"
    ext = to_markdown(table_extensions(res))
    d = np.array([r.accuracy() for r in drecs]) * 100
    assert md_cell(ext, "distill head [1024] alone", "FI") == f"{d.mean():.2f} ± {d.std(ddof=1):.2f} (n=2)"
    t4 = table4(res)
    assert t4.cell("(1) Concat & Linear", "acc").n == 2
    assert t4.cell("(1) Concat & Linear", "params").value == 136       # computed for C = 8
    assert grecs[0].params == 136                                        # and what the trainer recorded


# ----------------------------------------------------------------------------- typed records

def test_record_states_variant_and_experiment_id(tmp_path: Path) -> None:
    """A gate's variant is its registry name; seeds share an experiment id, another setting does not."""
    rng = np.random.default_rng(5)
    cfg = {"gate": "moe", "vlm_input": "onehot", "gate_fit": "train", "alpha": 0.5, "lr": 1e-4,
           "distill": {"hidden_dims": [1024], "seed": 0}, "distill_run": "distill-x", "device": "cpu"}
    a = record("gate", "EmoVLM-KD", "fi", cfg, 0.7, rng, seed=0)
    b = record("gate", "EmoVLM-KD", "fi", {**cfg, "distill": {"hidden_dims": [1024], "seed": 1},
                                           "distill_run": "distill-y", "device": "cuda"}, 0.7, rng, seed=1)
    other = record("gate", "EmoVLM-KD", "fi", {**cfg, "lr": 1e-3}, 0.7, rng, seed=0)
    elsewhere = record("gate", "EmoVLM-KD", "emotion6", cfg, 0.7, rng, seed=0)
    assert a.method == "EmoVLM-KD" and a.variant == "moe"
    assert a.experiment_id == b.experiment_id
    assert len({a.experiment_id, other.experiment_id, elsewhere.experiment_id}) == 3
    path = ResultsStore(tmp_path).save(a)
    saved = json.loads(path.read_text())
    assert saved["schema"] == RECORD_SCHEMA and saved["variant"] == "moe" and saved["experiment_id"] == a.experiment_id
    assert RunRecord.load(path).experiment_id == a.experiment_id


def test_grouping_by_experiment_id_keeps_two_configs_apart(tmp_path: Path) -> None:
    """Two seeds of one config make one cell's mean; a newer config replaces them, never mixes in."""
    rng = np.random.default_rng(6)
    cfg = {"gate": "concat", "vlm_input": "onehot", "gate_fit": "train", "alpha": 0.5, "lr": 1e-4}
    seeds = [record("gate", "EmoVLM-KD", "fi", cfg, a, rng, seed=s, created_at=f"2025-01-0{s + 1}T00:00:00+0000")
             for s, a in ((0, 0.6), (1, 0.8))]
    assert aggregate(seeds).n == 2 and aggregate(seeds).mean == pytest.approx(np.mean([r.accuracy() for r in seeds]))
    other = record("gate", "EmoVLM-KD", "fi", {**cfg, "epochs": 3}, 0.5, rng, seed=0,
                   created_at="2025-01-05T00:00:00+0000")
    agg = aggregate([*seeds, other])
    assert agg.n == 1 and agg.run_ids == [other.run_id]


def test_old_records_without_the_new_fields_still_render(tmp_path: Path) -> None:
    """A schema-1 record (no variant, no experiment id) is upgraded on load and lands in its cells."""
    rng = np.random.default_rng(7)
    # "cross" is an alias, as hand-made or older records may spell it
    cfg = {"gate": "cross", "vlm_input": "onehot", "gate_fit": "train", "alpha": 0.5, "lr": 1e-4}
    written = []
    for s in (0, 1):
        d = record("gate", "EmoVLM-KD", "fi", cfg, 0.7, rng, seed=s, params=249).to_dict()
        for key in ("variant", "experiment_id"):
            d.pop(key)
        d["schema"] = "vea-bench/run-record/1"
        p = tmp_path / "gate" / f"{d['run_id']}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(d))
        written.append(d)
    dd = record("distill", "distill", "fi", {"depth": 1, "hidden_dims": [1024], "alpha": 0.5}, 0.6, rng).to_dict()
    dd.pop("variant"), dd.pop("experiment_id")
    dd["schema"] = "vea-bench/run-record/1"
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "old.json").write_text(json.dumps(dd))
    res = load_results(tmp_path)
    assert res.skipped == []
    gates = [r for r in res.records if r.kind == "gate"]
    assert {r.variant for r in gates} == {"crossgating"} and len({r.experiment_id for r in gates}) == 1
    assert next(r for r in res.records if r.kind == "distill").variant == "distill"
    cell = table4(res).cell("(5) CrossGating", "acc")
    assert cell.n == 2 and cell.value == pytest.approx(np.mean([d["metrics"]["test"]["accuracy"] for d in written]) * 100)
    assert table4(res).cell("(5) CrossGating", "params").value == 249          # the records' own count
    ext = to_markdown(table_extensions(res))
    assert md_cell(ext, "distill head [1024] alone", "FI") == f"{dd['metrics']['test']['accuracy'] * 100:.2f}"
    # A foreign schema is still refused.
    dd["schema"] = "someone-else/1"
    (tmp_path / "distill" / "old.json").write_text(json.dumps(dd))
    assert [p.name for p, _ in load_results(tmp_path).skipped] == ["old.json"]


@pytest.mark.parametrize("gate", GATES.names())
def test_every_registered_gate_gets_its_table4_row_from_its_records(tmp_path: Path, gate: str) -> None:
    """Rows of Table 4 come from the records' variant and parameter count, whatever the gate."""
    rng = np.random.default_rng(8)
    n = count_params(build_gate(gate, 8))
    cfg = {"gate": gate, "vlm_input": "onehot", "gate_fit": "train", "alpha": 0.5, "lr": 1e-2}
    recs = [record("gate", "EmoVLM-KD", "fi", cfg, 0.6 + 0.1 * s, rng, seed=s, params=n) for s in (0, 1)]
    for r in recs:
        ResultsStore(tmp_path).save(r)
    t4 = table4(load_results(tmp_path))
    row = next(r for r in t4.rows if r.key == gate)
    assert row.label.endswith(gate_display_name(gate))
    assert row.cells["acc"].n == 2 and row.cells["acc"].value == pytest.approx(np.mean([r.accuracy() for r in recs]) * 100)
    assert row.cells["params"].value == n
    assert sum(r.cells["acc"].n for r in t4.rows) == 2          # no other row took these records


class _SumGate(Gate):
    """A sixth gate for the test: a learnt per-class weighting of ``v1 + v2``."""

    display_name = "Weighted Sum"

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.w = torch.nn.Parameter(torch.ones(num_classes))

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        return self.w * (v1 + v2)


@pytest.fixture()
def sixth_gate():
    """Registers `_SumGate` for one test and removes it after."""
    GATES.add("weighted-sum", _SumGate)
    yield "weighted-sum"
    GATES.remove("weighted-sum")


def test_a_newly_registered_gate_trains_and_shows_in_table4_and_extensions(tmp_path: Path, sixth_gate: str) -> None:
    """A gate registered outside the package trains through the pipeline and gets rows, with no table edits."""
    from vea_bench.cache.store import FeatureCache
    from vea_bench.heads import pipeline
    from vea_bench.heads.data import load_head_data
    from vea_bench.heads.synthetic_cache import make_complementary_cache

    path = make_complementary_cache(tmp_path / "cache.h5", n_train=96, n_val=32, n_test=48, dim=8, num_classes=8,
                                    seed=0, dataset="fi")
    data = load_head_data(FeatureCache.open(path), need=("visual", "teacher", "vlm"))
    results = tmp_path / "results"
    dres = pipeline.train_distill(data, [pipeline.DistillConfig(seed=0, epochs=2, lr=1e-3, min_steps=0)],
                                  eval_splits=("train", "val", "test"))
    v1 = pipeline.gate_inputs(data, dres, "train", 2, device="cpu", progress=None)
    cfgs = [pipeline.GateConfig(gate=sixth_gate, seed=0, epochs=2, lr=1e-2),
            pipeline.GateConfig(gate=sixth_gate, seed=0, epochs=2, lr=1e-2, vlm_input="logprobs")]
    gres = pipeline.train_gates(data, cfgs[:1], v1)
    rec = pipeline.gate_record(data, gres[0], dres[0], results_dir=results)
    assert rec.variant == sixth_gate and rec.params == 8
    lp = record("gate", "EmoVLM-KD", "fi", {**cfgs[1].to_dict()}, 0.5, np.random.default_rng(0), seed=0, params=8)
    ResultsStore(results).save(lp)
    res = load_results(results)
    t4 = table4(res)
    row = t4.cell("Weighted Sum", "acc")
    assert row.n == 1 and row.value == pytest.approx(rec.accuracy() * 100)
    assert t4.cell("Weighted Sum", "params").value == 8
    ext = to_markdown(table_extensions(res))
    assert md_cell(ext, f"gate {sixth_gate} (VLM logprobs, fit on train)", "FI") == f"{lp.accuracy() * 100:.2f}"


def test_the_papers_vlm_and_label_spaces_come_from_data_and_registries() -> None:
    from vea_bench.datasets import DATASETS
    from vea_bench.models.base import VLM_BACKENDS
    from vea_bench.report.paper import label_space_for, paper_setting

    s = paper_setting()
    assert s["vlm_backend"] in VLM_BACKENDS and s["gate"] in GATES
    for name in DATASETS.names():
        space = label_space_for(name)
        declared = DATASETS.get(name).label_space
        assert (space is None) == (declared is None)
        if space is not None:
            assert space.name.lower() == declared.lower()


def test_teacher_seeds_share_an_experiment_and_one_table_cell(tmp_path: Path) -> None:
    """Two seeds of one teacher config (records also holding per-run history and paths) make one cell of n = 2."""
    from vea_bench.datasets import load_dataset
    from vea_bench.datasets.synthetic import make_synthetic
    from vea_bench.train.teacher import TeacherConfig, train_teacher

    root = make_synthetic("imagefolder", tmp_path / "data", per_class=5, size=32, seed=2, label_space="binary")
    index = load_dataset("imagefolder", root)
    results = tmp_path / "results"
    tiny = {"arch": "test_resnet", "img_size": 32, "random_init": True, "batch_size": 10, "epochs": 2, "lr": 1e-3}
    recs = [train_teacher(index, TeacherConfig(**tiny, seed=s), tmp_path / f"t{s}", device="cpu",
                          results_dir=results).record for s in (0, 1)]
    assert recs[0].config["checkpoint"] != recs[1].config["checkpoint"]     # per-run paths are in the config
    assert recs[0].experiment_id == recs[1].experiment_id
    other = train_teacher(index, TeacherConfig(**{**tiny, "lr": 3e-3}, seed=0), tmp_path / "t-lr", device="cpu",
                          results_dir=None).record
    assert other.experiment_id != recs[0].experiment_id
    res = load_results(results)
    cell = table1(res).cell(recs[0].method, "imagefolder")
    assert cell.n == 2 and cell.value == pytest.approx(np.mean([r.accuracy() for r in recs]) * 100)


def test_another_heads_runs_get_their_own_rows_and_stay_out_of_the_papers(tmp_path: Path) -> None:
    """Distill runs of a second registered head (variant = config["head"]) are rows of their own in
    Extensions, and never mix into the paper head's cells in Tables 2 and 3."""
    rng = np.random.default_rng(9)
    base = {"depth": 1, "hidden_dims": [1024], "alpha": 0.5, "tau": 2.0}
    paper = [record("distill", "distill", "fi", {**base, "head": "distill"}, 0.6, rng, seed=s) for s in (0, 1)]
    other = [record("distill", "distill", "fi", {**base, "head": "resmlp"}, 0.8, rng, seed=s) for s in (0, 1)]
    for r in [*paper, *other]:
        ResultsStore(tmp_path).save(r)
    res = load_results(tmp_path)
    assert {r.variant for r in res.records} == {"distill", "resmlp"}
    ext = to_markdown(table_extensions(res))
    mean = {k: np.mean([r.accuracy() for r in v]) * 100 for k, v in (("distill", paper), ("resmlp", other))}
    assert md_cell(ext, "distill head [1024] alone", "FI").startswith(f"{mean['distill']:.2f} ± ")
    assert md_cell(ext, "resmlp head [1024] alone", "FI").startswith(f"{mean['resmlp']:.2f} ± ")
    t3 = build_tables(res, "3")[0]
    assert t3.cell("[1024]", "acc:fi").n == 2 and t3.cell("[1024]", "acc:fi").value == pytest.approx(mean["distill"])
