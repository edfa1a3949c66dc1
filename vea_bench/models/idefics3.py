"""Idefics3 / SmolVLM (HuggingFaceTB/SmolVLM-Instruct, HuggingFaceM4/Idefics3-8B-Llama3): a declaration only.

The visual embedding is the connector output (SigLIP's last hidden state, pixel-shuffled by
``scale_factor`` so that each output token packs ``scale_factor**2`` neighbouring patches, then
projected to the language model's width: 2048 for SmolVLM-Instruct), mean-pooled over every token
of every crop of the image. With image splitting on (the hub default) the processor feeds the
vision tower the row x column tiles plus a downscaled global view, and the language model reads
all of them; the mean covers them all, each token with equal weight, which is what the language
model sees as the image. Pixel shuffle only regroups features, so the mean over connector tokens
is still a mean over the whole image. ``get_image_features`` returns one row block per prompt
(one image per prompt here), so the pooled rows are its own ``pooler_output``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vea_bench.models.generic import VLMFamily, declare_family
from vea_bench.models.tiny import TINY_BUILDERS, save_tiny

def _fit_processor(processor: Any, config: Any) -> None:
    """The real checkpoint's tile size, image splitting and tokens per tile on the tiny processor."""
    vc = config.vision_config
    ip = processor.image_processor
    ip.max_image_size = {"longest_edge": vc.image_size}
    ip.size = {"longest_edge": 4 * vc.image_size}
    ip.do_image_splitting = True
    processor.image_seq_len = (vc.image_size // vc.patch_size) ** 2 // config.scale_factor ** 2


FAMILY = VLMFamily(
    name="idefics3", model_class="Idefics3ForConditionalGeneration", model_types=("idefics3",),
    pooling="mean over all crop tokens (tiles + global view) of the pixel-shuffle connector output",
    image_inputs=("pixel_values", "pixel_attention_mask"), embed_dim_path="text_config.hidden_size",
    nested_images=True, vision_module="model.vision_model", vision_paths=("model.vision_model", "model.connector"),
    language_module="model.text_model", tiny="idefics3", aliases=("smolvlm",),
    presets=("smolvlm-instruct",), fit_processor=_fit_processor)

Idefics3Backend = declare_family(FAMILY, module=__name__)

SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is not string and message['content'][0]['type'] == 'image' %}{{ ':' }}"
    "{% else %}{{ ': ' }}{% endif %}{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
"""SmolVLM-Instruct's chat template (role names capitalised, ``<end_of_utterance>`` closing each turn)."""

_IDEFICS3_SPECIALS = (["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", "<|im_start|>"]
                      + [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)])


def _smollm_tokenizer() -> Any:
    """A byte-level BPE in GPT2Tokenizer with SmolVLM's special tokens and settings (``<|im_start|>``
    as BOS, never added; ``<end_of_utterance>`` ends a turn; no prefix space), as SmolLM2 is."""
    from transformers import GPT2Tokenizer

    from vea_bench.models.tiny import _train_bytelevel_bpe

    vocab, merges = _train_bytelevel_bpe(420)
    return GPT2Tokenizer(vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|im_start|>",
                         eos_token="<end_of_utterance>", pad_token="<|im_end|>", add_prefix_space=False,
                         add_bos_token=False, model_max_length=16384, padding_side="left",
                         extra_special_tokens=["<|im_end|>"] + _IDEFICS3_SPECIALS)


@TINY_BUILDERS.register("idefics3", aliases=("smolvlm",))
def make_tiny_idefics3(out: Path, seed: int = 0) -> Path:
    """Tiny Idefics3ForConditionalGeneration (SigLIP-style 2 layers, pixel shuffle 2, Llama 2 layers,
    SmolLM2's byte-level tokenizer layout)."""
    import torch
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    tok: Any = _smollm_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in ["<|im_start|>", "<|im_end|>"] + _IDEFICS3_SPECIALS[:3]}
    side, patch, scale = 32, 4, 2
    seq_len = (side // patch) ** 2 // scale ** 2
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=side, patch_size=patch, initializer_range=0.2),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, initializer_range=0.2, bos_token_id=ids["<|im_start|>"],
                         eos_token_id=[ids["<|im_end|>"], ids["<end_of_utterance>"]],
                         pad_token_id=ids["<|im_end|>"], tie_word_embeddings=False),
        scale_factor=scale, image_token_id=ids["<image>"], tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    image_processor = Idefics3ImageProcessor(size={"longest_edge": side}, max_image_size={"longest_edge": side},
                                             do_image_splitting=False)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len,
                                  chat_template=SMOLVLM_CHAT_TEMPLATE)
    return save_tiny(model, processor, out, eos=[ids["<|im_end|>"], ids["<end_of_utterance>"]], pad=ids["<|im_end|>"])
