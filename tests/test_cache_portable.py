"""The two layouts on purpose: per-source files for writing (merge too), one packed file for moving;
copies and moves that read the same through plain h5py; an index copied without its folder."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from _cache_fixtures import full_cache  # noqa: F401 - a fixture
from _cache_helpers import FIELDS, PROVENANCE, assert_same_sources, make_cache, source_arrays, write_all
from vea_bench.cache import (
    FeatureCache,
    SourcesNotCopiedError,
    cache_summary,
    copy_cache,
    merge_caches,
    move_cache,
    pack_cache,
    repair_cache,
    shard_path,
    sources_dir,
    verify_cache,
)
from vea_bench.errors import CacheError
from vea_bench_cli.main import app

runner = CliRunner()


@pytest.fixture()
def full(full_cache: Path) -> Path:
    return full_cache


def _copy_pair(src: Path, dst: Path) -> None:
    """What a user does by hand: copy the index and its folder."""
    shutil.copy2(src, dst)
    shutil.copytree(sources_dir(src), sources_dir(dst))


def _links(path: Path) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    with h5py.File(path, "r") as h5:
        for kind in ("visual", "vlm", "teacher", "backbone"):
            for key in h5.get(kind, {}):
                link = h5[kind].get(key, getlink=True)
                out[f"{kind}/{key}"] = link.filename if isinstance(link, h5py.ExternalLink) else None
    return out


def _provenance(path: Path) -> dict[str, dict]:
    with FeatureCache.open(path) as c:
        return {s.name: s.provenance for s in c.sources()}


def _one_line(text: str, *needles: str) -> None:
    text = text.strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    for n in needles:
        assert n in text, (n, text)


# ------------------------------------------------------------------------------------- pack
def test_pack_is_one_file_that_reads_like_the_original(tmp_path: Path, full: Path) -> None:
    out = tmp_path / "archive" / "fi-packed.h5"
    res = runner.invoke(app, ["cache", "pack", str(full), str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["fi-packed.h5"]  # nothing beside it
    assert set(_links(out).values()) == {None}  # every source inside the file
    assert_same_sources(full, out)  # plain h5py: the same arrays, status, reasons, fingerprints
    assert _provenance(out) == _provenance(full)
    with FeatureCache.open(out) as p, FeatureCache.open(full) as f:
        assert p.attrs() == f.attrs()
        for split in f.splits:
            a, b = p.read("vlm", "toy", split), f.read("vlm", "toy", split)
            assert list(a["text"]) == list(b["text"]) and a.errors == b.errors
            assert np.array_equal(a.status, b.status)
    assert verify_cache(out).ok
    assert cache_summary(out)["layout"] == "packed"
    info = runner.invoke(app, ["cache", "info", str(out)])
    assert info.exit_code == 0 and "packed" in info.output
    moved = tmp_path / "elsewhere" / "fi.h5"  # a packed file needs nothing beside it
    moved.parent.mkdir()
    shutil.move(str(out), moved)
    assert_same_sources(full, moved)
    # The first writer puts the sources back into their own files, values unchanged.
    with FeatureCache.open(moved, "a") as c:
        assert sorted(s.name for s in c.sources()) == sorted(FIELDS)
    assert None not in _links(moved).values() and sources_dir(moved).is_dir()
    assert_same_sources(full, moved)


def test_pack_refuses_an_existing_output_and_a_damaged_source(tmp_path: Path, full: Path) -> None:
    taken = tmp_path / "taken.h5"
    taken.write_bytes(b"x")
    with pytest.raises(CacheError) as ei:
        pack_cache(full, taken)
    _one_line(str(ei.value), str(taken), "already exists")
    assert taken.read_bytes() == b"x"
    broken = tmp_path / "broken.h5"
    _copy_pair(full, broken)
    next(sources_dir(broken).glob("visual/*.h5")).unlink()
    with pytest.raises(CacheError) as ei:
        pack_cache(broken, tmp_path / "p.h5")
    _one_line(str(ei.value), "visual/toy", "damaged")
    assert not (tmp_path / "p.h5").exists() and not list(tmp_path.glob("p.h5*"))


# ------------------------------------------------------------------------------- copy, move
def _rewrite_original(path: Path) -> None:
    """Replace the original's visual source by other values (what plain h5py must not show
    through a copy)."""
    with FeatureCache.open(path, "a") as c:
        w = c.writer("visual", "toy", FIELDS["visual/toy"], {**PROVENANCE["visual/toy"], "revision": "other"},
                     overwrite=True)
        for split in c.splits:
            n = c.num_rows(split)
            w.write(split, np.arange(n), emb=np.full((n, 24), 7, dtype=np.float16))


def test_copy_reads_its_own_data_through_plain_h5py(tmp_path: Path, full: Path) -> None:
    orig = tmp_path / "fi.h5"
    _copy_pair(full, orig)
    copy = tmp_path / "fi_v2.h5"
    res = runner.invoke(app, ["cache", "copy", str(orig), str(copy)])
    assert res.exit_code == 0, res.output
    assert all(v.startswith("fi_v2.h5.sources/") for v in _links(copy).values())
    _rewrite_original(orig)
    assert_same_sources(full, copy)  # plain h5py: the copy's own data, not the rewritten original
    with FeatureCache.open(copy) as c:
        assert c.read("visual", "toy", "train")["emb"].tobytes() == source_arrays(full)["visual/toy/train/emb"].tobytes()
    assert source_arrays(orig)["visual/toy/train/emb"].max() == 7


def test_move_takes_the_sources_along(tmp_path: Path, full: Path) -> None:
    orig = tmp_path / "fi.h5"
    _copy_pair(full, orig)
    dest = tmp_path / "sub" / "renamed.h5"
    res = runner.invoke(app, ["cache", "move", str(orig), str(dest), "-q"])
    assert res.exit_code == 0 and res.output.strip() == str(dest), res.output
    assert not orig.exists() and not sources_dir(orig).exists() and not orig.with_name("fi.h5.lock").exists()
    assert all(v.startswith("renamed.h5.sources/") for v in _links(dest).values())
    assert_same_sources(full, dest)
    packed = tmp_path / "p.h5"
    pack_cache(dest, packed)
    moved = move_cache(packed, tmp_path / "q.h5")
    assert moved.packed and not packed.exists()
    assert_same_sources(full, tmp_path / "q.h5")
    with pytest.raises(CacheError) as ei:
        copy_cache(dest, tmp_path / "q.h5")
    _one_line(str(ei.value), "q.h5", "already exists")


def test_a_writer_points_a_hand_renamed_copy_at_its_own_folder(tmp_path: Path, full: Path) -> None:
    orig = tmp_path / "fi.h5"
    _copy_pair(full, orig)
    copy = tmp_path / "fi_v2.h5"
    _copy_pair(orig, copy)  # by hand: its links still name fi.h5.sources
    assert all(v.startswith("fi.h5.sources/") for v in _links(copy).values())
    repair_cache(copy)  # any writer (extract, repair) relinks it
    assert all(v.startswith("fi_v2.h5.sources/") for v in _links(copy).values())
    _rewrite_original(orig)
    assert_same_sources(full, copy)


def test_an_index_copied_alone_beside_the_original_is_not_written(tmp_path: Path, full: Path) -> None:
    """It reads the original's sources (as plain h5py does), but a writer would change the
    original's files: refused in one line naming the way to an independent copy."""
    orig = tmp_path / "fi.h5"
    _copy_pair(full, orig)
    alone = tmp_path / "fi_v2.h5"
    shutil.copy2(orig, alone)
    assert_same_sources(full, alone)
    with FeatureCache.open(alone) as c:
        assert c.read("visual", "toy", "train").status.size == 90
    with pytest.raises(CacheError) as ei:
        FeatureCache.open(alone, "a")
    _one_line(str(ei.value), str(alone), "fi.h5.sources", "cache copy")
    with pytest.raises(CacheError):
        repair_cache(alone)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fi.h5", "fi.h5.sources", "fi_v2.h5", "fi_v2.h5.lock"]
    assert_same_sources(full, orig)


