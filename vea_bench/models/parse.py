"""Turn a VLM's free-text answer into a class index of the label space, and say how sure we are.

The paper asks for ``{'emotion':'<label>'}``; real models answer with that, with JSON, inside code
fences, after a sentence of prose, with a capitalised or inflected word ('Sad.', 'happy'), with
two labels, or with nothing usable. The reference implementation applied one regex and a Python
literal parse and counted everything else as 'none' (an all-zero one-hot). We keep that rule for
what cannot be read, but read more: the dictionary first (literal, JSON or a lenient key/value
match, also when truncated), then a bare label word in the text. The status says which path
succeeded so that tables can report how often the fallback was needed.
"""
from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vea_bench.labels import LabelSpace, normalise

# Status values, in the order tables list them.
OK = "ok"                    # a dictionary / JSON answer naming one label of the space
OK_FALLBACK = "ok-fallback"  # no readable dictionary, but exactly one label word in the text
AMBIGUOUS = "ambiguous"      # two or more different labels named: not counted (all-zero one-hot)
OUT_OF_SPACE = "out-of-space"  # a readable answer naming something outside the label space
UNPARSED = "unparsed"        # nothing that names a label
EMPTY = "empty"              # an empty or whitespace-only answer
PARSE_STATUSES: tuple[str, ...] = (OK, OK_FALLBACK, AMBIGUOUS, OUT_OF_SPACE, UNPARSED, EMPTY)

# Keys a model may use for the answer, in preference order when a dict has several.
_ANSWER_KEYS = ("emotion", "emotions", "label", "category", "sentiment", "answer", "class", "prediction")

_FENCE = re.compile(r"```[a-zA-Z]*")
_BRACED = re.compile(r"\{[^{}]*\}?", re.S)
# A lenient key/value match that survives broken quoting and a missing closing brace.
_KEY_VALUE = re.compile(
    r"""["'\u2018\u2019\u201c\u201d]?\s*([A-Za-z _-]{2,40}?)\s*["'\u2018\u2019\u201c\u201d]?\s*[:=]\s*"""
    r"""(\[[^\]]*\]?|["'\u2018\u2019\u201c\u201d][^"'\u2018\u2019\u201c\u201d}\n]*["'\u2018\u2019\u201c\u201d]?|[A-Za-z][A-Za-z _-]*)"""
)
_SMART = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_SPLIT_MULTI = re.compile(r"\s*(?:,|/|;|\||\+|&|\band\b|\bor\b)\s*", re.I)
_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")


@dataclass(frozen=True)
class ParseResult:
    """The parsed class index (None when not counted) and how it was obtained."""

    label: int | None
    status: str

    @property
    def parsed(self) -> bool:
        return self.label is not None


def _lookup(space: LabelSpace, raw: str) -> int | None:
    """Index of one answer value after trimming quotes, punctuation and a leading article."""
    v = str(raw).strip().strip("\"'`").strip()
    v = re.sub(r"^[^\w]+|[^\w]+$", "", v)
    v = re.sub(r"^(?:the|a|an)\s+", "", v, flags=re.I)
    if not v:
        return None
    return space.lookup(v)


def _value_labels(space: LabelSpace, value: object) -> tuple[set[int], bool]:
    """Labels named by a dict value (a string, possibly 'a, b', or a list); and whether it said anything."""
    if isinstance(value, (list, tuple, set)):
        found: set[int] = set()
        said = False
        for v in value:
            got, s = _value_labels(space, v)
            found |= got
            said |= s
        return found, said
    text = str(value).strip()
    if not text:
        return set(), False
    idx = _lookup(space, text)
    if idx is not None:
        return {idx}, True
    parts = [p for p in _SPLIT_MULTI.split(text) if p.strip()]
    if len(parts) > 1:
        found = {i for i in (_lookup(space, p) for p in parts) if i is not None}
        if found:
            return found, True
    # 'a feeling of awe': one label word inside the value still names it.
    return _word_labels(space, text), True


def _choose_value(d: dict[object, object]) -> object | None:
    """The answer value of a parsed dict: the single value, or the one under a known answer key."""
    if not d:
        return None
    norm = {normalise(str(k)): v for k, v in d.items()}
    for key in _ANSWER_KEYS:
        for k, v in norm.items():
            if k == key or k.startswith(key) or k.endswith(key):
                return v
    if len(d) == 1:
        return next(iter(d.values()))
    return None


def _literal(block: str) -> dict[object, object] | None:
    """A dict from a braced block: Python literal, then JSON, then with smart quotes straightened."""
    for candidate in (block, block.translate(_SMART)):
        for parse in (ast.literal_eval, json.loads):
            try:
                obj = parse(candidate)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(obj, dict):
                return obj
    return None


def _dict_answers(space: LabelSpace, text: str) -> tuple[list[set[int]], bool]:
    """Label sets named by every dictionary-shaped answer in the text, and whether one was seen."""
    answers: list[set[int]] = []
    seen = False
    for m in _BRACED.finditer(text):
        block = m.group(0)
        d = _literal(block if block.endswith("}") else block + "}")
        if d is not None:
            value = _choose_value(d)
            if value is not None:
                seen = True
                answers.append(_value_labels(space, value)[0])
                continue
        # Lenient: broken quotes, '=' instead of ':', a value without quotes, a truncated dict.
        pairs = {k: v for k, v in _KEY_VALUE.findall(block)}
        value = _choose_value({k: v.strip("[]") for k, v in pairs.items()}) if pairs else None
        if value is not None:
            seen = True
            answers.append(_value_labels(space, value)[0])
    return answers, seen


def _word_labels(space: LabelSpace, text: str) -> set[int]:
    """Every label named by a word or short phrase of the text (alphabetic words only)."""
    words = _WORD.findall(text)
    found: set[int] = set()
    max_n = max((len(lab.split()) for lab in space.labels), default=1)
    for n in range(1, max_n + 1):
        for i in range(len(words) - n + 1):
            idx = space.lookup(" ".join(words[i : i + n]))
            if idx is not None:
                found.add(idx)
    return found


def parse_answer(text: str | None, space: LabelSpace) -> ParseResult:
    """Read one answer. Dictionary answers win over words in surrounding prose; two labels are ambiguous."""
    if text is None or not str(text).strip():
        return ParseResult(None, EMPTY)
    clean = _FENCE.sub(" ", str(text)).replace("```", " ")
    answers, seen = _dict_answers(space, clean)
    if seen:
        named = set().union(*answers) if answers else set()
        if len(named) == 1:
            return ParseResult(next(iter(named)), OK)
        if len(named) > 1:
            return ParseResult(None, AMBIGUOUS)
        # A dict naming no label of the space; a label word elsewhere must not rescue it
        # (the model answered, just not with one of our classes).
        return ParseResult(None, OUT_OF_SPACE)
    named = _word_labels(space, clean)
    if len(named) == 1:
        return ParseResult(next(iter(named)), OK_FALLBACK)
    if len(named) > 1:
        return ParseResult(None, AMBIGUOUS)
    return ParseResult(None, UNPARSED)


def parse_answers(texts: Iterable[str | None], space: LabelSpace) -> list[ParseResult]:
    return [parse_answer(t, space) for t in texts]


def onehot(results: Sequence[ParseResult], num_classes: int) -> np.ndarray:
    """N x C uint8 one-hot; an uncounted answer is an all-zero row (the paper's 'none')."""
    out = np.zeros((len(results), num_classes), dtype=np.uint8)
    for i, r in enumerate(results):
        if r.label is not None:
            out[i, r.label] = 1
    return out
