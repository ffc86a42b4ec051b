"""Minimal torch.distributed plumbing for ``torchrun … medsad train`` (DDP)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["DistContext", "setup", "sampler", "wrap", "agree", "barrier", "teardown"]

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Rank, world size and device of this process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistContext:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1).

    NCCL on CUDA, gloo on CPU. Without torchrun this is a single process on ``device``
    (default: CUDA when available).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        dev = torch.device(f"cuda:{local}" if world > 1 else (device or "cuda"))
        if dev.index is None:  # "cuda" = the current CUDA device; set_device needs an index
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        logger.info("rank %d/%d on %s", rank, world, dev)
    return DistContext(rank, world, local, dev)


def sampler(dataset: Dataset, ctx: DistContext, seed: int) -> DistributedSampler | None:
    """A shuffling ``DistributedSampler`` giving each rank a disjoint shard, or None.

    ``drop_last=True``: the default sampler pads the shards with repeated samples, so two ranks
    would train on the same slice in the same epoch.
    """
    if not ctx.distributed:
        return None
    return DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True
    )


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP-wrap for the forward/backward pass (checkpoints are written from the bare model)."""
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def agree(reason: str, ctx: DistContext) -> str:
    """All ranks stop together: if any rank hit its time budget, every rank stops."""
    if not ctx.distributed:
        return reason
    flag = torch.tensor([0 if reason == "epochs" else 1], device=ctx.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return "time budget" if int(flag.item()) else "epochs"


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
