"""Turn a VLM's free-text answer into a class index of the label space, and say how it was read.

The paper asks for ``{'emotion':'<label>'}``. Two parse modes:

``strict`` (the default, the reference implementation's rule): the first ``{'emotion': '...'}``
in the answer (what the reference's regex ``{'emotion':\\s*'.*?'}`` finds), read by a Python
literal parse; its value must be a label of the space (case and spacing folded, no synonyms).
Anything else counts as 'none' (an all-zero one-hot). Table 1's zero-shot rows depend on this
rule: a parser that guesses more answers changes them.

``lenient`` (``extract --parse lenient``, recorded in the VLM source's provenance): the first
`MAX_BLOCKS` braced dictionaries (Python literal, JSON, smart quotes, broken quoting, a missing
closing brace, ``=`` for ``:``) under a known answer key, values mapped through synonyms; when
there is none, label words in prose. Two dictionaries naming different labels are ambiguous.
Prose is read conservatively: canonical label names and unambiguous emotion words only (not
'content', 'wonder', 'fun'...), and a word under a negation ('not sad', "isn't scary", 'no
fear': up to `_NEGATION_WINDOW` words before it, within its clause) is not counted. Two different
labels are ambiguous and not counted.

Both modes run in time linear in the answer: answers are cut at `MAX_ANSWER_CHARS`, the scanners
are hand-written loops or regexes without nested quantifiers, and dictionary blocks handed to the
literal parser are bounded (`MAX_BLOCK_CHARS`). The status says which path succeeded, so tables
can report how often the fallback was needed.
"""
from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vea_bench.errors import ConfigError
from vea_bench.labels import LabelSpace, normalise

# Status values, in the order tables list them.
OK = "ok"                    # a dictionary answer naming one label of the space
OK_FALLBACK = "ok-fallback"  # lenient only: no readable dictionary, exactly one label word in the prose
AMBIGUOUS = "ambiguous"      # lenient only: two or more different labels named, not counted
OUT_OF_SPACE = "out-of-space"  # a readable dictionary naming something outside the label space
UNPARSED = "unparsed"        # nothing that names a label
EMPTY = "empty"              # an empty or whitespace-only answer
PARSE_STATUSES: tuple[str, ...] = (OK, OK_FALLBACK, AMBIGUOUS, OUT_OF_SPACE, UNPARSED, EMPTY)

STRICT = "strict"
LENIENT = "lenient"
PARSE_MODES: tuple[str, ...] = (STRICT, LENIENT)
DEFAULT_PARSE_MODE = STRICT

# Answers are read up to this many characters (the reference generated at most 256 tokens, far
# shorter); a longer answer is cut, so a runaway generation costs bounded time.
MAX_ANSWER_CHARS = 8192
# A braced block longer than this is not handed to the literal / JSON parser (a real answer
# dictionary is a few dozen characters), and only the first MAX_BLOCKS blocks are read.
MAX_BLOCK_CHARS = 512
MAX_BLOCKS = 16
_MAX_PAIRS = 32  # key/value pairs read from one broken dictionary

_STRICT_OPEN = "{'emotion':"
_STRICT_CLOSE = "'}"

# Keys a model may use for the answer, in preference order when a dict has several.
_ANSWER_KEYS = ("emotion", "emotions", "label", "category", "sentiment", "answer", "class", "prediction")
_SMART = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_QUOTES = "\"'`\u2018\u2019\u201c\u201d"
# Tokens of prose: words (with inner apostrophes or hyphens) and the punctuation that ends a
# negation's scope. No nested quantifiers: each character is consumed once.
_TOKEN = re.compile(r"[A-Za-z]+(?:['\u2019-][A-Za-z]+)*|[.,;:!?()\[\]{}\n]")
_SCOPE_BREAK = frozenset(".,;:!?()[]{}\n") | {"but", "however", "although", "though", "yet", "while", "whereas"}
_NEGATORS = frozenset({
    "not", "no", "never", "nor", "neither", "without", "none", "nothing", "hardly", "barely", "lack",
    "lacks", "lacking", "absence", "free", "cannot",
})
_NEGATION_WINDOW = 6  # a negator up to this many words before a label word, in its clause, negates it
# Synonyms that are ordinary words in prose ('the content of', 'I wonder', 'have fun'); in a
# dictionary value they still map (a model answering {'emotion': 'content'} means contentment).
_PROSE_AMBIGUOUS = frozenset({"content", "wonder", "fun", "awesome", "mad", "pos", "neg", "1", "0"})
_MULTI_SEPARATORS = frozenset(",/;|+&")


