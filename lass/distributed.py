"""Data-parallel training under ``torchrun`` (gloo on CPU, NCCL on CUDA).

    torchrun --nproc_per_node 2 -m lass.cli.train_prior --codec ... --batch 16 ...

Every trainer draws its batch as a pure function of ``(seed, step)``. Under ``torchrun`` each
of the ``world`` processes draws the same *global* batch and trains on its own contiguous
slice of ``batch / world`` items (:func:`rank_slice`); the trainers wrap their network in
:class:`torch.nn.parallel.DistributedDataParallel`, whose all-reduce averages the gradients,
so a step is the step of one process on the whole batch (the losses are means over equal
slices). The convolutional codec's EMA codebook gathers the encoder outputs of all ranks
before its update, so its statistics and dead-code restarts are those of the global batch
too. Rank 0 alone writes logs, checkpoints and summaries and shows progress. Because the
global batch does not depend on the world size, a run resumes under another world size (the
batch must divide by it) and continues the same sequence of batches.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) nothing here starts a process
group and every function is the identity of one process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lass.errors import LassError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes logs and checkpoints (rank 0)."""
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device: str) -> tuple[World, str]:
    """Join the process group when started by ``torchrun`` (gloo for ``cpu``, NCCL for
    ``cuda``); return this process's :class:`World` and its device (``cuda:LOCAL_RANK`` on
    CUDA). One process: ``(World(), device)`` unchanged."""
    if not launched():
        return World(), device
    rank = int(os.environ["RANK"])
    size = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LassError("--device cuda under torchrun, but CUDA is not available")
        torch.cuda.set_device(local)
        device, backend = f"cuda:{local}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        # Long: rank 0 encodes the token cache (minutes to hours) while the others wait.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=4))
    return World(rank, size, local), device


def current_world() -> World:
    """The :class:`World` of the process group in use (one process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", "0")))


def rank_slice(batch: int, world: World) -> slice:
    """This rank's contiguous share of a global batch of ``batch`` items."""
    if batch % world.size:
        raise LassError(f"the batch of {batch} does not divide among {world.size} processes; "
                        "choose a --batch that is a multiple of --nproc_per_node x --nnodes")
    share = batch // world.size
    return slice(world.rank * share, (world.rank + 1) * share)


def barrier() -> None:
    """Wait for every rank (nothing with one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish() -> None:
    """Leave the process group (after the last collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def parallel(module: torch.nn.Module, world: World, unused: bool = False) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel when there are several processes (its
    parameters and buffers are taken from rank 0; the buffers are not broadcast at each step:
    the trainers keep them equal on every rank); ``module`` itself in one process.
    ``unused``: some parameters get no gradient (the last layer's residual output of a WaveNet
    or a Conv-TasNet)."""
    if world.size == 1:
        return module
    device = next(module.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False,
                                   find_unused_parameters=unused)


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """Run the block on rank 0 first and then on the others (e.g. encoding a shared cache
    that the others then read); one process: just the block."""
    if not world.main:
        barrier()
    yield
    if world.main:
        barrier()
