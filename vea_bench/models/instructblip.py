"""InstructBLIP backend: one of the paper's zero-shot rows.

The visual embedding is the language projection of the Q-Former's query outputs (the tokens the
language model reads as the image), mean-pooled over the query tokens. It is the result of the
model's own `get_image_features` call (vision tower + Q-Former + projection), made once per batch.
The hub processor has no chat template: the prompt follows Vicuna v1.1's `USER: ... ASSISTANT:`
form with SPEC's system message first, and the processor itself prepends the query placeholders.
"""
from __future__ import annotations

from typing import Any, ClassVar

from vea_bench.models.base import VLM_BACKENDS
from vea_bench.models.engine import HFVLMBackend

VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set text = message['content'] if message['content'] is string else "
    "(message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ')) %}"
    "{% if message['role'] == 'system' %}{{ text + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + text + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + text + '</s>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@VLM_BACKENDS.register("instructblip", aliases=("instruct-blip",))
class InstructBlipBackend(HFVLMBackend):
    """InstructBlipForConditionalGeneration (decoder-only language model, e.g. Vicuna-7B)."""

    name: ClassVar[str] = "instructblip"
    model_class: ClassVar[str] = "InstructBlipForConditionalGeneration"
    model_types: ClassVar[tuple[str, ...]] = ("instructblip",)
    chat_template: ClassVar[str | None] = VICUNA_CHAT_TEMPLATE
    image_in_template: ClassVar[bool] = False
    pooling: ClassVar[str] = "mean over query tokens of language_projection(Q-Former output)"

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        from vea_bench.errors import ModelError
        from vea_bench.models.loading import unwrap

        if not getattr(unwrap(model).config, "use_decoder_only_language_model", True):
            raise ModelError("InstructBLIP with an encoder-decoder language model (Flan-T5) is not supported; "
                             "use a Vicuna variant such as Salesforce/instructblip-vicuna-7b")
        super().__init__(model, *args, **kwargs)

    @property
    def generation_config(self) -> Any:
        """InstructBLIP's `generate` hands decoding to its language model, which uses its own config."""
        return getattr(self.core.language_model, "generation_config", None)

    @classmethod
    def embed_dim_of(cls, config: Any) -> int:
        """Language-projection width = the language model's hidden size (4096 for Vicuna-7B)."""
        return int(config.text_config.hidden_size)

    def _visual(self, b: dict[str, Any]) -> tuple[Any, Any]:
        out = self.core.get_image_features(pixel_values=b["pixel_values"],
                                           qformer_input_ids=b["qformer_input_ids"],
                                           qformer_attention_mask=b.get("qformer_attention_mask"))
        q = out.pooler_output                                # B x queries x D
        return q.reshape(-1, q.shape[-1]), q.float().mean(1)
