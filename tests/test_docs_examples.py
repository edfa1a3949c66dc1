"""The extending guide's head and gate examples run as written: each code block is executed and trained.

A guide whose example no longer registers or trains misleads exactly the newcomer it is for.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from tests._heads_helpers import complementary_data
from vea_bench.heads.distill import HEADS
from vea_bench.heads.gates import GATES, Gate
from vea_bench.heads.pipeline import DistillConfig, GateConfig, train_distill, train_gates

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


def _block(heading: str) -> str:
    """The first ```python block under ``heading`` in the guide."""
    text = GUIDE.read_text()
    section = text.split(heading, 1)[1]
    m = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert m, f"no python block under {heading!r}"
    return m.group(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return complementary_data(tmp_path_factory.mktemp("guide") / "c.h5", n_train=400, n_val=100, n_test=300,
                              dim=16, seed=3)


def test_the_guides_head_registers_and_learns(data) -> None:
    before = set(HEADS.names())
    exec(compile(_block("## Add a distill head in one file"), str(GUIDE), "exec"), {})
    (name,) = set(HEADS.names()) - before
    try:
        cfg = DistillConfig(head=name, head_kwargs={"scale": 10.0}, lr=1e-2, epochs=15, batch_size=64,
                            lr_scaling="none", patience=None, keep="last")
        res = train_distill(data, [cfg])[0]
        assert res.metrics["test"]["accuracy"] > 2 / 8          # chance is 1/8
    finally:
        HEADS.remove(name)


def test_the_guides_gate_registers_and_learns(data) -> None:
    before = set(GATES.names())
    exec(compile(_block("## Add a gate in one file"), str(GUIDE), "exec"),
         {"GATES": GATES, "Gate": Gate, "nn": nn, "torch": torch})
    (name,) = set(GATES.names()) - before
    try:
        dist = train_distill(data, [DistillConfig(lr=1e-3, epochs=5, batch_size=64, lr_scaling="none")],
                             eval_splits=["train", "val", "test"])[0]
        g = train_gates(data, [GateConfig(gate=name, lr=1e-2, epochs=15, batch_size=64, lr_scaling="none",
                                          patience=None, keep="last")], [dist.logits])[0]
        assert g.metrics["test"]["accuracy"] > 2 / 8
        assert g.params == 2 * data.num_classes
    finally:
        GATES.remove(name)
