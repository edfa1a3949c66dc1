"""Every bundled architecture preset (`vea_bench/data/configs/presets.json`) is a real checkpoint's config.

Parametrised over the index itself, so a preset added there is tested without touching this file:
its config loads with transformers' own config class, the model class it names builds on the meta
device, the parameter count equals the published figure recorded next to it (with its source), and
`vea-bench params --vlm HUB_ID` answers offline.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from vea_bench.models.arch import CONFIG_DIR, build_on_meta, config_path, load_arch_config, param_count, preset_for
from vea_bench_cli.main import app

INDEX: dict[str, dict[str, Any]] = json.loads((CONFIG_DIR / "presets.json").read_text())
COUNTED = sorted(name for name, entry in INDEX.items() if "params" in entry)

# Presets whose family `vea-bench params` cannot lay out yet. Strict: once the layout lands the case
# passes, the XPASS fails, and this entry must go.
NO_PARAMS_LAYOUT: dict[str, str] = {}   # every bundled preset's family declares its layout today
CLI_CASES = [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=NO_PARAMS_LAYOUT[name]))
             if name in NO_PARAMS_LAYOUT else name for name in sorted(INDEX)]


@pytest.mark.parametrize("name", sorted(INDEX))
def test_index_entry_names_its_file_hub_id_and_sources(name: str) -> None:
    entry = INDEX[name]
    assert (CONFIG_DIR / entry["file"]).is_file()
    assert preset_for(entry["hub_id"]) == name and preset_for(name) == name
    assert config_path(entry["hub_id"]) == CONFIG_DIR / entry["file"]
    if "params" in entry:  # a recorded count is an exact integer with where it was published
        assert isinstance(entry["params"], int) and entry["params"] > 0
        assert str(entry.get("params_source", "")).strip()
    if "source" in entry:
        assert str(entry["source"]).strip()


@pytest.mark.parametrize("name", sorted(INDEX))
def test_config_loads_with_its_transformers_class_and_builds_on_meta(name: str) -> None:
    from transformers import AutoConfig

    raw = json.loads((CONFIG_DIR / INDEX[name]["file"]).read_text())
    config = load_arch_config(name)
    assert config.model_type == raw["model_type"]
    assert type(config) is type(AutoConfig.for_model(raw["model_type"]))
    model = build_on_meta(name)
    assert type(model).__name__ in raw["architectures"]
    assert {p.device.type for p in model.parameters()} == {"meta"}
    if name in COUNTED:
        assert param_count(model) == INDEX[name]["params"], INDEX[name]["params_source"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_params_answers_for_the_hub_id_offline(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    hub_id = INDEX[name]["hub_id"]
    out = CliRunner().invoke(app, ["params", "--vlm", hub_id], env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})
    assert out.exit_code == 0, out.output
    assert "Traceback" not in out.output
    if name in COUNTED:
        assert f"{INDEX[name]['params']:,}" in out.stdout
