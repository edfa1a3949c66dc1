"""The VLM backend contract: what extraction needs from any VLM, whatever its architecture.

A backend wraps one transformers model class (Qwen2-VL, LLaVA-NeXT, InstructBLIP...). Extraction
calls `prepare` in data-loader workers (CPU only: processor + chat template) and `run` in the main
process: ONE forward pass per batch that yields the pooled visual-encoder embedding (captured
from that same pass, never a second vision pass) and the answer(s).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vea_bench.registry import Registry
from vea_bench.schema import doc

from vea_bench.prompts import SYSTEM_MESSAGE  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class LoadOptions:
    """How to load a VLM: hub id or local path plus the knobs every backend honours.

    Also the schema of an experiment file's ``[vlm]`` section (`vea_bench.pipeline.experiment`).
    """

    model: str = field(metadata=doc("VLM hub id or local folder (optional when only teachers/backbones are wanted)."))
    revision: str | None = field(default=None, metadata=doc("Hub revision (branch, tag or commit) of --vlm."))
    adapter: str | None = field(default=None, metadata=doc("LoRA adapter folder from `vea-bench train vlm`."))
    dtype: str = field(default="auto", metadata=doc("auto, bf16, fp16 or fp32 (auto: bf16 on GPU, fp32 on CPU)."))
    quantization: str | None = field(default=None, metadata=doc(
        "4bit (NF4; GPU or CPU) or 8bit (GPU) loading through bitsandbytes."))
    device: str = field(default="auto", metadata=doc("auto, cpu, cuda or cuda:N."))
    trust_remote_code: bool = field(default=False, metadata=doc("Allow the model repo's own code (off by default)."))
    max_side: int = field(default=1024, metadata=doc(
        "Cap on the image's longer side before the VLM processor (SPEC: 1024)."))
    max_pixels: int | None = field(default=None, metadata=doc("Pixel budget per image for the VLM (speed vs fidelity)."))
    attn_implementation: str | None = field(default=None, metadata=doc("transformers' attention implementation."))
    image_position: str = field(default="first", metadata=doc(
        "first: image before the question in the user turn; last: after it, as the reference (pass what "
        "train vlm used)."))
    instructblip_prompt: str = field(default="raw", metadata=doc(
        "InstructBLIP's LM prompt: raw (the question, as LAVIS trained it) or vicuna (system + USER/ASSISTANT "
        "wrapper). The Q-Former always reads the question."))


DECODING_MODES: tuple[str, ...] = ("greedy", "reference", "sample")
TUNED_MAX_NEW_TOKENS = 24        # a tuned model answers with the short dict at once
ZERO_SHOT_MAX_NEW_TOKENS = 128   # a chatty zero-shot model may write a sentence first (lmms-eval: 128)


@dataclass(frozen=True)
class GenerationOptions:
    """How `generate` mode decodes, and how much memory score mode may use.

    ``decoding``: ``greedy`` (default, argmax); ``reference`` reproduces the reference code's
    ``generate(do_sample=True, temperature=0.8, top_p=1.0)``, which inherits ``top_k`` and
    ``repetition_penalty`` from the checkpoint's generation_config (Qwen2-VL-Instruct: top_k 1,
    penalty 1.05, so in effect greedy with a penalty); ``sample`` is true sampling at
    ``temperature`` / ``top_p`` with top_k off and no penalty. ``max_new_tokens`` None picks
    `TUNED_MAX_NEW_TOKENS` with an adapter and ``zero_shot_max_new_tokens`` without one; every
    row still stops at its closing brace. ``score_memory_gb`` bounds score mode's working memory
    (KV copies + logits) and sets how many images share one scoring forward. Also the schema of
    an experiment file's ``[extract]`` section, beside the keys only extraction has.
    """

    decoding: str = field(default="greedy", metadata=doc(
        "greedy (argmax); reference: the reference code's generate(do_sample=True, temperature 0.8, top_p 1.0) "
        "with the checkpoint's top_k and repetition penalty (Qwen2-VL-Instruct: in effect greedy with a 1.05 "
        "penalty); sample: true sampling at --temperature / --top-p, no top_k, no penalty."))
    temperature: float = field(default=0.8, metadata=doc("Sampling temperature (--decoding reference or sample)."))
    top_p: float = field(default=1.0, metadata=doc("Nucleus sampling mass (--decoding reference or sample)."))
    max_new_tokens: int | None = field(default=None, metadata=doc(
        "Token budget of a generated answer, which stops at '}' (default: 24 with --adapter, else "
        "--zero-shot-max-new-tokens)."))
    zero_shot_max_new_tokens: int = field(default=ZERO_SHOT_MAX_NEW_TOKENS, metadata=doc(
        "Token budget without --adapter: a zero-shot model may write a sentence before its answer."))
    seed: int = field(default=0, metadata=doc(
        "Sampling seed (--decoding reference or sample); does not change the split."))
    score_memory_gb: float = field(default=4.0, metadata=doc(
        "Working memory for --answer score in GB (KV copies + logits); sets how many images share one "
        "scoring forward."))

    def __post_init__(self) -> None:
        from vea_bench.errors import ConfigError

        if self.decoding not in DECODING_MODES:
            raise ConfigError(f"unknown decoding '{self.decoding}' (choices: {', '.join(DECODING_MODES)})")
        for name in ("max_new_tokens", "zero_shot_max_new_tokens"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got {v}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top-p must be in (0, 1], got {self.top_p}")
        if not self.score_memory_gb > 0:
            raise ConfigError(f"score memory must be > 0 GB, got {self.score_memory_gb}")

    @property
    def sampled(self) -> bool:
        """Whether decoding draws from a distribution (and so depends on ``seed``)."""
        return self.decoding != "greedy"

    def token_budget(self, zero_shot: bool) -> int:
        """New-token budget of one answer: the explicit one, else by whether an adapter is loaded."""
        if self.max_new_tokens is not None:
            return int(self.max_new_tokens)
        return int(self.zero_shot_max_new_tokens if zero_shot else TUNED_MAX_NEW_TOKENS)

    def provenance(self, zero_shot: bool | None = None) -> dict[str, Any]:
        """What changes the answers (the score-memory budget does not, so it is left out)."""
        budget = self.max_new_tokens if zero_shot is None else self.token_budget(zero_shot)
        return {"decoding": self.decoding, "temperature": self.temperature if self.sampled else None,
                "top_p": self.top_p if self.sampled else None, "max_new_tokens": budget,
                "seed": self.seed if self.sampled else None}


@dataclass
class BatchOutput:
    """What one `run` call returns for a batch of B images."""

    pooled: np.ndarray                      # B x D float32: mean over each image's visual tokens
    texts: list[str] | None = None          # generate mode: raw decoded answers
    logprobs: np.ndarray | None = None      # score mode: B x C log-likelihood of each label answer
    extra: dict[str, Any] = field(default_factory=dict)


class VLMBackend(Protocol):
    """One loaded VLM. Implementations register in `VLM_BACKENDS` with the model classes they accept."""

    name: str

    @property
    def embed_dim(self) -> int:
        """Width of the pooled visual embedding (merger / projector output width)."""

    def provenance(self) -> dict[str, Any]:
        """Model id/path, revision or weights sha256, adapter (+ its sha256), dtype, quantisation, image-size settings."""

    def prepare(self, images: list[Any], prompt: str) -> dict[str, Any]:
        """CPU-only preprocessing of a batch (PIL images + the user prompt): model inputs as tensors."""

    def run(
        self,
        batch: dict[str, Any],
        *,
        generate: bool,
        score_labels: list[str] | None,
        generation: GenerationOptions,
    ) -> BatchOutput:
        """One pass: pooled visual embedding always; texts if ``generate``; per-label log-probs if ``score_labels``."""


# Registry of backend classes. Each class has `load(opts: LoadOptions) -> VLMBackend` as a classmethod
# and `model_types: tuple[str, ...]` (config.model_type values it serves) for auto-detection.
VLM_BACKENDS: Registry[Any] = Registry("VLM backend", plugins="vea_bench.vlm_families")
