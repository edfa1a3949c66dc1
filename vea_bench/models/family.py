"""What a VLM family knows about itself, in one declaration (no torch / transformers import).

Every registered backend class carries one `VLMFamily` as ``cls.family``. Everything else that
needs a family's knowledge looks it up there instead of keeping its own table: the engine (the
pooled width from ``embed_dim_path``), `report/params.py` (``vision_paths`` and
``language_module`` to count parameters on the meta device), `train/qlora.py` (``model_class``,
``language_module`` and ``lora_targets`` for LoRA), `models/random_weights.py` (``tiny``,
``fit_processor``), `models/tiny.py` and the tests (``tiny``, ``vision_module``, ``presets``). Adding a family is therefore one file with one declaration.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vea_bench.errors import ModelError

DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class VLMFamily:
    """A VLM family's facts: its transformers class and config types, module layout, widths, LoRA
    targets, tiny model and bundled presets (see `vea_bench.models.generic` for the pooling fields)."""

    name: str                                   # backend name (`--backend`), also its tiny kind by default
    model_class: str                            # transformers class, e.g. "Gemma3ForConditionalGeneration"
    model_types: tuple[str, ...]                # config.model_type values served (auto-detection)
    pooling: str                                # one line: what `pooled` is (goes into provenance)
    image_inputs: tuple[str, ...] = ("pixel_values",)  # batch tensors `get_image_features` takes
    pooled_from: str | None = None              # None: pooler_output rows; else a module whose output is pooled
    embed_dim_path: str = "text_config.hidden_size"    # dotted config path of the pooled width
    nested_images: bool = False                 # the processor wants one list of images per prompt
    vision_module: str = "model.vision_tower"   # the vision tower (tests count its calls: one per batch)
    vision_paths: tuple[str, ...] = ()          # the whole visual side (tower + connector) for parameter
                                                # counts; () means just ``vision_module``
    language_module: str = "model.language_model"  # the language model: LoRA goes only in there
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS  # language-model Linear names LoRA adapts
    tiny: str | None = None                     # TINY_BUILDERS kind of its tiny random model
    aliases: tuple[str, ...] = ()
    presets: tuple[str, ...] = field(default=())  # bundled architecture presets of real checkpoints
    min_transformers: str | None = None          # lowest transformers its tests pass on (None: our lower bound)
    # (tiny processor, real config) -> None: sets the real checkpoint's image settings on the tiny
    # processor, so `random_weights` can run a real-size random-weight model (None: not supported)
    fit_processor: Callable[[Any, Any], None] | None = field(default=None, compare=False)
    # torch dtype names ("float16") the language model overflows in (NaN or garbage answers and
    # embeddings): an explicit choice of one is refused in one line, ``--dtype auto`` picks fp32 instead
    overflow_dtypes: tuple[str, ...] = ()
    # image positions its chat template honours; a template that places the image itself (LLaVA's
    # images-first layout) declares only that one, and asking for another is refused
    image_positions: tuple[str, ...] = ("first", "last")

    @property
    def visual_paths(self) -> tuple[str, ...]:
        """Submodules holding the visual side (what `vea-bench params` counts as the vision tower)."""
        return self.vision_paths or (self.vision_module,)

    def check_image_position(self, position: str) -> str:
        """``position`` if this family's template honours it; a one-line refusal naming the fix otherwise."""
        if position not in self.image_positions:
            raise ModelError(f"the {self.name} chat template always puts the image {self.image_positions[0]} "
                             f"in the user turn; use --image-position {self.image_positions[0]}")
        return position

    def check_dtype(self, dtype: Any, *, chosen: str, what: str = "--dtype") -> None:
        """A one-line refusal where ``dtype`` (a torch dtype, picked by ``what`` = ``chosen``) is one
        this family overflows in; the message names the family and the fix."""
        name = str(dtype).replace("torch.", "")
        if name in self.overflow_dtypes:
            raise ModelError(f"{self.name} overflows in {name} (NaN or garbage answers and embeddings); "
                             f"{what} {chosen} gives {name}: use --dtype bf16, or fp32 on a GPU without bf16")

    def embed_dim(self, config: Any) -> int:
        """Width of the pooled embedding for ``config`` (real, tiny or meta-device alike)."""
        return int(config_value(config, self.embed_dim_path))


def config_value(config: Any, path: str) -> Any:
    """``config`` attribute at dotted ``path`` ('text_config.hidden_size'); a one-line error if absent."""
    obj = config
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ModelError(f"{type(config).__name__} has no '{path}'")
    return obj


def module_at(root: Any, path: str) -> Any:
    """Submodule of ``root`` at dotted ``path`` ('model.multi_modal_projector'); a one-line error if absent."""
    mod = root
    for part in path.split("."):
        if not hasattr(mod, part):
            raise ModelError(f"{type(root).__name__} has no submodule '{path}'")
        mod = getattr(mod, part)
    return mod


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
