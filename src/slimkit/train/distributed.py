"""Data-parallel training under `torchrun`, and a no-op everywhere else.

The loop asks these helpers instead of torch.distributed directly, so a single process never
touches process groups and the same code runs unchanged on one rank or many.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str) -> tuple[int, int, str]:
    """Join the process group `torchrun` describes; return (rank, world size, device)."""
    world = world_size()
    if world <= 1:
        return 0, 1, device
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_float(value: float, device: str) -> float:
    """Rank 0's value everywhere, so every rank takes the same decision."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())


def mean_float(value: float, device: str) -> float:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def sync_params(params: list[torch.nn.Parameter]) -> None:
    """Start every rank from rank 0's values (DDP does this for the module, not for extras)."""
    if active():
        for p in params:
            dist.broadcast(p.data, 0)


def average_grads(params: list[torch.nn.Parameter]) -> None:
    if active():
        world = dist.get_world_size()
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)


def gather_rng(state: torch.Tensor, device: str) -> list[torch.Tensor]:
    """Every rank's CPU RNG state (all of equal length), in rank order, on the CPU."""
    if not active():
        return [state]
    local = state.to(device)  # NCCL gathers device tensors only
    out = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]
