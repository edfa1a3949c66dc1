"""The paper's published numbers (Tables 1-4), bundled as data so comparisons never depend on memory.

`vea_bench/data/paper_results.json` holds every figure of the paper's Tables 1-4, literature rows
included (marked ``reported``: numbers the paper quotes from other work and nobody re-ran). A ``null``
is a dash in the paper. Parameter counts in it are the paper's, used only by ``--compare-paper``;
vea-bench's own counts are computed from the architectures (`vea_bench.report.params`).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from vea_bench.labels import LabelSpace

# The paper's five datasets, in its column order.
PAPER_DATASETS: tuple[str, ...] = ("emoset", "fi", "emotion6", "flickr", "instagram")


@lru_cache(maxsize=1)
def paper_results() -> dict[str, Any]:
    """The bundled paper figures (parsed once)."""
    text = resources.files("vea_bench").joinpath("data/paper_results.json").read_text()
    return json.loads(text)


def dataset_title(name: str) -> str:
    """Column title of a dataset ('fi' -> 'FI'); unknown datasets keep their own name."""
    return paper_results()["dataset_titles"].get(name, name)


def label_space_for(dataset: str) -> LabelSpace | None:
    """The label space of one of the paper's datasets (SPEC: Mikels 8, Ekman 6, binary), else None."""
    from vea_bench import labels

    spaces = {"emoset": "MIKELS8", "fi": "MIKELS8", "emotion6": "EKMAN6", "flickr": "BINARY", "instagram": "BINARY"}
    attr = spaces.get(dataset)
    return getattr(labels, attr) if attr else None


# Gate spellings -> the paper's five gate keys. Records carry the heads registry's name; this folds
# the spellings people use ("concat_linear", "DynamicWeighting") so Table 4 matches them.
_GATE_ALIASES: dict[str, str] = {
    "concat": "concat", "concatlinear": "concat", "concatandlinear": "concat", "linear": "concat",
    "moe": "moe", "mixtureofexperts": "moe",
    "bilinear": "bilinear", "bilinearpooling": "bilinear",
    "dynamic": "dynamic", "dynamicweighting": "dynamic", "dynamicweight": "dynamic", "dynweight": "dynamic",
    "cross": "cross", "crossgating": "cross", "crossgate": "cross",
}


def _fold(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def gate_key(name: str | None) -> str | None:
    """The paper's key for a gate name ('concat', 'moe', 'bilinear', 'dynamic', 'cross'), or the name itself.

    Tries the heads' gate registry first (its aliases are authoritative), then the spellings above.
    """
    if name is None:
        return None
    folded = _fold(name)
    if folded in _GATE_ALIASES:
        return _GATE_ALIASES[folded]
    try:
        from vea_bench.heads.gates import GATES

        canon = _fold(GATES.canonical(name))
        return _GATE_ALIASES.get(canon, canon)
    except Exception:  # noqa: BLE001 - heads registry absent or name unknown: keep the spelling
        return folded
