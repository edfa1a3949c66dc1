"""A synthetic cache with the paper's Figure 1 structure, built through the cache API.

Per image, the visual embedding carries its class on a "teacher part" of the images (learnable by
a head; elsewhere it is noise), the teacher's logits are right on that same part and confidently
wrong elsewhere, and the VLM's one-hot answer is right on another, overlapping part (wrong or
unparsed elsewhere). Each source alone is right on about its part; a gate that learns when to
trust which is right on their union. Tests, benchmarks and the demo train against it.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vea_bench.cache.store import FeatureCache, SplitSpec
from vea_bench.hashing import manifest_hash
from vea_bench.labels import MIKELS8

SYNTHETIC_PROVENANCE = {"model": "synthetic", "generator": "vea_bench.heads.synthetic_cache/1"}


def _labels_for(num_classes: int) -> list[str]:
    if num_classes <= len(MIKELS8.labels):
        return list(MIKELS8.labels[:num_classes])
    return [f"class{i}" for i in range(num_classes)]


def make_complementary_cache(
    path: str | Path,
    *,
    n_train: int = 600,
    n_val: int = 200,
    n_test: int = 200,
    dim: int = 32,
    num_classes: int = 8,
    seed: int = 0,
    teacher_part: tuple[float, float] = (0.0, 0.6),
    vlm_part: tuple[float, float] = (0.35, 0.95),
    signal: float = 3.0,
    unparsed: float = 0.05,
    visual_dtype: str = "float16",
    backbones: Sequence[str] = ("vit",),
    with_logprobs: bool = True,
    label_names: Sequence[str] | None = None,
    dataset: str = "synthetic",
    chunk_rows: int = 4096,
) -> Path:
    """Build (or reuse, if it already holds these sources) a complementary cache at ``path``.

    Row i of a split falls at position ``u_i`` in [0, 1): the teacher (and the embedding's class
    signal) is right for ``u_i`` in ``teacher_part``, the VLM for ``u_i`` in ``vlm_part``. With the
    defaults each source is right on about 60 % of images and their union on 95 %.
    """
    path = Path(path)
    names = list(label_names) if label_names is not None else _labels_for(num_classes)
    c = len(names)
    rng = np.random.default_rng(seed)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    labels = {s: rng.integers(0, c, n) for s, n in sizes.items()}
    ids = {s: [f"{s}/img{i:06d}.jpg" for i in range(n)] for s, n in sizes.items()}
    specs = {s: SplitSpec(ids[s], labels[s], manifest_hash(ids[s], [names[k] for k in labels[s]])) for s in sizes}
    cache = FeatureCache.create(path, dataset=dataset, label_space="synthetic", label_names=names, splits=specs,
                                split_seed=seed)
    # class directions for the embedding; the backbone sees a weaker copy of the same signal
    means = rng.standard_normal((c, dim)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    prov = dict(SYNTHETIC_PROVENANCE, seed=seed, label_names=names)
    try:
        vis = cache.writer("visual", "synthetic", {"emb": ((dim,), visual_dtype)}, prov)
        tea = cache.writer("teacher", "synthetic", {"logits": ((c,), "float32")}, prov)
        vfields: dict = {"onehot": ((c,), "uint8"), "text": ((), "str")}
        if with_logprobs:
            vfields["logprobs"] = ((c,), "float32")
        vlm = cache.writer("vlm", "synthetic", vfields, prov)
        bbs = [cache.writer("backbone", b, {"feat": ((dim,), "float16")}, dict(prov, backbone=b)) for b in backbones]
        for split, n in sizes.items():
            y = labels[split]
            srng = np.random.default_rng([seed, list(sizes).index(split)])
            u = srng.random(n)
            t_ok = (u >= teacher_part[0]) & (u < teacher_part[1])
            v_ok = (u >= vlm_part[0]) & (u < vlm_part[1])
            wrong_t = (y + srng.integers(1, c, n)) % c
            wrong_v = (y + srng.integers(1, c, n)) % c
            none_v = (~v_ok) & (srng.random(n) < unparsed)
            for s in range(0, n, chunk_rows):
                sl = slice(s, min(n, s + chunk_rows))
                k = sl.stop - sl.start
                rows = np.arange(sl.start, sl.stop)
                noise = srng.standard_normal((k, dim)).astype(np.float32)
                emb = noise + signal * means[y[sl]] * t_ok[sl, None]
                vis.write(split, rows, emb=emb.astype(visual_dtype))
                t_cls = np.where(t_ok[sl], y[sl], wrong_t[sl])
                logits = srng.standard_normal((k, c)).astype(np.float32)
                logits[np.arange(k), t_cls] += 4.0
                tea.write(split, rows, logits=logits)
                v_cls = np.where(v_ok[sl], y[sl], wrong_v[sl])
                onehot = np.zeros((k, c), dtype=np.uint8)
                onehot[np.arange(k), v_cls] = 1
                onehot[none_v[sl]] = 0
                text = [f"{{'emotion': '{names[v]}'}}" if not nv else "I cannot tell."
                        for v, nv in zip(v_cls, none_v[sl])]
                arrays = {"onehot": onehot, "text": text}
                if with_logprobs:
                    lp = -3.0 + srng.standard_normal((k, c)).astype(np.float32)
                    lp[np.arange(k), v_cls] += 2.5
                    arrays["logprobs"] = lp
                vlm.write(split, rows, **arrays)
                for b in bbs:
                    feat = srng.standard_normal((k, dim)).astype(np.float32) + 1.5 * means[y[sl]]
                    b.write(split, rows, feat=feat.astype("float16"))
    finally:
        cache.close()
    return path
