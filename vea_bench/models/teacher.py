"""Teacher checkpoints: one on-disk format that `train teacher` writes and `extract --teacher` reads.

A teacher checkpoint is a folder::

    <dir>/config.json          format, arch (timm name), num_classes, label_names, label_space,
                               dataset, img_size, data_config (timm: mean/std/interpolation/
                               crop_pct/input_size), timm_kwargs, plus whatever the trainer adds
    <dir>/<name>.safetensors   the model's state dict ("best" by default; "last" beside it)

Weights live in safetensors (never pickles) and the config carries everything needed to rebuild
the model and its preprocessing offline, so a checkpoint is self-describing: extraction can run
it months later with the transform it was trained with. A fine-tuned transformers image
classifier folder (``config.json`` with ``id2label``) loads too, wrapped to return logits.
"""
from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vea_bench.errors import ModelError
from vea_bench.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

TEACHER_FORMAT = "vea-bench/teacher/1"
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class TeacherPreset:
    """A named conventional model of the paper (Table 1 rows) and the timm architecture behind it."""

    arch: str
    method: str       # the name run records and tables use ("ViT", "ResNet50", "VGG16")
    img_size: int | None
    note: str


# The paper's conventional models; any other timm name works as well (`build_teacher` passes it through).
TEACHER_PRESETS: Registry[TeacherPreset] = Registry("teacher preset")
TEACHER_PRESETS.add(
    "vit", TeacherPreset("vit_base_patch16_224", "ViT", 224, "ViT-B/16 at 224 px (85,804,808 params with 8 classes)"),
    aliases=("vit-b16", "vit-b/16"),
)
TEACHER_PRESETS.add(
    "vit-384", TeacherPreset("vit_base_patch16_384", "ViT", 384, "the reference code's google/vit-base-patch16-384"),
)
TEACHER_PRESETS.add("resnet50", TeacherPreset("resnet50", "ResNet50", 224, "ResNet-50 baseline"))
TEACHER_PRESETS.add("vgg16", TeacherPreset("vgg16", "VGG16", 224, "VGG-16 baseline"))


def resolve_arch(name: str) -> str:
    """A preset name (``vit``, ``resnet50``) to its timm architecture; any other name passes through."""
    if name in TEACHER_PRESETS:
        return TEACHER_PRESETS.get(name).arch
    return name


def _check_arch(arch: str) -> None:
    import timm

    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ModelError(f"unknown timm architecture '{arch}'{hint} (see `timm.list_models()` or `vea-bench models list`)")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local safetensors or torch file, loaded safely (no pickled code)."""
    import torch

    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file is one user-facing line)
        if path.suffix != ".safetensors" and type(exc).__name__ == "UnpicklingError":
            from vea_bench.models.loading import CONVERT_HINT

            # weights_only refuses pickles holding more than tensors; we never unpickle code.
            raise ModelError(f"cannot read weights {path}: a pickle holding more than tensors (refused, "
                             f"never unpickled); " + CONVERT_HINT.format(src=path, dst=path.with_suffix(".safetensors"))
                             ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot read weights {path}: {first[:160]}") from None
    # Training scripts wrap state dicts in various ways; unwrap the common ones.
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping) or not all(hasattr(v, "shape") for v in sd.values()):
        raise ModelError(f"{path} does not hold a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def _head_prefixes(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = cfg.get("classifier") or ()
    if isinstance(head, str):
        head = (head,)
    return [h + "." for h in head]


def _load_backbone_weights(model: nn.Module, path: Path, *, reset_head: bool) -> None:
    """Load ``path`` into ``model``; the classifier is skipped when its shape (class count) differs."""
    sd = _read_state_dict(path)
    own = model.state_dict()
    heads = _head_prefixes(model)
    skipped = []
    for k in list(sd):
        is_head = any(k.startswith(h) for h in heads)
        if k in own and sd[k].shape != own[k].shape:
            if is_head or reset_head:
                skipped.append(k)
                del sd[k]
            else:
                raise ModelError(
                    f"{path}: tensor '{k}' has shape {tuple(sd[k].shape)}, the model expects "
                    f"{tuple(own[k].shape)}; wrong architecture for these weights?"
                )
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped and not any(k.startswith(h) for h in heads)]
    if missing or (result.unexpected_keys and not all(any(k.startswith(h) for h in heads) for k in result.unexpected_keys)):
        bad = (missing or result.unexpected_keys)[:3]
        raise ModelError(
            f"{path}: weights do not fit this architecture ({len(missing)} missing, "
            f"{len(result.unexpected_keys)} unexpected tensors, e.g. {', '.join(bad)})"
        )
    if skipped:
        log.info("classifier re-initialised for the new class count (%s)", ", ".join(skipped))


def build_teacher(
    arch: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    img_size: int | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm classifier for ``num_classes``: random, hub-pretrained (only when asked) or from a local file.

    ``weights`` is a local safetensors / torch state dict (e.g. ImageNet weights copied to an
    offline cluster); its classifier is dropped and re-initialised when the class count differs.
    ``img_size`` goes to models that take it (ViTs); for others it is recorded in the data config.
    """
    import timm

    arch = resolve_arch(arch)
    _check_arch(arch)
    if pretrained and weights is not None:
        raise ModelError("give either pretrained=True (hub) or a local weights file, not both")
    kwargs = dict(timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        try:
            model = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kwargs)
        except TypeError as exc:
            if img_size is None or "img_size" not in str(exc):
                raise
            kwargs.pop("img_size")  # a CNN: input size is free, keep it for the transform only
            model = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except ModelError:
        raise
    except TypeError as exc:
        raise ModelError(f"timm model '{arch}' does not take these options ({exc})") from None
    except Exception as exc:  # noqa: BLE001  hub download or config failures, one line each
        what = "download pretrained weights for" if pretrained else "build"
        raise ModelError(
            f"cannot {what} timm model '{arch}': {(str(exc).splitlines() or [type(exc).__name__])[0][:160]}"
            + ("; offline? pass a local weights file instead" if pretrained else "")
        ) from None
    if weights is not None:
        _load_backbone_weights(model, Path(weights), reset_head=True)
    # Remember how the model was built so `save_teacher` can write a self-describing config.
    model.vea_build = {"arch": arch, "timm_kwargs": {k: v for k, v in kwargs.items() if k != "img_size"},
                       "img_size": img_size}
    return model


