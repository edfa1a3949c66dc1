"""Where computation runs: one reading of ``--device`` for every stage.

Heads, the teacher, VLM loading and extraction all accept the same spellings (``auto``, ``cpu``,
``cuda``, ``cuda:N``, ``mps``) and refuse an unavailable accelerator with the same one-line
error, so a device that works for one command works for all of them. torch is imported only
when a device is resolved, so that `--help` stays fast.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from vea_bench.errors import DeviceError

if TYPE_CHECKING:
    import torch

_CUDA = re.compile(r"cuda(:\d+)?")


def resolve_device(device: str | None = "auto") -> str:
    """The device name to use: ``auto`` (or None / empty) -> ``cuda`` when a GPU is visible, else
    ``cpu``; an explicit accelerator that is not there, or an unknown name, is a `DeviceError`."""
    import torch

    name = str(device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if _CUDA.fullmatch(name):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: no CUDA GPU is visible; use --device cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s) (cuda:0.."
                f"cuda:{torch.cuda.device_count() - 1})"
            )
        return name
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"--device {device}: no Apple MPS device is available; use --device cpu")
        return name
    raise DeviceError(f"unknown --device '{device}' (auto, cpu, cuda, cuda:N or mps)")


def torch_device(device: str | torch.device | None = "auto") -> torch.device:
    """`resolve_device` as a ``torch.device`` (for code that allocates tensors on it)."""
    import torch

    return torch.device(resolve_device(None if device is None else str(device)))
