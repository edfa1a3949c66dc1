"""Canonical label spaces and the spelling map from what datasets (and VLMs) write to them.

One canonical order per label space (SPEC): Mikels' 8 alphabetical, Ekman's 6 alphabetical,
binary positive-then-negative. Datasets with another on-disk order (EmoSet's `info.json`) map
into these, so every cache, head and table of a label space shares one index order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from vea_bench.errors import UnknownLabelError

# Spellings seen on disk and in VLM answers, mapped to canonical labels.
_SYNONYMS: dict[str, str] = {
    # Mikels
    "amused": "amusement", "amusing": "amusement", "funny": "amusement", "fun": "amusement",
    "angry": "anger", "rage": "anger", "mad": "anger",
    "awed": "awe", "awesome": "awe", "wonder": "awe", "awestruck": "awe",
    "content": "contentment", "contented": "contentment", "contentness": "contentment",
    "disgusted": "disgust", "disgusting": "disgust",
    "excited": "excitement", "exciting": "excitement",
    "fearful": "fear", "scared": "fear", "afraid": "fear", "scary": "fear", "fright": "fear",
    "sad": "sadness", "sorrow": "sadness", "unhappy": "sadness",
    # Ekman
    "happy": "joy", "happiness": "joy", "joyful": "joy",
    "surprised": "surprise", "surprising": "surprise",
    # Binary
    "pos": "positive", "neg": "negative", "1": "positive", "0": "negative",
}


def normalise(raw: str) -> str:
    """Lower-case, trim, and fold separators so 'Content ', 'CONTENT' and 'content' agree."""
    return re.sub(r"[\s_\-]+", " ", str(raw).strip().lower()).strip()


@dataclass(frozen=True)
class LabelSpace:
    """An ordered set of class names plus the spellings that map onto them."""

    name: str
    labels: tuple[str, ...]
    synonyms: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def lookup(self, raw: str) -> int | None:
        """Index of ``raw`` after spelling normalisation, or None if it is not in this space."""
        key = normalise(raw)
        if key in self.labels:
            return self.labels.index(key)
        mapped = self.synonyms.get(key, _SYNONYMS.get(key))
        if mapped is not None and mapped in self.labels:
            return self.labels.index(mapped)
        return None

    def index(self, raw: str, *, where: str = "") -> int:
        """Index of ``raw``; an unknown label raises a one-line error naming ``where`` and the label."""
        idx = self.lookup(raw)
        if idx is None:
            loc = f"{where}: " if where else ""
            raise UnknownLabelError(
                f"{loc}unknown label '{raw}' for label space {self.name} "
                f"({', '.join(self.labels)})"
            )
        return idx

    def prose_list(self) -> str:
        """'a, b, and c' as the paper's categorical instruction writes its options."""
        if len(self.labels) <= 2:
            return " and ".join(self.labels)
        return ", ".join(self.labels[:-1]) + ", and " + self.labels[-1]


MIKELS8 = LabelSpace(
    "mikels8",
    ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"),
)
EKMAN6 = LabelSpace("ekman6", ("anger", "disgust", "fear", "joy", "sadness", "surprise"))
BINARY = LabelSpace("binary", ("positive", "negative"))

LABEL_SPACES: dict[str, LabelSpace] = {s.name: s for s in (MIKELS8, EKMAN6, BINARY)}

# EmoSet's binary use: these four are positive, the other four negative.
MIKELS_POSITIVE = frozenset({"amusement", "awe", "contentment", "excitement"})


def get_label_space(name: str) -> LabelSpace:
    """Look up a label space by name, with a one-line error listing the choices."""
    try:
        return LABEL_SPACES[name]
    except KeyError:
        raise UnknownLabelError(
            f"unknown label space '{name}' (choices: {', '.join(LABEL_SPACES)})"
        ) from None


def label_space_from_names(names: list[str] | tuple[str, ...]) -> LabelSpace:
    """The registered space with exactly these labels in this order, else an ad-hoc one."""
    t = tuple(names)
    for space in LABEL_SPACES.values():
        if space.labels == t:
            return space
    return LabelSpace("custom:" + ",".join(t), t)
