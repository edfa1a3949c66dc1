"""Emotion instruction data (stage 1): read generated responses, validate them, build three instruction kinds.

Input is the reference format (a JSON list of ``{"img_path", "img", "label", "gpt_response"}``
entries, as the reference implementation's generator writes) or vea-bench's JSONL (one
``{"image", "label", "response"}`` object per line, as `vea-bench instruct generate` writes).
Each response holds a "key elements" section and a "reasoning" section; headings are accepted in
the spellings generators actually produce ("1. Key elements", "**Key Elements:**",
"### Reasoning", "Reasoning:").

Per training image three instructions come out (paper section 3.2): categorical (the label
space's question -> the dictionary answer), conversation (describe key elements -> the
key-elements text) and reasoning (infer the emotion -> the reasoning text). Every problem is a
one-line error naming the entry's index and image, never a KeyError deep inside training.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vea_bench.errors import DatasetError, UnknownLabelError
from vea_bench.labels import LabelSpace
from vea_bench.prompts import (
    CONVERSATION_INSTRUCTION,
    REASONING_INSTRUCTION,
    categorical_answer,
    categorical_instruction,
)

if TYPE_CHECKING:
    from vea_bench.datasets.base import DatasetIndex

log = logging.getLogger(__name__)

INSTRUCTION_KINDS = ("categorical", "conversation", "reasoning")

# Field spellings accepted for each role (first present wins).
IMAGE_FIELDS = ("image", "img_path", "image_path", "path", "file")
LABEL_FIELDS = ("label", "emotion", "gt")
RESPONSE_FIELDS = ("response", "gpt_response", "answer", "output", "text")


class InstructionError(DatasetError):
    """An instruction file or entry is malformed (missing field, bad section, unknown label, missing image)."""


# A heading line: optional markdown (#, **, numbering), the section name, optional colon / bold close.
# It either ends its line or has a colon with the body following inline ("Key elements: The dog ...");
# a body line merely starting with "Reasoning ..." is not a heading.
_HEAD = (
    r"(?:^|\n)[ \t]*(?:#{{1,6}}[ \t]*)?(?:\*\*|__)?[ \t]*(?:\d+[.)][ \t]*)?(?:\*\*|__)?[ \t]*{name}"
    r"[ \t]*(?:\*\*|__)?[ \t]*(?::[ \t]*(?:\*\*|__)?|[.\-]?[ \t]*(?:\*\*|__)?[ \t]*(?=\r?\n|$))"
)
_KEY_HEAD = re.compile(_HEAD.format(name=r"key[ \t_-]*elements?"), re.IGNORECASE)
_REASON_HEAD = re.compile(_HEAD.format(name=r"reasoning(?:[ \t]+process)?"), re.IGNORECASE)


def parse_sections(text: str) -> tuple[str, str]:
    """Split a generated response into (key elements, reasoning); ValueError says what is missing.

    Each section runs from its heading to the other section's heading (or the end); text before
    the first heading is ignored. Sections must be non-empty and in either order.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty response")
    key = _KEY_HEAD.search(text)
    reason = _REASON_HEAD.search(text, key.end() if key else 0) or _REASON_HEAD.search(text)
    missing = [n for n, m in (("key elements", key), ("reasoning", reason)) if m is None]
    if missing:
        raise ValueError(f"no {' and no '.join(repr(m) for m in missing)} section heading")
    assert key is not None and reason is not None
    if key.start() < reason.start():
        key_text, reason_text = text[key.end():reason.start()], text[reason.end():]
    else:
        reason_text, key_text = text[reason.end():key.start()], text[key.end():]
    key_text, reason_text = _clean(key_text), _clean(reason_text)
    for name, body in (("key elements", key_text), ("reasoning", reason_text)):
        if len(body.split()) < 3:
            raise ValueError(f"the {name} section is empty or too short ({body!r})")
    return key_text, reason_text


def _clean(body: str) -> str:
    """Trim whitespace, stray markdown rules and bold markers around a section body."""
    body = body.strip()
    body = re.sub(r"^(?:\*\*|__)+|(?:\*\*|__)+$", "", body).strip()
    body = re.sub(r"\n[ \t]*(?:-{3,}|\*{3,}|={2,})[ \t]*$", "", body).strip()
    return body


