"""Tiny random-weight VLMs of the real transformers classes, built offline in seconds.

Tests, the demo and the benchmark load these with exactly the code that loads a hub model
(`AutoProcessor.from_pretrained(dir)`, `<ModelClass>.from_pretrained(dir)`), so every code path of
extraction and training runs on CPU without downloading 15 GB. Each builder trains a small BPE /
WordPiece vocabulary over the project's own prompts, label words and chat-template text (so the
tokenizer round-trips everything extraction feeds it), wraps it in the tokenizer class the real
processor expects, adds the model's special image tokens and a chat template in the real model's
format, and `save_pretrained`s model + processor into one directory.

`make_tiny` dispatches through `TINY_BUILDERS`, a registry, so other modules (the ViT teacher in
`vea_bench.models.teacher`) add kinds without touching these code paths.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from vea_bench.registry import Registry

TinyBuilder = Callable[..., Path]

TINY_BUILDERS: Registry[TinyBuilder] = Registry("tiny model kind")


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


def _save_qwen(model: Any, processor_cls: Any, tok: Any, ids: dict[str, int], out: Path) -> Path:
    """Qwen's image/video processors at patch 4, merge 2 (4-64 merged tokens per image) + save."""
    from transformers import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    factor = 4 * 2  # patch_size * merge_size
    size = {"shortest_edge": 4 * factor * factor, "longest_edge": 64 * factor * factor}
    image_processor = Qwen2VLImageProcessor(patch_size=4, temporal_patch_size=2, merge_size=2, size=size)
    video_processor = Qwen2VLVideoProcessor(patch_size=4, temporal_patch_size=2, merge_size=2, size=size)
    processor = processor_cls(image_processor=image_processor, tokenizer=tok,
                              video_processor=video_processor, chat_template=QWEN2_VL_CHAT_TEMPLATE)
    gc = model.generation_config
    # As Qwen2-VL-7B-Instruct's generation_config.json (SPEC): sampling on, top_k 1 and a 1.05 repetition
    # penalty, which a bare `generate` inherits: they turn the reference's "T=0.8 sampling" into greedy
    # with a penalty. The low temperature / top_p are overridden by the reference's own 0.8 / 1.0.
    gc.do_sample, gc.top_k, gc.top_p, gc.temperature, gc.repetition_penalty = True, 1, 0.001, 0.1, 1.05
    return save_tiny(model, processor, out, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])


def _qwen_token_ids(tok: Any) -> dict[str, Any]:
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                tie_word_embeddings=False)


def _make_qwen2_vl(out: Path, seed: int, *, vision_width: int, kv_heads: int | None) -> Path:
    """Tiny Qwen2VLForConditionalGeneration (2+2 layers, hidden 64, merger out 64) + Qwen2VLProcessor."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tok = _qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    text = _qwen_text_config(tok, ids, 64)
    if kv_heads is not None:
        text["num_key_value_heads"] = kv_heads
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=2, embed_dim=vision_width, hidden_size=64, num_heads=2, mlp_ratio=2,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           initializer_range=0.2),
        **_qwen_token_ids(tok),
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    return _save_qwen(model, Qwen2VLProcessor, tok, ids, out)


@TINY_BUILDERS.register("qwen2-vl")
def make_tiny_qwen2_vl(out: Path, seed: int = 0) -> Path:
    """Tiny Qwen2VLForConditionalGeneration (2+2 layers, hidden 64, merger out 64) + Qwen2VLProcessor."""
    return _make_qwen2_vl(out, seed, vision_width=32, kv_heads=None)


@TINY_BUILDERS.register("qwen2-vl-nf4", aliases=("qwen2-vl-4bit",))
def make_tiny_qwen2_vl_nf4(out: Path, seed: int = 0) -> Path:
    """Tiny Qwen2-VL whose every Linear the 4-bit loader quantises is a multiple of 64 wide on both
    sides (vision 64, merger 256 -> 64, text 64 with 4 KV heads, MLPs 128): NF4 blocks are 64 values,
    so these layers quantise in whole blocks, as every layer of the real 7B does."""
    return _make_qwen2_vl(out, seed, vision_width=64, kv_heads=4)   # k/v projections 64 wide, not 32


@TINY_BUILDERS.register("qwen2.5-vl")
def make_tiny_qwen2_5_vl(out: Path, seed: int = 0) -> Path:
    """Tiny Qwen2_5_VLForConditionalGeneration (window attention, merger out 64) + its processor."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    tok = _qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_config(tok, ids, 64),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           window_size=16, fullatt_block_indexes=[1], initializer_range=0.2),
        **_qwen_token_ids(tok),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return _save_qwen(model, Qwen2_5_VLProcessor, tok, ids, out)


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


LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + (message['content'] if message['content'] is string else message['content'][0]['text']) + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% endif %}{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + (message['content'] if message['content'] is string else message['content'][0]['text']) + '</s>' }}"
    "{% else %}{{ raise_exception('Only system, user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)


@TINY_BUILDERS.register("llava-next")
def make_tiny_llava_next(out: Path, seed: int = 0) -> Path:
    """Tiny LlavaNextForConditionalGeneration (CLIP 2 layers + Mistral 2 layers) + LlavaNextProcessor."""
    import torch
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor)

    tok = _llama_tokenizer(["<image>"])
    image_id = tok.convert_tokens_to_ids("<image>")
    side, patch = 32, 8
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=side, patch_size=patch,
                           projection_dim=32, initializer_range=0.2),
        text_config=dict(model_type="mistral", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, sliding_window=None, initializer_range=0.2,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
        image_token_index=image_id, image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-2,
        projector_hidden_act="gelu", tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side},
        image_grid_pinpoints=pinpoints, do_pad=True)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch,
                                   vision_feature_select_strategy="default",
                                   chat_template=LLAVA_NEXT_MISTRAL_CHAT_TEMPLATE, image_token="<image>",
                                   num_additional_image_tokens=1)
    return save_tiny(model, processor, out, eos=2, pad=0)


# --------------------------------------------------------------------------------------------
# InstructBLIP
# --------------------------------------------------------------------------------------------

def _bert_tokenizer() -> Any:
    """The Q-Former's WordPiece tokenizer (uncased BERT), with a vocabulary of the corpus' words."""
    import re

    from transformers import BertTokenizer

    words: set[str] = set()
    for line in _corpus():
        words.update(re.findall(r"\w+|[^\w\s]", line.lower()))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    vocab += sorted(w for w in words if w not in vocab)
    return BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True,
                         model_max_length=512)


@TINY_BUILDERS.register("instructblip", aliases=("instruct-blip",))
def make_tiny_instructblip(out: Path, seed: int = 0) -> Path:
    """Tiny InstructBlipForConditionalGeneration (ViT, Q-Former, Vicuna-style Llama; 2 layers each)."""
    import torch
    from transformers import (BlipImageProcessor, InstructBlipConfig, InstructBlipForConditionalGeneration,
                              InstructBlipProcessor)

    tok = _llama_tokenizer(["<image>"])
    image_id = tok.convert_tokens_to_ids("<image>")
    qtok = _bert_tokenizer()
    side, num_query = 32, 4
    config = InstructBlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=side, patch_size=8, initializer_range=0.2),
        qformer_config=dict(vocab_size=len(qtok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, encoder_hidden_size=32, cross_attention_frequency=1,
                            max_position_embeddings=512, pad_token_id=0, initializer_range=0.2),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=4096, initializer_range=0.2,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
        num_query_tokens=num_query, image_token_index=image_id,
    )
    torch.manual_seed(seed)
    model = InstructBlipForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": side, "width": side}, do_convert_rgb=True)
    processor = InstructBlipProcessor(image_processor=image_processor, tokenizer=tok, qformer_tokenizer=qtok,
                                      num_query_tokens=num_query)
    return save_tiny(model, processor, out, eos=2, pad=0)


# The ViT teacher is built by the pipeline side; registered lazily so importing it stays optional.
TINY_BUILDERS.add("teacher", "vea_bench.models.teacher:make_tiny_teacher")

def __getattr__(name: str) -> Any:
    """``TINY_KINDS``: the kinds `make_tiny` (and `vea-bench models make-tiny`) accepts, read when asked,
    so the builders the VLM family modules register after this module is imported are included."""
    if name == "TINY_KINDS":
        import vea_bench.models  # noqa: F401  (registers every family's builder)

        return tuple(TINY_BUILDERS.names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
