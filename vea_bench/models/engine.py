"""The one-pass extraction engine shared by every transformers VLM backend.

Why a hand-written prefill/decode loop instead of `model.generate`: extraction needs three things
from ONE vision pass per batch: the pooled visual-encoder output, an answer (greedy, the
reference's decoding, or seeded sampling) that stops at the closing brace, and the
log-likelihood of every label's answer. `generate` can give the first two, but then scoring
would need a second prefill (and a second vision pass).
Here each backend runs its model's own image-feature function exactly once (the vision tower,
merger / projector and, for InstructBLIP, the Q-Former), pools what it needs from that result,
scatters the features into the prompt embeddings, and the language model does one prefill whose KV
cache is then shared by scoring and by decoding. Scoring runs the answers' shared prefix
(``{'emotion':'``) once per image and branches only for each label's own tokens; it never copies
the prompt cache once per (image, label) row, and it sizes its image chunks from a memory budget.

transformers 5.24 renamed the decoder's ``past_key_values=`` argument and output to ``cache``
(the old names warn and go in 5.40); `cache_kwarg` / `output_cache` pick whichever the
installed version has, so the same loop runs on the lowest supported version too.

Positions follow the left padding (cumulative attention mask, or Qwen2-VL's 3-D M-RoPE indices
and the text position where its own forward continues), so a padded row gives what it gives
alone: batched == batch-size-1.
"""
from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vea_bench.errors import ConfigError, ModelError
from vea_bench.models.base import BatchOutput, GenerationOptions, LoadOptions, SYSTEM_MESSAGE
from vea_bench.models import loading
from vea_bench.models.family import VLMFamily, check_family_supported
from vea_bench.prompts import categorical_answer, user_content

log = logging.getLogger(__name__)

STOP_CHAR = "}"
ANSWER_PROBE = "{prompt}"   # stands for the question where only the text after it matters


def cap_image(image: Any, max_side: int | None, max_pixels: int | None = None) -> Any:
    """RGB copy of a PIL image with its long side <= ``max_side`` (SPEC: 1024) and, if given,
    at most ``max_pixels`` pixels; aspect ratio kept, never upscaled."""
    from PIL import Image

    im = image.convert("RGB") if image.mode != "RGB" else image
    w, h = im.size
    scale = 1.0
    if max_side and max(w, h) > max_side:
        scale = max_side / max(w, h)
    if max_pixels and w * h * scale * scale > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
    if scale < 1.0:
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return im


def chat_text_kwargs(tokenizer: Any, text: str) -> dict[str, Any]:
    """Tokeniser settings for a rendered chat ``text``: no special tokens added where the text
    already opens with BOS (Gemma's template writes ``{{ bos_token }}``; the tokenizer would add a
    second), as ``apply_chat_template(tokenize=True)`` does."""
    bos = getattr(tokenizer, "bos_token", None)
    return {"add_special_tokens": False} if bos and text.startswith(str(bos)) else {}


