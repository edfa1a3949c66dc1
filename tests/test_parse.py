"""The VLM answer parser: the strict (reference, default) rule, the lenient fallback on a table of
answer shapes seen from real models, garbage, and adversarial answers that once took seconds."""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

from vea_bench.errors import ConfigError
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

# The lenient fallback (`extract --parse lenient`). These cases were the parser's default before
# the default became the reference's strict rule (issue 15: a guessing default changes Table 1's
# zero-shot rows); they still hold for the lenient mode, which reads what strict calls 'none'.
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
    # ordinary words and negations are not labels (issue 15)
    ("The content of this image is unclear.", M, None, UNPARSED),
    ("I wonder what this is.", M, None, UNPARSED),
    ("not sad", M, None, UNPARSED),
    ("There is no fear here, it isn't scary.", M, None, UNPARSED),
    ("It is not sad but joyful.", E, "joy", OK_FALLBACK),        # the negation ends at 'but'
    ("I don't think it is angry; it is disgusting.", M, "disgust", OK_FALLBACK),
    ("She looks content.", M, None, UNPARSED),                   # 'content' is only read inside a dict
]

# The reference's rule (the default): the first {'emotion': '...'} via regex + literal parse,
# its value a label name (case folded, no synonyms); everything else is 'none'.
STRICT_CASES = [
    ("{'emotion': 'awe'}", M, "awe", OK),
    ("{'emotion':'awe'}", M, "awe", OK),
    ("{'emotion':   'Fear'}", M, "fear", OK),
    ("Sure! {'emotion': 'excitement'}. The crowd is cheering.", M, "excitement", OK),
    ("{'emotion': 'awe'}</s>", M, "awe", OK),
    ("{'emotion': 'awe'} {'emotion': 'fear'}", M, "awe", OK),     # the regex finds the first
    ("{'emotion': 'awe', 'why': 'sky'}", M, "awe", OK),           # the lazy match ends at the first '}
    ("{'emotion': 'awe' , 'why': 'it's'}", M, None, UNPARSED),    # ... whose literal parse fails
    ("{'emotion': 'happy'}", E, None, OUT_OF_SPACE),              # no synonyms
    ("{'emotion': 'Content'}", M, None, OUT_OF_SPACE),
    ("{'emotion': 'neutral'}", M, None, OUT_OF_SPACE),
    ("{'emotion': 'awe' }", M, None, UNPARSED),                   # the regex needs '} adjacent
    ('{"emotion": "awe"}', M, None, UNPARSED),                    # JSON quoting is not the form
    ("{'emotion': 'awe'", M, None, UNPARSED),
    ("{'emotion': '\nawe'}", M, None, UNPARSED),                 # '.' does not cross a newline
    ("{'emotion': 'it's awe'}", M, None, UNPARSED),               # literal parse fails: 'none'
    ("awe", M, None, UNPARSED),
    ("The image conveys excitement.", M, None, UNPARSED),
    ("", M, None, EMPTY),
    ("  \n", M, None, EMPTY),
]


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert {c[3] for c in CASES} == set(PARSE_STATUSES)


@pytest.mark.parametrize("text,space,label,status", CASES, ids=[repr(c[0])[:40] for c in CASES])
def test_answer_shapes(text, space, label, status) -> None:
    result = parse_answer(text, space, mode="lenient")
    assert result.status == status, f"{text!r}: {result}"
    expected = None if label is None else space.labels.index(label)
    assert result.label == expected
    assert result.parsed == (expected is not None)


@pytest.mark.parametrize("text,space,label,status", STRICT_CASES, ids=[repr(c[0])[:40] for c in STRICT_CASES])
def test_strict_is_the_default_and_reads_only_the_dictionary_form(text, space, label, status) -> None:
    expected = None if label is None else space.labels.index(label)
    for result in (parse_answer(text, space), parse_answer(text, space, mode="strict")):
        assert (result.label, result.status) == (expected, status), f"{text!r}: {result}"


def test_unknown_mode_is_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown parse mode 'guess'.*strict, lenient"):
        parse_answer("awe", M, mode="guess")


@pytest.mark.parametrize("space", [M, E, B])
@pytest.mark.parametrize("mode", ["strict", "lenient"])
def test_every_target_answer_parses_to_its_label(space, mode) -> None:
    # The stage-1 training target for each label must read back as that label.
    for i, name in enumerate(space.labels):
        assert parse_answer(categorical_answer(name), space, mode=mode) == type(parse_answer("", space))(i, OK)


