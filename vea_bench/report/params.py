"""Parameter counts computed from the architectures, never typed in (Tables 2 and 3, `vea-bench params`).

Small modules (distill heads, gates) are the very `vea_bench.heads` modules training uses, built
for real with the right input width D and class count C; large ones (the ViT teacher, the 7B VLM)
are built on the ``meta`` device, which allocates no memory and needs no weights, so counting
Qwen2-VL-7B takes seconds offline (the VLM architectures ship as configs in
`vea_bench/data/configs/`, built by `vea_bench.models.arch`; where the vision tower and the
language model sit is the family's `VLMFamily` declaration).

The paper's "trainable parameters" of the VLM (Table 2: 1,091,870,720 for Qwen2-VL-7B-Instruct)
is not the LoRA adapter (r = 8 on q/k/v/o gives 5,046,272) nor the full model (8,291,375,616). It is
the number of parameters of the model minus every quantised ``nn.Linear`` layer, weight *and*
bias: transformers replaces every ``nn.Linear`` (vision tower and language model alike) by a
``Linear4bit`` except the output embedding (``lm_head``), which bitsandbytes keeps in full
precision. That set is: token embeddings 544,997,376 + lm_head 544,997,376 + the language model's
57 RMSNorms 204,288 + the vision tower's LayerNorms (32 blocks x 2 + merger ln_q, weight and bias)
166,400 + the vision patch embedding Conv3d 1,505,280 = 1,091,870,720. `quantised_trainable_params`
counts exactly this set for any model (the non-``Linear`` parameters plus the output embedding),
so the paper's figure is reproduced rather than copied (`vea-bench params` prints every figure
here; `tests/test_params.py` asserts them). EmoVLM-KD's 1,095,550,096 is that plus the
distill head (3,679,240) plus the Concat & Linear gate (136).

What is left with ``requires_grad=True`` after a 4-bit load depends on the transformers version:
in transformers 5.x the ``Linear4bit`` weights are frozen but their *biases* stay trainable, so
``sum(p.numel() for p in model.parameters() if p.requires_grad)`` gives the paper's figure plus
the quantised layers' biases (`quantised_linear_bias_params`; Qwen2-VL-7B has biases on the
language model's q/k/v and on the vision tower's and merger's Linears). `vea-bench params` prints
both. None of these counts is what QLoRA trains: that is the LoRA adapter alone.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from vea_bench.errors import ModelError

log = logging.getLogger(__name__)

# SPEC: hidden dims of a depth-d distill head are DEPTH_DIMS[:d].
DEPTH_DIMS: tuple[int, ...] = (1024, 512, 256, 128, 64)
DEFAULT_VLM = "qwen2-vl-7b-instruct"
DEFAULT_TEACHER = "vit_base_patch16_224"


def hidden_dims_for_depth(depth: int) -> list[int]:
    """SPEC's hidden dims for ``depth`` (1-5)."""
    if not 1 <= depth <= len(DEPTH_DIMS):
        raise ModelError(f"distill depth must be 1-{len(DEPTH_DIMS)}, got {depth}")
    return list(DEPTH_DIMS[:depth])


def count(module: Any, *, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (all, or only those with ``requires_grad``)."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


# ----------------------------------------------------------------------------- heads

def distill_head_params(in_dim: int, num_classes: int, hidden_dims: Sequence[int]) -> int:
    """Parameters of the distill head training uses (`vea_bench.heads`), built for real at width ``in_dim``."""
    from vea_bench.heads.distill import build_distill_head

    return count(build_distill_head(in_dim, num_classes, list(hidden_dims)))


def gate_params(gate: str, num_classes: int) -> int:
    """Parameters of the gate training uses, by any spelling the paper or the gate registry knows."""
    from vea_bench.heads.gates import build_gate
    from vea_bench.report.paper import gate_key

    return count(build_gate(gate_key(gate) or gate, num_classes))


# ----------------------------------------------------------------------------- teacher

def teacher_params(arch: str = DEFAULT_TEACHER, num_classes: int = 8) -> int:
    """Parameters of a timm teacher (a preset like 'vit' or any timm name), built on the meta device."""
    import timm
    import torch

    from vea_bench.models.teacher import resolve_arch

    arch = resolve_arch(arch)
    if not timm.is_model(arch):
        raise ModelError(f"unknown teacher architecture '{arch}' (a timm model name or preset such as 'vit')")
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    return count(model)


# ----------------------------------------------------------------------------- VLM

def build_vlm_on_meta(preset_or_path: str) -> Any:
    """The VLM's module tree on the meta device (no weights, no hub): the backend's `build_on_meta`."""
    from vea_bench.models.arch import build_on_meta

    return build_on_meta(preset_or_path)


def quantised_trainable_params(model: Any) -> int:
    """Parameters left trainable after 4-bit bitsandbytes loading: all but the non-output ``nn.Linear`` layers.

    This is the paper's Table 2 "trainable parameters" of the VLM (see the module docstring).
    """
    from torch import nn

    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    frozen: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, nn.Linear) and mod is not out:
            frozen.update(id(p) for p in mod.parameters(recurse=False))
    return int(sum(p.numel() for p in model.parameters() if id(p) not in frozen))


