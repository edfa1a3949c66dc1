"""`hf`: a Hugging Face `datasets` set, as `save_to_disk` wrote it or as parquet shards laid out on the hub.

Accepted roots:

- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (Arrow);
- a folder of parquet files as on the hub, ``data/<split>-*.parquet`` (or ``<split>-*.parquet``
  at the root, or ``data/<split>/*.parquet``); the column types come from the schema's metadata;
- a hub name (``owner/name``) where the machine can reach the hub and ``root`` is no local path.

The image column is ``image_column`` or the one `Image` feature; the label column is
``label_column``, the one `ClassLabel`, or a column named ``label``. Splits are taken as given
(``validation``/``valid``/``dev`` is val; other names are ignored and listed in the index's meta);
no val split: a stratified 10 % of train (seed); a single `Dataset` without splits: stratified
80/5/15 (seed). Labels map onto a label space as for `imagefolder` (inferred from the class names
or forced with ``label_space``).

Rows carry no files, yet every reader of a dataset opens ``root / id``: the stored image bytes are
written once, byte for byte, into an image store (``images_dir``; default ``ROOT/.vea-bench-images``,
or the user cache where the root is read-only) under the dataset's fingerprint, and the index's root
is that folder; a listing beside the images lets later loads read only the label column. Row ids
are ``<split>/<row:06d>.<ext>`` (row = position in the split as stored), so
they are stable across runs and machines; per-image fingerprints come from the stored bytes, and the
dataset's fingerprint (the `datasets` fingerprints of an Arrow save, or the parquet footers) enters
every split's manifest hash.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vea_bench.datasets._common import Collector, carve_missing_val, check_on_error, infer_space, resolve_space, split_pool
from vea_bench.datasets.base import DatasetIndex, register_dataset
from vea_bench.datasets.folders import SPLIT_ALIASES
from vea_bench.datasets.splits import DEFAULT_FRACTIONS
from vea_bench.datasets.synthetic import SetWriter, explicit_counts, register_synthetic
from vea_bench.errors import ConfigError, DatasetError
from vea_bench.labels import LabelSpace

EXTRA_HINT = "pip install 'vea-bench[hf]'"
STORE_NAME = ".vea-bench-images"
_BATCH = 256
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
          (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


def require_datasets() -> Any:
    """The `datasets` module, or a one-line error naming the extra that installs it."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"the hf dataset layout needs the 'datasets' package ({EXTRA_HINT})") from None
    return datasets


@dataclass
class HFDatasetIndex(DatasetIndex):
    """A `DatasetIndex` whose manifest hashes also cover the `datasets` fingerprint of the source."""

    fingerprint: str = ""

    def manifest_hash(self, split: str) -> str:
        base = super().manifest_hash(split)
        return hashlib.sha256(f"{base}:hf:{self.fingerprint}".encode()).hexdigest()


@dataclass
class _Split:
    name: str                      # as stored (e.g. "validation")
    features: Any                  # datasets.Features
    batches: Any                   # () -> iterator of pyarrow RecordBatch over (image, label) columns


