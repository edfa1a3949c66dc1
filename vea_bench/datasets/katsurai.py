"""Flickr and Instagram of Katsurai & Satoh (ICASSP 2016): binary sentiment from crowd votes.

Released as photo ids with per-polarity votes; users fetch the images themselves. vea-bench reads
a votes/label file (CSV, TSV or whitespace-separated, tabs and spaces mixed) plus a folder of images named by id (any
image extension), or the imagefolder layout.

The file holds an id column and either a label column (positive/negative and spellings; 'neutral'
rows are excluded and counted) or per-polarity vote counts (columns whose names contain 'pos',
'neg' and optionally 'neu'; several columns of a polarity, e.g. 'highly positive' and 'positive',
are summed). Votes are binarised by majority; ties and neutral majorities are excluded and
counted. A header is recognised by an id-like first column name (id, image_id, photo_id,
filename...) or a label-like column name. Without a header: ``id label``, ``id pos neg`` or
``id pos neu neg``. Other encodings (per-worker scores) are not understood: convert them first.
"""
from __future__ import annotations

import csv
import io
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vea_bench.datasets._common import Collector, fixed_space, require_root, split_pool
from vea_bench.datasets.base import DatasetIndex, register_dataset
from vea_bench.datasets.images import IMAGE_EXTENSIONS, list_images
from vea_bench.datasets.folders import has_split_dirs, read_imagefolder
from vea_bench.datasets.splits import parse_fractions
from vea_bench.errors import DatasetError
from vea_bench.labels import BINARY, LabelSpace, normalise
from vea_bench.datasets.synthetic import UNKNOWN_LABEL, SetWriter, register_synthetic

ID_COLUMNS = frozenset({"id", "image id", "photo id", "imageid", "photoid", "image", "photo", "filename", "file", "name", "img"})
LABEL_COLUMNS = frozenset({"label", "sentiment", "polarity", "class", "category"})
NEUTRAL = frozenset({"neutral", "neu", "none"})
IMAGE_DIRS = ("images", "image", "photos", "imgs", "img")
LABEL_FILE_SUFFIXES = (".csv", ".tsv", ".txt")


def _find_labels_file(root: Path, name: str) -> Path | None:
    cands = sorted(
        p for p in root.iterdir()
        if p.is_file() and p.suffix.lower() in LABEL_FILE_SUFFIXES and not p.name.startswith(".")
        and not p.name.lower().startswith(("readme", "license", "licence"))
    )
    if len(cands) <= 1:
        return cands[0] if cands else None
    keyed = [p for p in cands if any(k in p.name.lower() for k in ("label", "vote", "sentiment", "annotation"))]
    if len(keyed) == 1:
        return keyed[0]
    raise DatasetError(
        f"{name}: several possible votes/label files in {root} ({', '.join(p.name for p in cands)}); "
        "pass labels_file=NAME"
    )


