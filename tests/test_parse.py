"""The VLM answer parser on a table of answer shapes seen from real models, plus garbage."""
from __future__ import annotations

import random

import numpy as np
import pytest

from vea_bench.labels import BINARY, EKMAN6, MIKELS8
from vea_bench.models.parse import (
    AMBIGUOUS,
    EMPTY,
    OK,
    OK_FALLBACK,
    OUT_OF_SPACE,
    PARSE_STATUSES,
    UNPARSED,
    onehot,
    parse_answer,
)
from vea_bench.prompts import categorical_answer

M, E, B = MIKELS8, EKMAN6, BINARY

# (answer text, label space, expected label name or None, expected status)
CASES = [
    # the paper's dictionary form and its variants
    ("{'emotion': 'awe'}", M, "awe", OK),
    ("{'emotion':'awe'}", M, "awe", OK),
    ("{'emotion':  'contentment' }", M, "contentment", OK),
    ('{"emotion": "Awe"}', M, "awe", OK),
    ('{"Emotion": "SADNESS"}', M, "sadness", OK),
    ("{\n  'emotion': 'fear'\n}", M, "fear", OK),
    ("```json\n{\"emotion\": \"anger\"}\n```", M, "anger", OK),
    ("```python\n{'emotion': 'disgust'}\n```", M, "disgust", OK),
    ("Sure! Here is my answer: {'emotion': 'excitement'}. The crowd is cheering.", M, "excitement", OK),
    ("{'emotion': 'amusement'}</s>", M, "amusement", OK),
    ("{'emotion': 'awe.'}", M, "awe", OK),
    ("{'emotion': 'Content'}", M, "contentment", OK),            # on-disk spelling
    ("{'emotion': 'sad'}", E, "sadness", OK),                    # synonym
    ("{'emotion': 'happy'}", E, "joy", OK),                      # synonym in Ekman's space
    ("{'emotion': 'surprised'}", E, "surprise", OK),
    ("{\u2018emotion\u2019: \u2018awe\u2019}", M, "awe", OK),    # smart quotes
    ("{'emotion': 'awe'", M, "awe", OK),                         # truncated before the brace
    ("{emotion: awe}", M, "awe", OK),                            # no quotes at all
    ("{'emotion': ['fear']}", M, "fear", OK),                    # a one-element list
    ("{'emotion': 'the awe'}", M, "awe", OK),
    ("{'sentiment': 'positive'}", B, "positive", OK),
    ("{'emotion': 'Negative'}", B, "negative", OK),
    ("{'emotion': 'awe'} {'emotion': 'awe'}", M, "awe", OK),     # repeated, same answer
    ("{'emotion': 'a sense of awe'}", M, "awe", OK),
    # bare words and prose
    ("awe", M, "awe", OK_FALLBACK),
    ("Sadness.", M, "sadness", OK_FALLBACK),
    ("  Fear!\n", M, "fear", OK_FALLBACK),
    ("The image conveys a strong feeling of excitement.", M, "excitement", OK_FALLBACK),
    ("The people look happy", E, "joy", OK_FALLBACK),
    ("Emotion: Anger", M, "anger", OK_FALLBACK),                 # key/value without braces is prose
    # several labels: not counted
    ("{'emotion': 'awe, contentment'}", M, None, AMBIGUOUS),
    ("{'emotion': 'fear or sadness'}", M, None, AMBIGUOUS),
    ("{'emotion': ['anger', 'disgust']}", M, None, AMBIGUOUS),
    ("{'emotion': 'awe'} {'emotion': 'fear'}", M, None, AMBIGUOUS),
    ("It could be amusement or excitement.", M, None, AMBIGUOUS),
    # readable, but not a label of this space
    ("{'emotion': 'neutral'}", M, None, OUT_OF_SPACE),
    ("{'emotion': 'awe'}", E, None, OUT_OF_SPACE),
    ("{'emotion': 'happy'}", M, None, OUT_OF_SPACE),
    ("{'emotion': 'nostalgia'} though some may feel sadness", M, None, OUT_OF_SPACE),
    # nothing usable
    ("", M, None, EMPTY),
    ("   \n\t", M, None, EMPTY),
    ("I cannot determine the emotion of this image.", M, None, UNPARSED),
    ("{}", M, None, UNPARSED),
    ("{'emotion': ", M, None, UNPARSED),
    ("asdkj 12 ]]{{ ::", M, None, UNPARSED),
    ("There is 1 person and 0 dogs.", B, None, UNPARSED),        # digits are not binary labels in prose
]


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert {c[3] for c in CASES} == set(PARSE_STATUSES)


@pytest.mark.parametrize("text,space,label,status", CASES, ids=[repr(c[0])[:40] for c in CASES])
def test_answer_shapes(text, space, label, status) -> None:
    result = parse_answer(text, space)
    assert result.status == status, f"{text!r}: {result}"
    expected = None if label is None else space.labels.index(label)
    assert result.label == expected
    assert result.parsed == (expected is not None)


@pytest.mark.parametrize("space", [M, E, B])
def test_every_target_answer_parses_to_its_label(space) -> None:
    # The stage-1 training target for each label must read back as that label.
    for i, name in enumerate(space.labels):
        assert parse_answer(categorical_answer(name), space) == type(parse_answer("", space))(i, OK)


def test_garbage_never_raises_and_never_invents_labels() -> None:
    rng = random.Random(0)
    alphabet = "{}[]()'\":,;=\\\n\t #@!?0123456789xyzqkj\u2018\u2019\u201c\u201d`"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        result = parse_answer(text, M)
        assert result.status in PARSE_STATUSES
        assert result.label is None
    for blob in (None, "\x00\x01\x02", "{" * 1000, "}" * 1000, "{'emotion': " + "a" * 10000):
        assert parse_answer(blob, M).label is None


def test_onehot_is_all_zero_when_unparsed() -> None:
    results = [parse_answer(t, M) for t in ("{'emotion': 'awe'}", "garbage", "fear", "awe or fear")]
    oh = onehot(results, M.num_classes)
    assert oh.dtype == np.uint8 and oh.shape == (4, 8)
    assert oh.sum(axis=1).tolist() == [1, 0, 1, 0]
    assert oh[0, M.labels.index("awe")] == 1 and oh[2, M.labels.index("fear")] == 1
