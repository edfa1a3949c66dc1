"""Frozen timm backbones as feature extractors for linear-probe baselines (`backbone/<key>` sources).

Any timm architecture works: built with ``num_classes=0`` it returns the pooled pre-logits
feature, and its own data config gives its preprocessing (resize, centre crop, mean/std), so a
probe on CLIP, DINOv2 or ResNet features compares backbones rather than preprocessing choices.
Weights come from the hub only when no local file is given; ``random`` gives a seeded random
network (tests, and a chance-level control for probes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vea_bench.errors import ModelError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

RANDOM = "random"


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone to run: a timm name, where its weights come from, and build options.

    ``weights``: None (hub pretrained), ``"random"`` (seeded random init) or a local file.
    """

    name: str
    weights: str | None = None
    img_size: int | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    seed: int = 0

    @classmethod
    def parse(cls, text: str, *, default_weights: str | None = None) -> BackboneSpec:
        """``NAME`` or ``NAME@WEIGHTS`` (a file or ``random``), as `--backbone` takes it."""
        name, sep, weights = str(text).partition("@")
        name = name.strip()
        if not name:
            raise ModelError(f"--backbone '{text}': expected a timm name, optionally @WEIGHTS (a file or 'random')")
        return cls(name, weights.strip() if sep else default_weights)


@dataclass
class Backbone:
    """A loaded frozen backbone: eval-mode model, its test-time transform, feature width, provenance."""

    spec: BackboneSpec
    model: nn.Module
    transform: Callable[[Any], torch.Tensor]
    dim: int
    provenance: dict[str, Any]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.model(pixels)


def load_backbone(spec: BackboneSpec | str, *, device: str = "cpu") -> Backbone:
    """Build ``spec`` headless (``num_classes=0``), load its weights and its preprocessing."""
    import torch

    from vea_bench.hashing import file_sha256
    from vea_bench.models.teacher import (
        _check_arch,
        _load_backbone_weights,
        data_config,
        teacher_transform,
    )

    if isinstance(spec, str):
        spec = BackboneSpec.parse(spec)
    _check_arch(spec.name)
    import timm

    kwargs = dict(spec.timm_kwargs)
    if spec.img_size is not None:
        kwargs["img_size"] = spec.img_size
    pretrained = spec.weights is None
    prov: dict[str, Any] = {"model": spec.name, "timm_kwargs": dict(spec.timm_kwargs), "img_size": spec.img_size}
    try:
        if spec.weights == RANDOM:
            torch.manual_seed(spec.seed)
            prov.update(weights=RANDOM, seed=spec.seed)
        model = timm.create_model(spec.name, pretrained=pretrained, num_classes=0, **kwargs)
    except TypeError as exc:
        raise ModelError(f"timm model '{spec.name}' does not take these options ({exc})") from None
    except Exception as exc:  # noqa: BLE001  download or build failure: one line
        hint = "; offline? give a local weights file (--backbone NAME@FILE) or NAME@random" if pretrained else ""
        raise ModelError(f"cannot load backbone '{spec.name}': {str(exc).splitlines()[0][:160]}{hint}") from None
    if pretrained:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        prov.update(weights="hub", pretrained_tag=cfg.get("tag"), hf_hub_id=cfg.get("hf_hub_id"))
    elif spec.weights != RANDOM:
        path = Path(spec.weights)  # type: ignore[arg-type]
        _load_backbone_weights(model, path, reset_head=True)
        prov.update(weights=str(path.resolve()), weights_sha256=file_sha256(path))
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dc = data_config(model, spec.img_size)
    prov["data_config"] = dc
    meta = {"data_config": dc}
    # The pooled width from one dummy forward: `num_features` is not the output width of models
    # with a pre-logits hidden layer.
    with torch.inference_mode():
        dim = int(model(torch.zeros(1, *dc["input_size"], device=device)).shape[-1])
    prov["dim"] = dim
    return Backbone(spec, model, teacher_transform(meta, train=False), dim, prov)
