"""Qwen2-VL (the paper's VLM) and Qwen2.5-VL backends.

The visual embedding is SPEC's distill input: the output of the vision tower's patch merger
(3584-d per merged token for the 7B), mean-pooled over each image's merged tokens. It comes from
the model's own `get_image_features` call, made once per batch; the same features are scattered
into the prompt embeddings for the answer, so the vision tower never runs twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vea_bench.models import tiny
from vea_bench.models.engine import HFVLMBackend, segment_mean
from vea_bench.models.family import VLMFamily
from vea_bench.models.generic import vlm_family
from vea_bench.models.tiny import TINY_BUILDERS

_QWEN_POOLING = "mean over each image's merged tokens of visual.merger output"

def fit_qwen_processor(processor: Any, config: Any) -> None:
    """The real checkpoint's patch / merge sizes and pixel range on a tiny Qwen processor."""
    vc = config.vision_config
    ip = processor.image_processor
    ip.patch_size, ip.merge_size, ip.temporal_patch_size = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
    factor = vc.patch_size * vc.spatial_merge_size
    ip.size = {"shortest_edge": 4 * factor * factor, "longest_edge": 16384 * factor * factor}


FAMILY = VLMFamily(
    name="qwen2-vl", model_class="Qwen2VLForConditionalGeneration", model_types=("qwen2_vl",),
    pooling=_QWEN_POOLING, image_inputs=("pixel_values", "image_grid_thw"),
    embed_dim_path="vision_config.hidden_size",      # Qwen2-VL's merger output width is the vision hidden_size
    vision_module="model.visual", language_module="model.language_model", tiny="qwen2-vl",
    aliases=("qwen2vl",), presets=("qwen2-vl-7b-instruct",), fit_processor=fit_qwen_processor)


@vlm_family(FAMILY)
class Qwen2VLBackend(HFVLMBackend):
    """Qwen2VLForConditionalGeneration: merger output, M-RoPE positions, chat template of the hub."""

    @property
    def merge_size(self) -> int:
        return int(self.core.config.vision_config.spatial_merge_size)

    def _visual(self, b: dict[str, Any]) -> tuple[Any, Any]:
        import torch

        grid = b["image_grid_thw"]
        out = self.core.model.get_image_features(b["pixel_values"], grid)
        per_image = out.pooler_output
        feats = torch.cat(list(per_image), dim=0) if isinstance(per_image, (list, tuple)) else per_image
        counts = (grid.prod(-1) // self.merge_size ** 2).tolist()
        return feats, segment_mean(feats, counts)

    def _rope_index(self, b: dict[str, Any], mask: Any) -> tuple[Any, Any]:
        ids = b["input_ids"]
        mm = b.get("mm_token_type_ids")
        if mm is None:
            mm = (ids == self._image_token_id()).int()
        return self.core.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=b["image_grid_thw"],
                                              attention_mask=mask)

    def _prefill_positions(self, b: dict[str, Any], mask: Any) -> tuple[Any, Any]:
        """3-D M-RoPE indices of the prompt, and the text position the model's own full forward gives
        the first answer token (new tokens then count up by one).

        That position comes from the rope index of the prompt plus one text token, not from the
        returned per-row delta: in some transformers versions (Qwen2.5-VL on 5.3) the delta
        (max position + 1 - length) disagrees with where the full forward continues the text.
        """
        import torch

        ids = b["input_ids"]
        mm = b.get("mm_token_type_ids")
        if mm is None:
            mm = (ids == self._image_token_id()).int()
        one = torch.ones((ids.shape[0], 1), dtype=ids.dtype, device=ids.device)
        ext = {"input_ids": torch.cat([ids, one * (self.tokenizer.pad_token_id or 0)], dim=1),
               "mm_token_type_ids": torch.cat([mm, torch.zeros_like(one, dtype=mm.dtype)], dim=1),
               "image_grid_thw": b["image_grid_thw"]}
        pos3, _ = self._rope_index(ext, torch.cat([mask, one.to(mask.dtype)], dim=1))
        return pos3[..., :-1], pos3[0, :, -1].to(mask.device)

    def _format_positions(self, pos: Any) -> Any:
        return pos[None].expand(3, -1, -1)