def _rows(path: Path, name: str) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read {path} ({exc.strerror or exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DatasetError(f"{name}: {path} is empty")
    first = lines[0]
    if "," in first or ";" in first:
        delim = "," if "," in first else ";"
        return [[c.strip() for c in row] for row in csv.reader(io.StringIO("\n".join(lines)), delimiter=delim)]
    return _whitespace_rows(lines)


def _whitespace_rows(lines: list[str]) -> list[list[str]]:
    """Rows of a tab- and/or space-separated file (hand-edited files mix both, in any way).

    Ids, labels and vote counts hold no whitespace, so any run of spaces and tabs separates the
    fields of the body. Tabs alone separate only when every line has the same number of tab fields
    and no body field holds a space (empty fields then keep their place). A header's names may
    hold spaces ('highly positive'): its tab fields are kept when they match the body's width and
    its whitespace fields do not.
    """
    tabbed = [[c.strip() for c in ln.split("\t")] for ln in lines]
    body = tabbed[1:] if len(tabbed) > 1 and _is_header(tabbed[0]) else tabbed
    if (all("\t" in ln for ln in lines) and len({len(r) for r in tabbed}) == 1
            and not any(len(c.split()) > 1 for r in body for c in r)):
        return tabbed
    rows = [ln.split() for ln in lines]
    if len(rows) > 1 and "\t" in lines[0]:
        width = Counter(len(r) for r in rows[1:]).most_common(1)[0][0]
        if len(tabbed[0]) == width and len(rows[0]) != width:
            rows[0] = tabbed[0]
    return rows


def _is_header(row: list[str]) -> bool:
    """An id-like first name, a label-like name, or names of both polarities (votes need no id name)."""
    names = [normalise(c) for c in row]
    if not names:
        return False
    votes = any("pos" in n for n in names[1:]) and any("neg" in n for n in names[1:])
    return names[0] in ID_COLUMNS or any(n in LABEL_COLUMNS for n in names) or votes


def _columns(header: list[str] | None, width: int, where: str) -> tuple[int, int | None, list[int], list[int], list[int]]:
    """(id column, label column or None, positive, neutral, negative vote columns)."""
    if header is None:
        if width == 2:
            return 0, 1, [], [], []
        if width == 3:
            return 0, None, [1], [], [2]
        if width == 4:
            return 0, None, [1], [2], [3]
        raise DatasetError(f"{where}: {width} columns and no header; expected 'id label', 'id pos neg' or 'id pos neu neg'")
    names = [normalise(c) for c in header]
    id_col = next((i for i, n in enumerate(names) if n in ID_COLUMNS), 0)
    label_col = next((i for i, n in enumerate(names) if n in LABEL_COLUMNS), None)
    pos = [i for i, n in enumerate(names) if "pos" in n and i != id_col]
    neg = [i for i, n in enumerate(names) if "neg" in n and i != id_col]
    neu = [i for i, n in enumerate(names) if "neu" in n and i != id_col]
    if label_col is None and not (pos and neg):
        raise DatasetError(
            f"{where}: header {header} has neither a label column ({', '.join(sorted(LABEL_COLUMNS))}) "
            "nor positive and negative vote columns"
        )
    return id_col, label_col, pos, neu, neg


def _strip_ext(ident: str) -> str:
    p = Path(ident)
    return p.stem if p.suffix.lower() in IMAGE_EXTENSIONS else ident


def _images_by_id(name: str, r: Path, images_dir: str | Path | None) -> tuple[Path, dict[str, Path]]:
    """The images folder (``images_dir``, a usual name, or the root) and its images by id (file stem)."""
    if images_dir is not None:
        img_dir = r / images_dir
        if not img_dir.is_dir():
            raise DatasetError(f"{name}: images folder {img_dir} not found")
    else:
        img_dir = next((r / d for d in IMAGE_DIRS if (r / d).is_dir()), r)
    by_id: dict[str, Path] = {}
    for f in list_images(img_dir, recursive=True):
        by_id.setdefault(f.stem, f)
    return img_dir, by_id


def _row_label(col: Collector, row: list[str], cols: tuple[int, int | None, list[int], list[int], list[int]],
               ref: str, where: str, meta: dict[str, Any], excluded: Counter[str]) -> int | None:
    """The row's label index from its label column or its votes; None when skipped (recorded)."""
    _, label_col, pos, neu, neg = cols
    if label_col is not None:
        raw = row[label_col]
        if normalise(raw) in NEUTRAL:
            excluded["neutral"] += 1
            col.skip(ref, "neutral label", "neutral")
            return None
        return col.label(raw, ref)
    try:
        p, u, n = (sum(float(row[i]) for i in idx) for idx in (pos, neu, neg))
    except ValueError:
        col.problem(where, "vote counts must be numbers")
        return None
    meta["votes"] = {"positive": p, "neutral": u, "negative": n}
    top = max(p, u, n)
    if [p, u, n].count(top) > 1:
        excluded["tie"] += 1
        col.skip(ref, f"tied votes (positive {p:g}, neutral {u:g}, negative {n:g})", "tie")
        return None
    if u == top:
        excluded["neutral"] += 1
        col.skip(ref, f"neutral majority (positive {p:g}, neutral {u:g}, negative {n:g})", "neutral")
        return None
    return 0 if p == top else 1


def load_katsurai(
    name: str,
    root: str | Path,
    *,
    seed: int = 42,
    label_space: str | None = None,
    on_error: str = "raise",
    labels_file: str | Path | None = None,
    images_dir: str | Path | None = None,
    fractions: str | Sequence[float] | Mapping[str, float] | None = None,
) -> DatasetIndex:
    """Shared loader for `flickr` and `instagram` (same release format)."""
    r = require_root(name, root)
    space = fixed_space(BINARY, label_space)
    if labels_file is None and has_split_dirs(r):
        return read_imagefolder(name, r, space=space, seed=seed, on_error=on_error)
    lf = (r / labels_file) if labels_file is not None else _find_labels_file(r, name)
    if lf is None:
        raise DatasetError(f"{name}: no votes/label file (.csv/.tsv/.txt) in {r} and no train/ test/ folders")
    if not lf.is_file():
        raise DatasetError(f"{name}: labels file {lf} not found")
    img_dir, by_id = _images_by_id(name, r, images_dir)

    rows = _rows(lf, name)
    header = rows[0] if _is_header(rows[0]) else None
    cols = _columns(header, len(rows[0]), f"{name}: {lf.name}")
    need = max([c for c in cols[:2] if c is not None] + cols[2] + cols[3] + cols[4])
    col = Collector(name, r, space, on_error)
    excluded: Counter[str] = Counter(tie=0, neutral=0)
    missing = 0
    pool: list[tuple[str, int, dict[str, Any]]] = []
    seen: set[str] = set()
    for lineno, row in enumerate(rows[1:] if header is not None else rows, start=2 if header is not None else 1):
        where = f"{lf.name} line {lineno}"
        if len(row) <= need:
            col.problem(where, f"expected at least {need + 1} columns, got {len(row)}")
            continue
        ident = _strip_ext(row[cols[0]])
        if not ident or ident in seen:
            if ident:
                col.skip(f"{where} (id {ident})", "id listed twice", "duplicate")
            continue
        seen.add(ident)
        img = by_id.get(ident)
        ref = col.rel(img) if img is not None else f"{where} (id {ident})"
        meta: dict[str, Any] = {"id": ident}
        lab = _row_label(col, row, cols, ref, where, meta, excluded)
        if lab is None:
            continue
        if img is None:
            missing += 1
            col.skip(ref, f"no image named {ident}.* under {col.rel(img_dir) if img_dir != r else '.'}", "missing")
            continue
        if col.file_ok(ref, img):
            pool.append((ref, lab, meta))
    fr = parse_fractions(fractions)
    rule = split_pool(col, pool, fractions=fr, seed=seed)
    return col.build(
        split_rule=rule,
        split_seed=seed,
        meta={
            "layout": "katsurai",
            "labels_file": col.rel(lf),
            "label_mode": "label column" if cols[1] is not None else "vote counts",
            "excluded_ties": excluded["tie"],
            "excluded_neutral": excluded["neutral"],
            "missing_images": missing,
            "unlabelled_images": len(set(by_id) - seen),
            "fractions": fr,
        },
    )


_LAYOUT = "ROOT/<votes or labels file>.{csv,tsv,txt} + images named by id (ROOT/images/<id>.<ext>); or ROOT/{train,val,test}/<class>/*"
_RULE = "stratified 80/5/15, seed recorded (ties and neutral majorities excluded)"


@register_dataset("flickr", label_space="binary", layout=_LAYOUT, split_rule=_RULE, aliases=("flickr-sentiment",))
def load_flickr(root: str | Path, **options: Any) -> DatasetIndex:
    """Flickr of Katsurai & Satoh (60,738 images in the EmoVLM-KD paper)."""
    return load_katsurai("flickr", root, **options)


@register_dataset("instagram", label_space="binary", layout=_LAYOUT, split_rule=_RULE, aliases=("instagram-sentiment",))
def load_instagram(root: str | Path, **options: Any) -> DatasetIndex:
    """Instagram of Katsurai & Satoh (42,832 images in the EmoVLM-KD paper)."""
    return load_katsurai("instagram", root, **options)


def _public_signature() -> Any:
    """load_katsurai's signature without ``name``: lets `load_dataset` reject misspelt options."""
    import inspect

    sig = inspect.signature(load_katsurai)
    return sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "name"])