@dataclass(frozen=True)
class ResponseEntry:
    """One validated generated response: image (relative to the dataset root when known) and label."""

    image: str
    label: str              # canonical label name
    key_elements: str
    reasoning: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Instruction:
    """One (image, question, answer) triplet of one instruction kind."""

    image: str
    kind: str
    question: str
    answer: str
    label: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Entries of a JSON list file or a JSONL file (one object per line; a torn last line is skipped).

    The format is told apart by content, not by the extension.
    """
    path = Path(path)
    if not path.is_file():
        raise InstructionError(f"instruction file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        raise InstructionError(f"{path}: empty instruction file")
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InstructionError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        rows = data
    else:
        rows = []
        lines = text.splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if n == len(lines) and not text.endswith("\n"):
                    log.warning("%s: skipping a torn last line (an interrupted write)", path)
                    continue
                raise InstructionError(f"{path}: line {n} is not valid JSON ({exc.msg})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InstructionError(f"{path}: entry {i} is not a JSON object")
    return rows


def _first(row: dict[str, Any], names: Sequence[str]) -> tuple[str | None, Any]:
    for n in names:
        if n in row and row[n] not in (None, ""):
            return n, row[n]
    return None, None


class _ImageResolver:
    """Maps an entry's image path to a dataset-relative path (reference files carry foreign prefixes)."""

    def __init__(self, root: Path | None, index: DatasetIndex | None) -> None:
        self.root = root
        self.index = index
        self.split_of: dict[str, str] = {}
        self.label_of: dict[str, int] = {}
        self.by_tail: dict[tuple[str, ...], list[str]] = {}
        if index is not None:
            for split, samples in index.splits.items():
                for s in samples:
                    self.split_of[s.path] = split
                    self.label_of[s.path] = s.label
                    parts = tuple(Path(s.path).parts)
                    for k in (1, 2, 3):
                        if len(parts) >= k:
                            self.by_tail.setdefault(parts[-k:], []).append(s.path)

    def resolve(self, raw: str) -> tuple[str, Path | None]:
        """(key, absolute path or None if not found). Key is dataset-relative when the index knows it."""
        p = Path(raw)
        if self.index is not None:
            root = self.index.root
            if not p.is_absolute() and raw in self.split_of:
                return raw, root / raw
            if p.is_absolute():
                try:
                    rel = p.resolve().relative_to(root.resolve()).as_posix()
                    if rel in self.split_of:
                        return rel, root / rel
                except ValueError:
                    pass
            parts = tuple(p.parts)
            for k in (3, 2, 1):
                hits = self.by_tail.get(parts[-k:]) if len(parts) >= k else None
                if hits and len(hits) == 1:
                    return hits[0], root / hits[0]
        candidates = [p] if p.is_absolute() else ([self.root / p] if self.root else []) + [p]
        for c in candidates:
            if c.is_file():
                return raw, c
        return raw, None


def load_responses(
    path: str | Path,
    label_space: LabelSpace,
    *,
    root: str | Path | None = None,
    index: DatasetIndex | None = None,
    check_images: bool = True,
) -> list[ResponseEntry]:
    """Read and validate a response file; every bad entry is a one-line `InstructionError` naming it.

    With ``index`` (the dataset loaded by the dataset layer) images are matched to the dataset's
    own relative paths, labels must agree with the dataset's, and images of the val / test splits
    are dropped with a warning (training on them would leak evaluation data).
    """
    path = Path(path)
    rows = read_records(path)
    resolver = _ImageResolver(Path(root) if root else (index.root if index else None), index)
    out: list[ResponseEntry] = []
    leaked: dict[str, int] = {}
    seen: set[str] = set()
    for i, row in enumerate(rows):
        _, raw_img = _first(row, IMAGE_FIELDS)
        where = f"{path.name} entry {i}" + (f" ({raw_img})" if raw_img else "")
        if raw_img is None or not isinstance(raw_img, str):
            raise InstructionError(f"{where}: no image path (expected one of: {', '.join(IMAGE_FIELDS)})")
        _, raw_label = _first(row, LABEL_FIELDS)
        if raw_label is None:
            raise InstructionError(f"{where}: no label (expected one of: {', '.join(LABEL_FIELDS)})")
        try:
            label_idx = label_space.index(str(raw_label), where=where)
        except UnknownLabelError as exc:
            raise InstructionError(str(exc)) from None
        if isinstance(row.get("key_elements"), str) and isinstance(row.get("reasoning"), str):
            key_text, reason_text = row["key_elements"].strip(), row["reasoning"].strip()
            if not key_text or not reason_text:
                raise InstructionError(f"{where}: empty key_elements or reasoning")
        else:
            resp_key, response = _first(row, RESPONSE_FIELDS)
            if response is None:
                raise InstructionError(
                    f"{where}: no response text (expected one of: {', '.join(RESPONSE_FIELDS)}, "
                    f"or key_elements + reasoning)"
                )
            try:
                key_text, reason_text = parse_sections(str(response))
            except ValueError as exc:
                raise InstructionError(f"{where}: response field '{resp_key}': {exc}") from None
        key, abspath = resolver.resolve(raw_img)
        if check_images and abspath is None:
            raise InstructionError(f"{where}: image not found (looked under {resolver.root or 'the current folder'})")
        if index is not None and key in resolver.split_of:
            split = resolver.split_of[key]
            if split != "train":
                leaked[split] = leaked.get(split, 0) + 1
                continue
            ds_label = resolver.label_of[key]
            if ds_label != label_idx:
                raise InstructionError(
                    f"{where}: label '{label_space.labels[label_idx]}' disagrees with the dataset's "
                    f"'{index.label_space.labels[ds_label]}' for this image"
                )
        if key in seen:
            log.warning("%s: duplicate entry for %s; keeping the first", where, key)
            continue
        seen.add(key)
        meta = {"source": str(path), "entry": i}
        if abspath is not None:
            meta["abspath"] = str(abspath)
        out.append(ResponseEntry(key, label_space.labels[label_idx], key_text, reason_text, meta))
    for split, n in leaked.items():
        log.warning("%s: %d entries are %s-split images; left out of training (they would leak evaluation data)",
                    path.name, n, split)
    if not out:
        raise InstructionError(f"{path}: no usable training entries")
    return out


