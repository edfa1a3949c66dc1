"""Engines: how extraction runs a loaded VLM, apart from which family the VLM is.

A family (`vea_bench.models.generic.vlm_family`) knows one architecture: its processor, where its
vision tower and language model sit, how its visual features enter the prompt. Its backend plays
two roles of the contract below: a `VisualEncoder` (the pooled visual embedding, from one vision
pass) and an `Answerer` (generated answers and label log-likelihoods). An engine decides how a
batch goes through those roles:

- ``transformers`` (the default) runs the backend's one-pass loop: one vision pass whose features
  give the pooled embedding and fill the prompt of the one prefill that scoring and decoding share;
- ``embed-only`` runs the vision pass alone (no language-model prefill, no answers), for caches
  that need only the visual source.

Another engine (an OpenAI-compatible server answering beside the local embedding, a batched
serving library) is one class registered in `ENGINES`, in one file (docs/extending.md). The
engine's name is recorded in the provenance of every source it writes.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from vea_bench.errors import ModelError
from vea_bench.models.base import BatchOutput, GenerationOptions
from vea_bench.registry import Registry

DEFAULT_ENGINE = "transformers"


@runtime_checkable
class VisualEncoder(Protocol):
    """The vision half of a loaded VLM: the pooled visual embedding of a prepared batch."""

    name: str

    @property
    def embed_dim(self) -> int:
        """Width of the pooled visual embedding."""

    def provenance(self) -> dict[str, Any]:
        """Everything about the loaded model that changes the numbers."""

    def prepare(self, images: list[Any], prompt: str) -> dict[str, Any]:
        """CPU-only preprocessing of a batch of PIL images and the user prompt."""

    def embed_visual(self, batch: dict[str, Any]) -> np.ndarray:
        """B x D float32 pooled embedding from one vision pass, without the language model."""


@runtime_checkable
class Answerer(Protocol):
    """The language half: answers to the categorical prompt, generated and/or scored per label."""

    def run(self, batch: dict[str, Any], *, generate: bool, score_labels: list[str] | None,
            generation: GenerationOptions) -> BatchOutput:
        """Pooled embedding plus texts if ``generate`` and B x C log-probs if ``score_labels``."""


class Engine:
    """How a batch goes through a loaded backend. Subclasses register in `ENGINES`.

    ``answers`` says whether the engine gives answers: an engine without them writes only the
    visual source (extraction's answer modes do not apply to it). ``requires`` names the contract
    roles the backend must play.
    """

    name: ClassVar[str] = ""
    answers: ClassVar[bool] = True
    requires: ClassVar[tuple[type, ...]] = (VisualEncoder, Answerer)

    def __init__(self, backend: Any) -> None:
        missing = [role.__name__ for role in self.requires if not isinstance(backend, role)]
        if missing:
            raise ModelError(f"engine '{self.name}' needs a backend that is a {' and '.join(missing)}; "
                             f"backend '{getattr(backend, 'name', type(backend).__name__)}' is not")
        self.backend = backend

    def run(self, batch: dict[str, Any], *, generate: bool, score_labels: list[str] | None,
            generation: GenerationOptions) -> BatchOutput:
        """The pooled embedding of ``batch`` and, if the engine answers, the answers asked for."""
        raise NotImplementedError


ENGINES: Registry[type[Engine]] = Registry("VLM engine", plugins="vea_bench.engines")


@ENGINES.register("transformers", aliases=("hf",))
class TransformersEngine(Engine):
    """The backend's own one-pass loop: one vision pass serves the embedding and the answers."""

    name = "transformers"

    def run(self, batch: dict[str, Any], *, generate: bool, score_labels: list[str] | None,
            generation: GenerationOptions) -> BatchOutput:
        return self.backend.run(batch, generate=generate, score_labels=score_labels, generation=generation)


@ENGINES.register("embed-only")
class EmbedOnlyEngine(Engine):
    """The pooled visual embedding alone: the vision pass, no language-model prefill, no answers."""

    name = "embed-only"
    answers = False
    requires = (VisualEncoder,)

    def run(self, batch: dict[str, Any], *, generate: bool, score_labels: list[str] | None,
            generation: GenerationOptions) -> BatchOutput:
        return BatchOutput(pooled=self.backend.embed_visual(batch))


def load_engine(name: str, backend: Any) -> Engine:
    """The engine ``name`` (an `ENGINES` name or alias) over a loaded backend; one-line errors."""
    return ENGINES.get(name)(backend)


def engine_names() -> list[str]:
    """Every registered engine, the default first."""
    return ENGINES.names()


def engine_provenance(name: str, existing: Mapping[str, Any] | None) -> dict[str, Any]:
    """The provenance entry naming the engine of a source: ``{"engine": name}``.

    A source written before engines were recorded has no ``engine`` key; it was written by the
    transformers engine, so resuming it with that engine adds nothing and its rows still match.
    """
    canonical = ENGINES.get(name).name
    if existing is not None and "engine" not in existing and canonical == DEFAULT_ENGINE:
        return {}
    return {"engine": canonical}


def source_engine(provenance: Mapping[str, Any]) -> str:
    """The engine that wrote a source (sources from before engines were recorded: transformers)."""
    return str(provenance.get("engine", DEFAULT_ENGINE))


__all__ = ["DEFAULT_ENGINE", "ENGINES", "Answerer", "EmbedOnlyEngine", "Engine", "TransformersEngine",
           "VisualEncoder", "engine_names", "engine_provenance", "load_engine", "source_engine"]
