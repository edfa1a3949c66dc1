"""Instruction data: section parsing, validation with one-line errors naming the entry, the three kinds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vea_bench.datasets import load_dataset
from vea_bench.datasets.synthetic import make_synthetic
from vea_bench.labels import MIKELS8
from vea_bench.prompts import (
    CONVERSATION_INSTRUCTION,
    REASONING_INSTRUCTION,
    categorical_answer,
    categorical_instruction,
)
from vea_bench.train.instructions import (
    InstructionError,
    build_instructions,
    load_instructions,
    load_responses,
    parse_sections,
)

KEY = "A dog lies on green grass with relaxed fur."
WHY = "The calm posture and warm light suggest comfort."


@pytest.mark.parametrize("text", [
    f"1. key elements \n{KEY}\n\n2. reasoning\n{WHY}\n",                      # the reference prompt's format
    f"**1. Key elements**\n{KEY}\n\n**2. Reasoning**\n{WHY}",
    f"### Key Elements\n{KEY}\n\n### Reasoning\n{WHY}\n---",
    f"Key elements: {KEY}\nReasoning: {WHY}",
    f"Sure! Here it is.\n\n**Key Elements:**\n{KEY}\n\n**Reasoning:** {WHY}",
    f"Reasoning:\n{WHY}\nKey elements:\n{KEY}",                               # either order
])
def test_sections_parse_in_the_spellings_generators_write(text: str) -> None:
    assert parse_sections(text) == (KEY, WHY)


def test_a_body_line_starting_with_reasoning_is_not_a_heading() -> None:
    text = f"Key elements:\n{KEY}\nReasoning about it is easy here.\nReasoning:\n{WHY}"
    key, why = parse_sections(text)
    assert key.endswith("Reasoning about it is easy here.") and why == WHY


@pytest.mark.parametrize("text,missing", [
    (f"Key elements:\n{KEY}", "reasoning"),
    (f"Reasoning:\n{WHY}", "key elements"),
    ("Key elements:\n\nReasoning:\nshort", "empty"),
    ("", "empty"),
])
def test_bad_sections_say_what_is_missing(text: str, missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        parse_sections(text)


@pytest.fixture(scope="module")
def fi(tmp_path_factory: pytest.TempPathFactory):
    root = make_synthetic("fi", tmp_path_factory.mktemp("fi") / "FI", per_class=4, size=16, seed=0)
    return load_dataset("fi", root)


def _reference_rows(index, prefix: str = "images/FI/train") -> list[dict]:
    """Rows as the reference generator writes them: foreign path prefix, on-disk label spelling."""
    rows = []
    for s in index.split("train"):
        label = index.label_space.labels[s.label]
        disk = {"contentment": "content", "sadness": "sad"}.get(label, label)
        rows.append({"gpt_response": f"1. Key elements\n{KEY}\n\n2. Reasoning\n{WHY}",
                     "img": Path(s.path).name, "img_path": f"{prefix}/{disk}/{Path(s.path).name}", "label": disk})
    return rows


def test_reference_file_builds_three_kinds_per_training_image(fi, tmp_path) -> None:
    path = tmp_path / "FI_annotations_train.json"
    rows = _reference_rows(fi)
    path.write_text(json.dumps(rows))
    entries = load_responses(path, fi.label_space, index=fi)
    assert [e.image for e in entries] == [s.path for s in fi.split("train")]  # matched to the dataset's own paths
    assert {e.label for e in entries} <= set(MIKELS8.labels)                   # 'content' / 'sad' mapped
    insts = build_instructions(entries, fi.label_space)
    assert len(insts) == 3 * len(entries)
    first = insts[:3]
    assert [i.kind for i in first] == ["categorical", "conversation", "reasoning"]
    assert first[0].question == categorical_instruction(fi.label_space)
    assert first[0].answer == categorical_answer(entries[0].label)
    assert (first[1].question, first[1].answer) == (CONVERSATION_INSTRUCTION, KEY)
    assert (first[2].question, first[2].answer) == (REASONING_INSTRUCTION, WHY)
    # Only some kinds, when asked.
    assert {i.kind for i in build_instructions(entries, fi.label_space, ["categorical"])} == {"categorical"}


def test_jsonl_and_triplets_round_trip_through_the_cli(fi, tmp_path) -> None:
    from typer.testing import CliRunner
    from vea_bench_cli.main import app

    jsonl = tmp_path / "gen.jsonl"
    jsonl.write_text("".join(json.dumps({"image": s.path, "label": fi.label_space.labels[s.label],
                                         "response": f"Key elements: {KEY}\nReasoning: {WHY}"}) + "\n"
                             for s in fi.split("train")))
    out = tmp_path / "triplets.jsonl"
    r = CliRunner().invoke(app, ["instruct", "build", "fi", "--root", str(fi.root), "--responses", str(jsonl),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3 * len(fi.split("train"))
    assert set(lines[0]) == {"image", "kind", "question", "answer", "label"}
    # The triplet file is itself a valid --instructions input, unchanged.
    again = load_instructions(out, fi.label_space, index=fi)
    assert [i.to_dict() for i in again] == lines


def test_val_and_test_images_are_left_out_of_training(fi, tmp_path, caplog) -> None:
    rows = _reference_rows(fi)
    s = fi.split("test")[0]
    rows.append({"image": s.path, "label": fi.label_space.labels[s.label], "response": f"Key elements: {KEY}\nReasoning: {WHY}"})
    path = tmp_path / "leak.json"
    path.write_text(json.dumps(rows))
    entries = load_responses(path, fi.label_space, index=fi)
    assert s.path not in {e.image for e in entries}
    assert "test-split" in caplog.text


@pytest.mark.parametrize("mutate,expect", [
    (lambda r: r.pop("img_path") and r.pop("img"), "no image path"),
    (lambda r: r.update(label="boredom"), "unknown label 'boredom'"),
    (lambda r: r.update(img_path="images/FI/train/awe/nowhere.jpg", img="nowhere.jpg"), "image not found"),
    (lambda r: r.update(gpt_response="Just a description, no headings at all."), "section heading"),
    (lambda r: r.pop("gpt_response"), "no response text"),
    (lambda r: r.pop("label"), "no label"),
])
def test_bad_entries_are_one_line_errors_naming_the_entry(fi, tmp_path, mutate, expect) -> None:
    rows = _reference_rows(fi)
    mutate(rows[2])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(InstructionError) as err:
        load_instructions(path, fi.label_space, index=fi)
    msg = str(err.value)
    assert "entry 2" in msg and expect in msg and "\n" not in msg


def test_label_disagreeing_with_the_dataset_is_refused(fi, tmp_path) -> None:
    rows = _reference_rows(fi)
    rows[0]["label"] = "awe" if rows[0]["label"] != "awe" else "fear"
    path = tmp_path / "mismatch.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(InstructionError, match="entry 0.*disagrees"):
        load_responses(path, fi.label_space, index=fi)


def test_cli_bad_file_exits_non_zero_with_one_line(fi, tmp_path) -> None:
    from typer.testing import CliRunner
    from vea_bench_cli.main import app

    path = tmp_path / "broken.json"
    path.write_text('[{"img_path": "a.jpg", "label": "awe"')  # truncated JSON
    r = CliRunner().invoke(app, ["instruct", "build", "fi", "--root", str(fi.root), "--responses", str(path),
                                 "--out", str(tmp_path / "o.jsonl")])
    assert r.exit_code != 0 and "Traceback" not in r.output and "not valid JSON" in r.output
    assert not (tmp_path / "o.jsonl").exists()
