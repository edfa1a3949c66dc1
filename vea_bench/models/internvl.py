"""InternVL 3 (OpenGVLab/InternVL3-8B-hf and the other ``-hf`` conversions) backend and its tiny model.

The visual embedding is the multi-modal projector output (InternViT features of every crop,
pixel-shuffled by ``downsample_ratio`` so each token packs four neighbouring patches, then an MLP to
the language model's width), mean-pooled over every token of every crop of the image: the
processor tiles an image into up to ``max_patches`` 448-px crops plus a thumbnail, and the language
model reads all of them. ``get_image_features`` returns those crops stacked (crops x tokens x D)
without saying which image each belongs to; `crops_per_image` reads it from the prompt (the
image's placeholder tokens / tokens per crop), so no number is taken from the processor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vea_bench.models.generic import ImageTextToTextBackend, VLMFamily, vlm_family
from vea_bench.models.tiny import TINY_BUILDERS

def crop_layout(config: Any) -> tuple[int, int]:
    """``(crop side in pixels, language tokens per crop)``: patches per crop side squared, shrunk by the
    pixel shuffle (``downsample_ratio`` per side). The config may give sizes as ``[h, w]``; crops are square."""
    side, patch = config.vision_config.image_size, config.vision_config.patch_size
    side = side[0] if isinstance(side, (list, tuple)) else side
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return int(side), int((side // patch) ** 2 * config.downsample_ratio ** 2)


def _fit_processor(processor: Any, config: Any) -> None:
    """The real checkpoint's crop side, tile budget and tokens per crop on the tiny processor."""
    side, per_crop = crop_layout(config)
    ip = processor.image_processor
    ip.size = {"height": side, "width": side}
    ip.max_patches = 12          # the -hf checkpoints' processor: up to 12 tiles + a thumbnail
    processor.image_seq_length = per_crop


FAMILY = VLMFamily(
    name="internvl", model_class="InternVLForConditionalGeneration", model_types=("internvl",),
    pooling="mean over all crop tokens (tiles + thumbnail) of the pixel-shuffle multi_modal_projector output",
    image_inputs=("pixel_values",), embed_dim_path="text_config.hidden_size", vision_module="model.vision_tower",
    vision_paths=("model.vision_tower", "model.multi_modal_projector"), tiny="internvl", aliases=("internvl3",),
    presets=("internvl3-1b-hf",), fit_processor=_fit_processor)


@vlm_family(FAMILY)
class InternVLBackend(ImageTextToTextBackend):
    """InternVLForConditionalGeneration: per-crop features, crops per image from the placeholders."""

    def crops_per_image(self, batch: dict[str, Any]) -> list[int]:
        _, per_crop = crop_layout(self.core.config)
        counts = (batch["input_ids"] == self._image_token_id()).sum(-1)
        return [int(c) // per_crop for c in counts.tolist()]


INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""The InternVL3 ``-hf`` chat template's layout (ChatML, ``<IMG_CONTEXT>`` where the image goes)."""


@TINY_BUILDERS.register("internvl", aliases=("internvl3",))
def make_tiny_internvl(out: Path, seed: int = 0) -> Path:
    """Tiny InternVLForConditionalGeneration (InternViT 2 layers, up to 4 tiles + thumbnail, Qwen2 2 layers)."""
    import torch
    from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    from vea_bench.models import tiny

    specials = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                "video_token": "<video>"}
    from transformers import Qwen2Tokenizer

    vocab, merges = tiny._train_bytelevel_bpe(420)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         model_max_length=32768, padding_side="left", extra_special_tokens=specials)
    tok.add_tokens(tiny._QWEN_SPECIALS[1:], special_tokens=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in tiny._QWEN_SPECIALS}
    side, patch = 32, 4
    seq = (side // patch) ** 2 // 4
    text = tiny._qwen_text_config(tok, ids, 64)
    text.update(model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=side, patch_size=patch, initializer_range=0.2),
        text_config=text, image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=seq, downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    image_processor = GotOcr2ImageProcessor(size={"height": side, "width": side}, crop_to_patches=True,
                                            min_patches=1, max_patches=4)
    video_processor = InternVLVideoProcessor(size={"height": side, "width": side})
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                  image_seq_length=seq, chat_template=INTERNVL_CHAT_TEMPLATE)
    return tiny.save_tiny(model, processor, out, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])
