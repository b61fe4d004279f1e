"""Processes under torchrun: the process group, the model wrapped for it (DDP or FSDP2), and the
two collectives the loop needs (a sum of floats, a barrier).

One process (WORLD_SIZE unset or 1) runs without a process group; every function here is then a
no-op or the identity, so the loop has no single-process branch of its own.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def setup_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's environment; the process group joined (NCCL on
    CUDA, gloo otherwise) when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg:
        device = torch.device(device_arg)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def all_sum(values: list[float], device) -> list[float]:
    """`values` summed over ranks (float64, so token counts stay exact)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def distribute(model: nn.Module, base: nn.Module, args, world: int, device) -> nn.Module:
    """The module the objective calls: model itself, FSDP2-sharded in place (each block, then the
    whole), or wrapped in DDP."""
    if world == 1:
        return model
    if args.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in base.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 has sharded the model's parameters (DTensors on a device mesh)."""
    return any(type(p).__name__ == "DTensor" or getattr(p, "device_mesh", None) is not None for p in model.parameters())


__all__ = ["setup_distributed", "all_sum", "barrier", "distribute", "is_sharded"]
