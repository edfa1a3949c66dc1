"""Resumable training state without pickles: tensors in safetensors, everything else in JSON.

Both trainers (teacher fine-tuning and QLoRA) checkpoint through these helpers. A checkpoint is a
folder written under a temporary name and renamed into place, so a crash or Ctrl-C mid-write never
leaves a half-written folder under the real name: the previous checkpoint stays intact until the
new one is complete.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vea_bench.errors import ConfigError

if TYPE_CHECKING:
    import torch

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``opt.state_dict()`` into a flat tensor dict (``state.<param>.<name>``) and a JSON part."""
    import torch

    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Inverse of `optimizer_to_tensors`: load the saved state into ``opt`` (same parameter layout)."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_optimizer(opt: torch.optim.Optimizer, folder: Path) -> dict[str, Any]:
    """Write the optimizer's tensors to ``folder/optimizer.safetensors``; returns the JSON part."""
    from safetensors.torch import save_file

    tensors, meta = optimizer_to_tensors(opt)
    save_file(tensors, str(folder / OPTIMIZER_FILE))
    return meta


def load_optimizer(opt: torch.optim.Optimizer, folder: Path, meta: dict[str, Any]) -> None:
    """Load what `save_optimizer` wrote (tensors moved to each parameter's device by torch)."""
    from safetensors.torch import load_file

    optimizer_from_tensors(opt, load_file(str(folder / OPTIMIZER_FILE)), meta)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it replaces ``final`` in one rename.

    On any exception (including KeyboardInterrupt) the temporary folder is removed and ``final``
    is left as it was, so nothing partial ever appears under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def recover_dir(final: Path) -> None:
    """After a crash between the two renames of `atomic_dir`, put the previous folder back."""
    final = Path(final)
    if final.exists():
        for stale in final.parent.glob(f".{final.name}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
    else:
        olds = sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds:
            os.replace(olds[-1], final)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and a rename (never a torn file)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{uuid.uuid4().hex[:6]}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_state(folder: Path) -> dict[str, Any] | None:
    """The ``state.json`` of a checkpoint folder, or None when there is none."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable training state ({exc.__class__.__name__}); remove it to start afresh") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a vea-bench training state; remove it to start afresh")
    return data


def check_same_config(state: dict[str, Any], config: dict[str, Any], config_hash: str, out: Path, what: str) -> None:
    """Refuse to resume a run whose config differs from the one asked for now (one line naming the keys)."""
    if state.get("config_hash") == config_hash:
        return
    old = state.get("config") or {}
    differ = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {config.get(k)!r}" for k in differ[:3]) or "unknown keys"
    raise ConfigError(
        f"{out} holds a {what} run with a different configuration ({shown}); "
        f"rerun with the same options to resume it, or choose another --out"
    )
