"""Figure 4's choice of images and gate weights, the dataset root from the cache, per-attribute accuracy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vea_bench.cache.store import FeatureCache, SplitSpec
from vea_bench.datasets import load_dataset
from vea_bench.errors import ConfigError
from vea_bench.heads.gates import GATES, build_gate
from vea_bench.labels import EKMAN6, MIKELS8
from vea_bench.results import RunRecord
from vea_bench.report.examples import DatasetSource, dataset_source, group_report, pick_examples, split_meta
from vea_bench.heads.pipeline import gate_source_weights
from vea_bench.results import SplitPredictions

ENV = {"versions": {}, "python": "3.11", "platform": "test", "git": None, "device": "cpu"}


def _record(names: list[str], cache: str = "") -> RunRecord:
    return RunRecord(kind="gate", method="EmoVLM-KD", dataset="emotion6", config={"gate": "dynamic"},
                     metrics={}, label_names=names, environment=ENV, cache={"path": cache})


def test_dynamic_gate_weights_are_its_softmax_and_linear_gates_have_none() -> None:
    torch.manual_seed(0)
    g = build_gate("dynamic", 4)
    rng = np.random.default_rng(0)
    v1, v2 = rng.normal(size=(5, 4)).astype(np.float32), np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]]
    w = gate_source_weights("dynamic", 4, g.state_dict(), v1, v2, distill_input="logits")
    want = torch.softmax(g.weigher(torch.cat([torch.from_numpy(v1), torch.from_numpy(v2)], -1)), -1).detach().numpy()
    assert np.allclose(w, want) and np.allclose(w.sum(1), 1)
    wc = gate_source_weights("cross", 4, build_gate("cross", 4).state_dict(), v1, v2, distill_input="logits")
    assert wc.shape == (5, 2) and np.allclose(wc.sum(1), 1)
    assert gate_source_weights("concat", 4, build_gate("concat", 4).state_dict(), v1, v2, distill_input="logits") is None


@pytest.mark.parametrize("name", GATES.names())
def test_every_gates_source_weights_are_none_or_a_distribution(name: str) -> None:
    """Whatever a registered gate declares as its per-image source weights is [B, 2], in [0, 1], summing to one."""
    torch.manual_seed(1)
    g = build_gate(name, 4)
    rng = np.random.default_rng(1)
    v1, v2 = rng.normal(size=(6, 4)).astype(np.float32), np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    w = gate_source_weights(name, 4, g.state_dict(), v1, v2, distill_input="logits")
    if w is not None:
        assert w.shape == (6, 2) and np.all((w >= 0) & (w <= 1)) and np.allclose(w.sum(1), 1, atol=1e-6)


def test_examples_are_seeded_in_both_directions() -> None:
    names = list(EKMAN6.labels)
    y = np.arange(40) % 6
    vlm = np.where(np.arange(40) < 20, y, (y + 1) % 6)           # right on the first half
    head = np.where(np.arange(40) >= 15, y, (y + 2) % 6)         # right from row 15 on
    p = SplitPredictions(np.arange(40), y, head, extra={"vlm_pred": vlm, "distill_pred": head,
                                                       "source_weights": np.tile([0.25, 0.75], (40, 1))})
    ids = [f"{names[c]}/{i}.jpg" for i, c in enumerate(y)]
    ex = pick_examples(_record(names), p, ids, per_direction=3, seed=5)
    assert [e.direction for e in ex] == ["vlm_right"] * 3 + ["head_right"] * 3
    assert all(e.row < 15 for e in ex[:3]) and all(e.row >= 20 for e in ex[3:])
    assert all(e.vlm == e.truth != e.head for e in ex[:3]) and all(e.head == e.truth != e.vlm for e in ex[3:])
    assert ex[0].weights == (0.25, 0.75)
    assert [e.row for e in pick_examples(_record(names), p, ids, per_direction=3, seed=5)] == [e.row for e in ex]
    assert [e.row for e in pick_examples(_record(names), p, ids, per_direction=3, seed=6)] != [e.row for e in ex]
    with pytest.raises(ConfigError, match="no VLM / distill predictions"):
        pick_examples(_record(names), SplitPredictions(np.arange(40), y, head), ids)


def test_missing_dataset_root_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    FeatureCache.create(path, dataset="emotion6", label_space="ekman6", label_names=list(EKMAN6.labels),
                        splits={"test": SplitSpec(["joy/1.jpg"], np.array([3]), "m")},
                        extra={"root": str(tmp_path / "gone")}).close()
    with pytest.raises(ConfigError, match=r"dataset root .*gone recorded in .*c\.h5 does not exist"):
        dataset_source(_record(list(EKMAN6.labels), str(path)))
    with pytest.raises(ConfigError, match="names no cache"):
        dataset_source(_record(list(EKMAN6.labels)))


def _source(root: Path, dataset: str) -> tuple[DatasetSource, list]:
    index = load_dataset(dataset, root, seed=42)
    test = list(index.split("test"))
    return DatasetSource(root / "cache.h5", root, dataset, 42, [s.path for s in test]), test


def test_emotion6_accuracy_by_valence_arousal_and_vote_distribution(synthetic_root) -> None:
    src, test = _source(synthetic_root("emotion6"), "emotion6")
    names = list(EKMAN6.labels)
    y = np.array([s.label for s in test])
    pred = np.where(np.arange(len(y)) % 2 == 0, y, (y + 1) % 6)
    prob = np.eye(6)[pred] * 0.9 + 0.1 / 6
    rep = group_report(_record(names), SplitPredictions(np.arange(len(y)), y, pred, prob), src, split_meta(src))
    assert sum(g.n for g in rep.per_class) == len(y)
    attrs = {t.attribute: t.groups for t in rep.attributes}
    assert set(attrs) == {"valence (binned)", "arousal (binned)"}
    with_va = sum(1 for s in test if "valence" in s.meta)
    assert sum(g.n for g in attrs["valence (binned)"]) == with_va > 0
    d = rep.distribution
    assert d is not None and d.n == sum(1 for s in test if "distribution" in s.meta)
    assert 0.0 <= d.top1 <= d.top2 <= 1.0 and d.kl > 0


def test_emoset_accuracy_by_attribute_with_counts(synthetic_root) -> None:
    src, test = _source(synthetic_root("emoset"), "emoset")
    names = list(MIKELS8.labels)
    y = np.array([s.label for s in test])
    correct_rows = np.arange(len(y)) % 3 != 0
    pred = np.where(correct_rows, y, (y + 1) % 8)
    rep = group_report(_record(names), SplitPredictions(np.arange(len(y)), y, pred), src, split_meta(src))
    attrs = {t.attribute: t.groups for t in rep.attributes}
    assert {"scene", "object", "brightness (binned)", "colorfulness (binned)"} <= set(attrs)
    scenes = [s.meta.get("scene") for s in test]
    for g in attrs["scene"]:
        members = [i for i, v in enumerate(scenes) if v == g.value]
        assert g.n == len(members) and g.accuracy == pytest.approx(correct_rows[members].mean())
    # Objects are lists: an image counts once in each of its objects' groups.
    assert sum(g.n for g in attrs["object"]) == sum(len(s.meta.get("object") or []) for s in test)
