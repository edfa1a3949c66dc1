"""Pieces every loader shares: label-space choice, the raise-or-skip policy, and index assembly."""
from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from vea_bench.datasets.base import SPLITS, DatasetIndex, Sample, Skipped
from vea_bench.datasets.images import file_problem
from vea_bench.datasets.splits import VAL_FROM_TRAIN, carve_val, describe_fractions, stratified_split
from vea_bench.errors import ConfigError, DatasetError
from vea_bench.labels import BINARY, LABEL_SPACES, MIKELS_POSITIVE, LabelSpace, get_label_space, normalise

log = logging.getLogger("vea_bench.datasets")

ON_ERROR = ("raise", "skip")

# Whether loaders may read images that resolve outside the dataset root; set by `load_dataset`.
_ALLOW_OUTSIDE_ROOT: ContextVar[bool] = ContextVar("vea_bench_allow_outside_root", default=False)
OUTSIDE_ROOT_OPTION = "--allow-outside-root"


@contextmanager
def outside_root(allow: bool) -> Iterator[None]:
    """Within the block, loaders confine image paths to their root unless ``allow``."""
    token = _ALLOW_OUTSIDE_ROOT.set(bool(allow))
    try:
        yield
    finally:
        _ALLOW_OUTSIDE_ROOT.reset(token)


class Confinement:
    """Tells whether a path, once ``..`` and symlinks are resolved, still lies under the root.

    Directories are resolved once each (cached) and a file costs one ``lstat`` unless it is itself
    a symlink, so confining 100k images stays cheap.
    """

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._dirs: dict[str, str] = {}

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self._prefix)

    def escape(self, path: str | Path) -> str | None:
        """The resolved target when ``path`` lies outside the root, else None."""
        p = os.fspath(path)
        head, tail = os.path.split(p)
        if tail in ("", ".", "..") or os.path.islink(p):
            real = os.path.realpath(p)
        else:
            real_dir = self._dirs.get(head)
            if real_dir is None:
                real_dir = self._dirs[head] = os.path.realpath(head or ".")
            real = os.path.join(real_dir, tail)
        return None if self._inside(real) else real


def absolute_root(root: str | Path) -> Path:
    """``root`` as an absolute path (``~`` expanded, symlinks kept), whatever form it was given in.

    Rows are joined to this path, never to a relative one: ``m/../elsewhere/x.jpg`` normalised
    lexically would become ``elsewhere/x.jpg`` and be read under the root again.
    """
    return Path(root).expanduser().absolute()


def require_root(name: str, root: str | Path) -> Path:
    """The dataset root as a Path, or a one-line error when it is not a readable folder."""
    p = absolute_root(root)
    if not p.exists():
        raise DatasetError(f"{name}: root {p} does not exist")
    if not p.is_dir():
        raise DatasetError(f"{name}: root {p} is not a folder")
    try:
        next(iter(p.iterdir()), None)
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read root {p} ({exc.strerror or exc})") from None
    return p


def resolve_space(name: str | None) -> LabelSpace | None:
    """A canonical space by name, ``custom:a,b,c`` for an ad-hoc one, or None (infer)."""
    if name is None:
        return None
    if name.startswith("custom:"):
        labels = tuple(normalise(x) for x in name[len("custom:"):].split(",") if x.strip())
        if not labels:
            raise ConfigError(f"label space '{name}' lists no labels")
        return LabelSpace("custom:" + ",".join(labels), labels)
    return get_label_space(name)


def infer_space(names: Iterable[str]) -> LabelSpace:
    """The canonical space that covers every name (fewest extra classes), else a custom one.

    A custom space holds the normalised names sorted alphabetically, so it is the same on every
    machine whatever order the folders were listed in.
    """
    distinct = sorted({normalise(n) for n in names})
    if not distinct:
        raise DatasetError("no class names found to infer a label space from")
    covering = [s for s in LABEL_SPACES.values() if all(s.lookup(n) is not None for n in distinct)]
    if covering:
        return min(covering, key=lambda s: s.num_classes)
    return LabelSpace("custom:" + ",".join(distinct), tuple(distinct))


