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

from dataclasses import dataclass, field
from typing import Any, ClassVar

from vea_bench.errors import ModelError
from vea_bench.models.base import VLM_BACKENDS
from vea_bench.models.engine import HFVLMBackend, Preparer, cap_image, segment_mean

DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class VLMFamily:
    """What a VLM family declares to get a backend (see the module docstring)."""

    name: str                                   # backend name (`--backend`), also its tiny kind by default
    model_class: str                            # transformers class, e.g. "Gemma3ForConditionalGeneration"
    model_types: tuple[str, ...]                # config.model_type values served (auto-detection)
    pooling: str                                # one line: what `pooled` is (goes into provenance)
    image_inputs: tuple[str, ...] = ("pixel_values",)  # batch tensors `get_image_features` takes
    pooled_from: str | None = None              # None: pooler_output rows; else a module whose output is pooled
    embed_dim_path: str = "text_config.hidden_size"    # dotted config path of the pooled width
    nested_images: bool = False                 # the processor wants one list of images per prompt
    vision_module: str = "model.vision_tower"   # the vision tower (tests count its calls: one per batch)
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS  # language-model Linear names LoRA adapts
    tiny: str | None = None                     # TINY_BUILDERS kind of its tiny random model
    aliases: tuple[str, ...] = ()
    presets: tuple[str, ...] = field(default=())  # bundled architecture presets of real checkpoints
    min_transformers: str | None = None          # lowest transformers its tests pass on (None: our lower bound)


def family_supported(family: VLMFamily) -> bool:
    """Whether the installed transformers is at least the family's ``min_transformers``."""
    if family.min_transformers is None:
        return True
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) >= Version(family.min_transformers)


def check_family_supported(family: VLMFamily) -> None:
    """A one-line refusal where the installed transformers is older than the family was tested on
    (older versions build these classes but give wrong positions or masks in our engine)."""
    if not family_supported(family):
        import transformers

        raise ModelError(f"the {family.name} backend needs transformers>={family.min_transformers} "
                         f"(installed: {transformers.__version__}); upgrade with "
                         f"pip install 'transformers>={family.min_transformers}'")


def config_value(config: Any, path: str) -> Any:
    """``config`` attribute at dotted ``path`` ('text_config.hidden_size'); a one-line error if absent."""
    obj = config
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ModelError(f"{type(config).__name__} has no '{path}'")
    return obj


def module_at(root: Any, path: str) -> Any:
    """Submodule of ``root`` at dotted ``path`` ('model.multi_modal_projector')."""
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


class NestedPreparer(Preparer):
    """`Preparer` for processors that take one list of images per prompt (Gemma 3, Idefics3 / SmolVLM)."""

    def __call__(self, images: list[Any], prompt: str) -> dict[str, Any]:
        if not images:
            raise ModelError("prepare() got an empty batch of images")
        ims = [[cap_image(im, self.max_side, self.max_pixels)] for im in images]
        text = self.chat_text(prompt)
        return dict(self.processor(images=ims, text=[text] * len(ims), return_tensors="pt", padding=True))


class ImageTextToTextBackend(HFVLMBackend):
    """The engine's backend for a declared family: `_visual` is one `get_image_features` call."""

    family: ClassVar[VLMFamily]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.family.nested_images:
            p = self._preparer
            self._preparer = NestedPreparer(p.processor, p.max_side, p.max_pixels, p.chat_template,
                                            p.image_in_template)

    @classmethod
    def embed_dim_of(cls, config: Any) -> int:
        """Width of the pooled embedding, read from the config at the family's ``embed_dim_path``."""
        return int(config_value(config, cls.family.embed_dim_path))

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return self.family.lora_targets

    def crops_per_image(self, batch: dict[str, Any]) -> list[int]:
        """Number of vision-tower crops of each image (one; per-crop families override)."""
        return [1] * int(batch["input_ids"].shape[0])

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
            proj = proj.reshape(proj.shape[0], -1, proj.shape[-1])       # crops x tokens x D
            return feats, segment_mean(proj.float().mean(1), self.crops_per_image(b))
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
    """Every registered backend's family declaration (hand-written backends get one from their attributes)."""
    out: dict[str, VLMFamily] = {}
    for name, cls in VLM_BACKENDS.items():
        fam = getattr(cls, "family", None)
        if fam is None:
            fam = VLMFamily(name=name, model_class=cls.model_class, model_types=tuple(cls.model_types),
                            pooling=cls.pooling, tiny=name)
        out[name] = fam
    return out
