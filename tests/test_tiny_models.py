"""Tiny random-weight VLMs: built offline, saved, and reloaded exactly like hub models."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoConfig, AutoProcessor

from vea_bench.errors import VeaError
from vea_bench.labels import BINARY, EKMAN6, MIKELS8
from vea_bench.models.generic import families, family_supported
from vea_bench.models.tiny import TINY_BUILDERS, TINY_KINDS, make_tiny
from vea_bench.prompts import SYSTEM_MESSAGE, categorical_answer, categorical_instruction

# Every registered VLM family's tiny model, by its own declaration: a new family is tested here too.
FAMILIES = {fam.tiny: fam for fam in families().values() if fam.tiny and family_supported(fam)}
VLM_KINDS = tuple(FAMILIES)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {k: make_tiny(k, root / k) for k in VLM_KINDS}


def test_kinds_registry() -> None:
    assert set(TINY_KINDS) >= {fam.tiny for fam in families().values() if fam.tiny} | {"teacher"}
    assert TINY_KINDS == tuple(TINY_BUILDERS.names())
    with pytest.raises(VeaError, match="did you mean 'qwen2-vl'"):
        make_tiny("qwen2-lv", "/tmp/never-written")


@pytest.mark.parametrize("kind", list(VLM_KINDS))
def test_reloads_like_a_hub_model(kind: str, built: dict[str, Path]) -> None:
    fam = FAMILIES[kind]
    model_cls = fam.model_class
    d = built[kind]
    assert (d / "config.json").is_file() and list(d.glob("*.safetensors"))
    processor = AutoProcessor.from_pretrained(d)
    assert type(processor).__name__ == model_cls.replace("ForConditionalGeneration", "Processor")
    config = AutoConfig.from_pretrained(d)
    assert config.model_type in fam.model_types
    model = getattr(transformers, model_cls).from_pretrained(d)
    assert type(model).__name__ == model_cls
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    tok = processor.tokenizer
    image_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    assert tok.convert_ids_to_tokens(image_id) in tok.get_added_vocab()   # a special token, never split
    assert len(tok) <= model.get_input_embeddings().weight.shape[0]
    assert tok.padding_side == "left"


@pytest.mark.parametrize("kind", list(VLM_KINDS))
def test_tokenizer_round_trips_prompts_and_answers(kind: str, built: dict[str, Path]) -> None:
    tok = AutoProcessor.from_pretrained(built[kind]).tokenizer
    texts = [SYSTEM_MESSAGE] + [categorical_instruction(s) for s in (MIKELS8, EKMAN6, BINARY)]
    texts += [categorical_answer(lab) for lab in MIKELS8.labels + EKMAN6.labels]
    texts += ["unseen words: zebra ümlaut 日本 {\"emotion\": \"joy\"}"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids or tok.unk_token_id is None
    # the vocabulary was trained on the prompts: they encode compactly, not byte by byte
    assert len(tok(categorical_instruction(MIKELS8), add_special_tokens=False)["input_ids"]) < 120


def test_chat_templates_follow_the_real_formats(built: dict[str, Path]) -> None:
    msgs = [{"role": "system", "content": [{"type": "text", "text": "SYS"}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    qwen = AutoProcessor.from_pretrained(built["qwen2-vl"]).apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False)
    assert qwen == ("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n")
    llava = AutoProcessor.from_pretrained(built["llava-next"]).apply_chat_template(
        msgs, add_generation_prompt=True, tokenize=False)
    assert llava == "<<SYS>>\nSYS\n<</SYS>>\n\n[INST] <image>\nQ? [/INST]"
    # InstructBLIP's hub processor has no chat template; the backend supplies Vicuna's form.
    assert not getattr(AutoProcessor.from_pretrained(built["instructblip"]), "chat_template", None)


@pytest.mark.parametrize("kind", list(VLM_KINDS))
def test_processor_and_generate_on_small_images(kind: str, built: dict[str, Path]) -> None:
    """Processor -> model.generate on a batch of 4 images of different sizes (32-64 px), fast."""
    model_cls = FAMILIES[kind].model_class
    d = built[kind]
    processor = AutoProcessor.from_pretrained(d)
    model = getattr(transformers, model_cls).from_pretrained(d).eval()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for w, h in [(32, 32), (64, 40), (48, 64), (56, 56)]]
    if not getattr(processor, "chat_template", None):   # InstructBLIP: the hub processor has none
        text = ["Which emotion?"] * 4
    else:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which emotion?"}]}]
        text = [processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)] * 4
    if FAMILIES[kind].nested_images:                  # one list of images per prompt (Gemma 3, Idefics3)
        images = [[im] for im in images]
    batch = processor(images=images, text=text, return_tensors="pt", padding=True)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    elapsed = time.perf_counter() - t0
    assert out.shape[0] == 4 and out.shape[1] == batch["input_ids"].shape[1] + 5
    assert elapsed < 10.0  # well under a second on an idle core; generous for shared CI machines


def test_same_seed_same_weights(tmp_path: Path) -> None:
    def digest(d: Path) -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(d.glob("*.safetensors")))).hexdigest()

    a = make_tiny("llava-next", tmp_path / "a", seed=3)
    b = make_tiny("llava-next", tmp_path / "b", seed=3)
    c = make_tiny("llava-next", tmp_path / "c", seed=4)
    assert digest(a) == digest(b) != digest(c)