def data_config(model: nn.Module, img_size: int | None = None) -> dict[str, Any]:
    """timm's preprocessing for ``model`` (mean, std, interpolation, crop_pct, input_size) as JSON values."""
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    out = {
        "input_size": list(cfg["input_size"]),
        "interpolation": str(cfg.get("interpolation", "bicubic")),
        "mean": [float(x) for x in cfg["mean"]],
        "std": [float(x) for x in cfg["std"]],
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
        "crop_mode": str(cfg.get("crop_mode", "center")),
    }
    if img_size is not None:
        out["input_size"] = [3, int(img_size), int(img_size)]
    return out


def save_teacher(model: nn.Module, out_dir: str | Path, meta: Mapping[str, Any], *, name: str = "best") -> Path:
    """Write ``<out_dir>/<name>.safetensors`` and ``<out_dir>/config.json``; returns the weights path.

    ``meta`` must give ``label_names`` (or ``num_classes``); ``arch``, ``img_size``, ``timm_kwargs``
    and the data config default to what `build_teacher` recorded on the model. Extra keys
    (dataset, label_space, metrics, seed...) are kept verbatim.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    built = dict(getattr(model, "vea_build", {}) or {})
    arch = meta.get("arch") or built.get("arch") or (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not arch:
        raise ModelError("save_teacher: the model's timm architecture is unknown; pass meta['arch']")
    num_classes = int(meta.get("num_classes") or getattr(model, "num_classes", 0))
    label_names = list(meta.get("label_names") or [])
    if label_names and len(label_names) != num_classes:
        raise ModelError(f"save_teacher: {len(label_names)} label names for a {num_classes}-class model")
    img_size = meta.get("img_size", built.get("img_size"))
    cfg: dict[str, Any] = dict(meta)
    cfg.update(
        format=TEACHER_FORMAT,
        arch=arch,
        num_classes=num_classes,
        label_names=label_names,
        label_space=meta.get("label_space"),
        dataset=meta.get("dataset"),
        img_size=img_size,
        data_config=dict(meta.get("data_config") or data_config(model, img_size)),
        timm_kwargs=dict(meta.get("timm_kwargs", built.get("timm_kwargs", {})) or {}),
    )
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    weights = out_dir / f"{name}.safetensors"
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": TEACHER_FORMAT, "arch": str(arch)})
    tmp.replace(weights)
    cfg_tmp = out_dir / (CONFIG_NAME + ".tmp")
    cfg_tmp.write_text(json.dumps(cfg, indent=2, default=str))
    cfg_tmp.replace(out_dir / CONFIG_NAME)
    return weights


def _wrap_hf(hf_model: nn.Module) -> nn.Module:
    """A transformers image classifier as a module whose ``forward(pixels)`` returns logits, like timm."""
    from torch import nn

    class _Wrapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.num_classes = int(inner.config.num_labels)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.inner(pixel_values=pixel_values).logits

    return _Wrapped(hf_model)


def _hf_data_config(path: Path) -> dict[str, Any]:
    """The image processor's mean/std/size as a timm-style data config (resize + center crop)."""
    from transformers import AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(str(path))
    except Exception:  # noqa: BLE001  no processor saved: ViT defaults
        proc = None
    size = getattr(proc, "size", None)
    if isinstance(size, (int, float)):
        side = int(size)
    else:  # a dict (transformers 4) or a SizeDict (transformers 5)
        side = int(_size_field(size, "height") or _size_field(size, "shortest_edge") or 224)
    crop = getattr(proc, "crop_size", None)
    crop_pct = 1.0
    crop_h = _size_field(crop, "height")
    if crop_h and getattr(proc, "do_center_crop", False):
        crop_pct = float(crop_h) / float(side)
        side = int(crop_h)
    resample = getattr(proc, "resample", 2)
    interp = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(getattr(resample, "value", resample) or 2), "bilinear")
    mean = list(getattr(proc, "image_mean", None) or [0.5, 0.5, 0.5])
    std = list(getattr(proc, "image_std", None) or [0.5, 0.5, 0.5])
    return {"input_size": [3, int(side), int(side)], "interpolation": interp, "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "crop_pct": crop_pct, "crop_mode": "center"}


def _size_field(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, Mapping):
        return size.get(key)
    return getattr(size, key, None)


def _load_hf(path: Path, hf_cfg: Mapping[str, Any], device: str) -> tuple[nn.Module, dict[str, Any]]:
    from transformers import AutoModelForImageClassification

    try:
        inner = AutoModelForImageClassification.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot load transformers image classifier {path}: {(str(exc).splitlines() or [type(exc).__name__])[0][:160]}") from None
    id2label = {int(k): v for k, v in (hf_cfg.get("id2label") or {}).items()}
    labels = [str(id2label[i]) for i in sorted(id2label)]
    model = _wrap_hf(inner).to(device).eval()
    meta = {
        "format": "transformers",
        "arch": str(hf_cfg.get("model_type", "transformers")),
        "num_classes": len(labels),
        "label_names": labels,
        "label_space": None,
        "dataset": None,
        "data_config": _hf_data_config(path),
        "path": str(path),
    }
    return model, meta


def load_teacher(path: str | Path, *, device: str = "cpu", name: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved teacher (eval mode, on ``device``) and return it with its config.

    ``path`` is a checkpoint folder, a ``.safetensors`` file with ``config.json`` beside it, or a
    transformers image-classification folder. The returned meta gains ``weights`` (the file read).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"teacher checkpoint {path} does not exist")
    # Absolute, resolved paths in the returned meta: a resume given the same teacher by a relative
    # path (or through a symlink) records the same provenance.
    path = path.resolve()
    if path.is_file():
        weights, folder = path, path.parent
    else:
        folder = path
        weights = path / f"{name}.safetensors"
    cfg_path = folder / CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelError(f"{folder} has no {CONFIG_NAME}; not a teacher checkpoint (train one with `vea-bench train teacher`)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{cfg_path}: unreadable config ({exc})") from None
    if cfg.get("format") != TEACHER_FORMAT:
        if "id2label" in cfg and not path.is_file():
            return _load_hf(folder, cfg, device)
        raise ModelError(f"{cfg_path}: neither a vea-bench teacher config nor a transformers image classifier")
    if not weights.is_file():
        have = sorted(p.name for p in folder.glob("*.safetensors"))
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        if not have and pickles:
            from vea_bench.models.loading import CONVERT_HINT

            raise ModelError(f"{folder}: {pickles[0]} is a pickled torch file and vea-bench loads safetensors only; "
                             + CONVERT_HINT.format(src=folder / pickles[0], dst=weights))
        raise ModelError(f"{folder}: no weights {weights.name} (has: {', '.join(have) or 'none'})")
    import torch

    with torch.device("meta"):
        # Build without allocating, then materialise straight from the file.
        model = build_teacher(cfg["arch"], int(cfg["num_classes"]), img_size=cfg.get("img_size"),
                              **dict(cfg.get("timm_kwargs") or {}))
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"cannot read teacher weights {weights}: {(str(exc).splitlines() or [type(exc).__name__])[0][:160]}") from None
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"{weights}: weights do not fit {cfg['arch']} ({(str(exc).splitlines() or [type(exc).__name__])[0][:160]})") from None
    # Buffers not in the state dict (non-persistent) stay on meta: rebuild them by re-running init there.
    _materialise_leftovers(model, cfg)
    model = model.to(device).eval()
    meta = dict(cfg)
    meta["weights"] = str(weights)
    meta["path"] = str(folder)
    return model, meta