load_flickr.__signature__ = _public_signature()  # type: ignore[attr-defined]
load_instagram.__signature__ = _public_signature()  # type: ignore[attr-defined]


# --- synthetic writers: both layouts with planted faults (vea-bench datasets make-synthetic) -------

def _katsurai_images(w: SetWriter, space: LabelSpace, n: int, faults: set[str], idgen: Any) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Images named by id; returns (id, kind, extension) rows and ids of tie/neutral extras."""
    rows: list[tuple[str, str, str]] = []
    for cls in range(space.num_classes):
        for i in range(n):
            ident = idgen()
            ext = ".jpeg" if i % 4 == 3 else ".jpg"
            w.image(f"images/{ident}{ext}", cls, i)
            rows.append((ident, space.labels[cls], ext))
    extras = []
    for j in range(4):  # two ties and two neutral majorities (votes) / neutral labels
        ident = idgen()
        w.image(f"images/{ident}.jpg", j % 2, 5000 + j)
        extras.append(ident)
    if "corrupt" in faults:
        ident = idgen()
        w.corrupt(f"images/{ident}.jpg")
        rows.append((ident, space.labels[0], ".jpg"))
    if "zero-byte" in faults:
        ident = idgen()
        w.zero(f"images/{ident}.jpg")
        rows.append((ident, space.labels[1], ".jpg"))
    if "duplicate" in faults:
        ident = idgen()
        src = next(r for r in rows if r[1] == space.labels[0])
        w.copy(f"images/{src[0]}{src[2]}", f"images/{ident}{src[2]}")
        rows.append((ident, space.labels[0], src[2]))
    rows.append((idgen(), space.labels[0], ""))  # labelled, but the user could not fetch the image
    return rows, extras


@register_synthetic("flickr", stream=3, label_space=BINARY,
                    unsupported_faults={"unknown-label": "its file holds vote counts"})
def write_synthetic_flickr(w: SetWriter, space: LabelSpace, n: int, faults: set[str]) -> None:
    rnd = random.Random(f"{w.seed}:flickr")
    rows, extras = _katsurai_images(w, space, n, faults, lambda: str(rnd.randrange(10**9, 10**10)))
    majority = [(3, 0, 0), (2, 1, 0), (2, 0, 1)]
    lines = ["id,positive,neutral,negative"]
    body = []
    for ident, lab, _ in rows:
        p, u, g = rnd.choice(majority)
        votes = (p, u, g) if lab == "positive" else (g, u, p)
        body.append(f"{ident},{votes[0]},{votes[1]},{votes[2]}")
    for j, ident in enumerate(extras):
        votes = (1, 1, 1) if j < 2 else ((0, 2, 1) if j == 2 else (1, 2, 0))
        body.append(f"{ident},{votes[0]},{votes[1]},{votes[2]}")
    rnd.shuffle(body)
    (w.out / "labels.csv").write_text("\n".join(lines + body) + "\n")


@register_synthetic("instagram", stream=4, label_space=BINARY, spellings={"positive": "Positive", "negative": "neg"})
def write_synthetic_instagram(w: SetWriter, space: LabelSpace, n: int, faults: set[str]) -> None:
    rnd = random.Random(f"{w.seed}:instagram")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    rows, extras = _katsurai_images(w, space, n, faults, lambda: "".join(rnd.choice(alphabet) for _ in range(11)))
    body = [f"{ident}\t{w.spell(lab)}" for ident, lab, _ in rows]
    body += [f"{ident}\tneutral" for ident in extras]
    if "unknown-label" in faults:
        ident = "".join(rnd.choice(alphabet) for _ in range(11))
        w.image(f"images/{ident}.jpg", 0, 9002)
        body.append(f"{ident}\t{UNKNOWN_LABEL}")
    rnd.shuffle(body)
    (w.out / "labels.txt").write_text("\n".join(["id\tlabel"] + body) + "\n")
