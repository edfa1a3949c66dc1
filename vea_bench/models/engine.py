"""The one-pass extraction engine shared by every transformers VLM backend.

Why a hand-written prefill/decode loop instead of `model.generate`: extraction needs three things
from ONE vision pass per batch: the pooled visual-encoder output, a greedy (or seeded sampled)
answer that stops at the closing brace, and the log-likelihood of every label's answer. `generate`
can give the first two, but then scoring would need a second prefill (and a second vision pass).
Here each backend runs its model's own image-feature function exactly once (the vision tower,
merger / projector and, for InstructBLIP, the Q-Former), pools what it needs from that result,
scatters the features into the prompt embeddings, and the language model does one prefill whose KV
cache is then shared by scoring (expanded over labels, never recomputed) and by decoding.

Positions follow the left padding (cumulative attention mask, or Qwen2-VL's 3-D M-RoPE indices
plus its per-row delta), so a padded row gives what it gives alone: batched == batch-size-1.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vea_bench.errors import ModelError
from vea_bench.models.base import BatchOutput, GenerationOptions, LoadOptions, SYSTEM_MESSAGE
from vea_bench.models import loading
from vea_bench.prompts import categorical_answer, user_content

log = logging.getLogger(__name__)

STOP_CHAR = "}"


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
        user = user_content(prompt, with_image=self.image_in_template, image_position=self.image_position)
        messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
                    {"role": "user", "content": user}]
        kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": False}
        if self.chat_template is not None and not getattr(self.processor, "chat_template", None):
            kwargs["chat_template"] = self.chat_template
        text = self.processor.apply_chat_template(messages, **kwargs)
        self._text_cache[prompt] = text
        return text

    def __call__(self, images: list[Any], prompt: str) -> dict[str, Any]:
        if not images:
            raise ModelError("prepare() got an empty batch of images")
        ims = [cap_image(im, self.max_side, self.max_pixels) for im in images]
        text = self.chat_text(prompt)
        out = self.processor(images=ims, text=[text] * len(ims), return_tensors="pt", padding=True)
        return dict(out)


class HFVLMBackend:
    """Base of the transformers backends: loading, preparation and the one-pass `run`.

    Subclasses set `model_class` (transformers class name), `model_types`, and implement
    `_visual(batch) -> (features_for_llm, pooled)` plus, if needed, `_prefill_positions`.
    """

    name: ClassVar[str] = "hf"
    model_class: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    chat_template: ClassVar[str | None] = None
    image_in_template: ClassVar[bool] = True
    score_chunk_rows: ClassVar[int] = 64   # rows (images x labels) per scoring forward
    pooling: ClassVar[str] = "mean"        # what `pooled` is, recorded in provenance

    def __init__(self, model: Any, processor: Any, opts: LoadOptions, config: Any, device: str,
                 dtype: Any) -> None:
        import torch

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
        self._preparer = self._make_preparer(processor, opts)
        vocab = int(getattr(self.head, "out_features", 0) or self.head.weight.shape[0])
        self._stop_mask, self._eos_mask = self._stop_masks(vocab)
        self._answers: dict[tuple[str, ...], list[list[int]]] = {}
        self._provenance: dict[str, Any] | None = None

    def _make_preparer(self, processor: Any, opts: LoadOptions) -> Preparer:
        """The CPU half for this backend (InstructBLIP overrides it: its Q-Former reads the question)."""
        return Preparer(processor, opts.max_side, opts.max_pixels, self.chat_template, self.image_in_template,
                        image_position=opts.image_position)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, opts: LoadOptions) -> "HFVLMBackend":
        """Load model + processor per ``opts`` (dtype, device, 4/8-bit, adapter) into eval mode."""
        import transformers
        from transformers import AutoProcessor

        loading.validate_options(opts)
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
        model, device, dtype = loading.load_model(model_cls, opts)
        return cls(model, processor, opts, config, device, dtype)

    # ---------------------------------------------------------------- contract
    @classmethod
    def embed_dim_of(cls, config: Any) -> int:
        """Pooled-embedding width for a model config (works on a meta-device architecture too)."""
        raise NotImplementedError

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
            prov["chat_template_sha256"] = _sha(self._preparer.chat_text("{prompt}"))
            prov["image_position"] = self.opts.image_position
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

    def _lm(self, embeds: Any, mask: Any, pos: Any, cache: Any, *, last_only: bool) -> tuple[Any, Any]:
        out = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                           past_key_values=cache, use_cache=True)
        h = out.last_hidden_state
        if last_only:
            h = h[:, -1:]
        return self.head(h).float(), out.past_key_values

    def encode(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Vision pass + prefill: pooled features, last-position logits, the prompt KV cache, positions."""
        b = self._to_device(batch)
        ids, mask = b["input_ids"], b["attention_mask"]
        feats, pooled = self._visual(b)
        embeds = self.embed(ids)
        img_mask = (ids == self._image_token_id()).unsqueeze(-1)
        n_tok = int(img_mask.sum())
        if n_tok * embeds.shape[-1] != feats.numel():
            raise ModelError(f"{n_tok} image placeholder tokens but {feats.numel() // embeds.shape[-1]} visual "
                             "features: processor and model configs disagree")
        embeds = embeds.masked_scatter(img_mask, feats.to(embeds.dtype))
        pos, next_pos = self._prefill_positions(b, mask)
        logits, cache = self._lm(embeds, mask, pos, None, last_only=True)
        return {"pooled": pooled.float(), "logits": logits[:, -1], "cache": cache, "mask": mask,
                "next_pos": next_pos, "batch_size": ids.shape[0]}

    def run(self, batch: dict[str, Any], *, generate: bool, score_labels: list[str] | None,
            generation: GenerationOptions) -> BatchOutput:
        """One vision pass per batch: pooled embedding, and the answer(s) from the same prefill."""
        import torch

        with torch.inference_mode():
            enc = self.encode(batch)
            logprobs = self._score(enc, list(score_labels)) if score_labels else None
            texts = self._generate(enc, generation) if generate else None
            pooled = enc["pooled"].cpu().numpy().astype(np.float32)
        return BatchOutput(pooled=pooled, texts=texts, logprobs=logprobs)

    # ---------------------------------------------------------------- scoring
    def answer_ids(self, labels: list[str]) -> list[list[int]]:
        key = tuple(labels)
        if key not in self._answers:
            enc = self.tokenizer([categorical_answer(lab) for lab in labels], add_special_tokens=False)
            self._answers[key] = [list(x) for x in enc["input_ids"]]
        return self._answers[key]

    def _score(self, enc: dict[str, Any], labels: list[str]) -> np.ndarray:
        """Sum of token log-probs of each label's answer after the assistant prefix (B x C).

        The first answer token is scored from the prefill's last logits; the rest from ONE forward
        of all (image, label) rows over the prompt's KV cache, selected (not recomputed) per row.
        """
        import torch

        B = enc["batch_size"]
        ans = self.answer_ids(labels)
        C = len(ans)
        dev = self.device
        first_lp = torch.log_softmax(enc["logits"], dim=-1)                       # B x V
        out = first_lp[:, torch.tensor([a[0] for a in ans], device=dev)]          # B x C
        lmax = max(len(a) for a in ans)
        if lmax == 1:
            return out.cpu().numpy().astype(np.float32)
        pad = self.tokenizer.pad_token_id or 0
        toks = torch.full((C, lmax), pad, dtype=torch.long, device=dev)
        valid = torch.zeros((C, lmax), dtype=torch.long, device=dev)
        for c, a in enumerate(ans):
            toks[c, :len(a)] = torch.tensor(a, device=dev)
            valid[c, :len(a)] = 1
        per_chunk = max(1, self.score_chunk_rows // max(B, 1))
        for c0 in range(0, C, per_chunk):
            cs = list(range(c0, min(C, c0 + per_chunk)))
            n = len(cs)
            rows = torch.arange(B, device=dev).repeat_interleave(n)               # image of each row
            labs = torch.tensor(cs, device=dev).repeat(B)                         # label of each row
            cache = select_cache(enc["cache"], rows)
            inp = toks[labs, :-1]
            mask = torch.cat([enc["mask"][rows], valid[labs, :-1]], dim=1)
            pos = enc["next_pos"][rows, None] + torch.arange(lmax - 1, device=dev)[None]
            logits, _ = self._lm(self.embed(inp), mask, self._format_positions(pos), cache, last_only=False)
            lp = torch.log_softmax(logits, dim=-1).gather(-1, toks[labs, 1:, None]).squeeze(-1)
            lp = (lp * valid[labs, 1:]).sum(-1).view(B, n)
            out[:, c0:c0 + n] += lp
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

    def _generate(self, enc: dict[str, Any], gen: GenerationOptions) -> list[str]:
        """Greedy (or seeded temperature/top-p sampling) decode from the shared prefill; stops each
        row at its first token holding '}' or at end-of-sequence, within ``max_new_tokens``."""
        import torch

        B = enc["batch_size"]
        dev = self.device
        cache = select_cache(enc["cache"], torch.arange(B, device=dev))  # leave enc's cache intact
        mask = enc["mask"]
        logits = enc["logits"]
        pad = self.tokenizer.pad_token_id or 0
        g = None
        if gen.sample:
            g = torch.Generator(device=dev)
            g.manual_seed(int(gen.seed))
        finished = torch.zeros(B, dtype=torch.bool, device=dev)
        steps: list[Any] = []
        for step in range(max(1, gen.max_new_tokens)):
            nxt = _pick(logits, gen, g)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            steps.append(nxt)
            finished = finished | self._stop_mask[nxt] | self._eos_mask[nxt]
            if step == gen.max_new_tokens - 1 or bool(finished.all()):
                break
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


def _pick(logits: Any, gen: GenerationOptions, g: Any) -> Any:
    import torch

    if not gen.sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / max(gen.temperature, 1e-5), dim=-1)
    if gen.top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        drop = sp.cumsum(-1) - sp > gen.top_p
        sp = sp.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    return torch.multinomial(probs, 1, generator=g).squeeze(-1)


def select_cache(cache: Any, rows: Any) -> Any:
    """A new cache whose batch rows are ``cache``'s rows ``rows`` (repeats allowed); ``cache`` unchanged."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        new = copy.deepcopy(cache)
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