@dataclass(frozen=True)
class ParseResult:
    """The parsed class index (None when not counted) and how it was obtained."""

    label: int | None
    status: str

    @property
    def parsed(self) -> bool:
        return self.label is not None


def check_mode(mode: str) -> str:
    """``mode`` if it is a parse mode, else a one-line `ConfigError` listing them."""
    if mode not in PARSE_MODES:
        raise ConfigError(f"unknown parse mode '{mode}' (choices: {', '.join(PARSE_MODES)})")
    return mode


# ----------------------------------------------------------------------------------- strict

def _strict_blocks(text: str) -> Iterable[str]:
    """Each substring the reference regex ``{'emotion':\\s*'.*?'}`` could match, left to right.

    For a start at ``{'emotion':``, whitespace, then a quote, the match runs to the first ``'}``
    after it, which must lie on the same line (``.`` stops at a newline). The next ``'}`` and the
    next newline only move forward, so they are looked up once each: linear in the text.
    """
    n = len(text)
    close = -2  # cached position of the next "'}" at or after the current value start
    newline = -2
    pos = text.find(_STRICT_OPEN)
    while pos != -1:
        j = pos + len(_STRICT_OPEN)
        while j < n and text[j].isspace():
            j += 1
        if j < n and text[j] == "'":
            start = j + 1
            if close < start and close != -1:
                close = text.find(_STRICT_CLOSE, start)
            if newline < start and newline != -1:
                newline = text.find("\n", start)
            if close == -1:
                return  # no closing "'}" anywhere after: nothing further can match
            if newline == -1 or close < newline:
                yield text[pos : close + 2]
        pos = text.find(_STRICT_OPEN, pos + 1)


def _strict(text: str, space: LabelSpace) -> ParseResult:
    """The reference's rule: the regex's (first) match, literal-parsed, its value a label name."""
    block = next(iter(_strict_blocks(text)), None)
    if block is None:
        return ParseResult(None, UNPARSED)
    try:
        obj = ast.literal_eval(block)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return ParseResult(None, UNPARSED)  # the reference's literal parse fails: 'none'
    if not isinstance(obj, dict) or not isinstance(obj.get("emotion"), str):
        return ParseResult(None, UNPARSED)
    key = normalise(obj["emotion"])
    if key in space.labels:
        return ParseResult(space.labels.index(key), OK)
    return ParseResult(None, OUT_OF_SPACE)


# ---------------------------------------------------------------------------------- lenient

def _trim(value: str) -> str:
    """``value`` without surrounding quotes, punctuation or a leading article (no regex)."""
    v = value.strip()
    i, j = 0, len(v)
    while i < j and not v[i].isalnum():
        i += 1
    while j > i and not v[j - 1].isalnum():
        j -= 1
    v = v[i:j]
    low = v.lower()
    for art in ("the ", "a ", "an "):
        if low.startswith(art):
            return v[len(art):].strip()
    return v


def _lookup(space: LabelSpace, raw: str) -> int | None:
    v = _trim(str(raw))
    return space.lookup(v) if v else None


