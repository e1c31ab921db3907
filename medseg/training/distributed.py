"""Distributed data-parallel training under ``torchrun`` (the training side of the process group).

``torchrun --nproc_per_node N -m medseg train CONFIG`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in their environment; :func:`session` joins them into one
process group (NCCL on CUDA, gloo on CPU) for the duration of the command. Every rank draws
its own patches and gradients are averaged by ``DistributedDataParallel``; only rank 0
validates, writes checkpoints and talks to MLflow (:func:`is_main_process`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["agreed", "is_main_process", "rank0_value", "rank_and_world", "session", "wrap"]


def is_main_process() -> bool:
    """True in rank 0 of a ``torchrun`` launch and in any process not launched by it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def session(device: str) -> Iterator[tuple[int, int]]:
    """Join the process group ``torchrun`` describes; yields ``(rank, world_size)``.

    Without ``torchrun`` (``WORLD_SIZE`` unset or 1), or when a group already exists (the
    caller made it), nothing is set up or torn down. On CUDA each rank uses the GPU
    ``LOCAL_RANK`` and the NCCL backend; on CPU the gloo backend.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or torch.distributed.is_initialized():
        yield rank_and_world()
        return
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    try:
        yield rank_and_world()
        # leave together: rank 0 still validates, saves and logs after the last step, and a
        # rank that tears its gloo connections down meanwhile was seen to abort (SIGABRT,
        # "terminate called without an active exception") in a CI run
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def wrap(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``network`` in ``DistributedDataParallel`` (gradients averaged over the ranks)."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index or 0] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=device_ids)


def agreed(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (rank 0 alone validates, so it decides to stop)."""
    return bool(rank0_value(float(flag)))


def rank0_value(value: float) -> float:
    """Rank 0's ``value`` on every rank (e.g. its clock, so every rank makes the same choice)."""
    if rank_and_world()[1] == 1:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    torch.distributed.broadcast(tensor, src=0)
    return float(tensor.item())
