"""Shared loading helpers for every VLM backend: where the weights are, in which dtype, on which
device, quantised or not, with which LoRA adapter, and how to prove afterwards what was loaded.

Everything a user can get wrong here (a mistyped path, a hub that cannot be reached, 4-bit on a
CPU, an adapter trained on another base model) becomes one `ModelError` line, never a traceback.
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from vea_bench.devices import resolve_device
from vea_bench.errors import ModelError, VeaError
from vea_bench.models.base import LoadOptions

INSTRUCTBLIP_PROMPTS: tuple[str, ...] = ("raw", "vicuna")
"""InstructBLIP's language-model prompt: the raw question (LAVIS' training, lmms-eval, VLMEvalKit)
or SPEC's system message + Vicuna's ``USER: ... ASSISTANT:`` wrapper."""

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERT_HINT = ("convert it to safetensors: python -c \"import torch, safetensors.torch as st; "
                "st.save_file(torch.load('{src}', weights_only=True), '{dst}')\"")


def check_weights_dir(directory: str | Path, what: str, *, stem: str = "model") -> None:
    """Refuse, in one line naming the file, a local model/adapter folder whose weights are pickles
    only (vea-bench never unpickles) or whose safetensors files are malformed.

    Reads only the safetensors headers, so a 15 GB model costs milliseconds.
    """
    d = Path(directory).expanduser()
    if not d.is_dir():
        return
    files = [p for p in sorted(d.iterdir()) if p.is_file()]
    safes = [p for p in files if p.suffix == ".safetensors"]
    if not safes:
        pickles = [p for p in files if p.suffix in _PICKLE_SUFFIXES]
        if pickles:
            src = pickles[0]
            raise ModelError(f"{what} {d}: {src.name} is a pickled torch file and vea-bench loads safetensors only; "
                             + CONVERT_HINT.format(src=src, dst=d / f"{stem}.safetensors"))
        return
    from safetensors import safe_open

    for p in safes:
        try:
            with safe_open(str(p), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # noqa: BLE001  SafetensorError, OSError, ...: one line naming the file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{what} {d}: {p.name} is not a valid safetensors file ({first[:160]}); "
                             f"re-download or re-save it") from None


def _quiet_transformers() -> None:
    """Library code never prints: silence transformers' own progress bars ("Loading weights")."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def resolve_source(model: str) -> tuple[str, bool]:
    """(id_or_path, is_local). A path-looking string that does not exist is a one-line error.

    An ``org/name`` string that is not an existing directory is taken as a hub id; anything with
    a leading ``/ . ~``, more than one separator or a Windows drive is a path.
    """
    if not model or not str(model).strip():
        raise ModelError("no model given: pass a hub id (e.g. Qwen/Qwen2-VL-7B-Instruct) or a local directory")
    text = str(model).strip()
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model path '{text}' is a file; pass the directory holding config.json")
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory '{text}' has no config.json (not a saved transformers model)")
        return str(path.resolve()), True
    looks_like_path = text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text \
        or re.match(r"^[A-Za-z]:", text) is not None
    if looks_like_path or not _HUB_ID.match(text):
        raise ModelError(f"model path '{text}' does not exist")
    return text, False


def hub_reachable_hint() -> str:
    return "check the hub id, your network or HF_HUB_OFFLINE / the local HF cache"


