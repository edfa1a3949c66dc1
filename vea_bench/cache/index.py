"""The index file of a cache and its atomic commits.

The index (``fi.h5``) holds the dataset's attributes, its splits (ids, labels) and one entry per
source: an external link to the source's own file, or, in a packed cache, the source itself. It
is never modified in place: every change builds the whole new index in memory, writes it with
plain file I/O under a temporary name, fsyncs it and renames it over the old one. So whatever
happens (a kill, a full disk, a read-only mount) the index on disk is the old one or the new one,
and a failed write is an ordinary `OSError` reported in one line naming the path, never an error
inside the HDF5 library (which can crash the process when the disk fills under it).
"""
from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vea_bench import __version__
from vea_bench.cache.guard import fsync_path, is_lock_error
from vea_bench.cache.layout import SCHEMA_VERSION, SOURCE_KINDS, STR_DTYPE, discard, first_line, h5_dtype
from vea_bench.errors import CacheError, os_error
from vea_bench.splits import SplitSpec


def build_image(build: Callable[[h5py.File], None]) -> bytes:
    """The bytes of an HDF5 file laid out by ``build``, made in memory (no disk I/O)."""
    with h5py.File(f"vea-index-{secrets.token_hex(6)}", "w", driver="core", backing_store=False) as mem:
        build(mem)
        mem.flush()
        return bytes(mem.id.get_file_image())