def quantised_linear_bias_params(model: Any) -> int:
    """Biases of the ``nn.Linear`` layers 4-bit loading quantises (all but the output embedding):
    transformers 5.x leaves them trainable, on top of `quantised_trainable_params`."""
    from torch import nn

    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return int(sum(mod.bias.numel() for mod in model.modules()
                   if isinstance(mod, nn.Linear) and mod is not out and mod.bias is not None))


def lora_params(model: Any, *, r: int = 8, targets: Sequence[str] | None = None,
                language_path: str | None = None) -> int:
    """LoRA adapter size: ``r * (in + out)`` for every ``nn.Linear`` named like a target in the language model.

    ``targets`` / ``language_path`` default to the model family's own (`VLMFamily.lora_targets`,
    ``language_module``), found from the model's config type.

    peft matches ``target_modules`` by the module name's last component; so does this.
    """
    from torch import nn

    if targets is None or language_path is None:
        from vea_bench.models.generic import family_of

        fam = family_of(getattr(model.config, "model_type", "") or "unknown")
        targets = fam.lora_targets if targets is None else targets
        language_path = fam.language_module if language_path is None else language_path
    root = model.get_submodule(language_path)
    total = 0
    for name, mod in root.named_modules():
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            total += r * (mod.in_features + mod.out_features)
    return total


@dataclass
class VLMCounts:
    """Parameter facts of one VLM architecture."""

    name: str
    model_type: str
    total: int
    vision_tower: int
    language_model: int
    embed_dim: int
    quantised_trainable: int             # the paper's definition (Table 2)
    quantised_linear_biases: int         # + these are trainable after a 4-bit load in transformers 5.x
    lora: int
    lora_r: int

    @property
    def quantised_trainable_actual(self) -> int:
        """``requires_grad`` parameters after a 4-bit load in transformers 5.x (biases not frozen)."""
        return self.quantised_trainable + self.quantised_linear_biases


def vlm_counts(preset_or_path: str = DEFAULT_VLM, *, lora_r: int = 8) -> VLMCounts:
    """Count a VLM's parameters on the meta device (total, vision tower, language model, LoRA, paper-trainable)."""
    from vea_bench.models.generic import family_of

    model = build_vlm_on_meta(preset_or_path)
    model_type = getattr(model.config, "model_type", "") or "unknown"
    fam = family_of(model_type)
    try:
        vision = sum(count(model.get_submodule(p)) for p in fam.visual_paths)
        language = model.get_submodule(fam.language_module)
    except AttributeError as exc:
        raise ModelError(f"{preset_or_path}: module layout not understood for '{model_type}' ({exc})") from None
    return VLMCounts(
        name=preset_or_path,
        model_type=model_type,
        total=count(model),
        vision_tower=vision,
        language_model=count(language),
        embed_dim=fam.embed_dim(model.config),
        quantised_trainable=quantised_trainable_params(model),
        quantised_linear_biases=quantised_linear_bias_params(model),
        lora=lora_params(model, r=lora_r, targets=fam.lora_targets, language_path=fam.language_module),
        lora_r=lora_r,
    )


@lru_cache(maxsize=8)
def vlm_counts_cached(preset_or_path: str = DEFAULT_VLM, lora_r: int = 8) -> VLMCounts:
    """`vlm_counts`, memoised: building a 7B model on the meta device takes seconds, tables ask often."""
    return vlm_counts(preset_or_path, lora_r=lora_r)


# ----------------------------------------------------------------------------- the full report

@dataclass
class ParamReport:
    """Everything `vea-bench params` prints and Tables 2-3 use."""

    vlm: VLMCounts
    num_classes: int
    depth: int
    hidden_dims: list[int]
    distill_head: int
    gate: str
    gate_params: int
    teacher: str
    teacher_params: int
    emovlm_kd_trainable: int = field(init=False)

    def __post_init__(self) -> None:
        # Table 2 (4): the VLM's trainable parameters + distill head + gate.
        self.emovlm_kd_trainable = self.vlm.quantised_trainable + self.distill_head + self.gate_params

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def param_report(
    vlm: str = DEFAULT_VLM,
    num_classes: int = 8,
    *,
    depth: int = 1,
    teacher: str = DEFAULT_TEACHER,
    gate: str = "concat",
    lora_r: int = 8,
) -> ParamReport:
    """Counts for one EmoVLM-KD configuration; the paper's FI setup is ``param_report(num_classes=8)``."""
    if num_classes < 2:
        raise ModelError(f"--classes must be at least 2, got {num_classes}")
    counts = vlm_counts_cached(vlm, lora_r)
    dims = hidden_dims_for_depth(depth)
    return ParamReport(
        vlm=counts,
        num_classes=num_classes,
        depth=depth,
        hidden_dims=dims,
        distill_head=distill_head_params(counts.embed_dim, num_classes, dims),
        gate=gate,
        gate_params=gate_params(gate, num_classes),
        teacher=teacher,
        teacher_params=teacher_params(teacher, num_classes),
    )
