"""LLaVA-NeXT (LLaVA-1.6) backend: one of the paper's zero-shot rows.

The visual embedding is the multi-modal projector output (the vision features mapped into the
language model's width), mean-pooled over exactly the tokens the language model reads as the
image minus its learned newline tokens: the base view's tokens plus the any-resolution tiles'
tokens after unpadding. The tiles cover a padded canvas (the image resized into the best grid
resolution and padded to it); averaging the padded area too would make the embedding depend on
the aspect ratio, so the padded rows and columns are cut exactly as transformers'
`pack_image_features` / `unpad_image` cut them. A forward hook on the projector captures its
output during the model's own `get_image_features` call, which runs once per batch; its packed
result is what the language model sees.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vea_bench.models import tiny
from vea_bench.models.engine import HFVLMBackend, segment_mean
from vea_bench.models.family import VLMFamily
from vea_bench.models.generic import vlm_family
from vea_bench.models.tiny import TINY_BUILDERS

def _fit_processor(processor: Any, config: Any) -> None:
    """The real checkpoint's crop size, patch size and any-resolution grid on the tiny processor."""
    side, patch = config.vision_config.image_size, config.vision_config.patch_size
    ip = processor.image_processor
    ip.image_grid_pinpoints = config.image_grid_pinpoints
    ip.size = {"shortest_edge": side}
    ip.crop_size = {"height": side, "width": side}
    processor.patch_size = patch


FAMILY = VLMFamily(
    name="llava-next", model_class="LlavaNextForConditionalGeneration", model_types=("llava_next",),
    pooling="mean over base-view and unpadded tile tokens (no newline tokens) of multi_modal_projector output",
    image_inputs=("pixel_values", "image_sizes"),
    embed_dim_path="text_config.hidden_size",        # projector output = the language model's width
    vision_module="model.vision_tower", vision_paths=("model.vision_tower", "model.multi_modal_projector"),
    language_module="model.language_model", tiny="llava-next", aliases=("llava-1.6", "llava-v1.6"),
    presets=("llava-next-mistral-7b",), fit_processor=_fit_processor, image_positions=("first",))


@vlm_family(FAMILY)
class LlavaNextBackend(HFVLMBackend):
    """LlavaNextForConditionalGeneration with its hub chat template (e.g. Mistral's [INST] form)."""

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
        return feats, self.pool_unpadded(captured[0], b["image_sizes"])

    def pool_unpadded(self, proj: Any, image_sizes: Any) -> Any:
        """Mean over each image's base-view + unpadded tile tokens of the projector output
        (all crops x tokens x D): transformers' own unpadding, without the newline tokens."""
        strategy = self.core.config.vision_feature_select_strategy
        pack = self.core.model.pack_image_features
        return pool_packed(proj, self.crops_per_image(image_sizes), lambda per_image: pack(
            per_image, image_sizes, vision_feature_select_strategy=strategy, image_newline=None))


def pool_packed(proj: Any, counts: list[int], pack: Any) -> Any:
    """Mean per image of what ``pack`` (a model's own ``pack_image_features`` with no newline
    embedding) keeps of the projector output ``proj`` (all crops x tokens x D, ``counts`` crops per
    image): the base view and the tiles' unpadded area, so the embedding does not depend on how
    much of the any-resolution canvas is padding."""
    import torch

    unpadded, lens = pack(list(torch.split(proj, counts, dim=0)))
    return segment_mean(torch.cat(list(unpadded), dim=0), [int(n) for n in lens])


# ---------------------------------------------------------------- tiny random-weight model

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

    tok = tiny._llama_tokenizer(["<image>"])
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
    return tiny.save_tiny(model, processor, out, eos=2, pad=0)