def _mikels_binary() -> LabelSpace:
    """BINARY (equal to it) whose synonyms send Mikels' names and spellings to positive/negative."""
    from vea_bench.labels import _SYNONYMS, MIKELS8

    syn: dict[str, str] = {}
    for raw, canon in list(_SYNONYMS.items()) + [(m, m) for m in MIKELS8.labels]:
        if canon in MIKELS8.labels:
            syn[raw] = "positive" if canon in MIKELS_POSITIVE else "negative"
    return LabelSpace(BINARY.name, BINARY.labels, syn)


def mikels_space(label_space: str | None, binary: bool) -> LabelSpace:
    """Mikels' 8 for EmoSet and FI, or binary (positive = amusement, awe, contentment, excitement)."""
    from vea_bench.labels import MIKELS8

    if binary or label_space == "binary":
        return _mikels_binary()
    if label_space in (None, "mikels8"):
        return MIKELS8
    raise ConfigError(f"this dataset's labels are Mikels' 8; label space '{label_space}' is not supported (use mikels8 or binary)")


def fixed_space(own: LabelSpace, label_space: str | None) -> LabelSpace:
    if label_space not in (None, own.name):
        raise ConfigError(f"this dataset's label space is {own.name}; '{label_space}' is not supported")
    return own


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got '{on_error}'")