@dataclass
class Preparer:
    """The CPU half of a backend (processor + chat template + image caps): picklable, so data-loader
    workers can run it without the model."""

    processor: Any
    max_side: int | None = 1024
    max_pixels: int | None = None
    chat_template: str | None = None      # used when the processor has none (InstructBLIP)
    image_in_template: bool = True        # False: the processor inserts image tokens itself
    image_position: str = "first"         # image before ("first") or after ("last", the reference) the question
    _text_cache: dict[str, str] = field(default_factory=dict, repr=False)

    def chat_text(self, prompt: str) -> str:
        """System message + one user turn (image, prompt) + the assistant-turn prefix, as text."""
        if not prompt or not prompt.strip():
            raise ModelError("empty prompt: extraction needs the categorical instruction")
        cached = self._text_cache.get(prompt)
        if cached is not None:
            return cached
        text = self.processor.apply_chat_template(self._messages(prompt), add_generation_prompt=True,
                                                  **self._template_kwargs())
        self._text_cache[prompt] = text
        return text

    def _template_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"tokenize": False}
        if self.chat_template is not None and not getattr(self.processor, "chat_template", None):
            kwargs["chat_template"] = self.chat_template
        return kwargs

    def _messages(self, prompt: str, answer: str | None = None) -> list[dict[str, Any]]:
        user = user_content(prompt, with_image=self.image_in_template, image_position=self.image_position)
        messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
                    {"role": "user", "content": user}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def text_kwargs(self, text: str) -> dict[str, Any]:
        """Tokeniser settings for the rendered chat ``text`` (see `chat_text_kwargs`)."""
        return chat_text_kwargs(self.processor.tokenizer, text)

    def answer_text(self, prompt: str, answer: str) -> str:
        """What the chat template writes after the assistant prefix up to the end of ``answer``
        (e.g. ``' ' + answer`` after SmolVLM's ``Assistant:``): the text the model continues with."""
        head = self.chat_text(prompt)
        full = self.processor.apply_chat_template(self._messages(prompt, answer), **self._template_kwargs())
        tail = full[len(head):] if full.startswith(head) else None
        cut = tail.find(answer) if tail is not None else -1
        if tail is None or cut < 0:
            raise ModelError("the chat template does not render the prompt as a prefix of the answered "
                             "conversation; cannot tell which tokens score an answer")
        return tail[: cut + len(answer)]

    def answer_ids(self, prompt: str, answers: list[str]) -> list[list[int]]:
        """Each answer's token ids as the model reads them after ``prompt``'s chat text:
        tokenised(chat + answer text) minus tokenised(chat), with the checkpoint tokenizer's own
        rules (prefix space, merges at the boundary), never the answer tokenised standalone."""
        tok = self.processor.tokenizer
        head = self.chat_text(prompt)
        head_ids = list(tok(head, add_special_tokens=False)["input_ids"])
        out = []
        for answer in answers:
            ids = list(tok(head + self.answer_text(prompt, answer), add_special_tokens=False)["input_ids"])
            if ids[: len(head_ids)] != head_ids or len(ids) == len(head_ids):
                raise ModelError(f"the answer {answer!r} merges with the end of the prompt's tokens; "
                                 "its log-likelihood cannot be scored after the prompt")
            out.append(ids[len(head_ids):])
        return out

    def __call__(self, images: list[Any], prompt: str) -> dict[str, Any]:
        if not images:
            raise ModelError("prepare() got an empty batch of images")
        ims = [cap_image(im, self.max_side, self.max_pixels) for im in images]
        text = self.chat_text(prompt)
        out = self.processor(images=ims, text=[text] * len(ims), return_tensors="pt", padding=True,
                             **self.text_kwargs(text))
        return dict(out)


