"""One-pass extraction on tiny real models: sources, widths, batching, resume, shards, corrupt images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _extract_helpers import backend, cache_arrays, fi_root, index, tiny_dir  # noqa: F401  (fixtures)
from PIL import Image

from vea_bench.cache import ROW_FAILED, ROW_OK, FeatureCache, merge_caches
from vea_bench.errors import CacheError, ConfigError, ModelError
from vea_bench.extract import extract
from vea_bench.models.backbone import BackboneSpec
from vea_bench.models.base import GenerationOptions, LoadOptions
from vea_bench.progress import RecordingProgress
from vea_bench.prompts import SYSTEM_MESSAGE, categorical_instruction

torch.set_num_threads(1)

GEN = GenerationOptions(max_new_tokens=6)
TINY_BACKBONE = BackboneSpec("vit_tiny_patch16_224", "random", img_size=32,
                             timm_kwargs={"patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, index, backend, tiny_dir):  # noqa: F811
    """One uninterrupted batched run over all splits: VLM (both modes), teacher, backbone."""
    path = tmp_path_factory.mktemp("full") / "fi.h5"
    progress = RecordingProgress()
    summary = extract(index, path, vlm=LoadOptions(str(tiny_dir["qwen"]), device="cpu"), vlm_backend=backend,
                      answer_modes=("generate", "score"), generation=GEN, teachers=[tiny_dir["teacher"]],
                      backbones=[TINY_BACKBONE], batch_size=4, num_workers=2, progress=progress)
    return path, summary, progress


def _opts(tiny_dir):  # noqa: F811
    return LoadOptions(str(tiny_dir["qwen"]), device="cpu")


def test_one_extract_fills_visual_vlm_and_teacher_sources(full_run, index, backend, tiny_dir) -> None:  # noqa: F811
    path, summary, progress = full_run
    n_rows = sum(len(v) for v in index.splits.values())
    names = {s.name for s in summary.sources}
    assert names == {"visual/qwen", "vlm/qwen", "teacher/vit-fi", "backbone/vit_tiny_patch16_224-random"}
    for s in summary.sources:
        assert (s.rows, s.done, s.failed, s.missing) == (n_rows, n_rows - 1, 1, 0), s
    assert summary.images == n_rows - 1 and summary.failed_images == 1 and summary.complete
    assert progress.advanced == n_rows  # every row reported, the corrupt one included
    vlm = summary.source("vlm/qwen")

    with FeatureCache.open(path) as cache:
        info = cache.source("visual", "qwen")
        assert info.fields["emb"].shape == (backend.embed_dim,)
        assert backend.embed_dim == 64  # merger output width of the tiny model
        assert cache.source("backbone", "vit_tiny_patch16_224-random").fields["feat"].shape == (24,)
        prov = cache.source("vlm", "qwen").provenance
        assert prov["prompt"] == categorical_instruction(index.label_space) and prov["system"] == SYSTEM_MESSAGE
        assert prov["decoding"] == {"decoding": "greedy", "temperature": None, "top_p": None, "top_k": None,
                                    "repetition_penalty": None, "max_new_tokens": 6, "seed": None}
        assert prov["label_names"] == list(index.label_space.labels)
        assert cache.source("teacher", "vit-fi").provenance["weights_sha256"]
        unparsed = 0
        for split in cache.splits:
            d = cache.read("vlm", "qwen", split)
            ok = d.valid
            assert set(d["parse"][ok]) <= {"ok", "ok-fallback", "ambiguous", "out-of-space", "unparsed", "empty"}
            # one-hot is one-hot exactly where the parse counted, all-zero elsewhere
            counted = np.isin(d["parse"], ["ok", "ok-fallback"])
            assert np.array_equal(d["onehot"][ok].sum(1), counted[ok].astype(np.uint8))
            unparsed += int((d["onehot"][ok].sum(1) == 0).sum())
            assert np.isfinite(d["logprobs"][ok]).all() and (d["logprobs"][ok] < 0).all()
            assert d["logprobs"].shape == (cache.num_rows(split), 8)
            t = cache.read("teacher", "vit-fi", split)
            assert t["logits"].dtype == np.float32 and np.isfinite(t["logits"][t.valid]).all()
        assert vlm.unparsed == unparsed

        # The corrupt image: failed in every source, with a reason naming the file.
        failed = [(s, r) for s in cache.splits for r in np.flatnonzero(cache.read("teacher", "vit-fi", s).status == ROW_FAILED)]
        assert len(failed) == 1
        split, row = failed[0]
        d = cache.read("visual", "qwen", split)
        assert d.status[row] == ROW_FAILED and "decode" in d.errors[row] and cache.ids(split)[row] in d.errors[row]

        # Teacher logits equal a direct call on the same image with the checkpoint's own transform.
        from vea_bench.datasets import open_image
        from vea_bench.models.teacher import load_teacher, teacher_transform

        model, meta = load_teacher(tiny_dir["teacher"])
        ids = cache.ids("test")
        x = torch.stack([teacher_transform(meta, train=False)(open_image(index.root / i)) for i in ids[:3]])
        with torch.no_grad():
            direct = model(x).numpy()
        assert np.allclose(cache.read("teacher", "vit-fi", "test")["logits"][:3], direct, atol=1e-5)

        # The pooled embedding of the one pass equals a separate, direct call of the vision tower.
        img = open_image(index.root / ids[0])
        batch = backend.prepare([img], categorical_instruction(index.label_space))
        with torch.no_grad():
            merged = backend.core.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
        direct_emb = merged.float().mean(0).numpy()
        cached = cache.read("visual", "qwen", "test")["emb"][0].astype(np.float32)
        # float16 storage: relative error below 2^-10 per element, so 1e-3 relative + tiny absolute
        assert np.allclose(cached, direct_emb, rtol=1e-3, atol=1e-3)


def test_batched_equals_batch_size_one(tmp_path, index, backend, tiny_dir, full_run) -> None:  # noqa: F811
    path, _, _ = full_run
    single = tmp_path / "bs1.h5"
    extract(index, single, vlm=_opts(tiny_dir), vlm_backend=backend, answer_modes=("generate", "score"),
            generation=GEN, teachers=[tiny_dir["teacher"]], splits=["test"], batch_size=1, num_workers=0)
    with FeatureCache.open(path) as a, FeatureCache.open(single) as b:
        for kind, key, fields, tol in (("visual", "qwen", ["emb"], 2e-3), ("vlm", "qwen", ["logprobs"], 1e-3),
                                        ("teacher", "vit-fi", ["logits"], 1e-5)):
            da, db = a.read(kind, key, "test"), b.read(kind, key, "test")
            assert np.array_equal(da.status, db.status)
            for f in fields:
                # Tolerances: fp32 on CPU, left padding changes the reduction order inside attention.
                assert np.allclose(da[f].astype(np.float32), db[f].astype(np.float32), atol=tol, rtol=tol), (kind, f)
        va, vb = a.read("vlm", "qwen", "test"), b.read("vlm", "qwen", "test")
        assert list(va["text"]) == list(vb["text"])          # greedy: same answers
        assert np.array_equal(va["onehot"], vb["onehot"])


class _StopAfter(RecordingProgress):
    """Interrupts the run (as Ctrl-C would) after ``n`` batches have been written."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def advance(self, n: int = 1, **info) -> None:
        super().advance(n, **info)
        if sum(1 for e in self.events if e[0] == "advance") >= self.n:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_only_missing_rows_and_ends_identical(tmp_path, index, backend, tiny_dir,
                                                                     full_run) -> None:  # noqa: F811
    full_path, _, _ = full_run
    path = tmp_path / "resume.h5"
    kwargs = dict(vlm=_opts(tiny_dir), vlm_backend=backend, answer_modes=("generate", "score"), generation=GEN,
                  teachers=[tiny_dir["teacher"]], backbones=[TINY_BACKBONE], batch_size=4, num_workers=2)
    with pytest.raises(KeyboardInterrupt):
        extract(index, path, progress=_StopAfter(2), **kwargs)
    with FeatureCache.open(path) as cache:
        info = cache.source("vlm", "qwen")
        done = sum(c["done"] + c["failed"] for c in info.counts.values())
    assert done == 8  # two batches of 4 were kept
    progress = RecordingProgress()
    summary = extract(index, path, progress=progress, **kwargs)
    n_rows = sum(len(v) for v in index.splits.values())
    assert progress.advanced == n_rows - 8          # only the missing rows were computed
    for s in summary.sources:
        assert s.done_before + s.done + s.failed == n_rows and s.missing == 0
    a, b = cache_arrays(full_path), cache_arrays(path)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # A third run has nothing to do.
    again = extract(index, path, progress=(p := RecordingProgress()), **kwargs)
    assert p.advanced == 0 and all(s.done == 0 for s in again.sources)


