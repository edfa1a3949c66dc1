"""What a real checkpoint's tokenizer and numerics do to a family, on tiny models of the real classes:
one BOS where the template writes it, no fp16 for a family that overflows in it, the image position
the template honours (and nothing else), label answers tokenised as they follow the prompt, and
LLaVA-OneVision's embedding free of the any-resolution padding."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vea_bench.errors import ModelError
from vea_bench.labels import MIKELS8
from vea_bench.models import GenerationOptions, LoadOptions, load_vlm
from vea_bench.models.generic import families
from vea_bench.models.loading import resolve_dtype
from vea_bench.models.tiny import make_tiny
from vea_bench.prompts import categorical_answer, categorical_instruction

PROMPT = categorical_instruction(MIKELS8)
LABELS = list(MIKELS8.labels)


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-checkpoint")
    return {k: make_tiny(k, root / k, seed=0) for k in ("gemma3", "idefics3", "llava-next", "llava-onevision")}


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------------- one BOS

def test_gemma3_prompt_and_training_inputs_open_with_one_bos(tiny) -> None:
    """Gemma's template writes ``<bos>`` and its tokenizer adds one too (add_bos_token, as the hub
    checkpoint's tokenizer_config): the ids must start with one BOS, as apply_chat_template's."""
    from vea_bench.train.instructions import Instruction
    from vea_bench.train.qlora import chat_messages, encode_example

    be = load_vlm(LoadOptions(model=str(tiny["gemma3"]), device="cpu"))
    tok = be.processor.tokenizer
    assert tok("x")["input_ids"][0] == tok.bos_token_id          # it adds BOS, as the real one does
    img = _image(40, 30)
    ids = be.prepare([img], PROMPT)["input_ids"][0].tolist()
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    ref = be.processor.apply_chat_template(chat_messages(PROMPT, img), tokenize=True, add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
    assert ids == list(ref[0] if isinstance(ref[0], list) else ref)
    inst = Instruction(image="a.jpg", kind="categorical", question=PROMPT, answer=categorical_answer("awe"),
                       label="awe")
    train_ids = encode_example(be.processor, inst, img)["input_ids"][0].tolist()
    assert train_ids[:len(ids)] == ids                      # stage 1 trains on the prompt extraction reads


# ----------------------------------------------------------------------------------- fp16

def test_gemma3_refuses_fp16_in_one_line_and_auto_picks_fp32(tiny, monkeypatch) -> None:
    for opts in (LoadOptions(model=str(tiny["gemma3"]), device="cpu", dtype="fp16"),
                 LoadOptions(model=str(tiny["gemma3"]), device="cpu", dtype="fp16", quantization="4bit")):
        with pytest.raises(ModelError) as err:
            load_vlm(opts)
        msg = _one_line(err)
        assert "gemma3" in msg and "float16" in msg and "--dtype bf16" in msg
    gemma, qwen = families()["gemma3"], families()["qwen2-vl"]
    assert gemma.overflow_dtypes == ("float16",) and qwen.overflow_dtypes == ()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)   # an fp16-only GPU
    assert resolve_dtype("auto", "cuda", gemma) == torch.float32
    assert resolve_dtype("auto", "cuda", qwen) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda", gemma) == torch.bfloat16
    assert resolve_dtype("fp32", "cpu", gemma) == torch.float32


# ----------------------------------------------------------------------------------- image position

def _text_before_image(be: Any, batch: dict[str, Any]) -> bool:
    """Whether the prompt's question text comes before its first image placeholder in row 0."""
    ids = batch["input_ids"][0].tolist()
    first_image = ids.index(be._image_token_id())
    return "Observe the image" in be.processor.tokenizer.decode(ids[:first_image])


@pytest.mark.parametrize("kind", ["gemma3", "idefics3"])
def test_nested_image_families_honour_image_position_last(kind: str, tiny) -> None:
    img = [_image(40, 30)]
    first = load_vlm(LoadOptions(model=str(tiny[kind]), device="cpu"))
    last = load_vlm(LoadOptions(model=str(tiny[kind]), device="cpu", image_position="last"))
    assert last.preparer().image_position == "last" and last.provenance()["image_position"] == "last"
    assert not _text_before_image(first, first.prepare(img, PROMPT))
    assert _text_before_image(last, last.prepare(img, PROMPT))