class HFVLMBackend:
    """Base of the transformers backends: loading, preparation and the one-pass `run`.

    Subclasses are registered with `vea_bench.models.generic.vlm_family`, which sets ``family``
    (the `VLMFamily` declaration every other module reads) and the attributes below from it; they
    implement `_visual(batch) -> (features_for_llm, pooled)` plus, if needed, `_prefill_positions`.
    """

    family: ClassVar[VLMFamily]
    name: ClassVar[str] = "hf"
    model_class: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    chat_template: ClassVar[str | None] = None
    image_in_template: ClassVar[bool] = True
    pooling: ClassVar[str] = "mean"        # what `pooled` is, recorded in provenance

    def __init__(self, model: Any, processor: Any, opts: LoadOptions, config: Any, device: str,
                 dtype: Any) -> None:
        import torch

        family = getattr(type(self), "family", None)
        if family is not None:
            check_family_supported(family)

        self.model = model
        self.core = loading.unwrap(model)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.opts = opts
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.decoder = self.core.get_decoder()
        self.head = self.core.get_output_embeddings()
        self.embed = self.core.get_input_embeddings()
        self._cache_kw = cache_kwarg(self.decoder)
        self._preparer = self._make_preparer(processor, opts)
        vocab = int(getattr(self.head, "out_features", 0) or self.head.weight.shape[0])
        self._stop_mask, self._eos_mask = self._stop_masks(vocab)
        self._answers: dict[tuple[str, ...], list[list[int]]] = {}
        self._provenance: dict[str, Any] | None = None

    def _make_preparer(self, processor: Any, opts: LoadOptions) -> Preparer:
        return self.preparer_for(processor, opts)

    @classmethod
    def preparer_for(cls, processor: Any, opts: LoadOptions) -> Preparer:
        """The CPU half of this backend over ``processor`` alone, no model needed (InstructBLIP
        overrides it: its Q-Former reads the question)."""
        return Preparer(processor, opts.max_side, opts.max_pixels, cls.chat_template, cls.image_in_template,
                        image_position=opts.image_position)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, opts: LoadOptions) -> "HFVLMBackend":
        """Load model + processor per ``opts`` (dtype, device, 4/8-bit, adapter) into eval mode."""
        import transformers
        from transformers import AutoProcessor

        loading.validate_options(opts, cls.family)
        config = loading.load_config(opts)
        if config.model_type not in cls.model_types:
            raise ModelError(f"model '{opts.model}' is a '{config.model_type}' model; backend '{cls.name}' "
                             f"serves {', '.join(cls.model_types)}")
        model_cls = getattr(transformers, cls.model_class, None)
        if model_cls is None:
            raise ModelError(f"transformers {transformers.__version__} has no {cls.model_class}; upgrade it")
        source, _ = loading.resolve_source(opts.model)
        try:  # the processor first: it is cheap and fails fast
            processor = AutoProcessor.from_pretrained(source, revision=opts.revision,
                                                      trust_remote_code=opts.trust_remote_code)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"cannot load the processor of '{opts.model}': {first}") from None
        model, device, dtype = loading.load_model(model_cls, opts, cls.family)
        return cls(model, processor, opts, config, device, dtype)

    # ---------------------------------------------------------------- contract
    @classmethod
    def embed_dim_of(cls, config: Any) -> int:
        """Pooled-embedding width for a model config (works on a meta-device architecture too):
        the config value at the family's ``embed_dim_path``."""
        return cls.family.embed_dim(config)

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Linear names inside the language model that a LoRA adapter of this family targets."""
        return self.family.lora_targets

    @property
    def embed_dim(self) -> int:
        return self.embed_dim_of(self.core.config)

    def provenance(self) -> dict[str, Any]:
        """Model id/path, revision or weights sha256, adapter + sha256, dtype, quantisation, image caps,
        pooling and a hash of the chat text: everything that changes the numbers."""
        if self._provenance is None:
            prov = loading.model_provenance(self.opts, self.config, str(self.device), self.dtype)
            prov["backend"] = self.name
            prov["embed_dim"] = self.embed_dim
            prov["pooling"] = self.pooling
            prov["chat_template_sha256"] = _sha(self._preparer.chat_text(ANSWER_PROBE))
            prov["image_position"] = self.family.check_image_position(self._preparer.image_position)
            self._provenance = prov
        return dict(self._provenance)

    def preparer(self) -> Preparer:
        """The picklable CPU half (for data-loader workers): ``preparer()(images, prompt)`` == ``prepare``."""
        return self._preparer

    def prepare(self, images: list[Any], prompt: str) -> dict[str, Any]:
        return self._preparer(images, prompt)

    def chat_text(self, prompt: str) -> str:
        return self._preparer.chat_text(prompt)

    # ---------------------------------------------------------------- model-specific parts
    def _visual(self, batch: dict[str, Any]) -> tuple[Any, Any]:
        """One vision pass: (features to scatter into the image placeholders, pooled B x D)."""
        raise NotImplementedError

    def _image_token_id(self) -> int:
        cfg = self.core.config
        for attr in ("image_token_id", "image_token_index"):
            v = getattr(cfg, attr, None)
            if v is not None:
                return int(v)
        raise ModelError(f"model '{self.opts.model}' config names no image token id")

    def _prefill_positions(self, batch: dict[str, Any], mask: Any) -> tuple[Any, Any]:
        """(position ids for the prompt, position of the first new token per row)."""
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return pos, mask.long().sum(-1)

    def _format_positions(self, pos: Any) -> Any:
        """Decode-time positions (B x L) in the language model's format."""
        return pos

    def _prefill_kwargs(self, batch: dict[str, Any], image_mask: Any, embeds: Any, pos: Any,
                        visual_extra: Any) -> dict[str, Any]:
        """Extra decoder arguments of the prompt prefill only (Qwen3-VL's deepstack features, Gemma 3's
        bidirectional image-block mask); ``visual_extra`` is the optional third item `_visual` returns."""
        return {}

    # ---------------------------------------------------------------- run
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True)
                if v.is_floating_point():
                    v = v.to(self.dtype)
            out[k] = v
        return out

    def _lm(self, embeds: Any, mask: Any, pos: Any, cache: Any, *, last_only: bool, **extra: Any) -> tuple[Any, Any]:
        kwargs = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": pos, "use_cache": True,
                  self._cache_kw: cache}
        out = self.decoder(**{**kwargs, **extra})
        h = out.last_hidden_state
        if last_only:
            h = h[:, -1:]
        return self.head(h).float(), output_cache(out)

    def encode(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Vision pass + prefill: pooled features, last-position logits, the prompt KV cache, positions."""
        b = self._to_device(batch)
        ids, mask = b["input_ids"], b["attention_mask"]
        feats, pooled, *visual_extra = self._visual(b)
        embeds = self.embed(ids)
        img_mask = (ids == self._image_token_id()).unsqueeze(-1)
        n_tok = int(img_mask.sum())
        if n_tok * embeds.shape[-1] != feats.numel():
            raise ModelError(f"{n_tok} image placeholder tokens but {feats.numel() // embeds.shape[-1]} visual "
                             "features: processor and model configs disagree")
        embeds = embeds.masked_scatter(img_mask, feats.to(embeds.dtype))
        pos, next_pos = self._prefill_positions(b, mask)
        extra = self._prefill_kwargs(b, img_mask[..., 0], embeds, pos, visual_extra[0] if visual_extra else None)
        logits, cache = self._lm(embeds, mask, pos, None, last_only=True, **extra)
        return {"pooled": pooled.float(), "logits": logits[:, -1], "cache": cache, "mask": mask, "ids": ids,
                "next_pos": next_pos, "batch_size": ids.shape[0]}

    def embed_visual(self, batch: dict[str, Any]) -> np.ndarray:
        """The pooled embedding alone (`vea_bench.models.engines`' embed-only engine): the same vision
        pass as `run`, without the language model's prefill."""
        import torch

        with torch.inference_mode():
            _feats, pooled, *_extra = self._visual(self._to_device(batch))
            return pooled.float().cpu().numpy().astype(np.float32)

    def run(self, batch: dict[str, Any], *, generate: bool, score_labels: list[str] | None,
            generation: GenerationOptions) -> BatchOutput:
        """One vision pass per batch: pooled embedding, and the answer(s) from the same prefill."""
        import torch

        with torch.inference_mode():
            enc = self.encode(batch)
            logprobs = self._score(enc, list(score_labels), generation) if score_labels else None
            texts = self._generate(enc, generation) if generate else None
            pooled = enc["pooled"].cpu().numpy().astype(np.float32)
        return BatchOutput(pooled=pooled, texts=texts, logprobs=logprobs)

    # ---------------------------------------------------------------- scoring
    def answer_ids(self, labels: list[str]) -> list[list[int]]:
        """Each label's scored tokens: its answer as the chat template continues the prompt (see
        `Preparer.answer_ids`). The prompt's own text ends before the template's assistant prefix,
        so a placeholder question gives the same boundary as every real one."""
        key = tuple(labels)
        if key not in self._answers:
            self._answers[key] = self._preparer.answer_ids(ANSWER_PROBE, [categorical_answer(lab) for lab in labels])
        return self._answers[key]

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token costs in this model (all layers, keys + values)."""
        return kv_bytes_per_token(self.core.config, self.dtype)

    def score_rows_per_chunk(self, gen: GenerationOptions, batch: int, prompt_len: int, prefix_len: int,
                             max_suffix: int) -> int:
        """Images per scoring forward under ``gen.score_memory_gb`` (see `score_rows_per_chunk`)."""
        vocab = int(getattr(self.head, "out_features", 0) or self.head.weight.shape[0])
        return score_rows_per_chunk(gen.score_memory_gb * 1e9, batch, prompt_len, prefix_len, max_suffix,
                                    self.kv_bytes_per_token(), vocab)

    def _score(self, enc: dict[str, Any], labels: list[str], gen: GenerationOptions) -> np.ndarray:
        """Sum of token log-probs of each label's answer after the assistant prefix (B x C).

        The answers' shared first tokens (``{'emotion':'``) run once per image over the prompt's
        KV cache; each label then runs only its own remaining tokens over that shared cache (a
        shallow fork, so the label's keys never land in it). Images go in chunks sized by
        ``gen.score_memory_gb``; the prompt cache itself is never copied per label.
        """
        import torch

        B = enc["batch_size"]
        ans = self.answer_ids(labels)
        C = len(ans)
        dev = self.device
        P = shared_prefix_len(ans)
        suffixes = [a[P:] for a in ans]
        first_lp = torch.log_softmax(enc["logits"], dim=-1)                       # B x V, predicts token 0
        out = torch.zeros((B, C), dtype=torch.float32, device=dev)
        n_rows = self.score_rows_per_chunk(gen, B, int(enc["mask"].shape[1]), P, max(len(x) for x in suffixes))
        prefix = torch.tensor(ans[0][:P], dtype=torch.long, device=dev)
        for r0 in range(0, B, n_rows):
            rows = torch.arange(r0, min(B, r0 + n_rows), device=dev)
            n = len(rows)
            cache = fork_cache(enc["cache"]) if n == B else select_cache(enc["cache"], rows)
            mask = enc["mask"][rows]
            pos0 = enc["next_pos"][rows]
            lp_next = first_lp[rows]                                             # n x V
            base = torch.zeros(n, dtype=torch.float32, device=dev)
            if P:
                base += lp_next[:, prefix[0]]
                mask = torch.cat([mask, torch.ones((n, P), dtype=mask.dtype, device=dev)], dim=1)
                pos = pos0[:, None] + torch.arange(P, device=dev)[None]
                logits, cache = self._lm(self.embed(prefix[None].expand(n, P)), mask, self._format_positions(pos),
                                         cache, last_only=False)
                lp = torch.log_softmax(logits, dim=-1)                           # n x P x V
                if P > 1:
                    base += lp[:, :-1].gather(-1, prefix[None, 1:, None].expand(n, P - 1, 1)).squeeze(-1).sum(-1)
                lp_next = lp[:, -1]
                del logits, lp
            for c, suf in enumerate(suffixes):
                score = base + lp_next[:, suf[0]]
                if len(suf) > 1:
                    toks = torch.tensor(suf, dtype=torch.long, device=dev)
                    k = len(suf) - 1
                    m = torch.cat([mask, torch.ones((n, k), dtype=mask.dtype, device=dev)], dim=1)
                    pos = pos0[:, None] + P + torch.arange(k, device=dev)[None]
                    logits, _ = self._lm(self.embed(toks[None, :-1].expand(n, k)), m, self._format_positions(pos),
                                         fork_cache(cache), last_only=False)
                    lp = torch.log_softmax(logits, dim=-1)
                    score = score + lp.gather(-1, toks[None, 1:, None].expand(n, k, 1)).squeeze(-1).sum(-1)
                    del logits, lp
                out[rows, c] = score
            del cache
        return out.cpu().numpy().astype(np.float32)

    # ---------------------------------------------------------------- generation
    def _stop_masks(self, vocab: int) -> tuple[Any, Any]:
        """Vocabulary masks: tokens whose text holds the closing brace, and end-of-sequence tokens."""
        import torch

        tok = self.tokenizer
        stop = torch.zeros(vocab, dtype=torch.bool)
        pieces = tok.convert_ids_to_tokens(list(range(min(vocab, len(tok)))))
        for i, piece in enumerate(pieces):
            if piece is not None and STOP_CHAR in tok.convert_tokens_to_string([piece]):
                stop[i] = True
        eos = torch.zeros(vocab, dtype=torch.bool)
        ids: set[int] = set()
        for src in (getattr(self.core, "generation_config", None), self.core.config,
                    getattr(self.core.config, "text_config", None)):
            v = getattr(src, "eos_token_id", None) if src is not None else None
            if v is not None:
                ids.update(v if isinstance(v, (list, tuple)) else [v])
        if tok.eos_token_id is not None:
            ids.add(tok.eos_token_id)
        for i in ids:
            if 0 <= int(i) < vocab:
                eos[int(i)] = True
        return stop.to(self.device), eos.to(self.device)

    def decoding_settings(self, gen: GenerationOptions) -> dict[str, Any]:
        """The logits processing ``gen.decoding`` applies, resolved against this checkpoint.

        ``reference`` is what ``generate(do_sample=True, temperature=T, top_p=p)`` does with this
        model's generation_config: ``top_k`` and ``repetition_penalty`` from the checkpoint (or
        transformers' global defaults where it sets none). Settings of the checkpoint that would add
        other processors are refused rather than silently dropped.
        """
        if gen.decoding == "greedy":
            return {"temperature": None, "top_k": None, "top_p": None, "repetition_penalty": None}
        if gen.decoding == "sample":
            return {"temperature": gen.temperature, "top_k": None, "top_p": gen.top_p, "repetition_penalty": None}
        gc = self.generation_config
        defaults = _generate_defaults()

        def value(name: str) -> Any:
            v = getattr(gc, name, None) if gc is not None else None
            return defaults.get(name) if v is None else v

        unsupported = {name: value(name) for name, off in _OFF_SETTINGS.items()
                       if value(name) is not None and value(name) != off and value(name) != defaults.get(name, off)}
        if unsupported:
            raise ConfigError(f"--decoding reference: the generation_config of '{self.opts.model}' sets "
                              f"{', '.join(f'{k}={v}' for k, v in sorted(unsupported.items()))}, which vea-bench "
                              "does not apply; use --decoding greedy or sample")
        top_k = value("top_k")
        penalty = value("repetition_penalty")
        return {"temperature": gen.temperature, "top_k": int(top_k) if top_k else None, "top_p": gen.top_p,
                "repetition_penalty": float(penalty) if penalty is not None and float(penalty) != 1.0 else None}

    @property
    def generation_config(self) -> Any:
        """The GenerationConfig the model's own `generate` decodes with (None if it has none)."""
        return getattr(self.core, "generation_config", None)

    def decoding_provenance(self, gen: GenerationOptions) -> dict[str, Any]:
        """Decoding mode, its resolved settings, the token budget and (when sampled) the seed."""
        prov = gen.provenance(zero_shot=self.zero_shot)
        prov.update(self.decoding_settings(gen))
        return prov

    @property
    def zero_shot(self) -> bool:
        """No adapter loaded: the model answers zero-shot (a longer token budget, see GenerationOptions)."""
        return not self.opts.adapter

    def _processors(self, gen: GenerationOptions) -> list[Any]:
        """transformers' own logits processors, in `generate`'s order, for ``gen``."""
        from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                            TopKLogitsWarper, TopPLogitsWarper)

        st = self.decoding_settings(gen)
        procs: list[Any] = []
        if st["repetition_penalty"] is not None:
            procs.append(RepetitionPenaltyLogitsProcessor(penalty=st["repetition_penalty"]))
        if st["temperature"] is not None and st["temperature"] != 1.0:
            procs.append(TemperatureLogitsWarper(st["temperature"]))
        if st["top_k"]:
            procs.append(TopKLogitsWarper(top_k=st["top_k"]))
        if st["top_p"] is not None and st["top_p"] < 1.0:
            procs.append(TopPLogitsWarper(top_p=st["top_p"]))
        return procs

    def _generate(self, enc: dict[str, Any], gen: GenerationOptions) -> list[str]:
        """Decode from the shared prefill by ``gen.decoding``; stops each row at its first token
        holding '}' or at end-of-sequence, within the token budget (longer for zero-shot rows).

        The repetition penalty (reference mode) sees each row's own prompt and answer tokens,
        never the left padding, so a batched row decodes as it would alone.
        """
        import torch

        B = enc["batch_size"]
        dev = self.device
        budget = gen.token_budget(self.zero_shot)
        procs = self._processors(gen)
        cache = fork_cache(enc["cache"])  # leave enc's cache intact
        mask = enc["mask"]
        ids = enc["ids"]
        history = torch.where(mask.bool(), ids, ids[:, -1:])  # left pads -> a token the row already has
        logits = enc["logits"]
        pad = self.tokenizer.pad_token_id or 0
        g = None
        if gen.sampled:
            g = torch.Generator(device=dev)
            g.manual_seed(int(gen.seed))
        finished = torch.zeros(B, dtype=torch.bool, device=dev)
        steps: list[Any] = []
        for step in range(budget):
            nxt = _pick(logits, history, procs, g)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            steps.append(nxt)
            finished = finished | self._stop_mask[nxt] | self._eos_mask[nxt]
            if step == budget - 1 or bool(finished.all()):
                break
            history = torch.cat([history, nxt[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=dev)], dim=1)
            pos = (enc["next_pos"] + step)[:, None]               # position of the token just picked
            lg, cache = self._lm(self.embed(nxt[:, None]), mask, self._format_positions(pos), cache,
                                 last_only=True)
            logits = lg[:, -1]
        seq = torch.stack(steps, dim=1).cpu()
        stop = (self._stop_mask[seq.to(dev)] | self._eos_mask[seq.to(dev)]).cpu()
        texts = []
        for r in range(B):
            row = seq[r].tolist()
            hits = stop[r].nonzero()
            if len(hits):
                row = row[: int(hits[0]) + 1]
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            cut = text.find(STOP_CHAR)
            texts.append(text[: cut + 1] if cut >= 0 else text)
        return texts


# generation_config settings that would add a logits processor `decoding_settings` does not apply,
# with the value that leaves it off.
_OFF_SETTINGS: dict[str, Any] = {"no_repeat_ngram_size": 0, "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                                 "eta_cutoff": 0.0, "top_h": None, "bad_words_ids": None, "sequence_bias": None,
                                 "suppress_tokens": None, "begin_suppress_tokens": None, "min_new_tokens": None,
                                 "min_length": 0, "encoder_repetition_penalty": 1.0, "guidance_scale": None,
                                 "forced_bos_token_id": None, "forced_eos_token_id": None,
                                 "exponential_decay_length_penalty": None}


def _generate_defaults() -> dict[str, Any]:
    """transformers' global generation defaults (what `generate` uses where a checkpoint sets nothing)."""
    from transformers import GenerationConfig

    get = getattr(GenerationConfig, "_get_default_generation_params", None)
    return dict(get()) if callable(get) else {"top_k": 50, "repetition_penalty": 1.0, "temperature": 1.0,
                                              "top_p": 1.0}


def _pick(logits: Any, history: Any, procs: list[Any], g: Any) -> Any:
    """Next token per row: argmax when greedy, else a draw after transformers' own processors."""
    import torch

    if g is None:
        return logits.argmax(-1)
    scores = logits.float()
    for proc in procs:
        scores = proc(history, scores)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=g).squeeze(-1)


