"""The extending guide's table-format and baseline examples run as written: each block registers and works.

A guide whose example no longer registers or renders misleads exactly the newcomer it is for.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest

from _report_helpers import write_realistic_results
from vea_bench.cache.store import FeatureCache
from vea_bench.heads.baselines import BASELINES, run_baselines
from vea_bench.heads.synthetic_cache import make_complementary_cache
from vea_bench.report.formats import TABLE_FORMATS, render
from vea_bench.report.tables import build_tables, load_results
from vea_bench.results import ResultsStore

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


def _block(heading: str) -> str:
    """The first ```python block under ``heading`` in the guide."""
    section = GUIDE.read_text().split(heading, 1)[1]
    m = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert m, f"no python block under {heading!r}"
    return m.group(1)


def test_the_guides_table_format_registers_and_renders_every_row(tmp_path: Path) -> None:
    before = set(TABLE_FORMATS.names())
    exec(compile(_block("## Add a table format in one file"), str(GUIDE), "exec"), {})
    (name,) = set(TABLE_FORMATS.names()) - before
    try:
        write_realistic_results(tmp_path, seeds=(0, 1))
        tables = build_tables(load_results(tmp_path), "4", dataset="fi")
        text = render(tables, name)
        rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
        table = tables[0]
        assert rows[0] == [f"# {table.title}"] and len(rows[1]) == 1 + len(table.columns)
        by_label = {r[0]: r for r in rows[2:] if r}
        acc = 1 + [c.key for c in table.columns].index("acc")
        shown = [row for row in table.rows if isinstance(row.cells["acc"].value, float)]
        assert shown
        for row in shown:
            assert by_label[row.label][acc].startswith(f"{row.cells['acc'].value:.2f}")
        assert TABLE_FORMATS.get(name).suffix == "tsv"
    finally:
        TABLE_FORMATS.remove(name)


def test_the_guides_baseline_registers_runs_and_is_stored(tmp_path: Path) -> None:
    before = set(BASELINES.names())
    exec(compile(_block("## Add a baseline in one file"), str(GUIDE), "exec"), {})
    (name,) = set(BASELINES.names()) - before
    try:
        cache = make_complementary_cache(tmp_path / "c.h5", n_train=120, n_val=40, n_test=60, dim=8, seed=4)
        with FeatureCache.open(cache) as c:
            (out,), skipped = run_baselines(c, only=[name])
            y_train, y_test = c.labels("train"), c.labels("test")
        top = int(np.bincount(y_train).argmax())
        assert skipped == [] and out.record.method == name
        assert out.record.metrics["test"]["accuracy"] == pytest.approx(float(np.mean(y_test == top)))
        store = ResultsStore(tmp_path / "results")
        store.save(out.record, predictions=out.predictions)
        p = store.predictions(store.load(out.record.run_id))
        assert p is not None and set(p.pred.tolist()) == {top}
    finally:
        BASELINES.remove(name)
