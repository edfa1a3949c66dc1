"""Full disks, read-only mounts and missing permissions at each point where the cache writes: the
index (first write and later commits) and the source files. Each is one line naming the path, the
writer process exits cleanly (never a traceback or a crash), and after the fix a resumed run ends
identical to an uninterrupted one.

Uses real file systems: small tmpfs mounts and read-only bind mounts (root and mount(8)), and a
writer process run without the capability that lets root ignore file permissions (setpriv(1)).
Each case is skipped with the reason where the machine does not allow it.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from _cache_fixtures import full_cache  # noqa: F401 - a fixture
from _cache_helpers import assert_same_sources, make_cache, write_all, write_rows
from vea_bench.cache import sources_dir

HELPER = Path(__file__).with_name("_cache_helpers.py")
_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def _mount(args: list[str]) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) for a real small or read-only file system")
    res = subprocess.run(["mount", *args], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount here ({res.stderr.strip() or res.returncode})")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture()
def small_tmpfs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs of ``request.param`` (e.g. ``16k``) mounted for the test."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    _mount(["-t", "tmpfs", "-o", f"size={request.param}", "tmpfs", str(mnt)])
    try:
        yield mnt
    finally:
        _umount(mnt)


@pytest.fixture()
def reference(full_cache: Path) -> Path:
    return full_cache


def _writer(path: Path, *, no_dac: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the test writer (every source, missing rows only) in its own process."""
    cmd = [sys.executable, str(HELPER), str(path), "--catch"]
    if no_dac:
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            pytest.skip("needs root and setpriv(1) to run a writer that file permissions apply to")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _error_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _bytes(text: str) -> float:
    value, unit = text.replace(",", "").split()
    return float(value) * _UNITS[unit]


# ------------------------------------------------------------------------------- full disks
@pytest.mark.parametrize("small_tmpfs", ["16k"], indirect=True)
def test_disk_full_at_the_first_write_is_one_line(small_tmpfs: Path, reference: Path) -> None:
    """16 KB cannot hold the index: the very first write fails, in one line naming the path."""
    path = small_tmpfs / "fi.h5"
    res = _writer(path)
    _error_line(res, str(path), "cannot create the cache file", "no space left on device")
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["fi.h5.lock"]  # no half-written index


@pytest.mark.parametrize("small_tmpfs", ["160k"], indirect=True)
def test_free_space_message_prints_the_figure_it_applies(small_tmpfs: Path) -> None:
    """The index fits but the sources with the reserve do not: the figure printed as needed is
    the one compared with the free space, so it is more than what is free."""
    path = small_tmpfs / "fi.h5"
    res = _writer(path)
    line = _error_line(res, str(sources_dir(path)), "not enough free space", "bytes/row")
    m = re.search(r"needs about ([\d.,]+ [KMGT]?B) \(([\d.,]+ [KMGT]?B) of data \+ ([\d.,]+ [KMGT]?B) kept free"
                  r".*\), ([\d.,]+ [KMGT]?B) free", line)
    assert m, line
    need, data, reserve, free = (_bytes(g) for g in m.groups())
    assert need > free and abs(need - (data + reserve)) <= 0.02 * need  # printed to 2 significant digits
    assert free < 160e3 and data < free  # the data alone would fit: the reserve is what refuses it


# ------------------------------------------------------------------ permissions, read-only
def _partial(path: Path) -> None:
    """A cache whose visual source holds 10 rows (a run to resume)."""
    with make_cache(path) as cache:
        write_rows(cache, "visual/toy", "train", np.arange(10))


def _complete_visual(path: Path) -> None:
    with make_cache(path) as cache:
        write_all(cache, ["visual/toy"])


def _chmod_tree(folder: Path, mode: int) -> None:
    for p in [folder, *(q for q in folder.rglob("*") if q.is_dir())]:
        p.chmod(mode)


POINTS = {
    # where the writer fails: (set up, make it fail, undo, expected words)
    "new-cache-folder": (None, lambda d, c: d.chmod(0o555), lambda d, c: d.chmod(0o755),
                         ("c.h5.lock", "permission denied")),
    "index-commit": (_complete_visual, lambda d, c: d.chmod(0o555), lambda d, c: d.chmod(0o755),
                     ("c.h5", "cannot rewrite the cache index", "permission denied")),
    "new-source-file": (_complete_visual, lambda d, c: _chmod_tree(sources_dir(c), 0o555),
                        lambda d, c: _chmod_tree(sources_dir(c), 0o755),
                        ("c.h5.sources", "cannot create a source file", "permission denied")),
    "resumed-source-file": (_partial, lambda d, c: next(sources_dir(c).glob("visual/*.h5")).chmod(0o444),
                            lambda d, c: next(sources_dir(c).glob("visual/*.h5")).chmod(0o644),
                            ("visual/toy", "for writing", "permission denied")),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_permission_denied_at_each_write_point_is_one_line(tmp_path: Path, reference: Path, point: str) -> None:
    setup, break_it, undo, needles = POINTS[point]
    d = tmp_path / "d"
    d.mkdir()
    path = d / "c.h5"
    if setup is not None:
        setup(path)
    break_it(d, path)
    try:
        res = _writer(path, no_dac=True)
    finally:
        undo(d, path)
    _error_line(res, *needles)
    res = _writer(path)  # the fix applied: resume
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_sources(reference, path)


@pytest.mark.parametrize("state", ["resume", "new-source"])
def test_read_only_sources_folder_is_one_line(tmp_path: Path, reference: Path, state: str) -> None:
    """The sources folder on a read-only mount (a bind mount) while the index's folder is writable."""
    path = tmp_path / "c.h5"
    (_partial if state == "resume" else _complete_visual)(path)
    folder = sources_dir(path)
    _mount(["--bind", str(folder), str(folder)])
    try:
        _mount(["-o", "remount,bind,ro", str(folder)])
        res = _writer(path)
    finally:
        _umount(folder)
    _error_line(res, "c.h5.sources", "read-only file system")
    res = _writer(path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_sources(reference, path)


def test_pack_and_copy_from_a_read_only_mount(tmp_path: Path, reference: Path) -> None:
    """An archive can be made from a cache nobody can write (no lock file can be created there)."""
    from vea_bench.cache import copy_cache, pack_cache, verify_cache

    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "c.h5"
    with make_cache(path) as cache:
        write_all(cache)
    (folder / "c.h5.lock").unlink()
    _mount(["--bind", str(folder), str(folder)])
    try:
        _mount(["-o", "remount,bind,ro", str(folder)])
        pack_cache(path, tmp_path / "packed.h5")
        copy_cache(path, tmp_path / "copy.h5")
    finally:
        _umount(folder)
    for out in (tmp_path / "packed.h5", tmp_path / "copy.h5"):
        assert verify_cache(out).ok
        assert_same_sources(reference, out)