def test_two_shards_merged_equal_one_run(tmp_path, index, backend, tiny_dir) -> None:  # noqa: F811
    kwargs = dict(vlm=_opts(tiny_dir), vlm_backend=backend, answer_modes=("generate",), generation=GEN,
                  teachers=[tiny_dir["teacher"]], splits=["test", "val"], batch_size=1, num_workers=0)
    one = tmp_path / "one.h5"
    extract(index, one, **kwargs)
    target = tmp_path / "merged.h5"
    s0 = extract(index, target, shard="0/2", **kwargs)
    s1 = extract(index, target, shard=(1, 2), **kwargs)
    assert s0.cache_path != s1.cache_path and not target.exists()
    assert not s0.complete  # a shard alone leaves the other shard's rows missing
    report = merge_caches([s0.cache_path, s1.cache_path], target)
    assert report.complete is False  # train was not extracted in either
    a, b = cache_arrays(one), cache_arrays(target)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    with FeatureCache.open(target) as cache:
        st = cache.read("vlm", "qwen", "test").status
        assert (st == ROW_OK).all()


def test_limit_takes_first_missing_rows_per_split(tmp_path, index, tiny_dir) -> None:  # noqa: F811
    path = tmp_path / "limit.h5"
    summary = extract(index, path, vlm=None, teachers=[tiny_dir["teacher"]], limit=2, num_workers=0)
    with FeatureCache.open(path) as cache:
        for split in cache.splits:
            st = cache.read("teacher", None, split, allow_incomplete=True).status
            assert list(np.flatnonzero(st != 0)) == [0, 1]
    assert summary.source("teacher/vit-fi").done + summary.source("teacher/vit-fi").failed == 2 * len(index.splits)
    summary = extract(index, path, vlm=None, teachers=[tiny_dir["teacher"]], limit=2, num_workers=0)
    with FeatureCache.open(path) as cache:
        assert list(np.flatnonzero(cache.read("teacher", None, "test", allow_incomplete=True).status)) == [0, 1, 2, 3]


