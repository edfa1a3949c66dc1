"""Gemma 3 (google/gemma-3-4b-it and larger) backend and its tiny random model.

The visual embedding is the multi-modal projector output (SigLIP's last hidden state, average-
pooled to ``mm_tokens_per_image`` tokens, RMS-normed and projected to the language model's width:
2560 for the 4B), mean-pooled over the image's soft tokens: exactly what
``get_image_features`` returns and the language model reads as the image.

One hook beyond the declaration: Gemma 3 lets an image's soft tokens attend to each other both
ways during the prompt prefill (its processor's ``token_type_ids`` mark the image block);
`_prefill_kwargs` builds the same mask the model's own forward builds, so the one-pass prefill
equals the model's forward. Decode steps and label scoring are causal, as in ``generate``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from vea_bench.models.generic import ImageTextToTextBackend, VLMFamily, vlm_family
from vea_bench.models.tiny import TINY_BUILDERS, save_tiny

def _fit_processor(processor: Any, config: Any) -> None:
    """The real checkpoint's image side and soft-token count on the tiny Gemma 3 processor."""
    side = config.vision_config.image_size
    processor.image_processor.size = {"height": side, "width": side}
    n = int(config.mm_tokens_per_image)
    tok = processor.tokenizer
    processor.image_seq_length = n
    processor.full_image_sequence = f"\n\n{tok.boi_token}{tok.image_token * n}{tok.eoi_token}\n\n"


FAMILY = VLMFamily(
    name="gemma3", model_class="Gemma3ForConditionalGeneration", model_types=("gemma3",),
    pooling="mean over the image's soft tokens of multi_modal_projector output",
    image_inputs=("pixel_values",), embed_dim_path="text_config.hidden_size",
    nested_images=True, vision_module="model.vision_tower",
    vision_paths=("model.vision_tower", "model.multi_modal_projector"), tiny="gemma3", aliases=("gemma-3",),
    presets=("gemma-3-4b-it",), fit_processor=_fit_processor,
    overflow_dtypes=("float16",),  # activations exceed fp16's range: bf16 or fp32 only
    min_transformers="5.24")  # 5.3 (our lower bound) fails the backend tests


@vlm_family(FAMILY)
class Gemma3Backend(ImageTextToTextBackend):
    """Gemma3ForConditionalGeneration: SigLIP + average-pool projector, bidirectional image block."""

    def _prefill_kwargs(self, batch: dict[str, Any], image_mask: Any, embeds: Any, pos: Any,
                        visual_extra: Any) -> dict[str, Any]:
        from transformers.models.gemma3 import modeling_gemma3 as mg

        token_type_ids = batch.get("token_type_ids")
        if token_type_ids is None:
            return {}
        blocks = mg.get_block_sequence_ids_for_mask(token_type_ids.to(embeds.device), device=embeds.device)
        mapping = mg.create_masks_for_vision_model(
            block_sequence_ids=blocks, config=self.core.config.get_text_config(), inputs_embeds=embeds,
            attention_mask=batch["attention_mask"], cache=None, position_ids=pos)
        return {"attention_mask": mapping}


GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = (messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text']) + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""google/gemma-3-4b-it's chat template, reduced to text and image items (system text opens the first user turn)."""

_GEMMA_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]


def _gemma_tokenizer() -> Any:
    """A Gemma-layout tokenizer (pad 0, eos 1, bos 2, unk 3; byte fallback; BOS added) over the project corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    from vea_bench.models.tiny import _corpus, _vocab_and_merges

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tok.train_from_iterator(_corpus(), trainer=trainers.BpeTrainer(vocab_size=360, show_progress=False))
    trained, merges = _vocab_and_merges(tok)
    vocab: dict[str, int] = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    # add_bos_token as google/gemma-3-4b-it's tokenizer_config: every plain tokenisation opens with <bos>
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=8192, padding_side="left",
                          add_bos_token=True, add_eos_token=False,
                          extra_special_tokens={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                "image_token": "<image_soft_token>",
                                                "sot_token": "<start_of_turn>", "eot_token": "<end_of_turn>"})


@TINY_BUILDERS.register("gemma3", aliases=("gemma-3",))
def make_tiny_gemma3(out: Path, seed: int = 0) -> Path:
    """Tiny Gemma3ForConditionalGeneration (SigLIP 2 layers, 4 soft tokens per image, Gemma 3 text 2 layers)."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    tok = _gemma_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in _GEMMA_SPECIALS}
    side, patch, tokens_per_image = 32, 4, 4
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                         sliding_window=512, max_position_embeddings=4096, initializer_range=0.2,
                         layer_types=["sliding_attention", "full_attention"],
                         bos_token_id=2, eos_token_id=[1, ids["<end_of_turn>"]], pad_token_id=0),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=side, patch_size=patch,
                           vision_use_head=False, initializer_range=0.2),
        mm_tokens_per_image=tokens_per_image, boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"],
        initializer_range=0.2, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # transformers initialises the projection to zeros (it is trained from scratch)
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.2)
    image_processor = Gemma3ImageProcessor(size={"height": side, "width": side}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=GEMMA3_CHAT_TEMPLATE,
                                image_seq_length=tokens_per_image)
    return save_tiny(model, processor, out, eos=[1, ids["<end_of_turn>"]], pad=0)
