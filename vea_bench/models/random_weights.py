"""Real-size VLM architectures with random weights, built directly on the target device: GPU
benchmarks without downloading a checkpoint (air-gapped nodes), and CPU smoke tests at reduced depth.

The compute of a forward pass does not depend on the weights' values, so the time, memory and FLOPs
measured on these models are those of the real checkpoint, with one caveat: a random model's
greedy answers do not stop at '}' as a tuned one does, so decoding runs to its token budget.

The processor comes from the family's tiny model (built offline) with its image settings set to the
real checkpoint's (patch / merge size, image side, tokens per image, any-resolution grid), so each
image yields the real number of visual tokens; the text vocabulary is the tiny one (prompts a few
tokens longer or shorter than with the real tokenizer), its special-token ids copied into the config.
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from vea_bench.errors import ModelError

log = logging.getLogger(__name__)


def reduced_config(preset: str, *, layers: int | None = None, hidden: int | None = None) -> Any:
    """The preset's config with at most ``layers`` decoder and vision layers and, if ``hidden`` is
    given, a language model (and merger output) ``hidden`` wide; head size kept, heads scaled."""
    from vea_bench.models.arch import load_arch_config

    config = load_arch_config(preset)
    if layers is not None and layers < 1:
        raise ModelError(f"--layers must be at least 1, got {layers}")
    if hidden is not None and hidden < 16:
        raise ModelError(f"--hidden must be at least 16, got {hidden}")
    text = config.get_text_config()
    if layers is not None:
        text.num_hidden_layers = min(layers, int(text.num_hidden_layers))
        if getattr(text, "layer_types", None):
            text.layer_types = list(text.layer_types)[: text.num_hidden_layers]
        for sub in (getattr(config, "vision_config", None), getattr(config, "qformer_config", None)):
            if sub is None:
                continue
            for attr in ("depth", "num_hidden_layers"):
                if getattr(sub, attr, None) is not None:
                    n = min(layers, int(getattr(sub, attr)))
                    setattr(sub, attr, n)
                    for idx_attr in ("deepstack_visual_indexes", "fullatt_block_indexes"):
                        idx = getattr(sub, idx_attr, None)
                        if idx:
                            setattr(sub, idx_attr, [i for i in idx if i < n] or [n - 1])
    if hidden is not None:
        heads = int(text.num_attention_heads)
        head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
        if hidden < head_dim or hidden % head_dim:
            raise ModelError(f"--hidden must be a multiple of the head size {head_dim}, got {hidden}")
        new_heads = hidden // head_dim
        kv = int(getattr(text, "num_key_value_heads", None) or heads)
        new_kv = max(1, min(new_heads, kv))
        while new_heads % new_kv:
            new_kv -= 1
        ratio = int(text.intermediate_size) / int(text.hidden_size)
        text.hidden_size, text.num_attention_heads, text.num_key_value_heads = hidden, new_heads, new_kv
        text.head_dim = head_dim
        text.intermediate_size = int(round(hidden * ratio))
        # A family whose pooled width is a vision-side value (the Qwen mergers' output) follows the text width.
        from vea_bench.models.generic import family_of

        path = family_of(config.model_type).embed_dim_path
        if path.startswith("vision_config."):
            setattr(config.vision_config, path.split(".", 1)[1], hidden)
    return config


def _copy_token_ids(tiny_config: dict[str, Any], config: Any) -> None:
    """The tiny tokenizer's special-token ids (image, video, vision start/end, boi/eoi) into ``config``."""
    for key, value in tiny_config.items():
        if "token" in key and isinstance(value, int) and not key.startswith("_") and hasattr(config, key):
            setattr(config, key, value)
    text = config.get_text_config()
    tiny_text = tiny_config.get("text_config", {})
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in tiny_text:
            setattr(text, key, tiny_text[key])


def random_model(config: Any, device: str, dtype: Any, quantization: str | None = None) -> Any:
    """``config``'s model class with random weights, allocated directly on ``device`` in ``dtype``;
    ``quantization='4bit'`` then replaces every Linear but the output head by a bitsandbytes NF4
    layer holding those weights quantised (CUDA only)."""
    import torch
    import transformers

    cls = next((getattr(transformers, n) for n in (config.architectures or []) if hasattr(transformers, n)), None)
    if cls is None:
        raise ModelError(f"transformers {transformers.__version__} has none of {config.architectures}")
    with torch.device(device):
        model = cls._from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    if quantization:
        if quantization != "4bit":
            raise ModelError(f"random weights quantise to 4bit only, not '{quantization}'")
        if not str(device).startswith("cuda"):
            raise ModelError("4-bit random weights need a CUDA GPU (bitsandbytes); drop --quant on CPU")
        quantise_4bit(model, dtype)
    return model


def quantise_4bit(model: Any, compute_dtype: Any) -> int:
    """Swap each ``nn.Linear`` (not the output head) for a bitsandbytes NF4 ``Linear4bit`` with the same
    weights quantised, as `from_pretrained(load_in_4bit=True)` would; returns the number swapped."""
    import bitsandbytes as bnb
    from torch import nn

    out = model.get_output_embeddings()
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or child is out:
                continue
            dev = child.weight.device
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4")
            q.weight = bnb.nn.Params4bit(child.weight.data.to("cpu"), requires_grad=False, quant_type="nf4",
                                         compress_statistics=True).to(dev)
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q)
            swapped += 1
    return swapped


def random_backend(preset: str, workdir: str | Path, *, layers: int | None = None, hidden: int | None = None,
                   device: str = "auto", dtype: str = "auto", quantization: str | None = None,
                   max_side: int = 1024, max_pixels: int | None = None) -> Any:
    """A loaded backend (the one `load_vlm` would pick) over a random-weight model of ``preset``."""
    from transformers import AutoProcessor, GenerationConfig

    from vea_bench.models import backend_for_model_type
    from vea_bench.models.base import LoadOptions
    from vea_bench.devices import resolve_device
    from vea_bench.models.loading import resolve_dtype
    from vea_bench.models.tiny import make_tiny

    config = reduced_config(preset, layers=layers, hidden=hidden)
    from vea_bench.models.generic import families, family_of

    fam = family_of(config.model_type)
    if fam.fit_processor is None or fam.tiny is None:
        able = sorted(t for f in families().values() if f.fit_processor and f.tiny for t in f.model_types)
        raise ModelError(f"no random-weight processor for model type '{config.model_type}' "
                         f"(supported: {', '.join(able)})")
    kind, fitter = fam.tiny, fam.fit_processor
    tiny_dir = Path(workdir) / f"tiny-{kind}"
    if not (tiny_dir / "config.json").is_file():
        make_tiny(kind, tiny_dir)
    tiny_config = json.loads((tiny_dir / "config.json").read_text())
    config = copy.deepcopy(config)
    _copy_token_ids(tiny_config, config)
    processor = AutoProcessor.from_pretrained(str(tiny_dir))
    fitter(processor, config)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev, fam)
    model = random_model(config, dev, torch_dtype, quantization)
    model.generation_config = GenerationConfig.from_pretrained(str(tiny_dir))
    cls = backend_for_model_type(config.model_type)
    opts = LoadOptions(model=str(tiny_dir), device=dev, dtype=dtype, quantization=quantization,
                       max_side=max_side, max_pixels=max_pixels)
    return cls(model, processor, opts, config, dev, torch_dtype)