def _split_multi(text: str) -> list[str]:
    """'a, b', 'a or b', 'a and b', 'a/b' -> parts (a linear scan over words and separators)."""
    parts: list[str] = []
    cur: list[str] = []
    for tok in re.split(r"(\s+|[,/;|+&])", text):
        t = tok.strip()
        if t in _MULTI_SEPARATORS or t.lower() in ("and", "or"):
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(tok)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_TABLES: dict[int, tuple[LabelSpace, dict[str, int]]] = {}


def _table(space: LabelSpace) -> dict[str, int]:
    """Normalised spelling -> index for every label and synonym of ``space`` (what `lookup` reads)."""
    hit = _TABLES.get(id(space))
    if hit is not None and hit[0] is space:
        return hit[1]
    from vea_bench.labels import _SYNONYMS

    table = {k: space.labels.index(v) for k, v in _SYNONYMS.items() if v in space.labels}
    for k, v in space.synonyms.items():
        if v in space.labels:
            table[k] = space.labels.index(v)
        else:
            table.pop(k, None)
    table.update({lab: i for i, lab in enumerate(space.labels)})
    _TABLES[id(space)] = (space, table)  # holding the space keeps its id from being reused
    return table


def _word_labels(space: LabelSpace, text: str, *, prose: bool) -> set[int]:
    """Labels named by words or short phrases of ``text``; negated ones are dropped.

    ``prose`` also drops synonyms that are ordinary words (`_PROSE_AMBIGUOUS`).
    """
    table = _table(space)
    words = [t.lower().replace("\u2019", "'").replace("-", " ") for t in _TOKEN.findall(text)]
    max_n = max((len(lab.split()) for lab in space.labels), default=1)
    found: set[int] = set()
    last_negator = -10**9  # token index of the most recent negator in the current scope
    for i, low in enumerate(words):
        if low in _SCOPE_BREAK:
            last_negator = -10**9
            continue
        if low in _NEGATORS or low.endswith("n't"):
            last_negator = i
            continue
        negated = i - last_negator <= _NEGATION_WINDOW
        idx = None if prose and low in _PROSE_AMBIGUOUS else table.get(low)
        if idx is not None and not negated:
            found.add(idx)
        for n in range(2, max_n + 1):  # multi-word labels (custom spaces)
            phrase = words[i : i + n]
            if len(phrase) < n or any(p in _SCOPE_BREAK for p in phrase):
                break
            idx = table.get(" ".join(phrase))
            if idx is not None and not negated:
                found.add(idx)
    return found


def _value_labels(space: LabelSpace, value: object) -> set[int]:
    """Labels named by a dict value: a string (possibly 'a, b' or 'a sense of awe') or a list."""
    if isinstance(value, (list, tuple, set)):
        out: set[int] = set()
        for v in list(value)[:64]:
            out |= _value_labels(space, v)
        return out
    text = str(value)[:MAX_BLOCK_CHARS].strip()
    if not text:
        return set()
    idx = _lookup(space, text)
    if idx is not None:
        return {idx}
    parts = _split_multi(text)
    if len(parts) > 1:
        found = {i for i in (_lookup(space, p) for p in parts) if i is not None}
        if found:
            return found
    return _word_labels(space, text, prose=False)


def _choose_value(d: dict[object, object]) -> object | None:
    """The answer value of a parsed dict: the one under a known answer key, or the single value."""
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
    """A dict from a bounded braced block: Python literal, then JSON, with smart quotes straightened too."""
    if len(block) > MAX_BLOCK_CHARS:
        return None
    for candidate in (block, block.translate(_SMART)):
        for parse in (ast.literal_eval, json.loads):
            try:
                obj = parse(candidate)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(obj, dict):
                return obj
    return None


def _braced_blocks(text: str) -> list[str]:
    """Each ``{...}`` without nested braces (or ``{...`` to the end: a truncated answer), left to right."""
    out: list[str] = []
    i = text.find("{")
    while i != -1:
        j = i + 1
        n = len(text)
        while j < n and text[j] not in "{}":
            j += 1
        if j < n and text[j] == "}":
            out.append(text[i : j + 1])
            i = text.find("{", j + 1)
        elif j < n:  # another '{' before any '}': this one is unclosed, start again there
            out.append(text[i:j])
            i = j
        else:
            out.append(text[i:])
            break
    return out


