"""The paper's published numbers (Tables 1-4), bundled as data so comparisons never depend on memory.

`vea_bench/data/paper_results.json` holds every figure of the paper's Tables 1-4, literature rows
included (marked ``reported``: numbers the paper quotes from other work and nobody re-ran). A ``null``
is a dash in the paper. Parameter counts in it are the paper's, used only by ``--compare-paper``;
vea-bench's own counts are computed from the architectures (`vea_bench.report.params`). Its
``setting`` names the paper's method in registry names (VLM family, head, gate, alpha), and its
rows carry the selectors (`report.tables.Select`) that pick our runs for them. Gate names and label
spaces come from their registries (`vea_bench.heads.gates.GATES`, `vea_bench.datasets`), never
from a list here.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from vea_bench.labels import LabelSpace


@lru_cache(maxsize=1)
def paper_results() -> dict[str, Any]:
    """The bundled paper figures (parsed once)."""
    text = resources.files("vea_bench").joinpath("data/paper_results.json").read_text()
    return json.loads(text)


# The paper's five datasets, in its column order.
PAPER_DATASETS: tuple[str, ...] = tuple(paper_results()["datasets"])


def paper_setting() -> dict[str, Any]:
    """The paper's method in registry names: its VLM family, distill head, gate, gate input and fit, alpha."""
    return paper_results()["setting"]


def dataset_title(name: str) -> str:
    """Column title of a dataset ('fi' -> 'FI'); unknown datasets keep their own name."""
    return paper_results()["dataset_titles"].get(name, name)


def label_space_for(dataset: str) -> LabelSpace | None:
    """The label space a registered dataset declares (`vea_bench.datasets`), else None (inferred
    from the data, or not a registered dataset)."""
    from vea_bench.datasets import DATASETS
    from vea_bench.labels import get_label_space

    if dataset not in DATASETS:
        return None
    name = DATASETS.get(dataset).label_space
    return get_label_space(name) if name else None


def gate_key(name: str) -> str:
    """A gate's registry name for any of its spellings (`vea_bench.heads.gates.GATES` and its aliases)."""
    from vea_bench.heads.gates import GATES

    return GATES.canonical(name)
