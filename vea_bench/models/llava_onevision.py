"""LLaVA-OneVision (llava-hf/llava-onevision-qwen2-7b-ov-hf and the 0.5B / 72B) backend and its tiny model.

The visual embedding is the multi-modal projector output (SigLIP features mapped to the Qwen2
language model's width: 3584 for the 7B), mean-pooled over every token of every crop of the image
(the base view and the any-resolution tiles' unpadded area), captured by a forward hook during the
model's own ``get_image_features`` call, the same definition as the LLaVA-NeXT backend: the tiles
cover the image resized into the best grid and padded to it, so averaging the padding too would
make the embedding depend on the aspect ratio. The model's own ``pack_image_features`` cuts the
padding (and applies the ``anyres_max_9`` down-sampling of large grids) exactly as the language
model reads it; its learned newline tokens are left out. The chat template puts the images first
in a user turn whatever the message order, so only that position is declared.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vea_bench.models.generic import ImageTextToTextBackend, VLMFamily, vlm_family
from vea_bench.models.llava_next import pool_packed
from vea_bench.models.tiny import TINY_BUILDERS

def _fit_processor(processor: Any, config: Any) -> None:
    """The real checkpoint's crop size, tokens per crop and any-resolution grid on the tiny processor."""
    side, patch = config.vision_config.image_size, config.vision_config.patch_size
    ip = processor.image_processor
    ip.image_grid_pinpoints = config.image_grid_pinpoints
    ip.size = {"height": side, "width": side}
    processor.num_image_tokens = (side // patch) ** 2


FAMILY = VLMFamily(
    name="llava-onevision", model_class="LlavaOnevisionForConditionalGeneration", model_types=("llava_onevision",),
    pooling="mean over base-view and unpadded tile tokens (no newline tokens) of multi_modal_projector output",
    image_inputs=("pixel_values", "image_sizes"), pooled_from="model.multi_modal_projector",
    embed_dim_path="text_config.hidden_size", vision_module="model.vision_tower",
    vision_paths=("model.vision_tower", "model.multi_modal_projector"), tiny="llava-onevision",
    aliases=("llava-ov",), presets=("llava-onevision-qwen2-7b-ov",), fit_processor=_fit_processor,
    image_positions=("first",))


@vlm_family(FAMILY)
class LlavaOnevisionBackend(ImageTextToTextBackend):
    """LlavaOnevisionForConditionalGeneration: any-resolution crops, projector output pooled."""

    def crops_per_image(self, batch: dict[str, Any]) -> list[int]:
        """Crops (base + tiles) the vision tower sees per image, as the model computes them."""
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        cfg = self.core.config
        return [int(image_size_to_num_patches(image_size=s, grid_pinpoints=cfg.image_grid_pinpoints,
                                              patch_size=cfg.vision_config.image_size))
                for s in batch["image_sizes"]]

    def _pool_captured(self, proj: Any, b: dict[str, Any]) -> Any:
        """Mean over each image's base-view and unpadded tile tokens (LLaVA-NeXT's definition)."""
        cfg = self.core.config
        ratio = getattr(cfg, "vision_aspect_ratio", None) or "anyres_max_9"
        pack = self.core.model.pack_image_features
        return pool_packed(proj, self.crops_per_image(b), lambda per_image: pack(
            per_image, b["image_sizes"], image_newline=None, vision_aspect_ratio=ratio))


LLAVA_ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""The llava-hf OneVision chat template's layout (ChatML, images first in a user turn)."""


@TINY_BUILDERS.register("llava-onevision", aliases=("llava-ov",))
def make_tiny_llava_onevision(out: Path, seed: int = 0) -> Path:
    """Tiny LlavaOnevisionForConditionalGeneration (SigLIP 2 layers, any-res tiles, Qwen2 2 layers)."""
    import torch
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor)
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    from vea_bench.models import tiny

    tok = tiny._qwen_tokenizer()
    tok.add_tokens(["<image>", "<video>"], special_tokens=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in tiny._QWEN_SPECIALS + ["<image>", "<video>"]}
    side, patch = 32, 8
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    text = tiny._qwen_text_config(tok, ids, 64)
    text.update(model_type="qwen2", rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=side, patch_size=patch,
                           vision_use_head=False, initializer_range=0.2),
        text_config=text, image_token_index=ids["<image>"], video_token_index=ids["<video>"],
        image_grid_pinpoints=pinpoints, vision_feature_select_strategy="full", vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessor(size={"height": side, "width": side},
                                                   image_grid_pinpoints=pinpoints, do_pad=True)
    video_processor = LlavaOnevisionVideoProcessor(size={"height": side, "width": side})
    processor = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tok,
                                        video_processor=video_processor,
                                        num_image_tokens=(side // patch) ** 2, vision_feature_select_strategy="full",
                                        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE, vision_aspect_ratio="anyres_max_9")
    return tiny.save_tiny(model, processor, out, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])