class Collector:
    """Gathers one load's samples and skips, applying the ``on_error`` policy in one place.

    ``raise`` (the default) turns the first unknown label or malformed row into a one-line error;
    ``skip`` records it in `DatasetIndex.skipped` and goes on. Zero-byte and missing files are
    always skipped with their reason: they are broken data, not a mistake in the layout.
    """

    def __init__(self, name: str, root: Path, space: LabelSpace, on_error: str = "raise") -> None:
        check_on_error(on_error)
        self.name = name
        self.root = absolute_root(root)
        self.space = space
        self.on_error = on_error
        self.allow_outside_root = _ALLOW_OUTSIDE_ROOT.get()
        self._confine = None if self.allow_outside_root else Confinement(root)
        self.skipped: list[Skipped] = []
        self.splits: dict[str, list[Sample]] = {}
        self._seen: dict[str, set[str]] = {}

    def rel(self, path: Path) -> str:
        """``path`` relative to the root, POSIX-style (the cache id); absolute if outside the root."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def skip(self, path: str, reason: str, kind: str) -> None:
        self.skipped.append(Skipped(path=path, reason=reason, kind=kind))

    def problem(self, path: str, reason: str, kind: str = "malformed") -> None:
        """A fault in the dataset's own files: raise by default, or record and go on."""
        if self.on_error == "raise":
            raise DatasetError(f"{self.name}: {path}: {reason}")
        self.skip(path, reason, kind)

    def label(self, raw: Any, where: str) -> int | None:
        """Canonical index of ``raw``; unknown -> `UnknownLabelError` naming ``where`` or a skip."""
        idx = self.space.lookup(str(raw))
        if idx is None:
            if self.on_error == "raise":
                self.space.index(str(raw), where=f"{self.name}: {where}")
            self.skip(where, f"unknown label '{raw}' for {self.space.name}", "unknown-label")
        return idx

    def folder_label(self, folder: Path, files: list[Path]) -> int | None:
        """Label of a class folder's images; for an unknown name every file in it is recorded as skipped."""
        lab = self.label(folder.name, self.rel(files[0]))
        if lab is None:
            # The first file was recorded by `label`; record the rest of the folder too.
            for f in files[1:]:
                self.skip(self.rel(f), f"unknown label '{folder.name}' for {self.space.name}", "unknown-label")
        return lab

    def inside(self, path: Path) -> bool:
        """True when ``path`` may be read: it resolves under the root, or outside reads are allowed."""
        return self._confine is None or self._confine.escape(path) is None

    def file_ok(self, rel: str, path: Path | None = None) -> bool:
        """False (and recorded) when the file is missing, zero bytes or outside the root.

        A path that resolves outside the root (``..``, an absolute path, a symlink escaping or
        dangling out of it) is skipped like an unreadable image, as ``outside-root``, and never
        read: one such row must not cost the rest of the dataset. It is read only when
        `load_dataset` was given ``allow_outside_root=True``; ``strict=True`` refuses it.
        """
        full = path if path is not None else self.root / rel
        if self._confine is not None:
            target = self._confine.escape(full)
            if target is not None:
                what = "dangling symlink" if os.path.islink(full) and not os.path.exists(full) else "path"
                self.skip(rel, f"{what} resolves outside the dataset root (to {target}); "
                               f"{OUTSIDE_ROOT_OPTION} reads it", "outside-root")
                return False
        problem = file_problem(full)
        if problem is None:
            return True
        kind, reason = problem
        if kind == "missing" and os.path.islink(full):
            reason = f"dangling symlink (its target {os.readlink(full)} does not exist)"
        self.skip(rel, reason, kind)
        return False

    def add(self, split: str, rel: str, label: int, meta: dict[str, Any] | None = None) -> None:
        """Add one sample; a repeated path within a split is recorded as a duplicate row."""
        seen = self._seen.setdefault(split, set())
        if rel in seen:
            self.skip(rel, f"listed twice in {split}", "duplicate")
            return
        seen.add(rel)
        self.splits.setdefault(split, []).append(Sample(rel, label, meta or {}))

    def build(
        self,
        *,
        split_rule: str,
        split_seed: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> DatasetIndex:
        """The index, splits in train/val/test order, each sorted by relative path."""
        ordered = {s: sorted(self.splits.get(s, []), key=lambda x: x.path) for s in SPLITS if s in self.splits}
        for s in self.splits:
            if s not in ordered:
                ordered[s] = sorted(self.splits[s], key=lambda x: x.path)
        if not any(ordered.values()):
            raise DatasetError(f"{self.name}: no usable images found under {self.root}")
        for sk in self.skipped:
            log.debug("%s: skipped %s (%s)", self.name, sk.path, sk.reason)
        meta = dict(meta or {})
        if self.allow_outside_root:
            meta["outside_root_allowed"] = True
        return DatasetIndex(
            name=self.name,
            root=self.root,
            label_space=self.space,
            splits=ordered,
            skipped=list(self.skipped),
            split_seed=split_seed,
            split_rule=split_rule,
            meta=dict(meta or {}),
        )


def split_pool(
    col: Collector,
    pool: list[tuple[str, int, dict[str, Any]]],
    *,
    fractions: Mapping[str, float],
    seed: int,
    strata: Sequence[Hashable] | None = None,
) -> str:
    """Stratified-split ``pool`` (rel path, label, meta) into the collector; returns the rule text.

    ``strata`` (default: the labels) lets a binary view of a Mikels dataset keep the exact split of
    its 8-class view by stratifying on the fine emotion.
    """
    keys = list(strata) if strata is not None else [p[1] for p in pool]
    parts = stratified_split(pool, keys, fractions=fractions, seed=seed, key=lambda p: p[0])
    for split, members in parts.items():
        col.splits.setdefault(split, [])
        for rel, lab, meta in members:
            col.add(split, rel, lab, meta)
    return f"stratified {describe_fractions(fractions)} (train/val/test), seed {seed}"


def carve_missing_val(col: Collector, seed: int) -> bool:
    """When a layout has no val, move a stratified 10 % of train into val (SPEC). True if done."""
    if col.splits.get("val") or "train" not in col.splits:
        return False
    train = col.splits["train"]
    keep, val = carve_val(train, [s.label for s in train], fraction=VAL_FROM_TRAIN, seed=seed, key=lambda s: s.path)
    col.splits["train"] = keep
    col.splits["val"] = val
    return True
