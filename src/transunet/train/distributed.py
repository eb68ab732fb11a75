"""DistributedDataParallel helpers for runs launched with ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``);
:func:`init_distributed` reads them, picks NCCL on CUDA and gloo otherwise, and pins each process
to ``cuda:LOCAL_RANK``. Without these variables (a plain ``python``/``transunet`` call) everything
here is a no-op for a single process.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from transunet.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Args:
        rank: Global rank (0 writes files).
        world_size: Number of processes.
        local_rank: Rank on this node (selects the GPU).
        device: Device of this process.
        backend: ``nccl``, ``gloo`` or ``None`` for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the ``torchrun`` environment (``(0, 1, 0)`` if unset)."""

    def _int(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"environment variable {name}={raw!r} must be an integer (set by torchrun).") from None

    return _int("RANK", 0), _int("WORLD_SIZE", 1), _int("LOCAL_RANK", 0)


def init_distributed(device: torch.device, timeout_minutes: float = 60.0) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (no-op for a single process).

    Args:
        device: The device resolved from the config; ``cuda`` becomes ``cuda:LOCAL_RANK``.
        timeout_minutes: Collective timeout (validation of large volumes runs between them).

    Returns:
        This process's :class:`DistInfo`.
    """
    rank, world, local_rank = env_world()
    if world <= 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are "
                "visible; use --nproc_per_node <= the number of GPUs."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(
            f"distributed training on device {device.type!r} is not supported; use cuda (NCCL) or cpu (gloo)."
        )
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=timeout_minutes))
    log.info("distributed: rank %d/%d (local %d) on %s with %s", rank, world, local_rank, device, backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def cleanup_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for one process)."""
    if info.distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index or 0])
        else:
            dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``value`` over all processes (a copy; the input is not modified)."""
    out = value.detach().clone()
    if info.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= info.world_size
    return out


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP synchronises buffers at the start of each forward pass, so after the last step of an epoch
    every rank holds statistics updated by its own batch; this makes them identical again before
    validation and checkpointing.
    """
    if not info.distributed:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def state_hash(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``model`` (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_reduce_mean",
    "barrier",
    "broadcast_buffers",
    "cleanup_distributed",
    "env_world",
    "init_distributed",
    "state_hash",
]