def load_config(opts: LoadOptions) -> Any:
    """`AutoConfig` for ``opts.model`` with one-line errors for a wrong path, an unreachable hub or an
    unknown model type. `trust_remote_code` only when the user asked for it."""
    source, is_local = resolve_source(opts.model)  # a wrong path fails before importing transformers
    from transformers import AutoConfig

    _quiet_transformers()
    try:
        return AutoConfig.from_pretrained(source, revision=opts.revision,
                                          trust_remote_code=opts.trust_remote_code)
    except ValueError as err:  # unknown model_type, remote code refused, bad revision
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "trust_remote_code" in str(err):
            raise ModelError(f"model '{opts.model}' needs custom code; rerun with --trust-remote-code "
                             "if you trust it") from None
        kind = _model_type_of(source) if is_local else None
        if kind:
            raise ModelError(f"model '{opts.model}' has unknown model type '{kind}' for transformers "
                             f"(upgrade transformers or pick another model)") from None
        raise ModelError(f"cannot read the config of model '{opts.model}': {msg}") from None
    except (OSError, EnvironmentError) as err:
        where = "local directory" if is_local else "hub id"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(f"cannot load {where} '{opts.model}' (revision {opts.revision or 'default'}): "
                         f"{first}; {hub_reachable_hint()}") from None


def _model_type_of(path: str) -> str | None:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}


def resolve_dtype(dtype: str, device: str, family: Any = None) -> Any:
    """'auto' is bf16 on a GPU (fp16 there only if the GPU lacks bf16) and fp32 on CPU.

    ``family`` (a `VLMFamily`) says which dtypes its model overflows in: 'auto' then picks fp32
    instead of one of them, and an explicit choice of one is refused in one line.
    """
    import torch

    if dtype in (None, "", "auto"):
        if device.startswith("cuda"):
            picked = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if family is not None and str(picked).replace("torch.", "") in family.overflow_dtypes:
                return torch.float32
            return picked
        return torch.float32
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise ModelError(f"unknown dtype '{dtype}' (auto, bf16, fp16, fp32)")
    if family is not None:
        family.check_dtype(name, chosen=str(dtype))
    return getattr(torch, name)


def quantization_config(quantization: str | None, device: str, compute_dtype: Any) -> Any | None:
    """bitsandbytes NF4 (double quantisation, SPEC's QLoRA recipe; GPU or CPU) or LLM.int8 (GPU only).

    Recent bitsandbytes releases (0.50 tested here) have CPU kernels for NF4, so the paper's 4-bit
    stage-1 path runs (slowly) on a CPU too; LLM.int8 is refused there.
    """
    if quantization in (None, "", "none"):
        return None
    q = str(quantization).lower().replace("-", "")
    if q not in ("4bit", "8bit", "nf4", "int8"):
        raise ModelError(f"unknown quantization '{quantization}' (4bit, 8bit)")
    if q in ("8bit", "int8") and not device.startswith("cuda"):
        raise ModelError(f"{quantization} loading needs a CUDA GPU (bitsandbytes); use 4bit or no quantization on CPU")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:  # located, not imported (its import prints notices)
        raise ModelError(f"{quantization} loading needs the bitsandbytes package (pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    if q in ("4bit", "nf4"):
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def from_pretrained_kwargs(opts: LoadOptions, family: Any = None) -> tuple[str, dict[str, Any], str, Any]:
    """(source, kwargs for `<ModelClass>.from_pretrained`, device, dtype) for ``opts``; ``family``
    (a `VLMFamily`) refuses or upcasts the dtypes it overflows in (see `resolve_dtype`)."""
    source, _ = resolve_source(opts.model)
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device, family)
    # use_safetensors: never fall back to unpickling a pytorch_model.bin (hub or local).
    kwargs: dict[str, Any] = {"revision": opts.revision, "dtype": dtype,
                              "trust_remote_code": opts.trust_remote_code, "use_safetensors": True}
    qconf = quantization_config(opts.quantization, device, dtype)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
        kwargs["device_map"] = {"": device if ":" in device or device == "cpu" else f"{device}:0"}
    elif device.startswith("cuda"):
        kwargs["device_map"] = {"": device if ":" in device else "cuda:0"}
    if opts.attn_implementation:
        kwargs["attn_implementation"] = opts.attn_implementation
    return source, kwargs, device, dtype