def test_bad_inputs_are_one_line_errors(tmp_path, index, tiny_dir) -> None:  # noqa: F811
    path = tmp_path / "e.h5"
    with pytest.raises(ModelError, match="not the label space"):
        extract(index, path, vlm=None, teachers=[tiny_dir["teacher6"]], num_workers=0)
    with pytest.raises(ModelError, match="does not exist"):
        extract(index, path, vlm=LoadOptions(str(tmp_path / "no-model")), num_workers=0)
    with pytest.raises(ConfigError, match="answer mode"):
        extract(index, path, vlm=_opts(tiny_dir), answer_modes=("guess",))
    with pytest.raises(ConfigError, match="nothing to extract"):
        extract(index, path, vlm=None)
    # A cache of another label space (same file, dataset forced to binary) is refused.
    from vea_bench.datasets import load_dataset

    extract(index, path, vlm=None, teachers=[tiny_dir["teacher"]], limit=1, num_workers=0)
    binary = load_dataset("fi", index.root, label_space="binary")
    with pytest.raises(CacheError, match="label space"):
        extract(binary, path, vlm=None, teachers=[tiny_dir["teacher"]], num_workers=0)


def test_teacher_with_permuted_labels_is_aligned(tmp_path, index, tiny_dir) -> None:  # noqa: F811
    """A teacher saved with another class order (e.g. EmoSet's) writes logits in the cache's order."""
    from vea_bench.models.teacher import load_teacher, save_teacher

    model, meta = load_teacher(tiny_dir["teacher"])
    perm = [2, 0, 1, 3, 4, 5, 7, 6]
    names = [meta["label_names"][i] for i in perm]
    with torch.no_grad():  # permute the head rows so the model is the same up to class order
        model.head.weight.copy_(model.head.weight[perm])
        model.head.bias.copy_(model.head.bias[perm])
    save_teacher(model, tmp_path / "perm", dict(meta, label_names=names))
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    extract(index, a, vlm=None, teachers=[tiny_dir["teacher"]], splits=["test"], num_workers=0)
    extract(index, b, vlm=None, teachers=[tmp_path / "perm"], splits=["test"], num_workers=0)
    with FeatureCache.open(a) as ca, FeatureCache.open(b) as cb:
        la = ca.read("teacher", None, "test")["logits"]
        lb = cb.read("teacher", None, "test")["logits"]
    assert np.allclose(la, lb, atol=1e-6)


def test_unreadable_image_in_preprocessing_fails_only_its_row(tmp_path, backend, tiny_dir) -> None:  # noqa: F811
    """An image the VLM processor refuses (aspect ratio 300:1) fails its row; the rest of the batch is written."""
    from vea_bench.datasets import load_dataset
    from vea_bench.datasets.synthetic import make_synthetic

    root = make_synthetic("imagefolder", tmp_path / "imf", per_class=3, size=32, seed=1, label_space="binary")
    victim = sorted((root / "test").rglob("*.jpg"))[0]
    Image.new("RGB", (600, 2)).save(victim)
    index = load_dataset("imagefolder", root)
    path = tmp_path / "c.h5"
    summary = extract(index, path, vlm=_opts(tiny_dir), vlm_backend=backend, answer_modes=("score",),
                      splits=["test"], batch_size=4, num_workers=0)
    vis = summary.source("visual/qwen")
    assert vis.failed == 1 and vis.done == vis.rows - 1
    with FeatureCache.open(path) as cache:
        d = cache.read("visual", "qwen", "test")
        row = cache.ids("test").index(str(Path(victim).relative_to(root)))
        assert d.status[row] == ROW_FAILED and "preprocessing" in d.errors[row]
