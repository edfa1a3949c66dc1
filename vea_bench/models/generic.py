"""One backend for every VLM family that follows transformers' common image-text-to-text API.

A family whose ``<Family>ForConditionalGeneration`` has ``get_image_features`` (vision tower +
connector, returning the features the language model reads as the image in ``pooler_output``), a
processor with a chat template, and image placeholder tokens in the prompt needs no code: a
`VLMFamily` declaration says which config model types it serves, which batch tensors the image
features take, where its pooled visual embedding is taken, its LoRA targets and its tiny builder.
`declare_family` turns that into a registered backend; `vlm_family` does the same for a subclass
that fills one of the engine's hooks (`_prefill_kwargs`, `_prefill_positions`, `crops_per_image`).

The one-pass engine (`vea_bench.models.engine.HFVLMBackend`) is unchanged: one
``get_image_features`` call per batch gives the features scattered into the prompt and, from
the same call, the pooled embedding.

Where the embedding is taken (``pooled_from``):

- ``None`` (the default): the mean over each image's rows of ``get_image_features``'
  ``pooler_output``, i.e. exactly the visual tokens the language model reads (connector output).
- a dotted module path (e.g. ``model.multi_modal_projector``): that module's output, captured by
  a forward hook during the same call, averaged over every crop's tokens of the image. Used where
  the packed features add tokens that are not image content (LLaVA's learned newline tokens,
  any-resolution unpadding).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar

from vea_bench.errors import ModelError
from vea_bench.models.base import VLM_BACKENDS
from vea_bench.models.engine import HFVLMBackend, Preparer, cap_image, segment_mean
from vea_bench.models.family import (DEFAULT_LORA_TARGETS, VLMFamily, check_family_supported,  # noqa: F401
                                     config_value, family_supported, module_at)

class NestedPreparer(Preparer):
    """`Preparer` for processors that take one list of images per prompt (Gemma 3, Idefics3 / SmolVLM)."""

    def __call__(self, images: list[Any], prompt: str) -> dict[str, Any]:
        if not images:
            raise ModelError("prepare() got an empty batch of images")
        ims = [[cap_image(im, self.max_side, self.max_pixels)] for im in images]
        text = self.chat_text(prompt)
        return dict(self.processor(images=ims, text=[text] * len(ims), return_tensors="pt", padding=True,
                                   **self.text_kwargs(text)))


class ImageTextToTextBackend(HFVLMBackend):
    """The engine's backend for a declared family: `_visual` is one `get_image_features` call."""

    family: ClassVar[VLMFamily]

    @classmethod
    def preparer_for(cls, processor: Any, opts: Any) -> Preparer:
        p = super().preparer_for(processor, opts)
        if not cls.family.nested_images:
            return p
        # every setting carried over (the image position included)
        return NestedPreparer(**{f.name: getattr(p, f.name) for f in fields(p) if not f.name.startswith("_")})

    def crops_per_image(self, batch: dict[str, Any]) -> list[int]:
        """Number of vision-tower crops of each image (one; per-crop families override)."""
        return [1] * int(batch["input_ids"].shape[0])

    def _pool_captured(self, proj: Any, b: dict[str, Any]) -> Any:
        """Pooled B x D from the ``pooled_from`` module's output (crops x tokens x D): the mean over
        every token of each image's crops (LLaVA-OneVision overrides it to drop the padding)."""
        return segment_mean(proj.float().mean(1), self.crops_per_image(b))

    def _image_feature_kwargs(self, b: dict[str, Any]) -> dict[str, Any]:
        return {k: b[k] for k in self.family.image_inputs if k in b and b[k] is not None}

    def _visual(self, b: dict[str, Any]) -> tuple[Any, Any]:
        import torch

        captured: list[Any] = []
        hook = None
        if self.family.pooled_from:
            target = module_at(self.core, self.family.pooled_from)
            hook = target.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            out = self.core.get_image_features(**self._image_feature_kwargs(b))
        finally:
            if hook is not None:
                hook.remove()
        packed = out.pooler_output
        n_images = int(b["input_ids"].shape[0])
        if isinstance(packed, (list, tuple)):
            rows = list(packed)
            feats = torch.cat([r.reshape(-1, r.shape[-1]) for r in rows], dim=0)
        else:
            rows = None
            feats = packed.reshape(-1, packed.shape[-1])
        if self.family.pooled_from:
            proj = captured[0]
            return feats, self._pool_captured(proj.reshape(proj.shape[0], -1, proj.shape[-1]), b)
        if rows is not None and len(rows) == n_images:
            return feats, torch.stack([r.reshape(-1, r.shape[-1]).float().mean(0) for r in rows])
        if rows is None and packed.dim() == 3:                           # crops x tokens x D
            return feats, segment_mean(packed.float().mean(1), self.crops_per_image(b))
        raise ModelError(f"{self.family.model_class}.get_image_features returned features this backend "
                         "cannot assign to images; declare pooled_from or override crops_per_image")


def _class_name(family: VLMFamily) -> str:
    return "".join(p.capitalize() for p in family.name.replace(".", "-").split("-")) + "Backend"


def declare_family(family: VLMFamily, module: str = __name__) -> type:
    """A registered backend class for ``family`` with no code of its own."""
    cls = type(_class_name(family), (ImageTextToTextBackend,),
               {"__doc__": f"{family.model_class}: {family.pooling}.", "__module__": module})
    return vlm_family(family)(cls)


def vlm_family(family: VLMFamily) -> Any:
    """Class decorator: register an `ImageTextToTextBackend` subclass (one that fills a hook) for ``family``."""
    def deco(cls: type) -> type:
        if not issubclass(cls, HFVLMBackend):
            raise TypeError(f"{cls.__name__} must subclass HFVLMBackend")
        cls.family = family
        cls.name = family.name
        cls.model_class = family.model_class
        cls.model_types = family.model_types
        cls.pooling = family.pooling
        VLM_BACKENDS.register(family.name, aliases=family.aliases)(cls)
        return cls
    return deco


def families() -> dict[str, VLMFamily]:
    """Every registered backend's family declaration, by backend name (registration order)."""
    return {name: cls.family for name, cls in VLM_BACKENDS.items()}


def family_of(model_type: str) -> VLMFamily:
    """The declaration of the family serving config ``model_type``; a one-line error naming the
    supported types otherwise."""
    from vea_bench.models import backend_for_model_type

    return backend_for_model_type(model_type).family