def write_bytes(final: Path, image: bytes, *, where: Path, action: str) -> None:
    """Write ``image`` to ``final`` atomically: a temporary file beside it written with
    ``os.write``, fsynced, renamed over ``final``, the folder fsynced. An OS error is one line
    naming ``where`` and ``action``; on any failure the temporary file is removed."""
    tmp = final.with_name(f"{final.name}.index-{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(image)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_path(final.parent, folder=True)
    except OSError as exc:
        discard(tmp)
        raise os_error(where, exc, action) from None
    except BaseException:
        discard(tmp)
        raise


def write_image(final: Path, build: Callable[[h5py.File], None], *, where: Path, action: str) -> None:
    """Build an HDF5 file in memory with ``build``, then write it to ``final`` atomically."""
    write_bytes(final, build_image(build), where=where, action=action)


def stale_index_files(path: Path) -> list[Path]:
    """Temporary index files left by a writer killed during a commit."""
    return list(path.parent.glob(f"{path.name}.index-*.tmp"))


def new_index_builder(
    dataset: str,
    label_space: str,
    label_names: Sequence[str],
    splits: Mapping[str, SplitSpec],
    split_seed: int | None,
    extra: Mapping[str, Any] | None,
) -> Callable[[h5py.File], None]:
    """What `write_image` needs to lay out the index of a new cache (no sources yet)."""
    if len(set(label_names)) != len(label_names) or not label_names:
        raise CacheError(f"label names must be unique and non-empty, got {list(label_names)}")
    for name, sp in splits.items():
        if len(sp.ids) != len(np.asarray(sp.labels)):
            raise CacheError(f"split '{name}': {len(sp.ids)} ids but {len(np.asarray(sp.labels))} labels")

    def build(h5: h5py.File) -> None:
        h5.attrs["schema_version"] = SCHEMA_VERSION
        h5.attrs["vea_bench_version"] = __version__
        h5.attrs["dataset"] = dataset
        h5.attrs["label_space"] = label_space
        h5.attrs["label_names"] = json.dumps(list(label_names))
        h5.attrs["manifest_hashes"] = json.dumps({s: sp.manifest_hash for s, sp in splits.items()})
        h5.attrs["split_seed"] = -1 if split_seed is None else int(split_seed)
        h5.attrs["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        h5.attrs["extra"] = json.dumps(dict(extra or {}), default=str)
        for name, sp in splits.items():
            g = h5.create_group(f"splits/{name}")
            g.create_dataset("ids", data=np.asarray(list(sp.ids), dtype=object), dtype=h5_dtype(STR_DTYPE))
            g.create_dataset("labels", data=np.asarray(sp.labels).astype(np.int16))

    return build


def open_h5(path: Path) -> h5py.File:
    """Open an index read-only; every failure is one line saying what is wrong with the file."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        msg = first_line(exc)
        if is_lock_error(exc):
            raise CacheError(
                f"{path}: the file is open for writing in another process (HDF5 file lock); wait for it to finish"
            ) from None
        if "permission" in msg.lower():
            raise CacheError(f"{path}: permission denied; make it readable for this user") from None
        try:
            is_h5 = h5py.is_hdf5(path)
        except OSError:
            is_h5 = False
        kind = "truncated or corrupt HDF5 file" if is_h5 else "not an HDF5 file"
        raise CacheError(f"{path}: {kind} ({msg[:120]})") from None


class IndexMetadata:
    """What the index says about the dataset and its splits, for a class that holds it as ``_h5``."""

    path: Path
    _h5: h5py.File

    @property
    def dataset(self) -> str:
        return str(self._h5.attrs["dataset"])

    @property
    def label_space(self) -> str:
        return str(self._h5.attrs.get("label_space", ""))

    @property
    def label_names(self) -> list[str]:
        return list(json.loads(self._h5.attrs["label_names"]))

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def manifest_hashes(self) -> dict[str, str]:
        return dict(json.loads(self._h5.attrs["manifest_hashes"]))

    @property
    def split_seed(self) -> int | None:
        s = int(self._h5.attrs.get("split_seed", -1))
        return None if s < 0 else s

    @property
    def splits(self) -> list[str]:
        order = {"train": 0, "val": 1, "test": 2}
        return sorted(self._h5["splits"], key=lambda s: (order.get(s, 9), s))

    def attrs(self) -> dict[str, Any]:
        """File attributes as plain Python values (for provenance in run records)."""
        out: dict[str, Any] = {}
        for k, v in self._h5.attrs.items():
            out[k] = v.item() if hasattr(v, "item") else v
        for k in ("label_names", "manifest_hashes", "extra"):
            if k in out:
                out[k] = json.loads(out[k])
        return out

    def raw_attrs(self) -> dict[str, Any]:
        """The index's attributes exactly as stored (JSON still encoded), for `verify_cache`,
        which must report a damaged attribute rather than fail on decoding it."""
        return dict(self._h5.attrs.items())

    def split_group(self, split: str) -> h5py.Group:
        """The index's ``splits/<split>`` group (ids, labels) for whole-file checks."""
        self._check_split(split)
        return self._h5[f"splits/{split}"]

    def top_level_names(self) -> list[str]:
        """Names of the index's top-level groups (``splits`` and the source kinds present)."""
        return list(self._h5)

    def ids(self, split: str) -> list[str]:
        self._check_split(split)
        return [x.decode("utf-8") if isinstance(x, bytes) else x for x in self._h5[f"splits/{split}/ids"][()]]

    def labels(self, split: str) -> np.ndarray:
        self._check_split(split)
        return self._h5[f"splits/{split}/labels"][()].astype(np.int64)

    def num_rows(self, split: str) -> int:
        self._check_split(split)
        return int(self._h5[f"splits/{split}/labels"].shape[0])

    def _check_split(self, split: str) -> None:
        if split not in self._h5["splits"]:
            raise CacheError(f"{self.path}: no split '{split}' (has {', '.join(self.splits)})")


class Index(IndexMetadata):
    """The open index of one cache: metadata, splits, and the entry of each source."""

    def __init__(self, path: Path, h5: h5py.File) -> None:
        self.path = path
        self.h5 = h5  # always read-only: the index is replaced, never edited

    @property
    def _h5(self) -> h5py.File:
        """The open file, for the metadata readers of `IndexMetadata`."""
        return self.h5

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        expect_dataset: str | None = None,
        expect_label_names: Sequence[str] | None = None,
        expect_manifests: Mapping[str, str] | None = None,
    ) -> Index:
        index = cls(path, open_h5(path))
        try:
            index.validate(expect_dataset, expect_label_names, expect_manifests)
        except CacheError:
            index.close()
            raise
        except Exception as exc:  # unreadable attributes or groups: damage, not a bug of ours
            index.close()
            raise CacheError(f"{path}: corrupt cache file ({type(exc).__name__}: {str(exc)[:120]})") from None
        return index

    def validate(
        self,
        expect_dataset: str | None,
        expect_label_names: Sequence[str] | None,
        expect_manifests: Mapping[str, str] | None,
    ) -> None:
        attrs = self.h5.attrs
        if "schema_version" not in attrs or "label_names" not in attrs or "splits" not in self.h5:
            raise CacheError(f"{self.path}: not a vea-bench cache (no schema attributes)")
        if int(attrs["schema_version"]) != SCHEMA_VERSION:
            raise CacheError(
                f"{self.path}: cache schema {int(attrs['schema_version'])}, this vea-bench reads "
                f"schema {SCHEMA_VERSION}; re-extract"
            )
        if expect_dataset is not None and self.dataset != expect_dataset:
            raise CacheError(f"{self.path}: cache is of dataset '{self.dataset}', expected '{expect_dataset}'")
        if expect_label_names is not None and list(expect_label_names) != self.label_names:
            raise CacheError(
                f"{self.path}: cache label space ({', '.join(self.label_names)}) differs from "
                f"the expected ({', '.join(expect_label_names)})"
            )
        if expect_manifests is not None:
            have = self.manifest_hashes
            for split, h in expect_manifests.items():
                if split in have and have[split] != h:
                    raise CacheError(
                        f"{self.path}: split '{split}' manifest hash {have[split][:12]} differs from "
                        f"the dataset on disk ({h[:12]}); the images or labels changed, use a new cache"
                    )

    @property
    def is_open(self) -> bool:
        return bool(self.h5.id.valid)

    def close(self) -> None:
        if self.h5.id.valid:
            self.h5.close()

    # ----------------------------------------------------------------------------- entries
    def links(self) -> dict[str, str | None]:
        """Source name -> file its link points to (relative to the index), None when stored inline."""
        out: dict[str, str | None] = {}
        for kind in SOURCE_KINDS:
            if kind not in self.h5:
                continue
            grp = self.h5[kind]
            for key in grp:
                link = grp.get(key, getlink=True)
                out[f"{kind}/{key}"] = link.filename if isinstance(link, h5py.ExternalLink) else None
        return out

    def copy_into(self, h5: h5py.File) -> None:
        """Copy the attributes and splits (not the sources) into another open file."""
        for k, v in self.h5.attrs.items():
            h5.attrs[k] = v
        self.h5.copy("splits", h5)

    def links_builder(self, links: Mapping[str, str]) -> Callable[[h5py.File], None]:
        """Lays out an index with this one's metadata and exactly ``links`` as its sources."""

        def build(new: h5py.File) -> None:
            self.copy_into(new)
            for name in sorted(links):
                new[name] = h5py.ExternalLink(links[name], "/" + name)

        return build

    def replace(self, links: Mapping[str, str]) -> None:
        """Replace this index atomically by one whose sources are exactly ``links``; reopen it.

        The new image is built while the index is open; it is closed just before the rename.
        """
        image = build_image(self.links_builder(links))
        self.close()
        try:
            write_bytes(self.path, image, where=self.path, action="rewrite the cache index")
        finally:
            self.h5 = h5py.File(self.path, "r")