def build_instructions(
    entries: Iterable[ResponseEntry],
    label_space: LabelSpace,
    kinds: Sequence[str] = INSTRUCTION_KINDS,
) -> list[Instruction]:
    """The paper's instruction kinds for every entry, in entry order (kind order within an entry)."""
    unknown = [k for k in kinds if k not in INSTRUCTION_KINDS]
    if unknown:
        raise InstructionError(f"unknown instruction kind(s) {', '.join(unknown)} (choices: {', '.join(INSTRUCTION_KINDS)})")
    question = categorical_instruction(label_space)
    out: list[Instruction] = []
    for e in entries:
        for kind in kinds:
            if kind == "categorical":
                out.append(Instruction(e.image, kind, question, categorical_answer(e.label), e.label))
            elif kind == "conversation":
                out.append(Instruction(e.image, kind, CONVERSATION_INSTRUCTION, e.key_elements, e.label))
            else:
                out.append(Instruction(e.image, kind, REASONING_INSTRUCTION, e.reasoning, e.label))
    return out


def load_instructions(
    path: str | Path,
    label_space: LabelSpace,
    *,
    root: str | Path | None = None,
    index: DatasetIndex | None = None,
    kinds: Sequence[str] = INSTRUCTION_KINDS,
    check_images: bool = True,
) -> list[Instruction]:
    """Instructions from either a response file (built here) or an already-built triplet file.

    A triplet file (what `vea-bench instruct build` writes: ``image, kind, question, answer,
    label`` per line) is taken as is after validation, so custom instructions can be trained too.
    """
    rows = read_records(path)
    if rows and all({"kind", "question", "answer"} <= set(r) for r in rows):
        return _validate_triplets(Path(path), rows, label_space, root=root, index=index, check_images=check_images)
    entries = load_responses(path, label_space, root=root, index=index, check_images=check_images)
    return build_instructions(entries, label_space, kinds)


def _validate_triplets(
    path: Path,
    rows: list[dict[str, Any]],
    label_space: LabelSpace,
    *,
    root: str | Path | None,
    index: DatasetIndex | None,
    check_images: bool,
) -> list[Instruction]:
    resolver = _ImageResolver(Path(root) if root else (index.root if index else None), index)
    out = []
    for i, row in enumerate(rows):
        raw_img = row.get("image")
        where = f"{path.name} entry {i}" + (f" ({raw_img})" if raw_img else "")
        for f in ("image", "kind", "question", "answer", "label"):
            if not isinstance(row.get(f), str) or not row[f].strip():
                raise InstructionError(f"{where}: field '{f}' missing or empty")
        if row["kind"] not in INSTRUCTION_KINDS:
            raise InstructionError(f"{where}: unknown kind '{row['kind']}' (choices: {', '.join(INSTRUCTION_KINDS)})")
        try:
            lab = label_space.labels[label_space.index(row["label"], where=where)]
        except UnknownLabelError as exc:
            raise InstructionError(str(exc)) from None
        key, abspath = resolver.resolve(row["image"])
        if check_images and abspath is None:
            raise InstructionError(f"{where}: image not found (looked under {resolver.root or 'the current folder'})")
        if index is not None and resolver.split_of.get(key, "train") != "train":
            raise InstructionError(f"{where}: image is in the {resolver.split_of[key]} split; training on it would leak evaluation data")
        out.append(Instruction(key, row["kind"], row["question"], row["answer"], lab))
    return out


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL (UTF-8, one object per line) atomically; returns the count."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n