def _fuzzed(rng: random.Random, n: int) -> list[str]:
    """Fuzzed answers built from answer fragments, quotes, braces and long whitespace runs."""
    pieces = ["{", "}", "'", '"', ":", "=", ",", " ", "\n", "\t", "emotion", "'emotion'", "{'emotion':", "'}",
              "awe", "sad", "not", "content", "wonder", "[", "]", "```", "\u2018", "and", "or", "!!!", "the"]
    out = []
    for _ in range(n):
        k = rng.randint(0, 40)
        out.append("".join(rng.choice(pieces) * (rng.randint(50, 400) if rng.random() < 0.05 else 1) for _ in range(k)))
    return out


ADVERSARIAL = [
    "{" + " " * 151,                        # issue 15: 152 characters, > 20 s with the old regexes
    "{" + " " * 20001,                      # issue 15: 20,002 characters
    "{'emotion': '" * 2000,
    "{'emotion': 'a" * 1500 + "'}",
    "{ " + "a " * 10000 + ":",
    "{" + " -" * 10000 + ": x",
    "!" * 20000 + "a",
    "{'" + " " * 20000 + "'}",
    "not " * 5000 + "sad",
]


@pytest.mark.parametrize("mode", ["strict", "lenient"])
def test_parse_is_linear_on_adversarial_answers(mode) -> None:
    # 20,000-character adversarial answers: well under 50 ms each (the old lenient regexes
    # backtracked for over 20 s on the first two).
    for text in ADVERSARIAL:
        t0 = time.perf_counter()
        parse_answer(text, M, mode=mode)
        assert time.perf_counter() - t0 < 0.05, (mode, text[:30], len(text))


def test_strict_scan_is_linear_even_without_the_length_bound() -> None:
    # The strict scanner itself is linear (the bound only caps the cost of a runaway answer).
    from vea_bench.models.parse import _strict_blocks

    # 50,000 starts whose value crosses a newline, then the one that matches: a scan that looked
    # for the closing quote from every start would read ~10^10 characters.
    text = "{'emotion': 'a\n" * 50000 + "{'emotion': 'x'}"
    t0 = time.perf_counter()
    assert next(iter(_strict_blocks(text)), None) == "{'emotion': 'x'}"
    assert time.perf_counter() - t0 < 0.5


def test_default_never_returns_a_label_strict_would_not_and_lenient_never_contradicts_it() -> None:
    rng = random.Random(15)
    texts = _fuzzed(rng, 2000) + [c[0] for c in CASES] + [c[0] for c in STRICT_CASES]
    for space in (M, E, B):
        for t in texts:
            strict = parse_answer(t, space, mode="strict")
            default = parse_answer(t, space)
            assert default == strict
            lenient = parse_answer(t, space, mode="lenient")
            if strict.label is not None:  # lenient reads more, but never another label
                assert lenient.label in (strict.label, None), (t, strict, lenient)


def test_garbage_never_raises_and_never_invents_labels() -> None:
    rng = random.Random(0)
    alphabet = "{}[]()'\":,;=\\\n\t #@!?0123456789xyzqkj\u2018\u2019\u201c\u201d`"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        result = parse_answer(text, M, mode="lenient")
        assert result.status in PARSE_STATUSES
        assert result.label is None
    for blob in (None, "\x00\x01\x02", "{" * 1000, "}" * 1000, "{'emotion': " + "a" * 10000):
        assert parse_answer(blob, M).label is None


def test_onehot_is_all_zero_when_unparsed() -> None:
    results = [parse_answer(t, M, mode="lenient") for t in ("{'emotion': 'awe'}", "garbage", "fear", "awe or fear")]
    oh = onehot(results, M.num_classes)
    assert oh.dtype == np.uint8 and oh.shape == (4, 8)
    assert oh.sum(axis=1).tolist() == [1, 0, 1, 0]
    assert oh[0, M.labels.index("awe")] == 1 and oh[2, M.labels.index("fear")] == 1


def test_lenient_reads_multi_word_labels_of_custom_spaces() -> None:
    from vea_bench.labels import LabelSpace

    space = LabelSpace("custom:calm sea,deep sorrow", ("calm sea", "deep sorrow"))
    assert parse_answer("It shows a deep sorrow.", space, mode="lenient") == parse_answer("", space).__class__(1, OK_FALLBACK)
    assert parse_answer("There is no deep sorrow here.", space, mode="lenient").label is None
    assert parse_answer("{'emotion': 'deep sorrow'}", space).label == 1