@pytest.mark.parametrize("kind", ["llava-next", "llava-onevision"])
def test_images_first_templates_refuse_position_last_and_say_first(kind: str, tiny) -> None:
    with pytest.raises(ModelError) as err:
        load_vlm(LoadOptions(model=str(tiny[kind]), device="cpu", image_position="last"))
    msg = _one_line(err)
    assert kind in msg and "--image-position first" in msg
    be = load_vlm(LoadOptions(model=str(tiny[kind]), device="cpu"))
    assert be.family.image_positions == ("first",) and be.provenance()["image_position"] == "first"


def test_every_family_declares_positions_it_can_honour() -> None:
    for fam in families().values():
        assert fam.image_positions and set(fam.image_positions) <= {"first", "last"}
        assert set(fam.overflow_dtypes) <= {"float16", "bfloat16", "float32"}


# ----------------------------------------------------------------------------------- scored tokens

def test_smolvlm_scores_the_answer_as_it_follows_the_assistant_prefix(tiny) -> None:
    """SmolVLM's template writes ``Assistant: {answer}``: the byte-level BPE sees a space before the
    brace, so the scored tokens are those of `` {'emotion': ...}`` after ``Assistant:``."""
    be = load_vlm(LoadOptions(model=str(tiny["idefics3"]), device="cpu"))
    tok = be.processor.tokenizer
    head = be.chat_text(PROMPT)
    assert head.endswith("Assistant:")
    for label, ids in zip(LABELS, be.answer_ids(LABELS)):
        full = tok(head + " " + categorical_answer(label), add_special_tokens=False)["input_ids"]
        prompt = tok(head, add_special_tokens=False)["input_ids"]
        assert full[:len(prompt)] == prompt and ids == full[len(prompt):]
        assert tok.decode(ids) == " " + categorical_answer(label)
    standalone = tok(categorical_answer(LABELS[0]), add_special_tokens=False)["input_ids"]
    assert be.answer_ids(LABELS)[0] != standalone                 # the old derivation scored other tokens


def test_score_uses_the_derived_tokens(tiny) -> None:
    """The log-likelihood scored is that of the tokens the template puts after the prompt: equal to
    a plain forward over prompt + those tokens."""
    be = load_vlm(LoadOptions(model=str(tiny["idefics3"]), device="cpu"))
    batch = be.prepare([_image(36, 36)], PROMPT)
    out = be.run(batch, generate=False, score_labels=LABELS[:2], generation=GenerationOptions())
    for c, ids in enumerate(be.answer_ids(LABELS[:2])):
        full = dict(batch)
        full["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([ids])], dim=1)
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        with torch.inference_mode():
            logits = be.core(**{k: v for k, v in full.items()}).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        n = batch["input_ids"].shape[1]
        want = sum(float(lp[n - 1 + i, t]) for i, t in enumerate(ids))
        assert abs(float(out.logprobs[0, c]) - want) < 2e-4


# ----------------------------------------------------------------------------------- OneVision pooling

def test_llava_onevision_pools_the_unpadded_features(tiny) -> None:
    """The pooled embedding is the mean of what the language model reads as the image, minus its
    learned newline tokens: the base view and the tiles' unpadded area, whatever the aspect ratio."""
    be = load_vlm(LoadOptions(model=str(tiny["llava-onevision"]), device="cpu"))
    newline = be.core.model.image_newline.detach().float()
    padded_any = False
    for w, h in [(48, 32), (32, 60), (64, 32), (40, 40)]:
        batch = be.prepare([_image(w, h)], PROMPT)
        out = be.run(batch, generate=False, score_labels=None, generation=GenerationOptions())
        with torch.inference_mode():
            packed = be.core.model.get_image_features(pixel_values=batch["pixel_values"],
                                                      image_sizes=batch["image_sizes"]).pooler_output
        rows = torch.cat(list(packed)) if isinstance(packed, (list, tuple)) else packed
        rows = rows.reshape(-1, rows.shape[-1]).float()
        keep = ~torch.isclose(rows, newline[None]).all(-1)
        np.testing.assert_allclose(out.pooled[0], rows[keep].mean(0).numpy(), atol=1e-5, rtol=0)
        crops = be.crops_per_image(batch)[0]
        side = be.core.config.vision_config.image_size // be.core.config.vision_config.patch_size
        padded_any |= int(keep.sum()) < crops * side * side
    assert padded_any, "no test image needed padding: the test would not tell the pools apart"