def _materialise_leftovers(model: nn.Module, cfg: Mapping[str, Any]) -> None:
    """Copy non-persistent buffers (left on the meta device) from a CPU-built twin of the model."""
    leftovers = [n for n, b in model.named_buffers() if b.is_meta]
    if not leftovers:
        return
    twin = build_teacher(cfg["arch"], int(cfg["num_classes"]), img_size=cfg.get("img_size"),
                         **dict(cfg.get("timm_kwargs") or {}))
    twin_buffers = dict(twin.named_buffers())
    for full in leftovers:
        mod_name, _, buf_name = full.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        mod._buffers[buf_name] = twin_buffers[full]


_INTERP = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST", "lanczos": "LANCZOS",
           "box": "BOX", "hamming": "HAMMING"}


def teacher_transform(meta: Mapping[str, Any], *, train: bool) -> Callable[[Any], torch.Tensor]:
    """The teacher's preprocessing from its data config (SPEC).

    Train: RandomResizedCrop + horizontal flip (nothing else: no colour jitter, no RandAugment).
    Test: Resize to ``size / crop_pct`` on the short side, then CenterCrop ``size``.
    """
    import math

    from torchvision import transforms as T

    dc = meta.get("data_config") or {}
    size = int((dc.get("input_size") or [3, 224, 224])[-1])
    mode = getattr(T.InterpolationMode, _INTERP.get(str(dc.get("interpolation", "bicubic")), "BICUBIC"))
    norm = T.Normalize(mean=list(dc.get("mean", (0.485, 0.456, 0.406))), std=list(dc.get("std", (0.229, 0.224, 0.225))))
    if train:
        steps: list[Any] = [T.RandomResizedCrop(size, interpolation=mode), T.RandomHorizontalFlip()]
    else:
        crop_pct = float(dc.get("crop_pct", 1.0) or 1.0)
        steps = [T.Resize(int(math.floor(size / crop_pct)), interpolation=mode), T.CenterCrop(size)]
    return T.Compose([_to_rgb, *steps, T.ToTensor(), norm])


