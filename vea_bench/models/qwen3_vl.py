"""Qwen3-VL (Qwen/Qwen3-VL-4B-Instruct, -8B-Instruct, ...) backend and its tiny random model.

The visual embedding is the vision tower's patch-merger output (``out_hidden_size`` wide: the
language model's width, 2560 for the 4B), mean-pooled over each image's merged tokens: what
``get_image_features`` returns and the language model reads at the image placeholders, as for
Qwen2-VL. Qwen3-VL's DeepStack features (merger outputs of intermediate vision layers, added to
the first decoder layers' hidden states at the image positions) come from the same call; the
prefill hands them to the decoder (`_prefill_kwargs`), so the one-pass prefill equals the model's
own forward. They are not pooled: the embedding stays the final merger output, the same
definition as for Qwen2-VL. Positions are Qwen2-VL's 3-D M-RoPE (interleaved sections).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vea_bench.models.generic import VLMFamily, vlm_family
from vea_bench.models.qwen2_vl import Qwen2VLBackend, fit_qwen_processor
from vea_bench.models.tiny import TINY_BUILDERS

FAMILY = VLMFamily(
    name="qwen3-vl", model_class="Qwen3VLForConditionalGeneration", model_types=("qwen3_vl",),
    pooling="mean over each image's merged tokens of visual.merger output (deepstack features not pooled)",
    image_inputs=("pixel_values", "image_grid_thw"), embed_dim_path="vision_config.out_hidden_size",
    vision_module="model.visual", tiny="qwen3-vl", aliases=("qwen3vl",), presets=("qwen3-vl-4b-instruct",),
    fit_processor=fit_qwen_processor, min_transformers="5.24")  # 5.3 (our lower bound) fails the backend tests


@vlm_family(FAMILY)
class Qwen3VLBackend(Qwen2VLBackend):
    """Qwen3VLForConditionalGeneration: merger output pooled, DeepStack features fed to the prefill."""

    def _visual(self, b: dict[str, Any]) -> tuple[Any, Any, Any]:
        import torch

        out = self.core.model.get_image_features(b["pixel_values"], b["image_grid_thw"])
        per_image = list(out.pooler_output)
        feats = torch.cat(per_image, dim=0)
        pooled = torch.stack([t.float().mean(0) for t in per_image])
        deepstack = [torch.cat(list(f), dim=0) for f in (out.deepstack_features or [])]
        return feats, pooled, deepstack

    def _prefill_kwargs(self, batch: dict[str, Any], image_mask: Any, embeds: Any, pos: Any,
                        visual_extra: Any) -> dict[str, Any]:
        if not visual_extra:
            return {}
        return {"visual_pos_masks": image_mask,
                "deepstack_visual_embeds": [d.to(embeds.dtype) for d in visual_extra]}


@TINY_BUILDERS.register("qwen3-vl", aliases=("qwen3vl",))
def make_tiny_qwen3_vl(out: Path, seed: int = 0) -> Path:
    """Tiny Qwen3VLForConditionalGeneration (2+2 layers, DeepStack on both vision layers, merger out 64)."""
    import torch
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from vea_bench.models import tiny

    tok = tiny._qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in tiny._QWEN_SPECIALS}
    text = tiny._qwen_text_config(tok, ids, 64)
    text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                              "mrope_section": [2, 3, 3], "mrope_interleaved": True})
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1], initializer_range=0.2),
        **tiny._qwen_token_ids(tok),
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    factor = 4 * 2
    size = {"shortest_edge": 4 * factor * factor, "longest_edge": 64 * factor * factor}
    image_processor = Qwen2VLImageProcessor(patch_size=4, temporal_patch_size=2, merge_size=2, size=size,
                                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
    video_processor = Qwen3VLVideoProcessor(patch_size=4, temporal_patch_size=2, merge_size=2, size=size)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                 chat_template=tiny.QWEN2_VL_CHAT_TEMPLATE)
    return tiny.save_tiny(model, processor, out, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])
