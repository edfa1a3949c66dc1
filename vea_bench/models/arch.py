"""The paper's real VLM architectures, built on the meta device: shapes and parameter counts
without a single weight downloaded (seconds, no memory).

Used to check facts SPEC fixes (Qwen2-VL-7B's merger output is 3584 wide, so the distill head's
input is 3584) and by the report for parameter counts. The configs in `vea_bench/data/configs/`
are the public `config.json` files of the hub checkpoints.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vea_bench.errors import ModelError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "data" / "configs"


def _preset_index() -> dict[str, dict[str, str]]:
    """`presets.json` in the configs folder: preset name -> {file, hub_id}. Adding a preset is one
    config.json copied into the folder plus one entry here; nothing else lists presets."""
    return json.loads((CONFIG_DIR / "presets.json").read_text())


PRESETS: dict[str, str] = {name: entry["file"] for name, entry in _preset_index().items()}
"""Friendly name -> config file in `vea_bench/data/configs/`."""

HUB_IDS: dict[str, str] = {name: entry["hub_id"] for name, entry in _preset_index().items()}
"""Friendly name -> the hub checkpoint whose config the preset reproduces."""


def preset_of_hub_id(hub_id: str) -> str | None:
    """The bundled preset whose config reproduces hub checkpoint ``hub_id`` (case-insensitive), if any."""
    key = str(hub_id).strip().rstrip("/").lower()
    return next((name for name, hid in HUB_IDS.items() if hid.lower() == key), None)


def preset_for(name_or_hub_id: str) -> str | None:
    """The preset name for a preset name or the hub id of a bundled preset (case-insensitive), else None."""
    key = str(name_or_hub_id).strip().lower().replace("_", "-")
    if key in PRESETS:
        return key
    return preset_of_hub_id(str(name_or_hub_id))


def config_path(preset_or_path: str | Path) -> Path:
    """The config.json for a preset name, a bundled preset's hub id (offline), a config file, or a
    model directory. A local path wins over a hub id of the same spelling."""
    key = str(preset_or_path).strip().lower().replace("_", "-")
    if key in PRESETS:
        return CONFIG_DIR / PRESETS[key]
    p = Path(preset_or_path).expanduser()
    if p.is_dir():
        p = p / "config.json"
    if p.is_file():
        return p
    preset = preset_of_hub_id(str(preset_or_path))
    if preset is not None:
        return CONFIG_DIR / PRESETS[preset]
    raise ModelError(f"unknown architecture '{preset_or_path}': not a preset ({', '.join(PRESETS)}), "
                     f"nor a bundled preset's hub id ({', '.join(HUB_IDS.values())}), "
                     "nor a config.json file or model directory")


def tokenizer_record(preset: str) -> dict[str, Any]:
    """What the preset's checkpoint tokenises with (``<config>.tokenizer.json`` beside its config):
    the real vocabulary's source file, added tokens at their ids, tokenizer_config settings and chat
    template, each with its source; the tests rebuild the tokenizer from it."""
    key = preset_for(preset)
    if key is None:
        raise ModelError(f"unknown preset '{preset}' ({', '.join(PRESETS)})")
    return json.loads((CONFIG_DIR / PRESETS[key].replace(".json", ".tokenizer.json")).read_text())


def load_arch_config(preset_or_path: str | Path) -> Any:
    """A transformers config object for the preset / file (no hub access)."""
    from transformers import AutoConfig

    path = config_path(preset_or_path)
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise ModelError(f"config '{path}' is not valid JSON: {err}") from None
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ModelError(f"config '{path}' has no model_type")
    try:
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelError(f"config '{path}': {str(err).splitlines()[0]}") from None


def build_on_meta(preset_or_path: str | Path) -> Any:
    """The architecture's model class (from the config's `architectures`) instantiated on the
    meta device: every module and parameter shape, no storage."""
    import torch
    import transformers

    config = load_arch_config(preset_or_path)
    names = getattr(config, "architectures", None) or []
    cls = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None)
    if cls is None:
        raise ModelError(f"transformers {transformers.__version__} has none of the classes {names} "
                         f"named by '{preset_or_path}'")
    with torch.device("meta"):
        model = cls(config)
    return model.eval()


def param_count(module: Any) -> int:
    """Number of parameters (works on meta tensors)."""
    return int(sum(p.numel() for p in module.parameters()))
