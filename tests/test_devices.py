"""`--device` means the same for every stage: one resolver, the same spellings, the same errors."""
from __future__ import annotations

import importlib

import pytest
import torch

from vea_bench.devices import resolve_device, torch_device
from vea_bench.errors import ConfigError, DeviceError, VeaError

HAS_CUDA = torch.cuda.is_available()

# Every module that turns a --device option into a device; each must use vea_bench.devices.
STAGES = ("vea_bench.heads.trainer", "vea_bench.heads.pipeline", "vea_bench.train.teacher",
          "vea_bench.train.qlora", "vea_bench.models.loading", "vea_bench.models.random_weights",
          "vea_bench.extract")


@pytest.mark.parametrize("spelling", ["auto", None, "", "AUTO", " auto "])
def test_auto_picks_cuda_when_visible_else_cpu(spelling: str | None) -> None:
    want = "cuda" if HAS_CUDA else "cpu"
    assert resolve_device(spelling) == want
    assert torch_device(spelling) == torch.device(want)


def test_cpu_is_always_available_and_typed() -> None:
    assert resolve_device("cpu") == "cpu" and resolve_device("CPU") == "cpu"
    dev = torch_device("cpu")
    assert isinstance(dev, torch.device) and dev.type == "cpu"
    assert torch_device(torch.device("cpu")) == dev  # a torch.device passes through
    assert torch.zeros(2, device=dev).device.type == "cpu"


@pytest.mark.parametrize("bad", ["gpu", "cuda0", "cuda:x", "tpu", "cpu:0:1"])
def test_unknown_names_are_one_line_config_errors(bad: str) -> None:
    with pytest.raises(DeviceError) as ei:
        resolve_device(bad)
    msg = str(ei.value)
    assert "\n" not in msg and f"'{bad}'" in msg and "cuda:N" in msg
    assert isinstance(ei.value, ConfigError) and isinstance(ei.value, VeaError)
    with pytest.raises(DeviceError):
        torch_device(bad)


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_says_so_and_what_to_use(name: str) -> None:
    with pytest.raises(DeviceError, match=r"no CUDA GPU is visible; use --device cpu"):
        resolve_device(name)


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_indices_are_checked_against_the_visible_devices() -> None:
    n = torch.cuda.device_count()
    assert resolve_device("cuda") == "cuda" and resolve_device(f"cuda:{n - 1}") == f"cuda:{n - 1}"
    with pytest.raises(DeviceError, match=f"{n} CUDA device"):
        resolve_device(f"cuda:{n}")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_mps_without_apple_silicon_is_refused() -> None:
    with pytest.raises(DeviceError, match="MPS"):
        resolve_device("mps")


@pytest.mark.parametrize("module", STAGES)
def test_no_stage_keeps_its_own_resolver(module: str) -> None:
    """One home: a stage that defines its own resolve_device would drift from the others."""
    mod = importlib.import_module(module)
    for name in ("resolve_device", "torch_device"):
        fn = getattr(mod, name, None)
        assert fn is None or fn.__module__ == "vea_bench.devices", f"{module}.{name} is defined there"


def test_only_devices_defines_a_device_resolver() -> None:
    import ast
    from pathlib import Path

    import vea_bench

    pkg = Path(vea_bench.__file__).parent
    found = [f"{p.relative_to(pkg)}:{n.lineno}" for p in pkg.rglob("*.py")
             for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
             if isinstance(n, ast.FunctionDef) and n.name in ("resolve_device", "torch_device")]
    assert len(found) == 2 and all(f.startswith("devices.py:") for f in found), found
