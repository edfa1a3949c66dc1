"""Arrays the heads train on, read from the cache once and checked before any training starts.

Every check here turns a silent wrong result into a one-line `CacheError`: a missing source, a
source of another label space (teacher logits or VLM answers of the wrong width), NaN or inf in
features. Rows a source failed on (corrupt images) are left out of training and evaluation and
counted; an unparsed VLM answer stays in as the paper's all-zero one-hot.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vea_bench.cache.store import FeatureCache
from vea_bench.errors import CacheError, ConfigError

VLM_INPUTS = ("onehot", "logprobs")


@dataclass
class SplitArrays:
    """One split: labels, visual features, teacher logits and VLM vectors for the usable rows."""

    y: np.ndarray
    x: np.ndarray | None = None
    teacher: np.ndarray | None = None
    vlm: np.ndarray | None = None
    rows: np.ndarray | None = None      # indices of these rows in the cache's split order
    excluded: int = 0

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class HeadData:
    """What heads need from one cache: per-split arrays, the source keys used, and provenance."""

    dataset: str
    label_names: list[str]
    splits: dict[str, SplitArrays]
    sources: dict[str, str] = field(default_factory=dict)   # role -> "kind/key"
    vlm_input: str = "onehot"
    provenance: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def input_dim(self) -> int:
        x = self.splits["train"].x
        if x is None:
            raise ConfigError("no visual features loaded")
        return int(x.shape[1])

    def eval_splits(self) -> list[str]:
        return [s for s in self.splits if s != "train"]


def _check_width(cache: FeatureCache, name: str, arr: np.ndarray, c: int, what: str) -> None:
    if arr.ndim != 2 or arr.shape[1] != c:
        width = arr.shape[1] if arr.ndim == 2 else "?"
        raise CacheError(
            f"{cache.path}: {name} has {what} of width {width} but the cache's label space has {c} "
            f"classes ({', '.join(cache.label_names)}); it belongs to another label space"
        )


def _check_label_names(cache: FeatureCache, kind: str, key: str) -> None:
    prov = cache.source(kind, key).provenance
    names = prov.get("label_names")
    if isinstance(names, list) and names and list(names) != cache.label_names:
        raise CacheError(
            f"{cache.path}: {kind}/{key} was made for labels ({', '.join(map(str, names))}), the cache "
            f"has ({', '.join(cache.label_names)}); it belongs to another label space"
        )


def _check_finite(cache: FeatureCache, name: str, split: str, arr: np.ndarray, valid: np.ndarray) -> None:
    bad = ~np.isfinite(arr[valid].reshape(int(valid.sum()), -1)).all(1)
    if bad.any():
        raise CacheError(
            f"{cache.path}: {name} holds NaN or inf in {int(bad.sum())} row(s) of split '{split}'; "
            f"re-extract that source"
        )


def vlm_vectors(onehot: np.ndarray | None, logprobs: np.ndarray | None, mode: str) -> np.ndarray:
    """The gate's VLM input: the one-hot answer (paper) or softmax-normalised per-label log-probs.

    Softmax over the label log-likelihoods turns them into a distribution on the one-hot's scale,
    so gates see the VLM's confidence instead of only its argmax.
    """
    if mode == "onehot":
        assert onehot is not None
        return np.asarray(onehot, dtype=np.float32)
    if mode == "logprobs":
        assert logprobs is not None
        lp = np.asarray(logprobs, dtype=np.float64)
        lp = lp - lp.max(1, keepdims=True)
        p = np.exp(lp)
        return (p / p.sum(1, keepdims=True)).astype(np.float32)
    raise ConfigError(f"unknown --vlm-input '{mode}' (choices: {', '.join(VLM_INPUTS)})")


def load_head_data(
    cache: FeatureCache,
    *,
    visual: str | None = None,
    teacher: str | None = None,
    vlm: str | None = None,
    need: tuple[str, ...] = ("visual", "teacher"),
    vlm_input: str = "onehot",
    splits: tuple[str, ...] | None = None,
) -> HeadData:
    """Read the sources ``need`` names (``visual``, ``teacher``, ``vlm``) for every split.

    Refuses (one line each) a missing source or split, widths that do not match the cache's label
    space, and NaN/inf values. Rows failed in the visual or teacher source are dropped.
    """
    if vlm_input not in VLM_INPUTS:
        raise ConfigError(f"unknown --vlm-input '{vlm_input}' (choices: {', '.join(VLM_INPUTS)})")
    c = cache.num_classes
    split_names = list(splits or cache.splits)
    if "train" not in cache.splits:
        raise CacheError(f"{cache.path}: no 'train' split to fit heads on (has {', '.join(cache.splits)})")
    keys: dict[str, str] = {}
    requested = {"visual": visual, "teacher": teacher, "vlm": vlm}
    for role in need:
        keys[role] = cache.resolve_key(role, requested[role])
    for role in ("teacher", "vlm"):
        if role in keys:
            _check_label_names(cache, role, keys[role])
    if "vlm" in keys and vlm_input == "logprobs" and "logprobs" not in cache.source("vlm", keys["vlm"]).fields:
        raise CacheError(
            f"{cache.path}: vlm/{keys['vlm']} has no per-label log-probs (extract it in score mode) "
            f"for --vlm-input logprobs"
        )
    out: dict[str, SplitArrays] = {}
    for split in split_names:
        y = cache.labels(split)
        keep = np.ones(len(y), dtype=bool)
        arrays: dict[str, np.ndarray] = {}
        if "visual" in keys:
            d = cache.read("visual", keys["visual"], split, ["emb"])
            _check_finite(cache, f"visual/{keys['visual']}", split, d["emb"], d.valid)
            keep &= d.valid
            arrays["x"] = d["emb"]
        if "teacher" in keys:
            d = cache.read("teacher", keys["teacher"], split, ["logits"])
            _check_width(cache, f"teacher/{keys['teacher']}", d["logits"], c, "logits")
            _check_finite(cache, f"teacher/{keys['teacher']}", split, d["logits"], d.valid)
            keep &= d.valid
            arrays["teacher"] = d["logits"]
        if "vlm" in keys:
            fields = ["onehot"] + (["logprobs"] if vlm_input == "logprobs" else [])
            d = cache.read("vlm", keys["vlm"], split, fields)
            _check_width(cache, f"vlm/{keys['vlm']}", d["onehot"], c, "one-hot answers")
            lp = d.arrays.get("logprobs")
            if lp is not None:
                _check_width(cache, f"vlm/{keys['vlm']}", lp, c, "log-probs")
                _check_finite(cache, f"vlm/{keys['vlm']}", split, lp, d.valid)
            vec = vlm_vectors(d["onehot"], lp, vlm_input)
            vec[~d.valid] = 0.0  # a failed VLM row is an unanswered question: the paper's 'none'
            arrays["vlm"] = vec
        rows = np.flatnonzero(keep)
        sa = SplitArrays(y=y[rows], rows=rows, excluded=int((~keep).sum()))
        if "x" in arrays:
            sa.x = np.ascontiguousarray(arrays["x"][rows], dtype=np.float32)
        if "teacher" in arrays:
            sa.teacher = np.ascontiguousarray(arrays["teacher"][rows], dtype=np.float32)
        if "vlm" in arrays:
            sa.vlm = np.ascontiguousarray(arrays["vlm"][rows], dtype=np.float32)
        if split == "train" and len(sa) == 0:
            raise CacheError(f"{cache.path}: no usable training rows (all failed in the needed sources)")
        out[split] = sa
    return HeadData(
        dataset=cache.dataset,
        label_names=cache.label_names,
        splits=out,
        sources={role: f"{role}/{key}" for role, key in keys.items()},
        vlm_input=vlm_input,
        provenance=cache.provenance(),
        path=str(cache.path),
    )