# --------------------------------------------------------------------- index without folder
@pytest.mark.parametrize("name", ["fi.h5", "fi_v2.h5"], ids=["same-name", "renamed"])
def test_index_copied_without_its_folder_says_so(tmp_path: Path, full: Path, name: str) -> None:
    alone = tmp_path / "elsewhere" / name
    alone.parent.mkdir()
    shutil.copy2(full, alone)
    want = "copy the folder `fi.h5.sources` with it"
    with FeatureCache.open(alone) as c:
        with pytest.raises(SourcesNotCopiedError) as ei:
            c.read("visual", "toy", "train")
        _one_line(str(ei.value), str(alone), want, "cache pack")
        assert "damaged" not in str(ei.value)
    info = runner.invoke(app, ["cache", "info", str(alone)])
    assert info.exit_code != 0 and want in info.output and "damaged" not in info.output, info.output
    ver = runner.invoke(app, ["cache", "verify", str(alone)])
    assert ver.exit_code == 1 and want in ver.output and "damaged" not in ver.output, ver.output
    rep = runner.invoke(app, ["cache", "repair", str(alone)])
    assert rep.exit_code != 0 and want in rep.output and "dropped" not in rep.output, rep.output
    assert sorted(_links(alone)) == sorted(FIELDS)  # nothing dropped
    shutil.copytree(sources_dir(full), sources_dir(alone))  # the fix the message names
    assert verify_cache(alone).ok
    if name != full.name:
        repair_cache(alone)  # any writer points a renamed copy's links at its own folder, for plain h5py
    assert_same_sources(full, alone)


# -------------------------------------------------------------------------------------- merge
def test_merge_writes_the_per_source_layout(tmp_path: Path, full: Path) -> None:
    out = tmp_path / "fi.h5"
    shards = []
    for i in range(2):
        p = shard_path(out, i, 2)
        with make_cache(p) as cache:
            write_all(cache, shard=(i, 2))
        shards.append(p)
    merge_caches(shards, out)
    links = _links(out)
    assert sorted(links) == sorted(FIELDS) and None not in links.values()
    assert all(v.startswith("fi.h5.sources/") and (tmp_path / v).is_file() for v in links.values())
    assert_same_sources(full, out)
    before = sorted(p.name for p in sources_dir(out).rglob("*.h5"))
    merge_caches(shards, out)  # again: new files linked, the replaced ones deleted
    after = sorted(p.name for p in sources_dir(out).rglob("*.h5"))
    assert len(after) == len(FIELDS) and after != before
    assert_same_sources(full, out)
