"""Data-parallel training under ``torchrun``: who this process is, and the few collectives used.

``torchrun --nproc-per-node K -m abmil train ...`` starts K processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`init_distributed` joins them into one process
group (gloo on CPU, nccl on CUDA). Launched plainly, the same code runs as a world of one and
no process group is created.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The world torchrun describes in the environment (a world of one without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: str) -> tuple[World, torch.device]:
    """Join torchrun's process group if there is one; the device this rank computes on.

    ``device`` ``"cuda"`` becomes ``cuda:<LOCAL_RANK>`` with the nccl backend; anything else
    uses gloo (CPU collectives)."""
    world = world_from_env()
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: expected cpu, cuda or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available in this torch build or machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine")
    if dev.type == "cuda":
        dev = torch.device("cuda", world.local_rank if world.distributed else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return world, dev


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Sums of ``values`` over all ranks (float64)."""
    if not world.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_lists(items: list, world: World) -> list:
    """The concatenation, in rank order, of every rank's ``items`` (picklable objects made by
    this program, not user data), on every rank."""
    if not world.distributed:
        return list(items)
    parts: list = [None] * world.size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


@torch.no_grad()
def max_divergence(module: torch.nn.Module, world: World) -> float:
    """Largest |w_rank - w_rank0| over all parameters and ranks: 0.0 exactly while DDP keeps the
    replicas in step (a cheap check, one broadcast of the weights, run once per epoch)."""
    if not world.distributed:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in module.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
