"""Fault suite for the cache: kills at random points, full disks, truncation, two writers, read-only
mounts, damaged sources, changed images. A fast subset runs by default; ``pytest --faults`` runs
all of it (20+ kills per signal, more fill levels and truncation offsets).

Every case asserts the same contract: no traceback, one-line errors, every source that was
complete before the fault still reads back identical, and resuming ends identical to an
uninterrupted run. Full-disk and read-only cases need a small tmpfs (root and mount(8)); they are
skipped with the reason elsewhere.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from _cache_helpers import FIELDS, assert_same_sources, make_cache, source_arrays, write_all, write_rows
from vea_bench.cache import (
    DamagedSourceError,
    FeatureCache,
    changed_rows,
    repair_cache,
    sources_dir,
    verify_cache,
)
from vea_bench.errors import CacheError, ConfigError

HELPER = Path(__file__).with_name("_cache_helpers.py")
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


def _full(config: pytest.Config) -> bool:
    return bool(config.getoption("--faults"))


def _one_line(text: str, *needles: str) -> None:
    text = text.strip()
    assert text and "\n" not in text, text
    assert "Traceback" not in text
    for n in needles:
        assert n in text, (n, text)


def _copy_cache(src: Path, dst: Path) -> None:
    shutil.copy2(src, dst)
    if sources_dir(src).is_dir():
        shutil.copytree(sources_dir(src), sources_dir(dst))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every toy source written in one go: what every faulted-then-resumed cache must equal."""
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    with make_cache(path) as cache:
        write_all(cache)
    return path


def _with_visual(path: Path) -> None:
    """A cache whose visual source is complete (the one a later fault must not touch)."""
    with make_cache(path) as cache:
        write_all(cache, ["visual/toy"])


def _assert_visual_intact(path: Path, reference: Path) -> None:
    with FeatureCache.open(path) as c, FeatureCache.open(reference) as r:
        assert c.source("visual", "toy").complete
        for split in r.splits:
            a, b = c.read("visual", "toy", split), r.read("visual", "toy", split)
            assert a["emb"].tobytes() == b["emb"].tobytes()
            assert np.array_equal(a.status, b.status) and a.errors == b.errors


def _helper(path: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HELPER), str(path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _resume(path: Path) -> None:
    """Write every missing row (in this process: the faulted writer is gone)."""
    with make_cache(path) as cache:
        write_all(cache, chunk=16)


# ------------------------------------------------------------------------- kills, cache level
@pytest.mark.parametrize("sig", list(SIGNALS))
def test_writer_killed_at_random_points(tmp_path: Path, reference: Path, sig: str, request) -> None:
    """Kill a writer (vlm and teacher sources after a complete visual one) at a random chunk and
    a random moment inside it; the visual source stays identical and a resume equals the reference."""
    n = 20 if _full(request.config) else 2
    rng = random.Random(f"kill-{sig}")
    for i in range(n):
        path = tmp_path / f"k{i}.h5"
        _with_visual(path)
        proc = _helper(path, "--chunk", "8")
        try:
            for _ in range(rng.randint(1, 24)):  # 8 rows per chunk; 127 rows x 2 sources to write
                if not proc.stdout.readline():
                    break
            time.sleep(rng.random() * 0.02)
            if proc.poll() is None:
                proc.send_signal(SIGNALS[sig])
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _assert_visual_intact(path, reference)
        _resume(path)
        assert_same_sources(reference, path)


# ----------------------------------------------------------------------- kills, extract CLI
@pytest.fixture(scope="module")
def teacher_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vea_bench.datasets.synthetic import make_synthetic
    from vea_bench.models.tiny import make_tiny

    root = tmp_path_factory.mktemp("teacher-set")
    return {
        "teacher": make_tiny("teacher", root / "vit", seed=1, num_classes=8),
        "fi": make_synthetic("fi", root / "fi", per_class=4, size=32, seed=0, faults=("corrupt",)),
    }


def _extract(teacher_set: dict[str, Path], cache: Path, root: Path | None = None, batch_size: int = 1, **kw):
    """Batch size 1: a row's logits then do not depend on which rows share its batch, so resumed
    and uninterrupted runs compare byte for byte."""
    from vea_bench.datasets import load_dataset
    from vea_bench.extract import extract

    index = load_dataset("fi", root or teacher_set["fi"], seed=0)
    return extract(index, cache, vlm=None, teachers=[teacher_set["teacher"]], batch_size=batch_size, num_workers=0,
                   device="cpu", **kw)


@pytest.fixture(scope="module")
def teacher_reference(teacher_set: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher-ref") / "ref.h5"
    _extract(teacher_set, path)
    return path


class _SignalAfter:
    """A progress callback that sends this process ``sig`` after the first batch."""

    def __init__(self, sig: int) -> None:
        self.sig = sig
        self.sent = False

    def start(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1, **info) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.sig)

    def finish(self) -> None:
        pass


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_extract_stops_after_the_batch_and_resumes(tmp_path, teacher_set, teacher_reference, sig, code) -> None:
    from _extract_helpers import cache_arrays
    from vea_bench.cache.guard import Stopped

    path = tmp_path / "c.h5"
    with pytest.raises(Stopped) as ei:
        _extract(teacher_set, path, progress=_SignalAfter(sig))
    assert ei.value.exit_code == code
    _one_line(str(ei.value), f"stopped by {signal.Signals(sig).name} after the current batch", "rerun")
    with FeatureCache.open(path) as c:
        counts = c.source("teacher", "vit").counts
        assert sum(x["done"] + x["failed"] for x in counts.values()) == 1  # exactly one batch
    summary = _extract(teacher_set, path)
    assert summary.complete
    a, b = cache_arrays(path), cache_arrays(teacher_reference)
    assert sorted(a) == sorted(b)
    for k in a:
        assert list(a[k]) == list(b[k]) if a[k].dtype.kind == "O" else a[k].tobytes() == b[k].tobytes(), k


def _status_rows(path: Path) -> int:
    total = 0
    for f in sources_dir(path).rglob("*.h5"):
        try:
            with h5py.File(f, "r", locking=False) as h5:
                for kind in h5:
                    for key in h5[kind]:
                        g = h5[f"{kind}/{key}"]
                        total += sum(int((g[f"{s}/_status"][()] != 0).sum()) for s in g)
        except Exception:  # noqa: BLE001 - being created or written
            pass
    return total


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "vea_bench_cli.main", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True, **kw)