def _sha(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _table(ds: Any) -> Any:
    if getattr(ds, "_indices", None) is not None:
        ds = ds.flatten_indices()
    return ds.data.table


def _from_datasets(obj: Any) -> tuple[list[_Split], str, bool]:
    """Splits of a loaded `Dataset` / `DatasetDict`, their fingerprint, and whether splits were given."""
    items = list(obj.items()) if hasattr(obj, "keys") else [("train", obj)]

    def batches_of(ds: Any) -> Any:
        return lambda cols: _table(ds).select(cols).to_batches(max_chunksize=_BATCH)

    splits = [_Split(name, ds.features, batches_of(ds)) for name, ds in items]
    fp = _sha([f"{name}={ds._fingerprint}" for name, ds in items])
    return splits, fp, hasattr(obj, "keys")


def _parquet_groups(root: Path) -> dict[str, list[Path]]:
    """``{split: [shards]}`` for the hub's parquet layouts under ``root``."""
    groups: dict[str, list[Path]] = {}
    for base in (root / "data", root):
        if not base.is_dir():
            continue
        for f in sorted(base.glob("*.parquet")):
            groups.setdefault(f.name.split("-", 1)[0].split(".", 1)[0], []).append(f)
        for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            shards = sorted(d.glob("*.parquet"))
            if shards:
                groups.setdefault(d.name, []).extend(shards)
        if groups:
            break
    return groups


def _footer_digest(path: Path) -> str:
    """Cheap content fingerprint of a parquet shard: its size and its footer (schema, row-group stats)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        fh.seek(max(0, size - (1 << 20)))
        tail = fh.read()
    return f"{path.name}:{size}:{hashlib.sha256(tail).hexdigest()}"


def _from_parquet(groups: dict[str, list[Path]]) -> tuple[list[_Split], str]:
    datasets = require_datasets()
    import pyarrow.parquet as pq

    splits: list[_Split] = []
    digests: list[str] = []
    for name, files in groups.items():
        try:
            schema = pq.read_schema(files[0])
        except Exception as exc:  # noqa: BLE001  pyarrow raises several types for a bad file
            raise DatasetError(f"hf: cannot read parquet {files[0]} ({str(exc).splitlines()[0] if str(exc) else exc})") from None
        features = datasets.Features.from_arrow_schema(schema)

        def batches(cols: list[str], files: list[Path] = files) -> Iterator[Any]:
            for f in files:
                yield from pq.ParquetFile(f).iter_batches(batch_size=_BATCH, columns=cols)

        splits.append(_Split(name, features, batches))
        digests.extend(f"{name}/{_footer_digest(f)}" for f in files)
    return splits, _sha(digests)


def _open_source(root: str | Path) -> tuple[list[_Split], str, bool, Path | None]:
    """(splits, fingerprint, splits given?, local root or None for a hub name)."""
    p = Path(root).expanduser()
    if not p.exists():
        text = str(root)
        if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1:
            datasets = require_datasets()
            try:
                obj = datasets.load_dataset(text)
            except Exception as exc:  # noqa: BLE001  hub, network and builder errors alike
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DatasetError(f"hf: {text} is no local folder and could not be loaded from the hub ({msg})") from None
            splits, fp, given = _from_datasets(obj)
            return splits, fp, given, None
        raise DatasetError(f"hf: root {p} does not exist")
    if not p.is_dir():
        raise DatasetError(f"hf: root {p} is not a folder")
    if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        datasets = require_datasets()
        try:
            obj = datasets.load_from_disk(str(p))
        except Exception as exc:  # noqa: BLE001
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DatasetError(f"hf: cannot load the save_to_disk folder {p} ({msg})") from None
        splits, fp, given = _from_datasets(obj)
        return splits, fp, given, p
    groups = _parquet_groups(p)
    if groups:
        splits, fp = _from_parquet(groups)
        return splits, fp, True, p
    raise DatasetError(f"hf: {p} holds neither a save_to_disk dataset (dataset_dict.json / state.json) "
                       "nor parquet shards (data/<split>-*.parquet)")


def _columns(features: Any, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """The image and label columns: the ones asked for, else the one Image / ClassLabel / ``label``."""
    datasets = require_datasets()
    names = list(features)
    listing = ", ".join(names) or "none"
    if image_column is not None:
        if image_column not in features:
            raise DatasetError(f"hf: no column '{image_column}' (columns: {listing})")
        img = image_column
    else:
        images = [n for n, f in features.items() if isinstance(f, datasets.Image)]
        if len(images) != 1:
            what = "no image column" if not images else f"{len(images)} image columns ({', '.join(images)})"
            raise DatasetError(f"hf: {what} (columns: {listing}); pass --image-column")
        img = images[0]
    if label_column is not None:
        if label_column not in features:
            raise DatasetError(f"hf: no column '{label_column}' (columns: {listing})")
        return img, label_column
    classes = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if len(classes) > 1:
        raise DatasetError(f"hf: {len(classes)} label candidates ({', '.join(classes)}); pass --label-column")
    if classes:
        return img, classes[0]
    if "label" in features:
        return img, "label"
    raise DatasetError(f"hf: no label column (no ClassLabel feature and no 'label'; columns: {listing}); pass --label-column")


def _label_names(feature: Any) -> list[str] | None:
    names = getattr(feature, "names", None)
    return list(names) if names else None


def _extension(data: bytes, stored: str | None) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    suffix = os.path.splitext(stored or "")[1].lower()
    return suffix if suffix and len(suffix) <= 6 else ".img"


def _store_dir(root: Path | None, images_dir: str | Path | None, fingerprint: str) -> Path:
    """Where this dataset's images are written: ``images_dir``, else inside the root, else the user cache."""
    if images_dir is not None:
        base = Path(images_dir).expanduser()
    elif root is not None and os.access(root, os.W_OK):
        base = root / STORE_NAME
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vea-bench" / "hf-images"
    store = base / fingerprint[:16]
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"hf: cannot create the image store {store} ({exc.strerror or exc}); pass -o images_dir=DIR") from None
    return store


