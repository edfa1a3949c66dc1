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

from vea_bench.prompts import SYSTEM_MESSAGE  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class LoadOptions:
    """How to load a VLM: hub id or local path plus the knobs every backend honours."""

    model: str
    revision: str | None = None
    adapter: str | None = None          # peft LoRA adapter dir from `vea-bench train vlm`
    dtype: str = "auto"                 # auto | bf16 | fp16 | fp32 (auto: bf16 on GPU, fp32 on CPU)
    quantization: str | None = None     # None | "4bit" (NF4, GPU or CPU) | "8bit" (GPU only)
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    trust_remote_code: bool = False
    max_side: int = 1024                # SPEC: longer image side capped before the processor
    max_pixels: int | None = None       # optional processor pixel budget (speed vs fidelity)
    attn_implementation: str | None = None
    image_position: str = "first"       # image before ("first") or after ("last", the reference) the question
    instructblip_prompt: str = "raw"    # InstructBLIP's LM prompt: the raw question (LAVIS) or "vicuna" chat wrapper


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding for `generate` mode: greedy by default; `sample=True` reproduces the reference."""

    sample: bool = False
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 24            # the dict answer is short; stop at the closing brace
    seed: int = 0

    def provenance(self) -> dict[str, Any]:
        return {"sample": self.sample, "temperature": self.temperature if self.sample else None,
                "top_p": self.top_p if self.sample else None, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed if self.sample else None}


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
VLM_BACKENDS: Registry[Any] = Registry("VLM backend")
