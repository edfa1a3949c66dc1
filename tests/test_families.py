"""VLM families behind the generic backend contract (issue #14): registry, bundled real-checkpoint
configs, `models list`, `params --vlm HUB_ID` offline, and the random-weight benchmark at CPU size.

The per-backend behaviour tests (pooled == direct vision call, one vision pass, batched == bs-1,
greedy == generate, score == full forward, adapter) are parametrised over the registry in
tests/test_backends.py, so every family here runs them too.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vea_bench.errors import ModelError
from vea_bench.models import VLM_BACKENDS, backend_for_model_type
from vea_bench.models.generic import families
from vea_bench.models.tiny import TINY_BUILDERS

ROOT = Path(__file__).resolve().parent.parent
NEW_FAMILIES = {"qwen3-vl": "qwen3_vl", "gemma3": "gemma3", "idefics3": "idefics3", "llava-onevision": "llava_onevision"}

# hub id -> (preset, pooled embedding width of the real checkpoint, parameter count of the hub model card, 3 digits)
REAL = {
    "Qwen/Qwen2-VL-7B-Instruct": ("qwen2-vl-7b-instruct", 3584, 8.3e9),
    "Qwen/Qwen3-VL-4B-Instruct": ("qwen3-vl-4b-instruct", 2560, 4.44e9),
    "google/gemma-3-4b-it": ("gemma-3-4b-it", 2560, 4.30e9),
    "HuggingFaceTB/SmolVLM-Instruct": ("smolvlm-instruct", 2048, 2.25e9),
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": ("llava-onevision-qwen2-7b-ov", 3584, 8.03e9),
}


def test_new_families_are_registered_with_their_tiny_builders() -> None:
    for name, model_type in NEW_FAMILIES.items():
        assert name in VLM_BACKENDS and backend_for_model_type(model_type) is VLM_BACKENDS.get(name)
    assert VLM_BACKENDS.get("smolvlm") is VLM_BACKENDS.get("idefics3")   # alias
    assert backend_for_model_type("internvl") is VLM_BACKENDS.get("internvl")


@pytest.mark.parametrize("name", list(families()))
def test_every_family_declares_what_the_rest_looks_up(name: str) -> None:
    """One declaration per family: its backend serves its model types, its tiny builder is
    registered, and its LoRA targets and module paths are named."""
    fam = families()[name]
    cls = VLM_BACKENDS.get(name)
    assert cls.family is fam and cls.model_types == fam.model_types and cls.model_class == fam.model_class
    assert all(backend_for_model_type(t) is cls for t in fam.model_types)
    assert fam.tiny in TINY_BUILDERS and fam.pooling and fam.lora_targets
    assert fam.visual_paths and fam.language_module and fam.vision_module in fam.visual_paths


PRESETS = [(name, preset) for name, fam in families().items() for preset in fam.presets]


@pytest.mark.parametrize(("name", "preset"), PRESETS)
def test_every_declared_preset_counts_offline_with_its_familys_layout(name: str, preset: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each preset a family declares is that family's architecture, and `params` counts it from the
    family's own module paths and width (no per-family table in the report)."""
    from vea_bench.models.arch import load_arch_config
    from vea_bench.report.params import vlm_counts_cached

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fam = families()[name]
    config = load_arch_config(preset)
    assert config.model_type in fam.model_types
    counts = vlm_counts_cached(preset)
    assert counts.embed_dim == fam.embed_dim(config) == VLM_BACKENDS.get(name).embed_dim_of(config)
    assert counts.lora > 0 and 0 < counts.vision_tower and 0 < counts.language_model
    assert counts.vision_tower + counts.language_model <= counts.total


@pytest.mark.parametrize("hub_id", sorted(REAL))
def test_bundled_preset_by_hub_id_gives_the_real_embed_dim(hub_id: str) -> None:
    from vea_bench.models.arch import load_arch_config, preset_for

    preset, dim, _ = REAL[hub_id]
    assert preset_for(hub_id) == preset and preset_for(hub_id.upper()) == preset
    config = load_arch_config(hub_id)
    assert backend_for_model_type(config.model_type).embed_dim_of(config) == dim


@pytest.mark.parametrize("hub_id", [h for h in sorted(REAL) if not h.startswith("Qwen/Qwen2-")])
def test_params_offline_by_hub_id(hub_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real architecture on the meta device from the bundled config: the model card's size, the
    backend's embed dim, and a LoRA adapter found in the language model."""
    from vea_bench.report.params import vlm_counts

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, dim, card = REAL[hub_id]
    counts = vlm_counts(hub_id)
    assert abs(counts.total - card) / card < 0.005, counts.total
    assert counts.embed_dim == dim and counts.lora > 0
    assert counts.vision_tower + counts.language_model <= counts.total


def test_models_list_shows_each_family_with_its_embed_dim() -> None:
    from vea_bench_cli.main import app

    res = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "260"})
    assert res.exit_code == 0, res.output
    for hub_id, (_, dim, _) in REAL.items():
        line = next(ln for ln in res.output.splitlines() if hub_id in ln and "│" in ln)
        assert f" {dim} " in line, line
    for name in NEW_FAMILIES:
        assert name in res.output


