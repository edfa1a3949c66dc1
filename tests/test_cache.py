"""The HDF5 feature cache: resume after a kill, shard merge, every refusal, verification, strings."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from _cache_helpers import (
    C,
    D,
    FIELDS,
    LABELS,
    PROVENANCE,
    SPLIT_SIZES,
    assert_same_sources,
    failure_reason,
    is_failed,
    make_cache,
    row_values,
    split_specs,
    write_all,
    write_rows,
)
from vea_bench.cache import (
    ROW_FAILED,
    ROW_MISSING,
    ROW_OK,
    FeatureCache,
    FieldSpec,
    cache_summary,
    merge_caches,
    parse_shard,
    shard_path,
    shard_rows,
    verify_cache,
)
from vea_bench.errors import CacheError, ConfigError, VeaError
from vea_bench.progress import RecordingProgress

HELPER = Path(__file__).with_name("_cache_helpers.py")


@pytest.fixture()
def full(tmp_path: Path) -> Path:
    """A cache with every source written in one go (the reference for resume and merge)."""
    path = tmp_path / "full.h5"
    with make_cache(path) as cache:
        write_all(cache)
    return path


def _one_line_error(exc_info: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# ------------------------------------------------------------------------- kill and resume
def _spawn_writer(path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HELPER), str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("pause", [True, False], ids=["killed-between-chunks", "killed-while-writing"])
def test_killed_writer_resumes_byte_identical(tmp_path: Path, full: Path, pause: bool) -> None:
    path = tmp_path / "resumed.h5"
    k = 3
    proc = _spawn_writer(path, "--chunk", "16", *(["--pause-after", str(k)] if pause else []))
    try:
        for _ in range(k):  # wait until k chunks are reported flushed, then SIGKILL
            line = proc.stdout.readline()
            assert line.startswith("flushed"), (line, proc.stderr.read() if proc.poll() is not None else "")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    # The killed file opens, keeps what was flushed, and is incomplete.
    with FeatureCache.open(path) as cache:
        counts = cache.source("visual", "toy").counts
        written = sum(c["done"] + c["failed"] for c in counts.values())
        assert written >= k * 16
        assert not cache.source("visual", "toy").complete
        with pytest.raises(CacheError) as ei:
            cache.read("visual", "toy", "train")
        _one_line_error(ei, "incomplete")

    # A new process writes only the missing rows.
    resumed = subprocess.run(
        [sys.executable, str(HELPER), str(path), "--chunk", "16"], capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    n_resumed = int(resumed.stdout.strip().splitlines()[-1].split()[1])
    total = sum(SPLIT_SIZES.values()) * len(FIELDS)
    if pause:  # killed between chunks: exactly k chunks of the first source were safe
        assert n_resumed == total - k * 16
    else:
        assert n_resumed <= total - k * 16

    assert_same_sources(full, path)
    with FeatureCache.open(path) as a, FeatureCache.open(full) as b:
        for info in a.sources():
            assert info.complete
            for split in a.splits:
                da = a.read(info.kind, info.key, split)
                db = b.read(info.kind, info.key, split)
                assert np.array_equal(da.status, db.status)
                assert da.errors == db.errors
    assert verify_cache(path).ok


def test_resume_in_process_writes_only_missing(tmp_path: Path, full: Path) -> None:
    path = tmp_path / "c.h5"
    with make_cache(path) as cache:
        write_rows(cache, "visual/toy", "train", np.arange(0, 40))
        write_rows(cache, "visual/toy", "train", np.array([77, 50, 61]))  # unsorted input order
    with make_cache(path) as cache:
        w = cache.writer("visual", "toy", FIELDS["visual/toy"], PROVENANCE["visual/toy"])
        todo = w.missing("train")
        assert len(todo) == SPLIT_SIZES["train"] - 43
        assert not set(todo) & ({*range(40), 77, 50, 61})
        write_all(cache)
        assert w.missing("train").size == 0
    assert_same_sources(full, path)


def test_retry_failed_rows_clears_reason(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    with make_cache(path) as cache:
        write_all(cache, ["teacher/toy"])
        w = cache.writer("teacher", "toy", FIELDS["teacher/toy"], PROVENANCE["teacher/toy"])
        failed = w.missing("train", retry_failed=True)
        assert failed.size and all(is_failed("teacher/toy", "train", int(r)) for r in failed)
        vals = np.ones((failed.size, C), np.float32)
        w.write("train", failed, logits=vals)
        d = cache.read("teacher", "toy", "train")
        assert d.valid.all() and all(e == "" for e in d.errors)
        assert np.array_equal(d["logits"][failed], vals)


# ------------------------------------------------------------------------------------ merge
def _write_shards(tmp_path: Path, base: Path, count: int, names: list[str] | None = None) -> list[Path]:
    shards = []
    for i in range(count):
        p = shard_path(base, i, count)
        with make_cache(p) as cache:
            write_all(cache, names, chunk=10, shard=(i, count))
        shards.append(p)
    return shards


def test_two_shards_merge_to_the_unsharded_file(tmp_path: Path, full: Path) -> None:
    out = tmp_path / "merged.h5"
    shards = _write_shards(tmp_path, out, 2)
    assert [s.name for s in shards] == ["merged.shard-0-of-2.h5", "merged.shard-1-of-2.h5"]
    for s in shards:  # each shard alone is incomplete
        with FeatureCache.open(s) as c:
            assert not any(info.complete for info in c.sources())
    prog = RecordingProgress()
    report = merge_caches(shards, out, progress=prog)
    assert report.complete
    assert prog.advanced == sum(SPLIT_SIZES.values()) * len(FIELDS)
    assert sum(report.rows_from.values()) == sum(SPLIT_SIZES.values()) * len(FIELDS)
    assert_same_sources(full, out)
    with FeatureCache.open(out) as m, FeatureCache.open(full) as f:
        drop = ("created_at",)
        assert {k: v for k, v in m.attrs().items() if k not in drop} == {
            k: v for k, v in f.attrs().items() if k not in drop
        }
        for split in m.splits:
            assert m.ids(split) == f.ids(split)
            d = m.read("vlm", "toy", split)
            assert (d.status == ROW_FAILED).any()  # failed rows and reasons came across
            assert d.errors == f.read("vlm", "toy", split).errors
        assert m.source("visual", "toy").provenance["model"] == "toy-vit"
    assert verify_cache(out).ok


def test_merge_into_existing_output_adds_sources_and_is_idempotent(tmp_path: Path, full: Path) -> None:
    out = tmp_path / "fi.h5"
    with make_cache(out) as cache:
        write_all(cache, ["visual/toy"])
    shards = _write_shards(tmp_path, out, 3, ["vlm/toy", "teacher/toy"])
    merge_caches(shards, out)
    assert_same_sources(full, out)
    # Merging the same shards again changes nothing (equal rows are no conflict).
    merge_caches(shards, out)
    assert_same_sources(full, out)
    assert not out.with_name(out.name + ".merging").exists()


def test_merge_of_one_shard_is_incomplete(tmp_path: Path) -> None:
    out = tmp_path / "o.h5"
    shards = _write_shards(tmp_path, out, 2, ["teacher/toy"])
    report = merge_caches(shards[:1], out)
    assert not report.complete
    with FeatureCache.open(out) as cache:
        d = cache.read("teacher", "toy", "train", allow_incomplete=True)
        assert set(np.flatnonzero(d.status != ROW_MISSING)) == set(range(0, SPLIT_SIZES["train"], 2))
        assert np.all(d["logits"][d.status == ROW_MISSING] == 0)


def test_merge_refuses_mismatched_inputs(tmp_path: Path) -> None:
    a = tmp_path / "a.h5"
    with make_cache(a) as cache:
        write_rows(cache, "visual/toy", "train", np.arange(5))
    other_ds = tmp_path / "b.h5"
    with make_cache(other_ds, dataset="otherset") as cache:
        write_rows(cache, "visual/toy", "train", np.arange(5, 10))
    with pytest.raises(CacheError) as ei:
        merge_caches([a, other_ds], tmp_path / "m.h5")
    _one_line_error(ei, str(other_ds), "otherset")

    other_split = tmp_path / "c.h5"
    with make_cache(other_split, sizes={"train": 91, "test": 37}):
        pass
    with pytest.raises(CacheError) as ei:
        merge_caches([a, other_split], tmp_path / "m.h5")
    _one_line_error(ei, str(other_split), "manifest")

    other_prov = tmp_path / "d.h5"
    with make_cache(other_prov) as cache:
        w = cache.writer("visual", "toy", FIELDS["visual/toy"], {**PROVENANCE["visual/toy"], "revision": "zzz"})
        w.write("train", [7], emb=np.zeros((1, D)))
    with pytest.raises(CacheError) as ei:
        merge_caches([a, other_prov], tmp_path / "m.h5")
    _one_line_error(ei, str(other_prov), "visual/toy", "revision")

    other_fields = tmp_path / "e.h5"
    with make_cache(other_fields) as cache:
        cache.writer("visual", "toy", {"emb": ((D + 1,), "float16")}, PROVENANCE["visual/toy"])
    with pytest.raises(CacheError) as ei:
        merge_caches([a, other_fields], tmp_path / "m.h5")
    _one_line_error(ei, str(other_fields), "other fields")

    with pytest.raises(CacheError) as ei:
        merge_caches([a, a], tmp_path / "m.h5")
    _one_line_error(ei, "twice")
    with pytest.raises(CacheError) as ei:
        merge_caches([a], a)
    _one_line_error(ei, "output")
    with pytest.raises(CacheError) as ei:
        merge_caches([a, tmp_path / "nope.h5"], tmp_path / "m.h5")
    _one_line_error(ei, "nope.h5")
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "m.h5.merging").exists()


@pytest.mark.parametrize("what", ["value", "status", "reason"])
def test_merge_conflict_is_refused(tmp_path: Path, what: str) -> None:
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for p in (a, b):
        with make_cache(p) as cache:
            write_rows(cache, "vlm/toy", "test", np.arange(10))
    with make_cache(b) as cache:
        w = cache.writer("vlm", "toy", FIELDS["vlm/toy"], PROVENANCE["vlm/toy"])
        row = 4 if not is_failed("vlm/toy", "test", 4) else 5
        vals = row_values("vlm/toy", "test", np.array([row]))
        if what == "value":
            vals["text"] = np.asarray(["something else"], dtype=object)
            w.write("test", [row], **vals)
        elif what == "status":
            w.fail("test", [row], ["unreadable"])
        else:
            bad = next(r for r in range(10) if is_failed("vlm/toy", "test", r))
            row = bad
            w.fail("test", [bad], [failure_reason("test", bad) + " (other)"])
    out = tmp_path / "m.h5"
    with pytest.raises(CacheError) as ei:
        merge_caches([a, b], out)
    _one_line_error(ei, "merge conflict", "vlm/toy", f"row {row}", str(b))
    assert not out.exists()


# --------------------------------------------------------------------------------- refusals
def test_open_refusals_are_one_line(tmp_path: Path, full: Path) -> None:
    with pytest.raises(CacheError) as ei:
        FeatureCache.open(tmp_path / "missing.h5")
    _one_line_error(ei, "missing.h5", "no cache file")

    with pytest.raises(CacheError) as ei:
        FeatureCache.open(tmp_path)
    _one_line_error(ei, "folder")

    txt = tmp_path / "notes.h5"
    txt.write_text("this is not HDF5\n" * 100)
    with pytest.raises(CacheError) as ei:
        FeatureCache.open(txt)
    _one_line_error(ei, "not an HDF5 file")

    trunc = tmp_path / "trunc.h5"
    data = full.read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError) as ei:
        FeatureCache.open(trunc)
    _one_line_error(ei, "truncated")

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h5:
        h5["x"] = np.arange(3)
    with pytest.raises(CacheError) as ei:
        FeatureCache.open(foreign)
    _one_line_error(ei, "not a vea-bench cache")

    with pytest.raises(CacheError) as ei:
        FeatureCache.open(full, expect_dataset="fi")
    _one_line_error(ei, "'toyset'", "'fi'")

    with pytest.raises(CacheError) as ei:
        FeatureCache.open(full, expect_label_names=["positive", "negative"])
    _one_line_error(ei, "label space")

    with pytest.raises(CacheError) as ei:
        FeatureCache.open(full, expect_manifests={"train": "f" * 64})
    _one_line_error(ei, "'train'", "manifest hash")

    # create() on an existing file of other data refuses too, and leaves it untouched.
    before = full.read_bytes()
    with pytest.raises(CacheError) as ei:
        FeatureCache.create(
            full, dataset="toyset", label_space="mikels8", label_names=LABELS, splits=split_specs(prefix="other")
        )
    _one_line_error(ei, "manifest hash")
    assert full.read_bytes() == before


def test_matching_expectations_open_and_read(full: Path) -> None:
    specs = split_specs()
    with FeatureCache.open(
        full,
        expect_dataset="toyset",
        expect_label_names=LABELS,
        expect_manifests={s: sp.manifest_hash for s, sp in specs.items()},
    ) as cache:
        assert cache.splits == ["train", "test"]
        assert cache.num_classes == C and cache.split_seed == 0
        assert cache.ids("train") == list(specs["train"].ids)
        assert np.array_equal(cache.labels("test"), specs["test"].labels)
        d = cache.read("visual", None, "train", ["emb"])
        assert d["emb"].shape == (SPLIT_SIZES["train"], D) and d["emb"].dtype == np.float16
        good = np.flatnonzero(d.valid)
        assert np.array_equal(d["emb"][good], row_values("visual/toy", "train", good)["emb"])
        assert np.all(d["emb"][~d.valid] == 0)
        prov = cache.provenance()
        assert prov["sources"]["vlm/toy"]["prompt"] == "Which emotion?"
        assert "versions" in prov["sources"]["vlm/toy"]


def test_incomplete_source_refused_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    with make_cache(path) as cache:
        write_rows(cache, "teacher/toy", "train", np.arange(30))
    with FeatureCache.open(path) as cache:
        with pytest.raises(CacheError) as ei:
            cache.read("teacher", "toy", "train")
        _one_line_error(ei, "incomplete", "60 of 90")
        d = cache.read("teacher", "toy", "train", allow_incomplete=True)
        assert (d.status[:30] != ROW_MISSING).all() and (d.status[30:] == ROW_MISSING).all()
        assert d["logits"].shape == (90, C)
        with pytest.raises(CacheError) as ei:
            cache.read("visual", None, "train")
        _one_line_error(ei, "no visual source")
        with pytest.raises(CacheError) as ei:
            cache.read("teacher", "toy", "val")
        _one_line_error(ei, "no split 'val'")


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    with make_cache(path) as cache:
        write_rows(cache, "vlm/toy", "train", np.arange(10))
        with pytest.raises(CacheError) as ei:
            cache.writer("vlm", "toy", FIELDS["vlm/toy"], {**PROVENANCE["vlm/toy"], "temperature": 0.8})
        _one_line_error(ei, "vlm/toy", "temperature")
        with pytest.raises(CacheError) as ei:
            cache.writer("vlm", "toy", {**FIELDS["vlm/toy"], "extra": FieldSpec((2,), "float32")}, PROVENANCE["vlm/toy"])
        _one_line_error(ei, "other fields")
        # Volatile provenance (time, shard, versions) and dtype spelling do not block a resume.
        fields = {**FIELDS["vlm/toy"], "logprobs": FieldSpec((C,), np.float32)}
        w = cache.writer("vlm", "toy", fields, {**PROVENANCE["vlm/toy"], "time": "later", "shard": "1/2"})
        assert len(w.missing("train")) == 80
        # overwrite=True starts afresh.
        w = cache.writer("vlm", "toy", FIELDS["vlm/toy"], {**PROVENANCE["vlm/toy"], "temperature": 0.8}, overwrite=True)
        assert len(w.missing("train")) == 90


def test_writer_rejects_bad_writes(tmp_path: Path) -> None:
    with make_cache(tmp_path / "c.h5") as cache:
        w = cache.writer("teacher", "toy", FIELDS["teacher/toy"], PROVENANCE["teacher/toy"])
        ok = np.zeros((2, C), np.float32)
        cases = [
            (lambda: w.write("train", [0, 90], logits=ok), "out of range"),
            (lambda: w.write("train", [3, 3], logits=ok), "duplicate"),
            (lambda: w.write("train", [0, 1], logits=np.zeros((2, C + 1))), "shape"),
            (lambda: w.write("train", [0, 1, 2], logits=ok), "rows"),
            (lambda: w.write("train", [0, 1], logits=ok, emb=ok), "no field"),
            (lambda: w.write("train", [0, 1]), "lacks field"),
            (lambda: w.write("val", [0, 1], logits=ok), "no split 'val'"),
            (lambda: w.fail("train", [0, 1], ["one reason"]), "reasons"),
            (lambda: cache.writer("audio", "x", FIELDS["teacher/toy"], {}), "unknown source kind"),
            (lambda: cache.writer("teacher", "a/b", FIELDS["teacher/toy"], {}), "invalid source key"),
            (lambda: cache.writer("teacher", "t2", {"_status": ((1,), "uint8")}, {}), "invalid field name"),
        ]
        for fn, needle in cases:
            with pytest.raises(CacheError) as ei:
                fn()
            _one_line_error(ei, needle)
        assert (w.status("train") == ROW_MISSING).all()  # nothing half-written
    with FeatureCache.open(tmp_path / "c.h5") as ro:
        with pytest.raises(CacheError) as ei:
            ro.writer("teacher", "toy", FIELDS["teacher/toy"], PROVENANCE["teacher/toy"])
        _one_line_error(ei, "read-only")


# ------------------------------------------------------------------------------------ verify
def test_verify_passes_a_clean_file(full: Path) -> None:
    report = verify_cache(full)
    assert report.ok, report.problems
    assert report.checked_sources == 3 and not report.incomplete
    assert report.checked_rows == sum(
        not is_failed(n, s, r) for n in FIELDS for s, size in SPLIT_SIZES.items() for r in range(size)
    )


def _plant(path: Path, dataset: str, row: int, value: object) -> None:
    with h5py.File(path, "r+") as h5:
        ds = h5[dataset]
        arr = ds[row]
        arr[...] = value if np.ndim(value) == 0 else np.asarray(value)
        ds[row] = arr


def test_verify_finds_planted_problems(tmp_path: Path, full: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(full.read_bytes())
    with FeatureCache.open(bad) as cache:
        st = cache.read("visual", "toy", "train").status
        ok_row = int(np.flatnonzero(st == ROW_OK)[0])
        failed_row = int(np.flatnonzero(st == ROW_FAILED)[0])
    _plant(bad, "visual/toy/train/emb", ok_row, np.nan)
    _plant(bad, "visual/toy/train/emb", failed_row, np.nan)  # not a problem: failed rows are excluded
    _plant(bad, "teacher/toy/test/logits", 1, np.inf)
    onehot = np.zeros(C, np.uint8)
    onehot[[0, 3]] = 1
    _plant(bad, "vlm/toy/test/onehot", 2 if not is_failed("vlm/toy", "test", 2) else 3, onehot)
    with h5py.File(bad, "r+") as h5:
        hashes = json.loads(h5.attrs["manifest_hashes"])
        hashes["test"] = "0" * 64
        h5.attrs["manifest_hashes"] = json.dumps(hashes)
        h5["vlm/toy/train/_status"][5] = 7
    problems = verify_cache(bad).problems
    text = "\n".join(problems)
    assert f"visual/toy/train/emb: 1 written row(s) with NaN or inf (first row {ok_row})" in problems
    assert "teacher/toy/test/logits: 1 written row(s) with NaN or inf (first row 1)" in problems
    assert "vlm/toy/test/onehot" in text and "not one-hot" in text
    assert "split 'test': manifest hash recomputed" in text
    assert "invalid status" in text
    assert len(problems) == 5, problems
    assert all("\n" not in p for p in problems)


def test_verify_reports_unopenable_and_incomplete(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x00" * 100)
    assert not verify_cache(junk).ok
    path = tmp_path / "c.h5"
    with make_cache(path) as cache:
        write_rows(cache, "teacher/toy", "train", np.arange(10))
    report = verify_cache(path)
    assert report.ok and any("80 of 90 rows missing on 'train'" in m for m in report.incomplete)
    assert not verify_cache(path, require_complete=True).ok


def test_verify_finds_bad_labels_and_duplicate_ids(tmp_path: Path) -> None:
    path = tmp_path / "c.h5"
    with make_cache(path):
        pass
    with h5py.File(path, "r+") as h5:
        h5["splits/train/labels"][0] = C
        ids = h5["splits/test/ids"][()]
        ids[1] = ids[0]
        h5["splits/test/ids"][...] = ids
    text = "\n".join(verify_cache(path).problems)
    assert "labels outside" in text and "duplicate ids" in text


# ----------------------------------------------------------------------------- strings, misc
def test_vlen_strings_round_trip(tmp_path: Path) -> None:
    texts = [
        'She said "I\'m fine" — «très» bien 😀',
        "",
        "line one\nline two\ttab",
        "Emotion: sadness.\u200b",
        "'single' and \"double\" and `back` quotes \\ backslash",
        "日本語の回答：喜び",
        "x" * 5000,
    ]
    with make_cache(tmp_path / "c.h5", sizes={"train": len(texts), "test": 1}) as cache:
        w = cache.writer("vlm", "raw", {"text": ((), "str")}, {"model": "toy"})
        w.write("train", np.arange(len(texts))[::-1], text=texts[::-1])
        w.fail("test", [0], ["PIL: cannot identify image file «x.jpg» 'y'"])
    with FeatureCache.open(tmp_path / "c.h5") as cache:
        d = cache.read("vlm", "raw", "train")
        assert list(d["text"]) == texts
        assert cache.read("vlm", "raw", "test").errors == ["PIL: cannot identify image file «x.jpg» 'y'"]


def test_shard_helpers() -> None:
    assert parse_shard("0/2") == (0, 2) and parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("2/2", "1", "a/b", "-1/2", "0/0", "1/2/3"):
        with pytest.raises(ConfigError) as ei:
            parse_shard(bad)
        _one_line_error(ei, bad.strip())
    rows = np.array([0, 1, 2, 5, 6, 7, 9])
    parts = [shard_rows(rows, i, 3) for i in range(3)]
    assert [p.tolist() for p in parts] == [[0, 6, 9], [1, 7], [2, 5]]
    assert sorted(np.concatenate(parts).tolist()) == rows.tolist()
    with pytest.raises(VeaError):
        shard_rows(rows, 3, 3)
    assert shard_path(Path("cache/fi.h5"), 0, 2) == Path("cache/fi.shard-0-of-2.h5")
    assert shard_path("x/emoset", 1, 4) == Path("x/emoset.shard-1-of-4.h5")


def test_cache_summary(full: Path) -> None:
    s = cache_summary(full)
    json.dumps(s)
    assert s["dataset"] == "toyset" and s["label_names"] == LABELS
    assert s["splits"]["train"]["rows"] == 90 and sum(s["splits"]["test"]["per_class"].values()) == 37
    vis = next(x for x in s["sources"] if x["name"] == "visual/toy")
    assert vis["fields"]["emb"] == {"shape": [D], "dtype": "float16"} and vis["complete"]
    assert vis["counts"]["train"]["missing"] == 0
    assert vis["counts"]["train"]["failed"] == sum(is_failed("visual/toy", "train", r) for r in range(90))


def test_create_is_atomic_and_checks_inputs(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.h5"
    specs = split_specs()
    bad = {"train": type(specs["train"])(specs["train"].ids, specs["train"].labels[:-1], specs["train"].manifest_hash)}
    with pytest.raises(CacheError):
        FeatureCache.create(path, dataset="d", label_space="mikels8", label_names=LABELS, splits=bad)
    assert not path.exists() and not list(path.parent.glob("*.creating"))
    with pytest.raises(CacheError):
        FeatureCache.create(path, dataset="d", label_space="x", label_names=["a", "a"], splits=specs)
    assert not path.exists()
