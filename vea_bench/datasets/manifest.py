"""`manifest`: a CSV ``path,label[,split]`` for any dataset vea-bench has no loader for.

Paths are relative to the CSV's folder (or to the root, when the CSV lies elsewhere); absolute
paths are accepted when they lie under the root (anywhere only with ``allow_outside_root``). The label space is inferred (canonical if every label maps onto one via
synonyms, else custom) from the train rows when there is a split column, from all rows otherwise,
unless ``label_space`` forces it. No split column -> stratified 80/5/15; no val rows -> 10 % of
train.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vea_bench.datasets._common import (
    Collector,
    absolute_root,
    carve_missing_val,
    check_on_error,
    infer_space,
    resolve_space,
    split_pool,
)
from vea_bench.datasets.base import DatasetIndex, register_dataset
from vea_bench.datasets.folders import SPLIT_ALIASES
from vea_bench.datasets.splits import parse_fractions
from vea_bench.errors import DatasetError
from vea_bench.labels import LabelSpace, normalise
from vea_bench.datasets.synthetic import SetWriter, UNKNOWN_LABEL, explicit_counts, register_synthetic

PATH_COLUMNS = ("path", "file", "filename", "image", "image path", "img")
LABEL_COLUMNS = ("label", "class", "emotion", "sentiment", "category")


def _locate(root: Path, manifest: str | Path | None) -> tuple[Path, Path]:
    """(dataset root, CSV path): the root may be the CSV itself or a folder holding one."""
    r = absolute_root(root)
    if not r.exists():
        raise DatasetError(f"manifest: root {r} does not exist")
    if r.is_file():
        return r.parent, r
    if manifest is not None:
        m = Path(manifest).expanduser()
        m = m if m.is_absolute() else r / m
        if not m.is_file():
            raise DatasetError(f"manifest: CSV {m} not found")
        return r, m
    if (r / "manifest.csv").is_file():
        return r, r / "manifest.csv"
    cands = sorted(p for p in r.glob("*.csv") if not p.name.startswith("."))
    if len(cands) == 1:
        return r, cands[0]
    if not cands:
        raise DatasetError(f"manifest: no manifest.csv (path,label[,split]) in {r}")
    raise DatasetError(f"manifest: several CSV files in {r} ({', '.join(p.name for p in cands)}); pass manifest=NAME")


def _read_csv(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"manifest: cannot read {path} ({exc})") from None
    sample = text[:4096]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [[c.strip() for c in row] for row in csv.reader(text.splitlines(), dialect)]
    return [row for row in rows if any(row) and not row[0].startswith("#")]


def _row_path(text: str, csv_dir: Path, root: Path) -> tuple[str, Path]:
    """A row's (id, absolute path): the id is relative to the root when it lies under it, else as written.

    Joined to the CSV's folder (or the root, where the file is not beside the CSV) as absolute
    paths, never normalised lexically first: ``..`` is resolved by the file system, through any
    symlink, so a row that leaves the root is seen to leave it (`Collector.file_ok`).
    """
    p = Path(text.replace("\\", "/")).expanduser()
    if p.is_absolute():
        full = p
    else:
        full = csv_dir / p
        if csv_dir != root and not full.exists() and not full.is_symlink():
            full = root / p
    if ".." in full.parts:
        # Resolve the folder part as the OS would (symlinks before ``..``), keep the file's own name.
        full = Path(os.path.realpath(full.parent)) / full.name
        real_root = Path(os.path.realpath(root))
        if full.is_relative_to(real_root):
            return full.relative_to(real_root).as_posix(), full
        return text, full
    return (full.relative_to(root).as_posix() if full.is_relative_to(root) else full.as_posix()), full


@register_dataset(
    "manifest",
    label_space=None,
    layout="CSV path,label[,split] (paths relative to the CSV's folder)",
    split_rule="the split column; none -> stratified 80/5/15, seed; no val -> 10 % of train",
    aliases=("csv",),
)
def load_manifest(
    root: str | Path,
    *,
    seed: int = 42,
    label_space: str | None = None,
    on_error: str = "raise",
    manifest: str | Path | None = None,
    fractions: str | Sequence[float] | Mapping[str, float] | None = None,
) -> DatasetIndex:
    """Load a dataset described by a CSV manifest (``root`` may be the CSV file itself)."""
    check_on_error(on_error)
    r, csv_path = _locate(Path(root), manifest)
    rows = _read_csv(csv_path)
    if not rows:
        raise DatasetError(f"manifest: {csv_path} is empty")
    names = [normalise(c) for c in rows[0]]
    if any(n in PATH_COLUMNS for n in names) and any(n in LABEL_COLUMNS for n in names):
        p_col = next(i for i, n in enumerate(names) if n in PATH_COLUMNS)
        l_col = next(i for i, n in enumerate(names) if n in LABEL_COLUMNS)
        s_col = names.index("split") if "split" in names else None
        body, start = rows[1:], 2
    else:
        p_col, l_col = 0, 1
        s_col = 2 if len(rows[0]) >= 3 else None
        body, start = rows, 1
    if len(rows[0]) < 2:
        raise DatasetError(f"manifest: {csv_path} needs at least two columns path,label[,split]")

    # First pass: parse rows so the label space can be inferred before labels are mapped.
    parsed: list[tuple[str, Path, str, str | None, str]] = []  # (id, path, raw label, split, where)
    bad: list[tuple[str, str]] = []
    for lineno, row in enumerate(body, start=start):
        where = f"{csv_path.name} line {lineno}"
        need = max(p_col, l_col, s_col if s_col is not None else 0)
        if len(row) <= need or not row[p_col] or not row[l_col]:
            bad.append((where, "missing path or label"))
            continue
        split = None
        if s_col is not None:
            split = SPLIT_ALIASES.get(row[s_col].strip().lower())
            if split is None:
                bad.append((where, f"unknown split '{row[s_col]}' (train, val, test)"))
                continue
        rel, full = _row_path(row[p_col], csv_path.parent, r)
        parsed.append((rel, full, row[l_col], split, where))

    space = resolve_space(label_space)
    inferred = space is None
    if space is None:
        basis = [lab for _, _, lab, s, _ in parsed if s == "train"] if s_col is not None else [lab for *_, lab, _, _ in parsed]
        if not basis:
            raise DatasetError(f"manifest: {csv_path} has no {'train ' if s_col is not None else ''}rows to infer labels from")
        space = infer_space(basis)
    col = Collector("manifest", r, space, on_error)
    for where, reason in bad:
        col.problem(where, reason)
    pool: list[tuple[str, int, dict[str, Any]]] = []
    for rel, full, raw, split, where in parsed:
        lab = col.label(raw, rel)
        if lab is None or not col.file_ok(rel, full):
            continue
        if split is None:
            pool.append((rel, lab, {}))
        else:
            col.add(split, rel, lab)
    meta: dict[str, Any] = {"layout": "manifest", "manifest": col.rel(csv_path), "label_space_inferred": inferred}
    if s_col is None:
        fr = parse_fractions(fractions)
        rule = split_pool(col, pool, fractions=fr, seed=seed)
        meta["fractions"] = fr
        return col.build(split_rule=rule, split_seed=seed, meta=meta)
    for s in ("train", "test"):
        if not col.splits.get(s):
            raise DatasetError(f"manifest: {csv_path} has a split column but no usable {s} rows")
    carved = carve_missing_val(col, seed)
    meta["val_from_train"] = carved
    rule = "the manifest's split column" + (f"; val = stratified 10 % of train, seed {seed}" if carved else "")
    return col.build(split_rule=rule, split_seed=seed if carved else None, meta=meta)


# --- synthetic writer: this layout with planted faults (vea-bench datasets make-synthetic) ---------

@register_synthetic("manifest", stream=6, label_space=None, spellings={
    "contentment": "content", "sadness": "Sad", "fear": "scared", "joy": "Joy", "positive": "pos"})
def write_synthetic_manifest(w: SetWriter, space: LabelSpace, n: int, faults: set[str]) -> None:
    counts = explicit_counts(n, with_val=True)
    lines = ["path,label,split"]
    first: str | None = None
    for cls, lab in enumerate(space.labels):
        i = 0
        for split in ("train", "val", "test"):
            for _ in range(counts[split]):
                rel = w.image(f"data/{cls}_{i:04d}.jpg", cls, i)
                lines.append(f"{rel},{w.spell(lab)},{split}")
                if cls == 2 % space.num_classes and first is None:
                    first = rel
                i += 1
    if "corrupt" in faults:
        lines.append(f"{w.corrupt(f'data/0_{n:04d}.jpg')},{w.spell(space.labels[0])},train")
    if "zero-byte" in faults:
        lines.append(f"{w.zero(f'data/1_{n:04d}.jpg')},{w.spell(space.labels[1])},train")
    if "unknown-label" in faults:
        lines.append(f"{w.image('data/x_0000.jpg', 0, 9002)},{UNKNOWN_LABEL},test")
    if "duplicate" in faults and first is not None:
        lab = space.labels[2 % space.num_classes]
        lines.append(f"{w.copy(first, f'data/dup_{n:04d}.jpg')},{w.spell(lab)},test")
    (w.out / "manifest.csv").write_text("\n".join(lines) + "\n")
