"""Data-parallel training under ``torchrun``: one process per GPU (NCCL) or per CPU worker (gloo).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in each process's
environment; :func:`session` joins the process group from them. In a process not started by torchrun
nothing is initialised and every function here is a no-op (rank 0 of a world of one), so single-process
runs behave exactly as before.

The scheme (see ``training.train``): every rank draws the same seeded shuffle, cuts it into global batches
and keeps every ``world``-th image of each (:func:`shard_indices`); DDP averages the gradients; loss sums
and evaluation counts are summed across ranks; only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch import distributed as dist

from nad.errors import NadError

#: How long a collective waits for a missing rank before failing. A rank that crashes makes torchrun stop
#: the others; this bounds the wait where it does not (another machine, a hung process).
TIMEOUT = datetime.timedelta(minutes=10)


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the same variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    """This process's index on its machine: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", 0)) if active() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes files, prints and shows progress bars."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes; returns whether this call started it."""
    if not launched() or active():
        return False
    if not dist.is_available():
        raise NadError("launched by torchrun, but this PyTorch build has no torch.distributed")
    backend = "gloo"
    # One GPU per process when there are enough (decided alike on every rank: all must use the same backends)
    if torch.cuda.is_available() and int(os.environ.get("LOCAL_WORLD_SIZE", 1)) <= torch.cuda.device_count():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        backend = "cpu:gloo,cuda:nccl"  # NCCL for GPU tensors; gloo for CPU ones (--device cpu, evaluation counts)
    dist.init_process_group(backend, timeout=TIMEOUT)
    return True


@contextlib.contextmanager
def session(enabled: bool = True) -> Iterator[None]:
    """Join the process group for the duration (when launched by torchrun), then leave it.

    On success the ranks meet at a barrier first, so no process exits before rank 0 has written its
    outputs. On an exception the group is torn down at once: ranks still waiting in a collective then fail
    instead of hanging (and torchrun stops them anyway when one process fails).
    """
    started = enabled and init_from_env()
    try:
        yield
        if started:
            barrier()
    finally:
        if started:
            dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over all ranks (``tensor`` itself in a single process)."""
    if world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard_indices(index: Tensor, rank_: int | None = None, world: int | None = None) -> Tensor:
    """This rank's share of a global batch of indices: every ``world``-th one, starting at its rank.

    The batch is first cut to a multiple of ``world`` so that every rank gets the same number of images:
    DDP needs every rank to take the same steps (a rank with one step more would wait forever), and equal
    per-rank means make DDP's average of gradients the gradient of the global batch mean.
    """
    world = world_size() if world is None else world
    rank_ = rank() if rank_ is None else rank_
    if world == 1:
        return index
    return index[: len(index) // world * world][rank_::world]


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when several processes train, else ``module`` itself."""
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (``module`` itself when it is not wrapped)."""
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


def sync_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each forward pass, so after the last step each rank's differ by
    its own last update; evaluating or saving needs one model, the same everywhere.
    """
    if world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


@torch.no_grad()
def sync_state(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank: for a model trained outside DDP on every rank
    (ANP's or I-BAU's own loops), which GPU non-determinism could make differ slightly between ranks."""
    if world_size() > 1:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)
