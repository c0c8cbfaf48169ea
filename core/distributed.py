"""Multi-process training under `torchrun`: process group, rank-aware device, and agreement between ranks.

A single process without torchrun never touches torch.distributed; everything here is then a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        """Each rank drives its own GPU; on CPU all ranks share the machine (gloo)."""
        if self.enabled and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over all ranks, so every rank takes the same decision (stop, diverged, ...)."""
        if not self.enabled:
            return list(flags)
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        values = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return [bool(v) for v in values.tolist()]

    def same_everywhere(self, module: torch.nn.Module) -> bool:
        """Whether every rank holds the same weights (a checksum compared across ranks)."""
        if not self.enabled:
            return True
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        with torch.no_grad():
            checksum = sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(module.parameters()))
        low, high = torch.tensor([float(checksum)], device=device), torch.tensor([float(checksum)], device=device)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        return bool(low.item() == high.item())


SINGLE = DistContext()


def init_from_env() -> DistContext:
    """Join the process group torchrun describes in the environment; a plain run gets SINGLE."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    context = DistContext(
        rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")), world_size=world_size
    )
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and os.environ.get("CHARGPT_DEVICE", "auto") != "cpu"
        if use_nccl:
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return context


def shutdown(context: DistContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