@pytest.mark.faults_full  # each run starts torch in a new process: too slow for the default subset
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_extract_cli_signalled_as_a_process_group(tmp_path, teacher_set, teacher_reference, sig, request) -> None:
    """The scheduler case: the signal goes to the whole process group (main + loader workers)."""
    from _extract_helpers import cache_arrays

    n = 5  # each run starts torch and the models anew (the cache-level test does 20+ per signal)
    rng = random.Random(f"cli-{sig}")
    path = tmp_path / "c.h5"
    args = ["extract", "fi", "--root", str(teacher_set["fi"]), "--teacher", str(teacher_set["teacher"]),
            "--cache", str(path), "--split-seed", "0", "--batch-size", "1", "--workers", "1", "--device", "cpu",
            "--threads", "1", "--quiet"]
    stopped = 0
    for _ in range(n):
        before = _status_rows(path)
        proc = _cli(*args)
        target = before + rng.randint(1, 4)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and _status_rows(path) < target:
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, SIGNALS[sig])
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err[-3000:]
        if proc.returncode == 0:
            break  # it finished before the signal
        stopped += 1
        if sig == "SIGKILL":
            assert proc.returncode == -signal.SIGKILL
        else:
            assert proc.returncode == {"SIGTERM": 143, "SIGINT": 130}[sig], err
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert len(lines) == 1 and f"stopped by {sig}" in lines[0], err
    assert stopped >= 1
    proc = _cli(*args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    a, b = cache_arrays(path), cache_arrays(teacher_reference)
    assert sorted(a) == sorted(b)
    for k in a:
        assert list(a[k]) == list(b[k]) if a[k].dtype.kind == "O" else a[k].tobytes() == b[k].tobytes(), k


# ------------------------------------------------------------------------------ two writers
def test_two_writers_are_refused_and_readers_see_whole_rows(tmp_path: Path, reference: Path) -> None:
    path = tmp_path / "c.h5"
    _with_visual(path)
    proc = _helper(path, "--chunk", "8", "--pause-after", "3")
    try:
        for _ in range(3):
            assert proc.stdout.readline().startswith("flushed")
        with pytest.raises(CacheError) as ei:
            FeatureCache.open(path, "a")
        _one_line(str(ei.value), "being written by pid", "wait for it")
        second = subprocess.run([sys.executable, str(HELPER), str(path), "--catch"], capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2
        _one_line(second.stderr, "being written by pid")
        # A reader meanwhile: the complete source reads whole; the one being written is either
        # refused in one line (HDF5's lock) or shows only rows whose values are all there.
        _assert_visual_intact(path, reference)
        with FeatureCache.open(path) as c, FeatureCache.open(reference) as r:
            try:
                d = c.read("vlm", "toy", "train", allow_incomplete=True)
            except CacheError as exc:
                _one_line(str(exc))
            else:
                ref = r.read("vlm", "toy", "train")
                ok = d.status == 1
                assert ok.any() and np.array_equal(d["onehot"][ok], ref["onehot"][ok])
                assert list(d["text"][ok]) == list(ref["text"][ok])
    finally:
        proc.kill()
        proc.wait()
    _resume(path)
    assert_same_sources(reference, path)


# ------------------------------------------------------------------------------- truncation
def test_truncation_at_random_offsets(tmp_path: Path, reference: Path, request) -> None:
    """Cut a file of the cache at a random byte (power loss, a bad copy): the index is refused in
    one line, a cut source is reported and dropped alone, and the rest recomputes to the reference."""
    base = tmp_path / "base" / "c.h5"
    base.parent.mkdir()
    with make_cache(base) as cache:
        write_all(cache, ["visual/toy", "vlm/toy"])
        write_rows(cache, "teacher/toy", "train", np.arange(30))
    n = 40 if _full(request.config) else 5
    rng = random.Random("truncate")
    for i in range(n):
        d = tmp_path / f"t{i}"
        d.mkdir()
        path = d / "c.h5"
        _copy_cache(base, path)
        files = [path, *sorted(sources_dir(path).rglob("*.h5"))]
        victim = files[i % len(files)]
        size = victim.stat().st_size
        cut = rng.randrange(0, size)
        with open(victim, "r+b") as f:
            f.truncate(cut)
        if victim == path:
            with pytest.raises(CacheError) as ei:
                FeatureCache.open(path)
            _one_line(str(ei.value), str(path))
            assert not verify_cache(path).ok
            continue
        name = next(n for n in FIELDS if victim.parent.name == n.split("/")[0])
        report = verify_cache(path)
        assert all("\n" not in p for p in report.problems)
        dropped = repair_cache(path).dropped
        assert set(dropped) <= {name}
        with FeatureCache.open(path) as c:  # every other source reads back identical
            for other in FIELDS:
                if other == name or not c.has_source(*other.split("/")):
                    continue
                with FeatureCache.open(reference) as r:
                    kind, key = other.split("/")
                    for split in r.splits:
                        a = c.read(kind, key, split, allow_incomplete=True)
                        b = r.read(kind, key, split)
                        ok = a.status != 0
                        for f in a.arrays:
                            x, y = a[f][ok], b[f][ok]
                            assert (list(x) == list(y)) if x.dtype.kind == "O" else x.tobytes() == y.tobytes()
        _resume(path)
        assert_same_sources(reference, path)


# ---------------------------------------------------------------------------- damaged caches
@pytest.mark.parametrize("damage", ["_status", "emb", "file"])
def test_damaged_source_refused_verified_repaired(tmp_path: Path, reference: Path, damage: str) -> None:
    from typer.testing import CliRunner

    from vea_bench_cli.main import app

    path = tmp_path / "c.h5"
    _copy_cache(reference, path)
    if damage == "file":
        next(sources_dir(path).glob("visual/*.h5")).unlink()
    else:
        with h5py.File(next(sources_dir(path).glob("visual/*.h5")), "r+") as h5:
            del h5[f"visual/toy/train/{damage}"]
    with FeatureCache.open(path) as c:
        with pytest.raises(DamagedSourceError) as ei:
            c.read("visual", "toy", "train")
        _one_line(str(ei.value), "visual/toy", "damaged", "cache repair")
        assert c.read("teacher", "toy", "train").status.size == 90  # the others still read
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info", str(path)])
    assert info.exit_code == 0 and "damaged" in info.output and "Traceback" not in info.output
    ver = runner.invoke(app, ["cache", "verify", str(path)])
    assert ver.exit_code == 1 and "visual/toy" in ver.output
    rep = runner.invoke(app, ["cache", "repair", str(path)])
    assert rep.exit_code == 0 and "dropped visual/toy" in rep.output, rep.output
    with FeatureCache.open(path) as c:
        assert [s.name for s in c.sources()] == ["vlm/toy", "teacher/toy"]
    _resume(path)
    assert_same_sources(reference, path)


# ------------------------------------------------------------------------- small file systems
@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs mounted for the test (root and mount(8) needed, else skipped with the reason)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to mount a small tmpfs for full-disk / read-only faults")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _clear(mnt: Path) -> None:
    for p in mnt.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def test_full_disk_refused_up_front_with_an_estimate(tmpfs: Path, reference: Path) -> None:
    from _cache_helpers import fill_disk

    path = tmpfs / "c.h5"
    _with_visual(path)
    fill_disk(tmpfs / "filler")
    res = subprocess.run([sys.executable, str(HELPER), str(path), "--catch"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    _one_line(res.stderr, "not enough free space", "needs about", "bytes/row", "free")
    _assert_visual_intact(path, reference)
    (tmpfs / "filler").unlink()
    _resume(path)
    assert_same_sources(reference, path)


def test_disk_filling_up_mid_run(tmpfs: Path, reference: Path, request) -> None:
    """Another process fills the disk while a source is being written (past the up-front check)."""
    n = 20 if _full(request.config) else 2
    rng = random.Random("fill")
    outcomes = []
    for _ in range(n):
        _clear(tmpfs)
        path = tmpfs / "c.h5"
        _with_visual(path)
        k = rng.randint(1, 20)
        res = subprocess.run([sys.executable, str(HELPER), str(path), "--chunk", "8", "--catch", "--fill-after",
                              str(k), "--filler", str(tmpfs / "filler")], capture_output=True, text=True, timeout=120)
        outcomes.append(res.returncode)
        assert res.returncode in (0, 2), (res.returncode, res.stderr[-2000:])
        assert "Traceback" not in res.stderr
        if res.returncode == 2:
            errs = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
            assert len(errs) == 1 and ("no space left" in errs[0] or "not enough free space" in errs[0]), res.stderr
        _assert_visual_intact(path, reference)
        (tmpfs / "filler").unlink()
        _resume(path)
        assert_same_sources(reference, path)
    assert 2 in outcomes


def test_read_only_mount_is_named_not_called_corrupt(tmpfs: Path) -> None:
    path = tmpfs / "c.h5"
    with make_cache(path) as cache:
        write_rows(cache, "visual/toy", "train", np.arange(10))
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        with pytest.raises(CacheError) as ei:
            FeatureCache.open(path, "a")
        _one_line(str(ei.value), "read-only file system")
        assert "truncated" not in str(ei.value) and "corrupt" not in str(ei.value)
        with pytest.raises(CacheError) as ei:
            make_cache(tmpfs / "new.h5")
        _one_line(str(ei.value), "read-only file system", "new.h5")
        with pytest.raises(CacheError) as ei:
            make_cache(tmpfs / "sub" / "new.h5")
        _one_line(str(ei.value), "read-only file system")
        with FeatureCache.open(path) as c:  # reading still works
            assert (c.read("visual", "toy", "train", allow_incomplete=True).status != 0).sum() == 10
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)


def test_results_on_a_full_disk_are_one_line(tmpfs: Path) -> None:
    import torch

    from _cache_helpers import fill_disk
    from vea_bench.results import ResultsStore, RunRecord

    fill_disk(tmpfs / "filler")
    store = ResultsStore(tmpfs / "results")
    with pytest.raises(ConfigError) as ei:
        store.save(RunRecord(kind="distill", method="distill", dataset="fi", config={}, metrics={}, run_id="run1"),
                   weights={"head": {"w": torch.zeros(4096, 64)}}, weights_config={"a": 1})
    _one_line(str(ei.value), "no space left on device", "results")
    rec = RunRecord(kind="distill", method="distill", dataset="fi", config={"blob": "x" * 200_000}, metrics={})
    with pytest.raises(ConfigError) as ei:
        store.save(rec)
    _one_line(str(ei.value), "no space left on device")
    assert not list((tmpfs / "results").rglob("*.tmp"))


# ----------------------------------------------------------------------------- stale images
def test_changed_image_is_listed_and_recomputed(tmp_path: Path, teacher_set: dict[str, Path]) -> None:
    from PIL import Image

    from _extract_helpers import cache_arrays

    root = tmp_path / "fi"
    shutil.copytree(teacher_set["fi"], root)
    path = tmp_path / "c.h5"
    _extract(teacher_set, path, root=root)
    assert changed_rows(path, root) == []
    with FeatureCache.open(path) as c:
        split = c.splits[0]
        ids = c.ids(split)
        st = c.read("teacher", "vit", split).status
        row = int(np.flatnonzero(st == 1)[0])
    img = root / ids[row]
    Image.new("RGB", (32, 32), (250, 10, 10)).save(img, format="JPEG")
    changed = changed_rows(path, root)
    assert [(r.split, r.row, r.id, r.sources) for r in changed] == [(split, row, ids[row], ["teacher/vit"])]
    summary = _extract(teacher_set, path, root=root)
    s = summary.source("teacher/vit")
    assert s.changed == 1 and s.done == 1 and summary.complete
    assert changed_rows(path, root) == []
    fresh = tmp_path / "fresh.h5"
    _extract(teacher_set, fresh, root=root)
    a, b = cache_arrays(path), cache_arrays(fresh)
    for k in a:
        assert list(a[k]) == list(b[k]) if a[k].dtype.kind == "O" else a[k].tobytes() == b[k].tobytes(), k


def test_old_single_file_cache_is_read_and_migrated(tmp_path: Path, reference: Path) -> None:
    """A cache of the earlier layout (sources inside the file) reads as before; the first writer
    moves its sources into their own files, keeping every value."""
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as out, h5py.File(reference, "r") as ref:
        for k, v in ref.attrs.items():
            out.attrs[k] = v
        ref.copy("splits", out)
        for name in FIELDS:
            kind, key = name.split("/")
            ref.copy(ref[name], out.require_group(kind), key)
    assert not sources_dir(old).exists()
    assert_same_sources(reference, old)
    with FeatureCache.open(old, "a") as c:
        assert sorted(s.name for s in c.sources()) == sorted(FIELDS)
    assert len(list(sources_dir(old).rglob("*.h5"))) == len(FIELDS)
    assert_same_sources(reference, old)
    assert source_arrays(old)


@pytest.mark.parametrize("exc,needle", [
    (PermissionError(13, "Permission denied"), "permission denied"),
    (OSError(30, "Read-only file system"), "read-only file system"),
    (OSError(28, "No space left on device"), "no space left on device"),
    (OSError(2, "No such file or directory"), "no such file or folder"),
    # HDF5 reports the errno only inside its message text
    (OSError("Unable to create file (unable to open file: name = 'x.h5', errno = 13, error message = "
             "'Permission denied', flags = 13, o_flags = 242)"), "permission denied"),
    (OSError("Can't write data (file write failed: time = now, errno = 28, error message = "
             "'No space left on device')"), "no space left on device"),
], ids=["EACCES", "EROFS", "ENOSPC", "ENOENT", "hdf5-EACCES", "hdf5-ENOSPC"])
def test_os_errors_name_the_path_and_the_fix(exc: OSError, needle: str) -> None:
    from vea_bench.cache.guard import os_error

    msg = str(os_error(Path("/data/cache/fi.h5"), exc, "create the cache file"))
    _one_line(msg, "/data/cache/fi.h5", "cannot create the cache file", needle)
    assert ";" in msg  # the fix follows the reason


# ------------------------------------------------------------- writers outside the cache
# Every writer that is not the cache (synthetic sets, run records and artifacts, tables, plots, the
# HTML report, instructions, checkpoints, tiny models), run through the CLI with its output on a
# 64 KB tmpfs that is full, nearly full (the write fails part-way) or read-only, or in a folder this
# user may not write (EACCES, as root without CAP_DAC_OVERRIDE): one line naming the path, exit 2.
SMALL_FS = 64 * 1024


@contextlib.contextmanager
def _small_fs(where: Path, *, fill: int = 0, read_only: bool = False, before: dict[str, str] | None = None):
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to mount a small tmpfs for full-disk / read-only faults")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
    try:
        for name, text in (before or {}).items():
            (where / name).write_text(text)
        if fill:
            with contextlib.suppress(OSError), open(where / "filler", "wb") as f:
                f.write(b"\0" * fill)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture(scope="module")
def writer_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic FI set, its instruction responses, a head cache and a results folder with records."""
    import json

    from typer.testing import CliRunner

    from vea_bench.datasets import load_dataset
    from vea_bench.datasets.synthetic import make_synthetic
    from vea_bench.heads.synthetic_cache import make_complementary_cache
    from vea_bench_cli.main import app

    base = tmp_path_factory.mktemp("writers")
    fi = make_synthetic("fi", base / "fi", per_class=3, size=16)
    index = load_dataset("fi", fi)
    (base / "gen.jsonl").write_text("".join(json.dumps({
        "image": s.path, "label": index.label_space.labels[s.label],
        "response": "Key elements: a red evening sky over a quiet lake with boats\n"
                    "Reasoning: the warm light and the still water suggest a calm, content mood"}) + "\n"
        for s in index.split("train")))
    cache = make_complementary_cache(base / "c.h5", n_train=48, n_val=24, n_test=24, dim=8, seed=3)
    res = CliRunner().invoke(app, ["train", "distill", "--cache", str(cache), "--results", str(base / "results"),
                                   "--epochs", "1", "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    return {"fi": fi, "gen": base / "gen.jsonl", "cache": cache, "results": base / "results"}


WRITERS: dict[str, Any] = {
    "synthetic": lambda i, o: ["datasets", "make-synthetic", "fi", str(o / "syn"), "-n", "3", "--size", "16"],
    "records": lambda i, o: ["train", "distill", "--cache", str(i["cache"]), "--results", str(o / "res"),
                             "--epochs", "1", "--device", "cpu", "-q"],
    "table": lambda i, o: ["table", "--results", str(i["results"]), "--out", str(o / "t.md"), "-f", "md", "-t", "ext"],
    "plot": lambda i, o: ["plot", "--results", str(i["results"]), "--out", str(o / "plots"), "-f", "png"],
    "report": lambda i, o: ["report", "--results", str(i["results"]), "--out", str(o / "report")],
    "instructions": lambda i, o: ["instruct", "build", "fi", "--root", str(i["fi"]), "--responses", str(i["gen"]),
                                  "--out", str(o / "i.jsonl")],
    "checkpoint": lambda i, o: ["train", "teacher", "fi", "--root", str(i["fi"]), "--arch", "test_resnet",
                                "--img-size", "32", "--random-init", "--epochs", "1", "--out", str(o / "teacher"),
                                "--results", str(o / "res"), "--device", "cpu", "-q"],
    "tiny-model": lambda i, o: ["models", "make-tiny", "teacher", str(o / "tiny")],
}
FAULTS = {"full": dict(fill=SMALL_FS), "nearly-full": dict(fill=SMALL_FS - 12 * 1024), "read-only": dict(read_only=True)}
FAST_WRITERS = {("synthetic", "full"), ("records", "read-only"), ("table", "full"), ("instructions", "read-only"),
                ("tiny-model", "full")}


def _assert_write_error(output: str, stderr: str, where: Path, reason: str) -> None:
    assert "Traceback" not in output, output
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1], stderr
    assert str(where) in errors[0] and reason in errors[0], errors[0]


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("writer", list(WRITERS))
def test_writers_outside_the_cache_on_a_full_or_read_only_disk(tmp_path, writer_inputs, writer, fault, request):
    from typer.testing import CliRunner

    from vea_bench_cli.main import app

    if (writer, fault) not in FAST_WRITERS and not _full(request.config):
        pytest.skip("full fault suite: run with --faults")
    before = {"t.md": "the table written before\n"} if writer == "table" else None
    with _small_fs(tmp_path / "mnt", before=before, **FAULTS[fault]) as mnt:
        res = CliRunner().invoke(app, WRITERS[writer](writer_inputs, mnt))
        if res.exit_code == 0:  # the output fitted in what was left: nothing to report
            assert fault == "nearly-full", res.output
            return
        assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
        reason = "read-only file system" if fault == "read-only" else "no space left on device"
        _assert_write_error(res.output, res.stderr, mnt, reason)
        if before:  # a full disk never costs the file already there
            assert (mnt / "t.md").read_text() == before["t.md"]


@pytest.mark.parametrize("writer", ["synthetic", pytest.param("table", marks=pytest.mark.faults_full),
                                    pytest.param("instructions", marks=pytest.mark.faults_full)])
def test_writers_in_a_folder_this_user_may_not_write(tmp_path, writer_inputs, writer) -> None:
    """EACCES as a user would meet it: root without CAP_DAC_OVERRIDE, a folder owned by someone else."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv(1) to drop the capability that bypasses permissions")
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chown(locked, 65534, 65534)
    locked.chmod(0o755)
    cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m", "vea_bench_cli.main",
           *WRITERS[writer](writer_inputs, locked)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode == 0:
        pytest.skip("dropping CAP_DAC_OVERRIDE does not take effect here")
    assert res.returncode == 2, res.stderr
    _assert_write_error(res.stdout + res.stderr, res.stderr, locked, "permission denied")
