"""LLaVA-NeXT (LLaVA-1.6) backend: one of the paper's zero-shot rows.

The visual embedding is the multi-modal projector output (the vision features mapped into the
language model's width), mean-pooled over all tokens of all of the image's crops (base view and
any-resolution tiles, before unpadding and the learned newline tokens). A forward hook on the
projector captures it during the model's own `get_image_features` call, which runs once per
batch; its packed result is what the language model sees.
"""
from __future__ import annotations

from typing import Any, ClassVar

from vea_bench.models.base import VLM_BACKENDS
from vea_bench.models.engine import HFVLMBackend, segment_mean


@VLM_BACKENDS.register("llava-next", aliases=("llava-1.6", "llava-v1.6"))
class LlavaNextBackend(HFVLMBackend):
    """LlavaNextForConditionalGeneration with its hub chat template (e.g. Mistral's [INST] form)."""

    name: ClassVar[str] = "llava-next"
    model_class: ClassVar[str] = "LlavaNextForConditionalGeneration"
    model_types: ClassVar[tuple[str, ...]] = ("llava_next",)
    pooling: ClassVar[str] = "mean over all crop tokens of multi_modal_projector output"

    @classmethod
    def embed_dim_of(cls, config: Any) -> int:
        """Projector output width = the language model's hidden size (4096 for Mistral-7B)."""
        return int(config.text_config.hidden_size)

    def crops_per_image(self, image_sizes: Any) -> list[int]:
        """Number of crops (base + tiles) the vision tower sees per image, as the model computes it."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        cfg = self.core.config
        return [int(image_size_to_num_patches(image_size=s, grid_pinpoints=cfg.image_grid_pinpoints,
                                              patch_size=cfg.vision_config.image_size))
                for s in image_sizes]

    def _visual(self, b: dict[str, Any]) -> tuple[Any, Any]:
        import torch

        inner = self.core.model
        captured: list[Any] = []
        hook = inner.multi_modal_projector.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            out = inner.get_image_features(pixel_values=b["pixel_values"], image_sizes=b["image_sizes"])
        finally:
            hook.remove()
        packed = out.pooler_output
        feats = torch.cat(list(packed), dim=0) if isinstance(packed, (list, tuple)) else packed
        proj = captured[0]                                   # crops x tokens x D
        counts = self.crops_per_image(b["image_sizes"])
        return feats, segment_mean(proj.float().mean(1), counts)  # equal tokens per crop