def _has_qwen25() -> bool:
    """Qwen2.5-VL exists from transformers 4.49 on; register its backend only where it does."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("transformers")  # locates the package without importing it
    roots = list(spec.submodule_search_locations or []) if spec else []
    return any((Path(r) / "models" / "qwen2_5_vl").is_dir() for r in roots)


QWEN25_FAMILY = VLMFamily(
    name="qwen2.5-vl", model_class="Qwen2_5_VLForConditionalGeneration", model_types=("qwen2_5_vl",),
    pooling=_QWEN_POOLING, image_inputs=("pixel_values", "image_grid_thw"),
    embed_dim_path="vision_config.out_hidden_size", vision_module="model.visual",
    language_module="model.language_model", tiny="qwen2.5-vl", aliases=("qwen2-5-vl", "qwen25-vl"),
    presets=("qwen2.5-vl-7b-instruct",), fit_processor=fit_qwen_processor)

if _has_qwen25():
    @vlm_family(QWEN25_FAMILY)
    class Qwen25VLBackend(Qwen2VLBackend):
        """Qwen2_5_VLForConditionalGeneration: same interface; merger output width is `out_hidden_size`."""


# ---------------------------------------------------------------- tiny random-weight models

def _save_qwen(model: Any, processor_cls: Any, tok: Any, ids: dict[str, int], out: Path) -> Path:
    """Qwen's image/video processors at patch 4, merge 2 (4-64 merged tokens per image) + save."""
    from transformers import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    factor = 4 * 2  # patch_size * merge_size
    size = {"shortest_edge": 4 * factor * factor, "longest_edge": 64 * factor * factor}
    image_processor = Qwen2VLImageProcessor(patch_size=4, temporal_patch_size=2, merge_size=2, size=size)
    video_processor = Qwen2VLVideoProcessor(patch_size=4, temporal_patch_size=2, merge_size=2, size=size)
    processor = processor_cls(image_processor=image_processor, tokenizer=tok,
                              video_processor=video_processor, chat_template=tiny.QWEN2_VL_CHAT_TEMPLATE)
    gc = model.generation_config
    # As Qwen2-VL-7B-Instruct's generation_config.json (SPEC): sampling on, top_k 1 and a 1.05 repetition
    # penalty, which a bare `generate` inherits: they turn the reference's "T=0.8 sampling" into greedy
    # with a penalty. The low temperature / top_p are overridden by the reference's own 0.8 / 1.0.
    gc.do_sample, gc.top_k, gc.top_p, gc.temperature, gc.repetition_penalty = True, 1, 0.001, 0.1, 1.05
    return tiny.save_tiny(model, processor, out, eos=ids["<|im_end|>"], pad=ids["<|endoftext|>"])


def _make_qwen2_vl(out: Path, seed: int, *, vision_width: int, kv_heads: int | None) -> Path:
    """Tiny Qwen2VLForConditionalGeneration (2+2 layers, hidden 64, merger out 64) + Qwen2VLProcessor."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tok = tiny._qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in tiny._QWEN_SPECIALS}
    text = tiny._qwen_text_config(tok, ids, 64)
    if kv_heads is not None:
        text["num_key_value_heads"] = kv_heads
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=2, embed_dim=vision_width, hidden_size=64, num_heads=2, mlp_ratio=2,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           initializer_range=0.2),
        **tiny._qwen_token_ids(tok),
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

    tok = tiny._qwen_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in tiny._QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config=tiny._qwen_text_config(tok, ids, 64),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           window_size=16, fullatt_block_indexes=[1], initializer_range=0.2),
        **tiny._qwen_token_ids(tok),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return _save_qwen(model, Qwen2_5_VLProcessor, tok, ids, out)
