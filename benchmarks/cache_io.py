"""Write and read throughput of a cache source against a raw ``.npy`` of the same array, in one run.

The default is the size that matters: a 100,000 x 3584 float16 visual source (the Qwen2-VL merger
width), about 717 MB. The cache is written the way extraction writes it: a `SourceWriter`, one
``write`` (and flush) per chunk of rows; the ``.npy`` with ``np.save``. Writes are reported without
and with a final fsync (the fsync measures the disk, the rest the write path). Reads go through
``FeatureCache.read`` (what every head uses) and ``np.load``: warm (the file in the page cache,
as right after extraction), then cold (pages dropped with ``posix_fadvise(DONTNEED)``). Each
figure is the best of ``--repeat`` runs, as the machine may be shared.

What the fault-safe write path costs is printed against a reference: the same chunks written with
plain h5py into one preallocated dataset with one flush per chunk (the single-file layout this
package used before). The safe path adds, per write, a flush of the values before the status is
set (so a reader or a resume never sees a row marked written without its values), and per new
source the lock, a source file created under a temporary name and fsynced, and an index rewritten
and renamed into place (the "create" figure).

    python benchmarks/cache_io.py                      # 100k x 3584, chunks of 1024 rows
    python benchmarks/cache_io.py --rows 20000 --dim 1280 --chunk 256
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import h5py  # noqa: E402

from vea_bench.cache import FeatureCache, SplitSpec, cache_files  # noqa: E402
from vea_bench.hashing import manifest_hash  # noqa: E402


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _drop_cache(path: Path) -> bool:
    """Evict ``path`` from the page cache so the next read comes from disk (Linux)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def _make_data(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((rows, dim), dtype=np.float16)
    for s in range(0, rows, 8192):
        out[s : s + 8192] = rng.standard_normal((min(8192, rows - s), dim), dtype=np.float32)
    return out


def _prefault(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory once: on VMs the first touch of guest pages is several
    times slower than later ones, and would otherwise be charged to whichever read runs first."""
    buf = np.ones(nbytes, dtype=np.uint8)
    del buf


def _remove(path: Path) -> None:
    for f in cache_files(path):
        f.unlink()


def _cache_data_files(path: Path) -> list[Path]:
    return [f for f in cache_files(path) if f.suffix == ".h5"]


def _write_cache(path: Path, data: np.ndarray, chunk: int, split: SplitSpec) -> tuple[float, float, float]:
    _remove(path)
    t0 = time.perf_counter()
    cache = FeatureCache.create(
        path, dataset="bench", label_space="mikels8", label_names=[str(i) for i in range(8)], splits={"train": split}
    )
    w = cache.writer("visual", "bench", {"emb": ((data.shape[1],), "float16")}, {"model": "benchmark"})
    t1 = time.perf_counter()
    for s in range(0, len(data), chunk):
        w.write("train", np.arange(s, min(len(data), s + chunk)), emb=data[s : s + chunk])
    cache.close()
    t2 = time.perf_counter()
    for f in _cache_data_files(path):
        _fsync(f)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def _write_plain_h5(path: Path, data: np.ndarray, chunk: int) -> float:
    """Reference: the previous write path (one preallocated contiguous dataset, one flush per chunk)."""
    path.unlink(missing_ok=True)
    with h5py.File(path, "w") as h5:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
        ds = h5.create_dataset("emb", shape=data.shape, dtype=data.dtype, dcpl=dcpl, fillvalue=0, fill_time="never")
        st = h5.create_dataset("_status", shape=(len(data),), dtype=np.uint8)
        t0 = time.perf_counter()
        for s in range(0, len(data), chunk):
            ds[s : s + chunk] = data[s : s + chunk]
            st[s : s + chunk] = 1
            h5.flush()
        t = time.perf_counter() - t0
    path.unlink()
    return t


def _write_npy(path: Path, data: np.ndarray) -> tuple[float, float]:
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    np.save(path, data)
    t1 = time.perf_counter()
    _fsync(path)
    return t1 - t0, time.perf_counter() - t1


def _write_raw_chunks(path: Path, data: np.ndarray, chunk: int) -> float:
    """Reference: the same chunks appended to a plain file (what chunked writing costs by itself)."""
    path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for s in range(0, len(data), chunk):
            f.write(memoryview(np.ascontiguousarray(data[s : s + chunk])).cast("B"))
    return time.perf_counter() - t0


def _same(a: np.ndarray, b: np.ndarray, block: int = 8192) -> bool:
    """Compare in row blocks (a whole-array compare would allocate and fault in 100M bools)."""
    return a.shape == b.shape and all(np.array_equal(a[s : s + block], b[s : s + block]) for s in range(0, len(a), block))


def _read_cache(path: Path) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    with FeatureCache.open(path) as c:
        got = c.read("visual", "bench", "train", ["emb"])["emb"]
    return time.perf_counter() - t0, got


def _read_npy(path: Path) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    got = np.load(path)
    return time.perf_counter() - t0, got


def run(rows: int, dim: int, chunk: int, workdir: Path, repeat: int = 3, seed: int = 0) -> dict[str, float]:
    """Best-of-``repeat`` seconds for each operation (the machine may be shared and noisy)."""
    data = _make_data(rows, dim, seed)
    _prefault(2 * data.nbytes)
    labels = np.arange(rows) % 8
    ids = [f"img_{i:07d}.jpg" for i in range(rows)]
    split = SplitSpec(ids, labels, manifest_hash(ids, [str(x) for x in labels]))
    h5_path, npy_path = workdir / "bench.h5", workdir / "bench.npy"
    res: dict[str, float] = {"mb": data.nbytes / 1e6}

    def best(key: str, value: float) -> None:
        res[key] = min(res.get(key, float("inf")), value)

    for i in range(repeat):
        for fmt in ("h5", "npy") if i % 2 == 0 else ("npy", "h5"):
            if fmt == "h5":
                create, write, sync = _write_cache(h5_path, data, chunk, split)
                best("create_s", create)
            else:
                write, sync = _write_npy(npy_path, data)
            best(f"{fmt}_write_s", write)
            best(f"{fmt}_write_sync_s", write + sync)
        raw = workdir / "raw.bin"
        best("raw_chunks_write_s", _write_raw_chunks(raw, data, chunk))
        raw.unlink()
        best("plain_h5_write_s", _write_plain_h5(workdir / "plain.h5", data, chunk))
    for mode in ("warm", "cold"):
        for i in range(repeat):
            # Alternate the order so neither format always reads second.
            order = [("h5", h5_path, _read_cache), ("npy", npy_path, _read_npy)]
            for name, path, reader in order if i % 2 == 0 else order[::-1]:
                if mode == "cold" and not all(_drop_cache(f) for f in (
                        _cache_data_files(path) if name == "h5" else [path])):
                    break
                seconds, got = reader(path)
                if not _same(got, data):
                    raise SystemExit(f"{name} read back other values")
                del got
                best(f"{name}_read_{mode}_s", seconds)
    res["h5_bytes"] = sum(f.stat().st_size for f in cache_files(h5_path))
    res["npy_bytes"] = npy_path.stat().st_size
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=3584)
    ap.add_argument("--chunk", type=int, default=1024, help="rows per SourceWriter.write call")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each operation; the best is reported")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the temporary files (default: system temp)")
    args = ap.parse_args()

    need = 2 * args.rows * args.dim * 2
    base = args.dir or Path(tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    if free < need * 1.2:
        sys.exit(f"need about {need / 1e9:.1f} GB free in {base}, have {free / 1e9:.1f} GB")
    workdir = Path(tempfile.mkdtemp(prefix="vea-cache-io-", dir=base))
    try:
        res = run(args.rows, args.dim, args.chunk, workdir, repeat=max(1, args.repeat))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    mb = res["mb"]
    print(
        f"{args.rows:,} x {args.dim} float16 = {mb:,.0f} MB; cache writes in chunks of {args.chunk} rows; "
        f"best of {max(1, args.repeat)}"
    )
    print(f"  cache + source create (ids, labels, lock, preallocated source file fsynced, index "
          f"rewritten): {res['create_s']:.2f} s; files {res['h5_bytes'] / 1e6:,.0f} MB, npy {res['npy_bytes'] / 1e6:,.0f} MB")
    print(f"  {'':14}{'cache MB/s':>12}{'npy MB/s':>12}{'cache/npy':>11}")
    rows = [
        ("write", "h5_write_s", "npy_write_s"),
        ("write+fsync", "h5_write_sync_s", "npy_write_sync_s"),
        ("read warm", "h5_read_warm_s", "npy_read_warm_s"),
        ("read cold", "h5_read_cold_s", "npy_read_cold_s"),
    ]
    for label, hk, nk in rows:
        if hk not in res:
            continue
        h, n = mb / res[hk], mb / res[nk]
        print(f"  {label:14}{h:12,.0f}{n:12,.0f}{h / n:11.2f}")
    raw = mb / res["raw_chunks_write_s"]
    print(f"  reference: the same {args.chunk}-row chunks appended to a raw file: {raw:,.0f} MB/s "
          f"(cache/raw {mb / res['h5_write_s'] / raw:.2f})")
    plain = mb / res["plain_h5_write_s"]
    print(f"  write-path cost: plain h5py, one flush per chunk (the previous path): {plain:,.0f} MB/s; "
          f"fault-safe SourceWriter {mb / res['h5_write_s']:,.0f} MB/s "
          f"(safe/plain {mb / res['h5_write_s'] / plain:.2f})")


if __name__ == "__main__":
    main()