def _to_rgb(img: Any) -> Any:
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img


def _default_label_names(num_classes: int) -> tuple[list[str], str | None]:
    from vea_bench.labels import LABEL_SPACES

    for space in LABEL_SPACES.values():
        if space.num_classes == num_classes:
            return list(space.labels), space.name
    return [f"class_{i}" for i in range(num_classes)], None


# The tiny teacher: a real timm ViT with toy widths (runs in milliseconds on CPU).
TINY_TEACHER_ARCH = "vit_tiny_patch16_224"
TINY_TEACHER_KWARGS: dict[str, Any] = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TINY_TEACHER_IMG_SIZE = 32


def make_tiny_teacher(
    out: str | Path,
    *,
    seed: int = 0,
    num_classes: int = 8,
    label_names: list[str] | tuple[str, ...] | None = None,
) -> Path:
    """Save a tiny random-weight timm ViT teacher in the checkpoint format; returns its folder.

    Tests and the demo load it with exactly the code path real fine-tuned teachers take.
    """
    import torch

    if label_names is not None:
        names = list(label_names)
        num_classes = len(names)
        from vea_bench.labels import label_space_from_names

        space: str | None = label_space_from_names(names).name
    else:
        names, space = _default_label_names(num_classes)
    torch.manual_seed(seed)
    model = build_teacher(TINY_TEACHER_ARCH, num_classes, img_size=TINY_TEACHER_IMG_SIZE, **TINY_TEACHER_KWARGS)
    out = Path(out)
    save_teacher(model, out, {"label_names": names, "label_space": space, "dataset": None,
                              "tiny": True, "seed": seed})
    return out
