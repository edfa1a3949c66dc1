"""VLM backends, tiny test models and the loader that picks a backend from a model's config.

Importing this package is cheap (no torch / transformers): backends import them when loading.
"""
from __future__ import annotations

from typing import Any

from vea_bench.errors import ModelError
from vea_bench.models.base import (VLM_BACKENDS, BatchOutput, GenerationOptions, LoadOptions,  # noqa: F401
                                   VLMBackend)

# Registering the backends: each module decorates its class into VLM_BACKENDS.
from vea_bench.models import instructblip as _instructblip  # noqa: F401,E402
from vea_bench.models import llava_next as _llava_next  # noqa: F401,E402
from vea_bench.models import qwen2_vl as _qwen2_vl  # noqa: F401,E402
from vea_bench.models import gemma3 as _gemma3  # noqa: F401,E402
from vea_bench.models import qwen3_vl as _qwen3_vl  # noqa: F401,E402
from vea_bench.models import idefics3 as _idefics3  # noqa: F401,E402
from vea_bench.models import llava_onevision as _llava_onevision  # noqa: F401,E402
from vea_bench.models import internvl as _internvl  # noqa: F401,E402


def backend_for_model_type(model_type: str) -> Any:
    """The backend class serving config ``model_type`` (e.g. 'qwen2_vl'), else a one-line error."""
    for _, cls in VLM_BACKENDS.items():
        if model_type in getattr(cls, "model_types", ()):
            return cls
    served = sorted(t for _, c in VLM_BACKENDS.items() for t in getattr(c, "model_types", ()))
    raise ModelError(f"no VLM backend for model type '{model_type}' (supported: {', '.join(served)})")


def load_vlm(opts: LoadOptions, backend: str | None = None) -> VLMBackend:
    """Load the VLM of ``opts`` with ``backend`` (a VLM_BACKENDS name) or the one its config's
    `model_type` calls for. Wrong path, unreachable hub or unknown model type: one-line ModelError."""
    from vea_bench.models.loading import load_config, validate_options

    validate_options(opts)
    if backend:
        cls = VLM_BACKENDS.get(backend)
    else:
        config = load_config(opts)
        cls = backend_for_model_type(getattr(config, "model_type", None) or "unknown")
    return cls.load(opts)


__all__ = ["VLM_BACKENDS", "BatchOutput", "GenerationOptions", "LoadOptions", "VLMBackend",
           "backend_for_model_type", "load_vlm"]
