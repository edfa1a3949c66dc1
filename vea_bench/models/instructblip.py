"""InstructBLIP backend: one of the paper's zero-shot rows.

The visual embedding is the language projection of the Q-Former's query outputs (the tokens the
language model reads as the image), mean-pooled over the query tokens. It is the result of the
model's own `get_image_features` call (vision tower + Q-Former + projection), made once per batch.

Prompt: by default the raw question, to the language model and to the Q-Former alike, as LAVIS
trained InstructBLIP and as lmms-eval and VLMEvalKit evaluate it. ``instructblip_prompt="vicuna"``
wraps the language model's prompt in SPEC's system message and Vicuna v1.1's
``USER: ... ASSISTANT:`` form (the hub processor has no chat template); the Q-Former still reads
the question only (its instruction input was the task text, never a chat transcript). The
processor itself prepends the query placeholders.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from vea_bench.errors import ModelError
from vea_bench.models.base import LoadOptions
from vea_bench.models import tiny
from vea_bench.models.engine import HFVLMBackend, Preparer, cap_image
from vea_bench.models.family import VLMFamily
from vea_bench.models.generic import vlm_family
from vea_bench.models.tiny import TINY_BUILDERS

FAMILY = VLMFamily(
    name="instructblip", model_class="InstructBlipForConditionalGeneration", model_types=("instructblip",),
    pooling="mean over query tokens of language_projection(Q-Former output)",
    image_inputs=("pixel_values", "qformer_input_ids", "qformer_attention_mask"),
    embed_dim_path="text_config.hidden_size",        # language projection = the language model's width
    vision_module="vision_model", vision_paths=("vision_model", "qformer", "language_projection"),
    language_module="language_model", tiny="instructblip", aliases=("instruct-blip",),
    presets=("instructblip-vicuna-7b",), image_positions=("first",))  # the processor prepends the query tokens

VICUNA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% set text = message['content'] if message['content'] is string else "
    "(message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ')) %}"
    "{% if message['role'] == 'system' %}{{ text + ' ' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + text + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + text + '</s>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def check_num_query_tokens(processor: Any, config: Any | None = None) -> None:
    """An InstructBLIP processor saved without ``num_query_tokens`` cannot place the image tokens
    (transformers fails with a TypeError inside the call): one line naming the fix instead."""
    if getattr(processor, "num_query_tokens", None) is not None:
        return
    n = getattr(config, "num_query_tokens", None) if config is not None else None
    value = n if n is not None else "<num_query_tokens of config.json>"
    raise ModelError(f"the InstructBLIP processor has no num_query_tokens; add \"num_query_tokens\": {value} "
                     "to the model's processor_config.json (it must equal config.json's num_query_tokens)")


@dataclass
class InstructBlipPreparer(Preparer):
    """The CPU half: the LM prompt per ``prompt_style``, the Q-Former's input the question only."""

    prompt_style: str = "raw"            # "raw" | "vicuna"

    def chat_text(self, prompt: str) -> str:
        if self.prompt_style == "vicuna":
            return super().chat_text(prompt)
        if not prompt or not prompt.strip():
            raise ModelError("empty prompt: extraction needs the categorical instruction")
        return prompt

    def answer_text(self, prompt: str, answer: str) -> str:
        """The raw prompt has no assistant turn: the answer continues the question after a space."""
        if self.prompt_style == "vicuna":
            return super().answer_text(prompt, answer)
        return " " + answer

    def __call__(self, images: list[Any], prompt: str) -> dict[str, Any]:
        if not images:
            raise ModelError("prepare() got an empty batch of images")
        check_num_query_tokens(self.processor)
        ims = [cap_image(im, self.max_side, self.max_pixels) for im in images]
        text = self.chat_text(prompt)
        out = dict(self.processor(images=ims, text=[text] * len(ims), return_tensors="pt", padding=True))
        if text != prompt:
            q = self.processor.qformer_tokenizer([prompt] * len(ims), return_tensors="pt", padding=True,
                                                 return_token_type_ids=False)
            out["qformer_input_ids"] = q["input_ids"]
            out["qformer_attention_mask"] = q["attention_mask"]
        return out


@vlm_family(FAMILY)
class InstructBlipBackend(HFVLMBackend):
    """InstructBlipForConditionalGeneration (decoder-only language model, e.g. Vicuna-7B)."""

    chat_template: ClassVar[str | None] = VICUNA_CHAT_TEMPLATE
    image_in_template: ClassVar[bool] = False

    def __init__(self, model: Any, processor: Any, opts: LoadOptions, *args: Any, **kwargs: Any) -> None:
        from vea_bench.models.loading import unwrap

        config = unwrap(model).config
        if not getattr(config, "use_decoder_only_language_model", True):
            raise ModelError("InstructBLIP with an encoder-decoder language model (Flan-T5) is not supported; "
                             "use a Vicuna variant such as Salesforce/instructblip-vicuna-7b")
        check_num_query_tokens(processor, config)
        super().__init__(model, processor, opts, *args, **kwargs)

    @classmethod
    def preparer_for(cls, processor: Any, opts: LoadOptions) -> Preparer:
        return InstructBlipPreparer(processor, opts.max_side, opts.max_pixels, cls.chat_template,
                                    cls.image_in_template, prompt_style=opts.instructblip_prompt)

    def provenance(self) -> dict[str, Any]:
        """The base provenance plus which LM prompt was used (the Q-Former always reads the question)."""
        prov = super().provenance()
        prov["instructblip_prompt"] = self.opts.instructblip_prompt
        return prov

    @property
    def generation_config(self) -> Any:
        """InstructBLIP's `generate` hands decoding to its language model, which uses its own config."""
        return getattr(self.core.language_model, "generation_config", None)

    def _visual(self, b: dict[str, Any]) -> tuple[Any, Any]:
        out = self.core.get_image_features(pixel_values=b["pixel_values"],
                                           qformer_input_ids=b["qformer_input_ids"],
                                           qformer_attention_mask=b.get("qformer_attention_mask"))
        q = out.pooler_output                                # B x queries x D
        return q.reshape(-1, q.shape[-1]), q.float().mean(1)


# ---------------------------------------------------------------- tiny random-weight model


def _bert_tokenizer() -> Any:
    """The Q-Former's WordPiece tokenizer (uncased BERT), with a vocabulary of the corpus' words."""
    import re

    from transformers import BertTokenizer

    words: set[str] = set()
    for line in tiny._corpus():
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

    tok = tiny._llama_tokenizer(["<image>"])
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
    return tiny.save_tiny(model, processor, out, eos=2, pad=0)
