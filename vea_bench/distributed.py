"""Data-parallel runs from the launcher's environment: torchrun, ``accelerate launch`` and Slurm's ``srun``.

A heavy command (extraction, teacher and QLoRA training) calls `setup` once. Started by
``torchrun`` or ``accelerate launch`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``) or inside an
``srun`` step (``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID``), each process takes its
local GPU (``cuda:<local rank>``) and joins one process group (nccl on CUDA, gloo on CPU); the
launcher is the only thing a user adds to the command line. Without a launcher nothing changes:
one process, no process group, the device as asked. The helpers (`barrier`, `all_reduce_sum`,
`gather_objects`, `broadcast_object`) are no-ops for a single process, so callers need no branch.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from vea_bench.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Rank 0 alone evaluates and writes between two collective calls; the others wait that long at most.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the job, as the launcher described it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"      # "torchrun" (also accelerate launch), "slurm" or "none"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def facts(self) -> dict[str, Any]:
        """What a run record says about how the job was launched."""
        return {"processes": self.world_size, "launcher": self.launcher}


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"launcher variable {name}={env[name]!r} is not an integer") from None


def launch_env(environ: Mapping[str, str] | None = None) -> Launch:
    """The launch this process belongs to, read from the environment (no process group is touched).

    ``RANK``/``WORLD_SIZE`` (torchrun, accelerate) win over Slurm's variables; Slurm's are read only
    inside an ``srun`` step (``SLURM_STEP_ID`` set), so a plain command in an ``sbatch`` script with
    several tasks does not wait for peers that were never started.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        world, rank = _int(env, "WORLD_SIZE"), _int(env, "RANK")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        launcher = "torchrun"
    elif "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        world = _int(env, "SLURM_STEP_NUM_TASKS") if "SLURM_STEP_NUM_TASKS" in env else _int(env, "SLURM_NTASKS")
        rank, local = _int(env, "SLURM_PROCID"), _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        launcher = "slurm"
    else:
        return Launch()
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"launcher says rank {rank} of {world} processes (local rank {local}); need 0 <= rank < world")
    return Launch(rank, world, local, launcher)


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[03-05,07],cpu1`` -> ``gpu03``."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ConfigError(f"cannot read the Slurm node list '{nodelist}'; set MASTER_ADDR")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _rendezvous(launch: Launch) -> None:
    """torchrun sets MASTER_ADDR/PORT itself; under srun they come from the step's first node and the job id."""
    if launch.launcher != "slurm":
        return
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
        os.environ["MASTER_ADDR"] = first_host(nodes) if nodes else "127.0.0.1"
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(20000 + int(os.environ.get("SLURM_JOB_ID", "0") or 0) % 20000)
    os.environ.setdefault("RANK", str(launch.rank))
    os.environ.setdefault("WORLD_SIZE", str(launch.world_size))
    os.environ.setdefault("LOCAL_RANK", str(launch.local_rank))


def local_device(device: str | None, launch: Launch) -> str:
    """This process's device: ``auto`` / ``cuda`` become ``cuda:<local rank>`` under a launcher."""
    from vea_bench.devices import resolve_device

    name = resolve_device(device)
    if launch.world_size > 1 and name.startswith("cuda"):
        import torch

        if ":" in name and str(device or "").strip().lower().startswith("cuda:"):
            raise ConfigError(f"--device {device} under a {launch.world_size}-process launch: every process would "
                              f"use that one GPU; give --device cuda (each takes cuda:<local rank>)")
        count = torch.cuda.device_count()
        if launch.local_rank >= count:
            raise ConfigError(f"local rank {launch.local_rank} has no GPU of its own ({count} visible on this node); "
                              f"start at most {count} processes per node")
        name = f"cuda:{launch.local_rank}"
        torch.cuda.set_device(launch.local_rank)
    return name


def setup(device: str | None = "auto") -> tuple[Launch, str]:
    """Join the launcher's job (once per process) and pick this process's device.

    Returns the launch and the device name. For a single process on a box with several GPUs,
    logs one line on how to use them all.
    """
    import torch
    import torch.distributed as dist

    launch = launch_env()
    name = local_device(device, launch)
    if not launch.distributed:
        hint_more_gpus(name)
        return launch, name
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run a single process")
    if not dist.is_initialized():
        _rendezvous(launch)
        backend = "nccl" if name.startswith("cuda") else "gloo"
        kwargs: dict[str, Any] = {"backend": backend, "rank": launch.rank, "world_size": launch.world_size,
                                  "timeout": TIMEOUT}
        if backend == "nccl":
            kwargs["device_id"] = torch.device(name)
        dist.init_process_group(**kwargs)
        atexit.register(_teardown)
        if not launch.is_main:  # rank 0 speaks for the job; the others report errors only
            logging.getLogger("vea_bench").setLevel(logging.ERROR)
    return launch, name


def hint_more_gpus(device: str | None) -> None:
    """One log line when a single process would use one of several visible GPUs: how to use them all."""
    import torch

    if str(device or "auto").lower() not in ("auto", "cuda", "cuda:0") or not torch.cuda.is_available():
        return
    n = torch.cuda.device_count()
    if n > 1:
        log.info("%d GPUs visible, this runs on one: prefix the command with `torchrun --nproc-per-node %d "
                 "--no-python` to use them all", n, n)


def _teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every process (no-op for one)."""
    import torch.distributed as dist

    if _active():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over the processes (the values themselves for one)."""
    if not _active():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def broadcast_tensors(tensors: Sequence[Any]) -> None:
    """Overwrite ``tensors`` in place with rank 0's values (no-op for one process)."""
    if not _active():
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def share(items: Sequence[T]) -> list[T]:
    """This process's part of ``items`` (every ``world``-th from its rank); all of them for one process."""
    if not _active():
        return list(items)
    import torch.distributed as dist

    return list(items[dist.get_rank()::dist.get_world_size()])


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` in rank order, on every process (``[obj]`` for one)."""
    if not _active():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (``obj`` itself for one): one decision taken once."""
    if not _active():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device() -> Any:
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


__all__ = ["Launch", "all_reduce_sum", "barrier", "broadcast_object", "broadcast_tensors", "first_host",
           "gather_objects", "hint_more_gpus", "launch_env", "local_device", "setup", "share"]
