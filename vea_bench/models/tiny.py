"""Tiny random-weight VLMs of the real transformers classes, built offline in seconds.

Tests, the demo and the benchmark load these with exactly the code that loads a hub model
(`AutoProcessor.from_pretrained(dir)`, `<ModelClass>.from_pretrained(dir)`), so every code path of
extraction and training runs on CPU without downloading 15 GB. Each builder trains a small BPE /
WordPiece vocabulary over the project's own prompts, label words and chat-template text (so the
tokenizer round-trips everything extraction feeds it), wraps it in the tokenizer class the real
processor expects, adds the model's special image tokens and a chat template in the real model's
format, and `save_pretrained`s model + processor into one directory.

`make_tiny` dispatches through `TINY_BUILDERS`, a registry: each VLM family registers its builder
in its own module (next to its `VLMFamily`, which names the kind), the ViT teacher in
`vea_bench.models.teacher`. This module holds what they share: the tokenizer corpus, the BPE /
WordPiece trainers, Qwen's and Llama's tokenizer layouts and `save_tiny`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from vea_bench.registry import Registry

TinyBuilder = Callable[..., Path]

TINY_BUILDERS: Registry[TinyBuilder] = Registry("tiny model kind", plugins="vea_bench.vlm_families")


def make_tiny(kind: str, out: str | Path, *, seed: int = 0, num_classes: int = 8) -> Path:
    """Build and save a tiny random-weight model of ``kind`` into ``out``; returns ``out``.

    ``num_classes`` only matters for classifier kinds (the teacher); VLM kinds ignore it.
    The same ``seed`` gives byte-identical weights.
    """
    from vea_bench.registry import build

    try:  # library code never prints: no "Writing model shards" progress bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return Path(build(TINY_BUILDERS, kind, optional=("num_classes",), out=out, seed=seed,
                      num_classes=num_classes))


# --------------------------------------------------------------------------------------------
# Tokenizer corpus: everything extraction and instruction tuning feed a tiny model.
# --------------------------------------------------------------------------------------------

def _corpus() -> list[str]:
    """Prompts, answers, label words and template text: the tiny vocabulary is trained on these."""
    from vea_bench.labels import LabelSpace
    from vea_bench import labels as labels_mod
    from vea_bench import prompts

    spaces = [v for v in vars(labels_mod).values() if isinstance(v, LabelSpace)]
    lines = [prompts.SYSTEM_MESSAGE, prompts.CONVERSATION_INSTRUCTION, prompts.REASONING_INSTRUCTION,
             "You are a helpful assistant.", "system", "user", "assistant", "USER:", "ASSISTANT:",
             "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "Picture 1:", "Video 1:",
             "The image shows a person, a dog, a tree, the sky, water and a street at night.",
             "The colours are bright and warm, so the viewer feels happy and calm.",
             "The scene is dark and the people look afraid, sad or angry.",
             "0123456789 . , ; : ! ? ' \" ( ) [ ] { } < > / \\ | - _ + = * & % $ # @ ~ `"]
    for space in spaces:
        lines.append(prompts.categorical_instruction(space))
        for label in space.labels:
            lines.append(prompts.categorical_answer(label))
            lines.append(f"{{'emotion':'{label}'}}")
            lines.append(f'{{"emotion": "{label}"}}')
            lines.append(f"The emotion is {label}. {label.capitalize()} {label.upper()}")
    return lines * 4


# --------------------------------------------------------------------------------------------
# Qwen2-VL
# --------------------------------------------------------------------------------------------

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                  "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                  "<|image_pad|>", "<|video_pad|>"]


def _train_bytelevel_bpe(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE (Qwen2's pre-tokenisation) over the corpus: any text encodes, prompts compactly."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return _vocab_and_merges(tok)


def _vocab_and_merges(tok: Any) -> tuple[dict[str, int], list[tuple[str, str]]]:
    import json

    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return dict(state["vocab"]), merges  # type: ignore[return-value]


def _qwen_tokenizer() -> Any:
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bytelevel_bpe(420)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", model_max_length=32768, padding_side="left",
                         extra_special_tokens=_QWEN_SPECIALS[1:])
    return tok


def _qwen_text_config(tok: Any, ids: dict[str, int], hidden: int) -> dict[str, Any]:
    """Qwen2 text decoder: 2 layers, GQA 4/2 heads, M-RoPE sections summing to head_dim / 2."""
    return dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=4096, rms_norm_eps=1e-6, initializer_range=0.2,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)


def save_tiny(model: Any, processor: Any, out: Path, *, eos: int | list[int], pad: int) -> Path:
    """Give a tiny model its checkpoint's stop and pad ids, then save model and processor into
    ``out`` as a hub checkpoint is laid out (what `from_pretrained` reads back)."""
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _qwen_token_ids(tok: Any) -> dict[str, Any]:
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                tie_word_embeddings=False)


# --------------------------------------------------------------------------------------------
# Llama-family tokenizer (Mistral for LLaVA-NeXT, Vicuna for InstructBLIP)
# --------------------------------------------------------------------------------------------

def _llama_tokenizer(extra_special: list[str]) -> Any:
    """A sentencepiece-style (metaspace + byte fallback) BPE in LlamaTokenizer, as Mistral/Vicuna use."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=360, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    trained, merges = _vocab_and_merges(tok)
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    out = LlamaTokenizer(vocab=vocab, merges=merges, model_max_length=4096, padding_side="left", pad_token="<unk>",
                         add_bos_token=True, add_eos_token=False,
                         extra_special_tokens=extra_special or None)
    return out


# The ViT teacher is built by the pipeline side; registered lazily so importing it stays optional.
TINY_BUILDERS.add("teacher", "vea_bench.models.teacher:make_tiny_teacher")

def __getattr__(name: str) -> Any:
    """``TINY_KINDS``: the kinds `make_tiny` (and `vea-bench models make-tiny`) accepts, read when asked,
    so the builders the VLM family modules register after this module is imported are included."""
    if name == "TINY_KINDS":
        import vea_bench.models  # noqa: F401  (registers every family's builder)

        return tuple(TINY_BUILDERS.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