def _key_values(block: str) -> dict[str, str]:
    """Broken dictionaries (bad quoting, ``=``, no closing brace): ``key: value`` pairs by scanning."""
    inner = block.strip()[1:].rstrip("}")
    pairs: dict[str, str] = {}
    for item in inner.split(",", _MAX_PAIRS)[:_MAX_PAIRS]:  # an answer dict has a few keys
        colon, equals = item.find(":"), item.find("=")
        sep = colon if equals == -1 or (colon != -1 and colon < equals) else equals
        if sep <= 0:
            continue
        key = item[:sep].strip().strip(_QUOTES).strip()
        value = item[sep + 1 :].strip().strip("[]").strip().strip(_QUOTES).strip()
        if key and value and len(key) <= 40 and key.replace(" ", "").replace("_", "").replace("-", "").isalpha():
            pairs.setdefault(key, value)
    return pairs


def _dict_answers(space: LabelSpace, text: str) -> tuple[list[set[int]], bool]:
    """Label sets named by every dictionary-shaped answer in the text, and whether one was seen."""
    answers: list[set[int]] = []
    seen = False
    for block in _braced_blocks(text)[:MAX_BLOCKS]:
        d = _literal(block if block.endswith("}") else block + "}")
        value = _choose_value(d) if d is not None else None
        if value is None:
            kv = _key_values(block)
            value = _choose_value(dict(kv)) if kv else None
        if value is not None:
            seen = True
            answers.append(_value_labels(space, value))
    return answers, seen


def _lenient(text: str, space: LabelSpace) -> ParseResult:
    clean = text.replace("```", " ")
    answers, seen = _dict_answers(space, clean)
    if seen:
        named = set().union(*answers) if answers else set()
        if len(named) == 1:
            return ParseResult(next(iter(named)), OK)
        if len(named) > 1:
            return ParseResult(None, AMBIGUOUS)
        # A dict naming no label of the space: a label word elsewhere must not rescue it.
        return ParseResult(None, OUT_OF_SPACE)
    named = _word_labels(space, clean, prose=True)
    if len(named) == 1:
        return ParseResult(next(iter(named)), OK_FALLBACK)
    if len(named) > 1:
        return ParseResult(None, AMBIGUOUS)
    return ParseResult(None, UNPARSED)


# ------------------------------------------------------------------------------------- API

def parse_answer(text: str | None, space: LabelSpace, *, mode: str = DEFAULT_PARSE_MODE) -> ParseResult:
    """Read one answer in ``mode`` (``strict``: the reference's rule; ``lenient``: see the module doc)."""
    check_mode(mode)
    if text is None:
        return ParseResult(None, EMPTY)
    s = str(text)[:MAX_ANSWER_CHARS]
    if not s.strip():
        return ParseResult(None, EMPTY)
    return _strict(s, space) if mode == STRICT else _lenient(s, space)


def parse_answers(texts: Iterable[str | None], space: LabelSpace, *, mode: str = DEFAULT_PARSE_MODE) -> list[ParseResult]:
    return [parse_answer(t, space, mode=mode) for t in texts]


def parser_provenance(mode: str) -> dict[str, object]:
    """What a VLM source records about how its answers were parsed (resume refuses a change)."""
    return {"mode": check_mode(mode), "max_answer_chars": MAX_ANSWER_CHARS}


def onehot(results: Sequence[ParseResult], num_classes: int) -> np.ndarray:
    """N x C uint8 one-hot; an uncounted answer is an all-zero row (the paper's 'none')."""
    out = np.zeros((len(results), num_classes), dtype=np.uint8)
    for i, r in enumerate(results):
        if r.label is not None:
            out[i, r.label] = 1
    return out