def cache_kwarg(decoder: Any) -> str:
    """The decoder's KV-cache argument: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    """A model output's KV cache under its own field name (``cache`` from 5.24, ``past_key_values`` before)."""
    fields = getattr(type(out), "__dataclass_fields__", {})
    return out.cache if "cache" in fields else out.past_key_values


def kv_bytes_per_token(config: Any, dtype: Any) -> int:
    """KV-cache bytes per token: layers x KV heads x head dim x (key + value) x element size."""
    import torch

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(getattr(text, "num_attention_heads"))
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    itemsize = torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else int(dtype)
    return int(text.num_hidden_layers) * kv_heads * head_dim * 2 * itemsize


def score_rows_per_chunk(budget_bytes: float, batch: int, prompt_len: int, prefix_len: int, max_suffix: int,
                         kv_bytes: int, vocab: int) -> int:
    """Images per scoring forward so that one chunk's working memory fits ``budget_bytes``.

    Per image: the forked cache a label forward extends (a copy of prompt + prefix + label keys:
    the prefix forward's copy plus the label forward's, each ``(prompt + prefix + suffix) x kv``),
    and the fp32 logits and log-probs of its longest query (``x vocab x 12`` bytes, head output
    included). At least one image, at most the batch.
    """
    per_row = 2 * (prompt_len + prefix_len + max_suffix) * kv_bytes + max(prefix_len, max_suffix, 1) * vocab * 12
    return max(1, min(batch, int(budget_bytes // per_row)))


def shared_prefix_len(answers: list[list[int]]) -> int:
    """Length of the token prefix every answer shares, leaving each answer at least one own token."""
    if not answers:
        return 0
    n = min(len(a) for a in answers) - 1
    for i in range(max(n, 0)):
        if any(a[i] != answers[0][i] for a in answers[1:]):
            return i
    return max(n, 0)


def fork_cache(cache: Any) -> Any:
    """A cache sharing ``cache``'s tensors whose later updates (torch.cat) land only in the fork."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return select_cache(cache, None)
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in layers]
    return new


def select_cache(cache: Any, rows: Any) -> Any:
    """A new cache whose batch rows are ``cache``'s rows ``rows`` (repeats allowed; None: all rows,
    copied); ``cache`` unchanged."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        new = copy.deepcopy(cache)
        if rows is not None:
            new.batch_select_indices(rows)
        return new
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in layers]
    for layer in new.layers:
        layer.batch_select_indices(rows)
    return new


def segment_mean(values: Any, counts: list[int]) -> Any:
    """Mean of consecutive row groups of ``values`` (sum(counts) x D) -> len(counts) x D, in fp32,
    without a Python loop over groups."""
    import torch

    seg = torch.repeat_interleave(torch.arange(len(counts), device=values.device),
                                  torch.tensor(counts, device=values.device))
    out = torch.zeros((len(counts), values.shape[-1]), dtype=torch.float32, device=values.device)
    out.index_add_(0, seg, values.float())
    return out / torch.tensor(counts, dtype=torch.float32, device=values.device)[:, None]


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
