"""`vea-bench cache info|verify|merge` through Typer's CliRunner on real cache files."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from _cache_helpers import FIELDS, SPLIT_SIZES, assert_same_sources, make_cache, write_all, write_rows
from vea_bench.cache import FeatureCache, shard_path
from vea_bench_cli.main import app

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    err = result.stderr.strip()
    assert "Traceback" not in result.output and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:")
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture()
def cache_file(tmp_path: Path) -> Path:
    path = tmp_path / "toy.h5"
    with make_cache(path) as cache:
        write_all(cache, ["visual/toy", "vlm/toy"])
        write_rows(cache, "teacher/toy", "train", np.arange(20))
    return path


def test_info_shows_sources_and_completeness(cache_file: Path) -> None:
    result = _invoke("cache", "info", str(cache_file))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for needle in ("toyset", "mikels8", "train", "test", "visual/toy", "vlm/toy", "teacher/toy",
                   "emb: N x 24 float16", "text: N str", "model=toy-vlm", "70 missing", "prompt=Which emotion?"):
        assert needle in out, needle
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 4}
    assert "yes" in rows["visual/toy"] and "no" in rows["teacher/toy"].split("│")[-3]


def test_info_json(cache_file: Path) -> None:
    result = _invoke("cache", "info", str(cache_file), "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["dataset"] == "toyset"
    by_name = {x["name"]: x for x in s["sources"]}
    assert by_name["visual/toy"]["complete"] and not by_name["teacher/toy"]["complete"]
    assert by_name["teacher/toy"]["counts"]["train"]["missing"] == SPLIT_SIZES["train"] - 20


def test_verify_clean_and_planted(cache_file: Path, tmp_path: Path) -> None:
    result = _invoke("cache", "verify", str(cache_file))
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout and "incomplete" in result.stderr  # teacher/toy is a note only
    strict = _invoke("cache", "verify", str(cache_file), "--require-complete")
    assert strict.exit_code == 1

    with h5py.File(cache_file, "r+") as h5:
        st = h5["visual/toy/test/_status"][()]
        row = int(np.flatnonzero(st == 1)[0])
        emb = h5["visual/toy/test/emb"][row]
        emb[3] = np.nan
        h5["visual/toy/test/emb"][row] = emb
        h5.attrs["manifest_hashes"] = json.dumps({"train": "0" * 64, "test": "1" * 64})
    result = _invoke("cache", "verify", str(cache_file))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"visual/toy/test/emb: 1 written row(s) with NaN or inf (first row {row})" in result.stderr
    assert result.stderr.count("manifest hash recomputed") == 2


def test_merge_shards_and_delete(tmp_path: Path) -> None:
    full = tmp_path / "full.h5"
    with make_cache(full) as cache:
        write_all(cache)
    out = tmp_path / "merged.h5"
    shards = []
    for i in range(2):
        p = shard_path(out, i, 2)
        with make_cache(p) as cache:
            write_all(cache, chunk=8, shard=(i, 2))
        shards.append(p)
    result = _invoke("cache", "merge", str(out), *map(str, shards), "--delete-shards")
    assert result.exit_code == 0, result.output
    assert "deleted 2 shard file(s)" in result.stdout
    assert not any(p.exists() for p in shards)
    assert_same_sources(full, out)
    with FeatureCache.open(out) as cache:
        assert all(s.complete for s in cache.sources())
        assert len(cache.sources()) == len(FIELDS)
    assert _invoke("cache", "verify", str(out)).exit_code == 0


def test_merge_quiet_prints_only_the_path(tmp_path: Path) -> None:
    a = tmp_path / "a.h5"
    with make_cache(a) as cache:
        write_rows(cache, "visual/toy", "train", np.arange(4))
    out = tmp_path / "o.h5"
    result = _invoke("cache", "merge", str(out), str(a), "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert a.exists()


def test_errors_are_one_line(tmp_path: Path, cache_file: Path) -> None:
    _assert_one_line_error(_invoke("cache", "info", str(tmp_path / "missing.h5")), "no cache file")
    _assert_one_line_error(_invoke("cache", "info", str(tmp_path)), "folder")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    _assert_one_line_error(_invoke("cache", "info", str(junk)), "not an HDF5 file")
    _assert_one_line_error(_invoke("cache", "verify", str(tmp_path / "missing.h5")), "no cache file")

    other = tmp_path / "other.h5"
    with make_cache(other, dataset="otherset"):
        pass
    result = _invoke("cache", "merge", str(tmp_path / "m.h5"), str(cache_file), str(other))
    _assert_one_line_error(result, "otherset", str(other))
    assert not (tmp_path / "m.h5").exists()

    bad_shard = tmp_path / "s1.h5"
    with make_cache(bad_shard) as cache:
        w = cache.writer("visual", "toy", FIELDS["visual/toy"], {"model": "another-vit"})
        w.write("train", [0], emb=np.zeros((1, 24)))
    result = _invoke("cache", "merge", str(tmp_path / "m.h5"), str(cache_file), str(bad_shard), "--delete-shards")
    _assert_one_line_error(result, "visual/toy", "model")
    assert cache_file.exists() and bad_shard.exists()  # nothing deleted on failure