def validate_options(opts: LoadOptions, family: Any = None) -> None:
    """Every cheap check before any weight is read: path, weight files, device, dtype, quantisation,
    adapter dir, and (given the `VLMFamily`) the dtypes and image position the family declares it
    cannot serve."""
    source, is_local = resolve_source(opts.model)
    if is_local:
        check_weights_dir(source, "model")
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device, family)
    quantization_config(opts.quantization, device, dtype)
    if opts.adapter:
        read_adapter_config(opts.adapter)
    from vea_bench.prompts import check_image_position

    try:
        check_image_position(opts.image_position)
    except VeaError as err:
        raise ModelError(str(err)) from None
    if family is not None:
        family.check_image_position(opts.image_position)
    if opts.instructblip_prompt not in INSTRUCTBLIP_PROMPTS:
        raise ModelError(f"InstructBLIP prompt '{opts.instructblip_prompt}' is not one of "
                         f"{', '.join(INSTRUCTBLIP_PROMPTS)}")
    if opts.max_side is not None and opts.max_side < 28:
        raise ModelError(f"max_side {opts.max_side} is too small (SPEC caps the long side at 1024)")
    if opts.max_pixels is not None and opts.max_pixels < 28 * 28:
        raise ModelError(f"max_pixels {opts.max_pixels} is too small (at least 784)")


