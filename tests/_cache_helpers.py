"""Real HDF5 caches for the cache tests, built through the cache API with small random arrays.

Every row's values are a function of (source, split, row) only, so a cache written in one go,
in interrupted pieces, or in shards must end with exactly the same bytes.

Also runnable as a script (the "writer process" of the kill/resume test)::

    python tests/_cache_helpers.py PATH --chunk 16 [--pause-after K] [--shard i/n]

writes the missing rows of every source in chunks, printing ``flushed N`` after each chunk; with
``--pause-after K`` it then waits (to be killed) instead of going on.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import h5py
import numpy as np

if __package__ in (None, ""):  # run as a script: make `vea_bench` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vea_bench.cache import ROW_FAILED, FeatureCache, FieldSpec, SplitSpec, shard_rows  # noqa: E402
from vea_bench.hashing import manifest_hash  # noqa: E402
from vea_bench.labels import MIKELS8  # noqa: E402

LABELS = list(MIKELS8.labels)
C = len(LABELS)
D = 24
SPLIT_SIZES = {"train": 90, "test": 37}

FIELDS: dict[str, dict[str, FieldSpec]] = {
    "visual/toy": {"emb": FieldSpec((D,), "float16")},
    "vlm/toy": {
        "text": FieldSpec((), "str"),
        "onehot": FieldSpec((C,), "uint8"),
        "logprobs": FieldSpec((C,), "float32"),
        "parse": FieldSpec((), "uint8"),
    },
    "teacher/toy": {"logits": FieldSpec((C,), "float32")},
}
PROVENANCE: dict[str, dict[str, object]] = {
    "visual/toy": {"model": "toy-vit", "revision": "abc123", "image_size": [224, 224]},
    "vlm/toy": {"model": "toy-vlm", "revision": "def456", "prompt": "Which emotion?", "temperature": 0.0},
    "teacher/toy": {"model": "toy-teacher", "weights_sha256": "0" * 64},
}
_SRC_SEED = {"visual/toy": 1, "vlm/toy": 2, "teacher/toy": 3}
_SPLIT_SEED = {"train": 10, "test": 20, "val": 30}


def split_specs(sizes: dict[str, int] | None = None, *, prefix: str = "img") -> dict[str, SplitSpec]:
    """Splits with ids like ``train/amusement/img_0003.jpg`` and their manifest hashes."""
    out = {}
    for split, n in (sizes or SPLIT_SIZES).items():
        labels = (np.arange(n) * 5 + _SPLIT_SEED[split]) % C
        ids = [f"{split}/{LABELS[lab]}/{prefix}_{i:04d}.jpg" for i, lab in enumerate(labels)]
        out[split] = SplitSpec(ids, labels, manifest_hash(ids, [LABELS[lab] for lab in labels]))
    return out


def make_cache(path: Path, *, dataset: str = "toyset", sizes: dict[str, int] | None = None) -> FeatureCache:
    """Create (or reopen) a cache file of the toy dataset, open for writing."""
    return FeatureCache.create(
        path, dataset=dataset, label_space="mikels8", label_names=LABELS, splits=split_specs(sizes), split_seed=0
    )


def is_failed(name: str, split: str, row: int) -> bool:
    """A fixed scattering of failed rows (unreadable images) in every source."""
    return (row * 7 + _SRC_SEED[name] + _SPLIT_SEED[split]) % 13 == 0


def failure_reason(split: str, row: int) -> str:
    return f"cannot identify image file '{split}/img_{row:04d}.jpg' «truncated» \"JPEG\""


def row_values(name: str, split: str, rows: np.ndarray) -> dict[str, object]:
    """Deterministic values of ``rows``: a function of (source, split, row) only."""
    vals: dict[str, list] = {f: [] for f in FIELDS[name]}
    for r in rows:
        rng = np.random.default_rng([_SRC_SEED[name], _SPLIT_SEED[split], int(r)])
        if name == "visual/toy":
            vals["emb"].append(rng.standard_normal(D).astype(np.float16))
        elif name == "teacher/toy":
            vals["logits"].append(rng.standard_normal(C).astype(np.float32) * 3)
        else:
            k = int(rng.integers(0, C + 1))  # C means "no label parsed"
            onehot = np.zeros(C, np.uint8)
            if k < C:
                onehot[k] = 1
            lp = rng.standard_normal(C).astype(np.float32)
            vals["onehot"].append(onehot)
            vals["logprobs"].append(lp - np.log(np.exp(lp).sum()))
            vals["parse"].append(np.uint8(k < C))
            word = LABELS[k] if k < C else "¿?"
            vals["text"].append(f"The image evokes «{word}» — it's \"{word}\"; row {int(r)} ✓\n")
    return {f: np.asarray(v, dtype=object) if f == "text" else np.stack(v) if v else np.zeros(0) for f, v in vals.items()}


def write_rows(cache: FeatureCache, name: str, split: str, rows: np.ndarray) -> None:
    """Write ``rows`` of one source the way extraction does: results for good rows, reasons for bad."""
    kind, key = name.split("/")
    w = cache.writer(kind, key, FIELDS[name], PROVENANCE[name])
    rows = np.asarray(rows, dtype=np.int64)
    bad = np.array([is_failed(name, split, int(r)) for r in rows], dtype=bool)
    good = rows[~bad]
    if good.size:
        w.write(split, good, **row_values(name, split, good))
    if bad.any():
        w.fail(split, rows[bad], [failure_reason(split, int(r)) for r in rows[bad]])


def write_all(
    cache: FeatureCache,
    names: list[str] | None = None,
    *,
    chunk: int = 1 << 30,
    shard: tuple[int, int] | None = None,
    on_chunk=None,
) -> int:
    """Write every missing row (of one shard, if given) of ``names`` in chunks; returns rows written."""
    done = 0
    for name in names or list(FIELDS):
        kind, key = name.split("/")
        w = cache.writer(kind, key, FIELDS[name], PROVENANCE[name])
        for split in cache.splits:
            todo = w.missing(split)
            if shard is not None:
                todo = shard_rows(todo, *shard)
            for s in range(0, len(todo), chunk):
                write_rows(cache, name, split, todo[s : s + chunk])
                done += len(todo[s : s + chunk])
                if on_chunk is not None:
                    on_chunk()
    return done


def walk_datasets(group: h5py.Group, prefix: str = ""):
    """(path, dataset) of every dataset under ``group``, following the index's external links
    (``visititems`` does not cross into the per-source files)."""
    for name in group:
        obj = group[name]
        path = f"{prefix}{name}"
        if isinstance(obj, h5py.Dataset):
            yield path, obj
        else:
            yield from walk_datasets(obj, path + "/")


def source_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of every source (values, ``_status``, ``_error``) by HDF5 path, raw from disk."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as h5:
        for kind in ("visual", "vlm", "teacher", "backbone"):
            if kind not in h5:
                continue
            for name, ds in walk_datasets(h5[kind]):
                out[f"{kind}/{name}"] = ds[()]
    return out


def assert_same_sources(a: Path, b: Path) -> None:
    """The two files hold the same datasets with identical bytes (strings: identical text)."""
    xa, xb = source_arrays(a), source_arrays(b)
    assert sorted(xa) == sorted(xb)
    for k in xa:
        assert xa[k].dtype == xb[k].dtype, k
        assert xa[k].shape == xb[k].shape, k
        if xa[k].dtype.kind == "O":
            assert list(xa[k]) == list(xb[k]), k
        else:
            assert xa[k].tobytes() == xb[k].tobytes(), k


def fill_disk(path: Path) -> None:
    """Write ``path`` until the file system is full (the full-disk fault)."""
    try:
        with open(path, "ab", buffering=0) as f:
            for size in (64 << 10, 4096, 512, 1):
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    continue
    except OSError:
        pass


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path", type=Path)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--pause-after", type=int, default=0)
    ap.add_argument("--names", default=",".join(FIELDS))
    ap.add_argument("--fill-after", type=int, default=0, help="after this many chunks, fill the disk")
    ap.add_argument("--filler", type=Path, default=None)
    ap.add_argument("--catch", action="store_true", help="user-facing errors: one stderr line, exit 2")
    args = ap.parse_args()
    flushed = 0

    def on_chunk() -> None:
        nonlocal flushed
        flushed += 1
        print(f"flushed {flushed}", flush=True)
        if args.fill_after and flushed == args.fill_after and args.filler is not None:
            fill_disk(args.filler)
        if args.pause_after and flushed >= args.pause_after:
            while True:  # wait here to be killed
                time.sleep(1)

    def run() -> int:
        cache = make_cache(args.path)
        try:
            return write_all(cache, args.names.split(","), chunk=args.chunk, on_chunk=on_chunk)
        finally:
            cache.close()

    if args.catch:
        from vea_bench.errors import VeaError

        try:
            n = run()
        except VeaError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
    else:
        n = run()
    print(f"done {n}", flush=True)


if __name__ == "__main__":
    _main()

__all__ = [
    "C", "D", "FIELDS", "fill_disk", "walk_datasets", "LABELS", "PROVENANCE", "ROW_FAILED", "SPLIT_SIZES", "assert_same_sources",
    "failure_reason", "is_failed", "make_cache", "row_values", "source_arrays", "split_specs",
    "write_all", "write_rows",
]