def _write(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write ``data`` atomically (an interrupted load never leaves a truncated image behind)."""
    if not replace and path.is_file() and path.stat().st_size == len(data):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cell_bytes(value: Any, rel: str, source: Path | None, inside: Any) -> tuple[bytes | None, tuple[str, str] | None]:
    """The stored bytes of one image cell (Image struct or binary), or why there are none: (kind, reason)."""
    if isinstance(value, dict):
        data, stored = value.get("bytes"), value.get("path")
        if data is None and stored:
            # An Image stored by path only: read it where it lies (relative paths: from the root).
            p = Path(stored)
            if not p.is_absolute() and source is not None:
                p = source / p
            if p.is_file() and (source is None or inside(p)):
                return p.read_bytes(), None
            return None, ("missing", f"image stored as a path only ({stored}) and not found")
    else:
        data = value
    if data is None:
        return None, ("missing", "no image in this row")
    if not isinstance(data, (bytes, bytearray)):
        raise DatasetError(f"hf: {rel}: the image column holds {type(data).__name__}, not image bytes; pass --image-column")
    if not data:
        return None, ("zero-byte", "zero-byte image")
    return bytes(data), None


@register_dataset(
    "hf",
    label_space=None,
    layout="Hugging Face datasets: save_to_disk folder, data/<split>-*.parquet, or a hub name",
    split_rule="its own splits (validation = val); no val -> stratified 10 % of train, seed; no splits -> 80/5/15, seed",
    aliases=("huggingface", "hf-datasets", "parquet"),
)
def load_hf(
    root: str | Path,
    *,
    seed: int = 42,
    label_space: str | None = None,
    on_error: str = "raise",
    image_column: str | None = None,
    label_column: str | None = None,
    images_dir: str | Path | None = None,
) -> DatasetIndex:
    """Load a Hugging Face `datasets` set (see the module doc for layouts, columns and ids)."""
    check_on_error(on_error)
    splits, fingerprint, given, source = _open_source(root)
    if not splits:
        raise DatasetError(f"hf: {root} holds no splits")
    img_col, lab_col = _columns(splits[0].features, image_column, label_column)
    names = _label_names(splits[0].features[lab_col])
    space = resolve_space(label_space)
    inferred = space is None
    wanted: dict[str, _Split] = {}
    ignored: list[str] = []
    for sp in splits:
        canon = SPLIT_ALIASES.get(sp.name.lower()) if given else None
        if given and (canon is None or canon in wanted):
            ignored.append(sp.name)
        else:
            wanted[canon or "all"] = sp
    if not wanted:
        raise DatasetError(f"hf: {root}: no split is train, validation or test (splits: {', '.join(ignored)})")
    for sp in wanted.values():
        for col_name in (img_col, lab_col):
            if col_name not in sp.features:
                raise DatasetError(f"hf: split '{sp.name}' has no column '{col_name}'")
    if space is None:
        space = _infer(names, wanted, lab_col)
    store = _store_dir(source, images_dir, fingerprint)
    col = Collector("hf", store, space, on_error)
    pool: list[tuple[str, int, dict[str, Any]]] = []
    for canon, sp in wanted.items():
        if canon != "all":
            col.splits.setdefault(canon, [])
        for rel, label, meta in _rows(sp, img_col, lab_col, names, col, store, source):
            if canon == "all":
                pool.append((rel, label, meta))
            else:
                col.add(canon, rel, label, meta)
    meta: dict[str, Any] = {
        "layout": "hf", "source": str(root), "image_column": img_col, "label_column": lab_col,
        "fingerprint": fingerprint, "label_space_inferred": inferred, "ignored_splits": ignored,
    }
    if not given:
        rule = split_pool(col, pool, fractions=DEFAULT_FRACTIONS, seed=seed)
        return _index(col.build(split_rule=rule, split_seed=seed, meta=meta), fingerprint)
    for need in ("train", "test"):
        if not col.splits.get(need):
            have = ", ".join(sp.name for sp in splits)
            raise DatasetError(f"hf: {root} has no usable '{need}' split (splits: {have})")
    carved = carve_missing_val(col, seed)
    meta["val_from_train"] = carved
    rule = "its own splits" + (f"; val = stratified 10 % of train, seed {seed}" if carved else "")
    return _index(col.build(split_rule=rule, split_seed=seed if carved else None, meta=meta), fingerprint)


def _index(index: DatasetIndex, fingerprint: str) -> HFDatasetIndex:
    return HFDatasetIndex(**{k: getattr(index, k) for k in index.__dataclass_fields__}, fingerprint=fingerprint)


def _infer(names: list[str] | None, splits: dict[str, _Split], lab_col: str) -> LabelSpace:
    """The label space from the ClassLabel names, else from the train (or only) split's values."""
    if names:
        return infer_space(names)
    basis = splits.get("train") or splits.get("all") or next(iter(splits.values()))
    values = {str(v) for b in basis.batches([lab_col]) for v in b.column(0).to_pylist() if v is not None}
    if not values:
        raise DatasetError(f"hf: the label column '{lab_col}' holds no labels")
    return infer_space(values)


def _materialise(sp: _Split, img_col: str, store: Path, source: Path | None, inside: Any) -> list[Any]:
    """Write every row's stored image bytes into the store; per row its extension, or [kind, reason]."""
    entries: list[Any] = []
    row = 0
    for batch in sp.batches([img_col]):
        for value in batch.column(0).to_pylist():
            rel = f"{sp.name}/{row:06d}"
            row += 1
            data, problem = _cell_bytes(value, rel, source, inside)
            if data is None:
                entries.append(list(problem or ("missing", "no image in this row")))
                continue
            ext = _extension(data, value.get("path") if isinstance(value, dict) else None)
            _write(store / (rel + ext), data)
            entries.append(ext)
    return entries


def _store_entries(sp: _Split, img_col: str, store: Path, source: Path | None, inside: Any) -> list[Any]:
    """The split's row listing in the store; images are read from the dataset only when a file is missing."""
    listing = store / f".rows-{hashlib.sha256(f'{sp.name}/{img_col}'.encode()).hexdigest()[:16]}.json"
    try:
        entries = json.loads(listing.read_text())
        if all(not isinstance(e, str) or (store / f"{sp.name}/{i:06d}{e}").is_file() for i, e in enumerate(entries)):
            return entries
    except (OSError, ValueError):
        pass
    entries = _materialise(sp, img_col, store, source, inside)
    _write(listing, json.dumps(entries).encode(), replace=True)
    return entries


def _rows(sp: _Split, img_col: str, lab_col: str, names: list[str] | None, col: Collector,
          store: Path, source: Path | None) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(id, label, meta) of every usable row of one split; the image bytes land in the store once."""
    entries = _store_entries(sp, img_col, store, source, col.inside)
    row = 0
    for batch in sp.batches([lab_col]):
        for raw in batch.column(0).to_pylist():
            rel = f"{sp.name}/{row:06d}"
            entry = entries[row]
            row += 1
            if raw is None or (names is not None and isinstance(raw, int) and raw < 0):
                col.skip(rel, "no label in this row", "unlabelled")
                continue
            text = names[raw] if names is not None and isinstance(raw, int) and raw < len(names) else str(raw)
            lab = col.label(text, rel)
            if lab is None:
                continue
            if not isinstance(entry, str):
                col.skip(rel, entry[1], entry[0])
                continue
            yield rel + entry, lab, {"row": row - 1, "split": sp.name}


# --- synthetic writer: a DatasetDict saved with save_to_disk (vea-bench datasets make-synthetic) ----

def write_datasetdict(out: Path, splits: dict[str, list[tuple[bytes, int]]], labels: list[str],
                      *, fmt: str = "arrow") -> Path:
    """Save ``{split: [(image bytes, label index)]}`` as a DatasetDict with an Image and a ClassLabel
    column: ``arrow`` (``save_to_disk``) or ``parquet`` (``data/<split>-00000-of-00001.parquet``)."""
    datasets = require_datasets()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=labels)})
    dd = datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"image": [{"bytes": b, "path": f"{i:06d}.jpg"} for i, (b, _) in enumerate(rows)],
             "label": [lab for _, lab in rows]},
            features=features,
        )
        for split, rows in splits.items()
    })
    if fmt not in ("arrow", "parquet"):
        raise ConfigError(f"unknown format '{fmt}' (arrow or parquet)")
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # library code draws nothing on the terminal
    try:
        if fmt == "arrow":
            dd.save_to_disk(str(out))
        else:
            (out / "data").mkdir(parents=True, exist_ok=True)
            for split, ds in dd.items():
                ds.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return out


@register_synthetic("hf", stream=8, label_space=None, unsupported_faults={
    "unknown-label": "a ClassLabel column holds only its own class names"})
def write_synthetic_hf(w: SetWriter, space: LabelSpace, n: int, faults: set[str]) -> None:
    staging = w.under(".staging")
    counts = explicit_counts(n, with_val=False)
    rows: dict[str, list[tuple[bytes, int]]] = {"train": [], "test": []}
    first: bytes | None = None
    for cls in range(space.num_classes):
        i = 0
        for split in ("train", "test"):
            for _ in range(counts[split]):
                data = (staging.out / staging.image(f"{cls}_{i}.jpg", cls, i)).read_bytes()
                rows[split].append((data, cls))
                if cls == 2 % space.num_classes and first is None:
                    first = data
                i += 1
    if "corrupt" in faults:
        rows["train"].append(((staging.out / staging.corrupt("corrupt.jpg")).read_bytes(), 0))
    if "zero-byte" in faults:
        rows["train"].append((b"", 1 % space.num_classes))
    if "duplicate" in faults and first is not None:
        rows["test"].append((first, 2 % space.num_classes))
    shutil.rmtree(staging.out)
    write_datasetdict(w.out, rows, list(space.labels))