def load_model(model_cls: Any, opts: LoadOptions, family: Any = None) -> tuple[Any, str, Any]:
    """Instantiate ``model_cls`` from ``opts`` (+ adapter), in eval mode without grad: (model, device, dtype)."""
    _quiet_transformers()
    source, kwargs, device, dtype = from_pretrained_kwargs(opts, family)
    try:
        model = model_cls.from_pretrained(source, **kwargs)
    except Exception as err:  # noqa: BLE001  OSError, ValueError, SafetensorError...: one line
        if isinstance(err, MemoryError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load weights of '{opts.model}' as {model_cls.__name__}: {first}") from None
    if "device_map" not in kwargs:
        model.to(device)
    if opts.adapter:
        model = load_adapter(model, opts.adapter, opts.model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, device, dtype


# --------------------------------------------------------------------------------------------
# LoRA adapters
# --------------------------------------------------------------------------------------------

def _base_aliases(ref: str) -> set[str]:
    """Names under which a base model may be recorded: the string, its resolved path, hub id forms."""
    out = {ref.strip().rstrip("/")}
    p = Path(ref).expanduser()
    if p.exists():
        rp = p.resolve()
        out.add(str(rp))
        # HF cache snapshot: .../models--Org--Name/snapshots/<sha> -> Org/Name
        for part in rp.parts:
            if part.startswith("models--"):
                out.add(part[len("models--"):].replace("--", "/"))
    return {o for o in out if o}


def same_base(adapter_base: str | None, model_ref: str) -> bool:
    """Whether an adapter recorded for ``adapter_base`` belongs on ``model_ref``."""
    if not adapter_base:
        return True  # nothing recorded: the shape check in `load_adapter` still guards
    return bool(_base_aliases(adapter_base) & _base_aliases(model_ref))


def read_adapter_config(adapter: str | Path) -> dict[str, Any]:
    path = Path(adapter).expanduser()
    if not path.is_dir():
        raise ModelError(f"adapter directory '{adapter}' does not exist")
    cfg = path / "adapter_config.json"
    if not cfg.is_file():
        raise ModelError(f"'{adapter}' has no adapter_config.json (not a peft adapter directory)")
    check_weights_dir(path, "adapter", stem="adapter_model")
    try:
        return json.loads(cfg.read_text())
    except ValueError as err:
        raise ModelError(f"adapter config '{cfg}' is not valid JSON: {err}") from None


def load_adapter(model: Any, adapter: str | Path, model_ref: str) -> Any:
    """Wrap ``model`` with a peft LoRA adapter, refusing (one line) one made for another base model."""
    from peft import PeftModel

    acfg = read_adapter_config(adapter)
    base = acfg.get("base_model_name_or_path")
    if not same_base(base, model_ref):
        raise ModelError(f"adapter '{adapter}' was trained on base model '{base}', not '{model_ref}'; "
                         "pass the adapter's base model with --vlm")
    targets = acfg.get("target_modules") or []
    if isinstance(targets, str):
        targets_ok = any(re.fullmatch(targets, n) for n, _ in model.named_modules())
    else:
        leaf_names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets_ok = not targets or any(t in leaf_names or t in dict(model.named_modules()) for t in targets)
    if not targets_ok:
        raise ModelError(f"adapter '{adapter}' targets modules {targets} that model '{model_ref}' does not have")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing/unexpected keys are checked below, as errors
            wrapped = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "size mismatch" in str(err):
            first = "weight shapes do not fit this model (adapter for another model size)"
        raise ModelError(f"adapter '{adapter}' does not fit model '{model_ref}': {first}") from None
    unused = _unmatched_adapter_keys(wrapped, Path(adapter))
    if unused:
        raise ModelError(f"adapter '{adapter}' does not fit model '{model_ref}': {len(unused)} of its weights "
                         f"name modules this model does not have (e.g. {unused[0]})")
    return wrapped


def _unmatched_adapter_keys(wrapped: Any, adapter: Path) -> list[str]:
    """Saved adapter tensors with no matching parameter in the wrapped model (peft only warns)."""
    files = sorted(adapter.glob("adapter_model*.safetensors"))
    if not files:
        return []
    from safetensors import safe_open

    name = getattr(wrapped, "active_adapter", "default")
    name = name if isinstance(name, str) else "default"
    have = {k.replace(f".{name}.", ".") for k in wrapped.state_dict()}
    saved: list[str] = []
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            saved.extend(fh.keys())
    return [k for k in saved if k not in have]


def unwrap(model: Any) -> Any:
    """The transformers model under a peft wrapper (LoRA layers stay injected in its modules)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------

def weight_files(directory: str | Path) -> list[Path]:
    d = Path(directory)
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


@lru_cache(maxsize=32)
def _dir_sha256(directory: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    import hashlib

    from vea_bench.hashing import file_sha256

    h = hashlib.sha256()
    for name, _, _ in stamp:
        h.update(name.encode())
        h.update(file_sha256(Path(directory) / name).encode())
    return h.hexdigest()


def weights_sha256(directory: str | Path) -> str:
    """sha256 over the weight files of a local model/adapter directory (memoised per size+mtime)."""
    files = weight_files(directory)
    stamp = tuple((p.name, p.stat().st_size, int(p.stat().st_mtime_ns)) for p in files)
    return _dir_sha256(str(Path(directory).resolve()), stamp)


def model_provenance(opts: LoadOptions, config: Any, device: str, dtype: Any) -> dict[str, Any]:
    """What was loaded, precisely enough to refuse mixing rows from two different models in one cache."""
    source, is_local = resolve_source(opts.model)
    prov: dict[str, Any] = {
        # A local model by its resolved path: the same folder given relatively must compare equal.
        "model": source if is_local else opts.model,
        "model_type": getattr(config, "model_type", None),
        "revision": opts.revision or getattr(config, "_commit_hash", None),
        "dtype": str(dtype).replace("torch.", ""),
        "quantization": opts.quantization,
        "device": device.split(":")[0],
        "max_side": opts.max_side,
        "max_pixels": opts.max_pixels,
        "trust_remote_code": opts.trust_remote_code,
    }
    if is_local:
        prov["weights_sha256"] = weights_sha256(source)
    if opts.adapter:
        acfg = read_adapter_config(opts.adapter)
        prov["adapter"] = str(Path(opts.adapter).expanduser().resolve())
        prov["adapter_sha256"] = weights_sha256(opts.adapter)
        prov["adapter_base"] = acfg.get("base_model_name_or_path")
    return prov