def test_reduced_config_caps_depth_and_width() -> None:
    from vea_bench.models.random_weights import reduced_config

    c = reduced_config("qwen3-vl-4b-instruct", layers=2, hidden=256)
    t, v = c.text_config, c.vision_config
    assert (t.num_hidden_layers, t.hidden_size, t.head_dim, t.num_attention_heads, t.num_key_value_heads) == \
        (2, 256, 128, 2, 2)
    assert v.depth == 2 and v.out_hidden_size == 256 and v.deepstack_visual_indexes == [1]
    g = reduced_config("gemma-3-4b-it", layers=3)
    assert g.text_config.num_hidden_layers == 3 and len(g.text_config.layer_types) == 3
    assert g.vision_config.num_hidden_layers == 3 and g.text_config.hidden_size == 2560
    with pytest.raises(ModelError, match="multiple of the head size"):
        reduced_config("qwen2-vl-7b-instruct", hidden=100)
    with pytest.raises(ModelError, match="at least 1"):
        reduced_config("qwen2-vl-7b-instruct", layers=0)


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_extract", ROOT / "benchmarks" / "extract.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_random_weight_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`benchmarks/extract.py --arch qwen2-vl-7b-instruct --random-weights --layers 2` at CPU size: the real
    7B architecture (vision depth, patch / merge size, vocabulary) cut to 2 layers at width 128."""
    bench = _bench_module()
    out = tmp_path / "arch.json"
    rc = bench.main(["--arch", "Qwen/Qwen2-VL-7B-Instruct", "--random-weights", "--layers", "2", "--hidden", "128",
                     "--device", "cpu", "--images", "2", "--batch-size", "2", "--size", "28", "--ref-images", "1",
                     "--ref-max-new-tokens", "3", "--max-new-tokens", "3", "--peak-tflops", "1.0",
                     "--json", str(out)])
    assert rc == 0
    fig = json.loads(out.read_text())
    assert (fig["layers"], fig["hidden"], fig["embed_dim"], fig["random_weights"]) == (2, 128, 128, True)
    for key in ("one_pass", "reference"):
        f = fig[key]
        assert f["images_per_s"] > 0 and f["gflop_per_image"] > 0 and 0 < f["mfu"] < 1
        assert f["achieved_tflops"] == pytest.approx(f["gflop_per_image"] * f["images_per_s"] / 1e3, rel=0.05)
    assert "MFU" in capsys.readouterr().out
    assert bench.device_peak_tflops("NVIDIA H100 80GB HBM3") > bench.device_peak_tflops("NVIDIA H100 PCIe") > 0
    assert bench.device_peak_tflops("some cpu") is None
    assert bench.main(["--arch", "qwen2-vl-7b-instruct"]) == 2      # no checkpoint: needs --random-weights


def test_family_newer_than_installed_transformers_is_refused_in_one_line() -> None:
    """A family tested only on a newer transformers is refused at load, naming the version to install."""
    import dataclasses

    from vea_bench.errors import ModelError
    from vea_bench.models.generic import check_family_supported, families, family_supported

    fam = dataclasses.replace(families()["gemma3"], min_transformers="999.0")
    assert not family_supported(fam)
    with pytest.raises(ModelError, match=r"needs transformers>=999\.0 .*pip install") as err:
        check_family_supported(fam)
    assert "\n" not in str(err.value)
    assert family_supported(dataclasses.replace(fam, min_transformers=None))


def test_every_bundled_preset_is_declared_by_the_family_serving_it() -> None:
    """A preset belongs to one family, which names it in `presets` (models list and params find it there)."""
    from vea_bench.models.arch import PRESETS, load_arch_config
    from vea_bench.models.generic import family_of

    for preset in PRESETS:
        fam = family_of(load_arch_config(preset).model_type)
        assert preset in fam.presets, f"{preset}: add it to {fam.name}'s VLMFamily(presets=...)"



@pytest.mark.parametrize(("name", "preset"), [(n, p) for n, p in PRESETS if families()[n].fit_processor])
def test_every_preset_builds_its_random_weight_backend_at_cpu_size(tmp_path: Path, name: str, preset: str) -> None:
    """Each bundled preset's real architecture, cut to 1 layer, loads as the backend `benchmarks/gpu.sh` times
    full-size, with the processor fitted to the real checkpoint's image layout (a family whose fitter is missing
    or wrong fails here, not on the GPU node)."""
    from vea_bench.models.family import family_supported
    from vea_bench.models.random_weights import random_backend, reduced_config

    fam = families()[name]
    if not family_supported(fam):
        pytest.skip(f"{name} needs transformers >= {fam.min_transformers}")
    text = reduced_config(preset).text_config
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    cut = reduced_config(preset, layers=1, hidden=head)
    backend = random_backend(preset, tmp_path, layers=1, hidden=head, device="cpu", dtype="fp32")
    assert type(backend) is backend_for_model_type(cut.model_type)
    assert backend.embed_dim == fam.embed_dim(cut)


def test_internvl_random_weight_benchmark_smoke(tmp_path: Path) -> None:
    """InternVL's crops and pixel shuffle through the benchmark end to end (its processor fitter is its own)."""
    bench = _bench_module()
    out = tmp_path / "fig.json"
    rc = bench.main(["--arch", "internvl3-1b-hf", "--random-weights", "--layers", "1", "--hidden", "64",
                     "--device", "cpu", "--images", "1", "--batch-size", "1", "--size", "28", "--ref-images", "1",
                     "--ref-max-new-tokens", "2", "--max-new-tokens", "2", "--json", str(out)])
    assert rc == 0
    fig = json.loads(out.read_text())
    assert fig["layers"] == 1 and fig["one_pass"]["images_per_s"] > 0 and fig["reference"]["gflop_per_image"] > 0
