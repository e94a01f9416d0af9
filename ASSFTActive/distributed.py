"""Data parallelism for the worker: the same code runs as one process or as N ranks under ``torchrun``.

``torchrun --nproc_per_node N -m ASSFTActive.worker JOB_DIR`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous variables; :func:`init_from_env` then joins the process group (NCCL when every rank has a GPU, Gloo on
CPU) and returns a :class:`DistContext`. Without those variables it returns a single-process context whose
collectives are plain identities, so callers never branch on whether they run distributed.

Work is split by :meth:`DistContext.shard` (every ``world_size``-th item starting at ``rank``) and results are joined
with :meth:`DistContext.all_gather` / :meth:`DistContext.gather_to_main` (Python objects, pickled by
``torch.distributed``; only ever exchanged between ranks of the same job) and :func:`merge_shards`. This module is
only the process-group context: what is sharded is decided by its callers (ranking:
:func:`ASSFTActive.api.rank_pool` with ``ctx``; fine-tuning: :mod:`ASSFTActive.finetune`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Dict, List, Optional, Sequence, TypeVar, Union

import torch

__all__ = ["DistContext", "init_from_env", "merge_shards"]

T = TypeVar("T")

#: How long a rank waits for the others in a collective before failing (a crashed rank must not hang the job).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) data-parallel job.

    Attributes:
        rank: global rank, 0 on the main process.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: compute device of this rank.
        backend: ``"nccl"``, ``"gloo"`` or ``""`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""

    @classmethod
    def single(cls, device: Optional[Union[str, torch.device]] = None) -> DistContext:
        """A one-process context on ``device`` (default: :func:`ASSFTActive.inference.default_device`)."""
        if device is None:
            from .inference import default_device

            device = default_device()
        return cls(device=torch.device(device))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> List[T]:
        """This rank's share: ``items[rank::world_size]`` (deterministic, balanced to within one item)."""
        return list(items[self.rank::self.world_size])

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def all_gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's ``obj`` in rank order on rank 0; ``None`` elsewhere."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: Optional[List[Any]] = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, network: torch.nn.Module) -> torch.nn.Module:
        """``network`` on this rank's device, wrapped in ``DistributedDataParallel`` when distributed."""
        network = network.to(self.device)
        if not self.distributed:
            return network
        from torch.nn.parallel import DistributedDataParallel

        if self.device.type == "cuda":
            return DistributedDataParallel(network, device_ids=[self.device.index])
        return DistributedDataParallel(network)

    def close(self, synchronise: bool = False) -> None:
        """Leave the process group (no-op when not distributed).

        Args:
            synchronise: wait for every rank first (the job succeeded everywhere), so no rank tears down Gloo's
                connections while a peer still works. Unreferenced DDP wrappers are collected before the group goes,
                so their Gloo work does not outlive it into interpreter shutdown, where its threads abort the
                process (seen once in the suite: ``terminate called without an active exception`` on rank 1 after
                a successful two-rank job). A failed barrier is ignored: leaving must not fail.
        """
        if self.distributed:
            import gc

            import torch.distributed as dist

            if dist.is_initialized():
                if synchronise:
                    try:
                        dist.barrier()
                    except Exception:  # a peer already left or failed; destroy anyway
                        pass
                gc.collect()
                dist.destroy_process_group()


def init_from_env(device: Optional[Union[str, torch.device]] = None) -> DistContext:
    """Join the process group described by torchrun's environment, or return a single-process context.

    Args:
        device: a CPU device forces CPU (and Gloo); ``None`` or a CUDA device uses CUDA when every rank can have
            its own GPU (one process: ``device``, default :func:`ASSFTActive.inference.default_device`).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext.single(device)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cpu = device is not None and torch.device(device).type == "cpu"
    use_cuda = not wants_cpu and torch.cuda.is_available() and torch.cuda.device_count() > local_rank
    if use_cuda:
        torch.cuda.set_device(local_rank)
        compute = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        compute = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=compute, backend=backend)


def merge_shards(shards: Sequence[Dict[str, Any]], order: Sequence[str]) -> List[Any]:
    """Join per-rank ``{key: value}`` results into one list following ``order`` (keys missing raise KeyError)."""
    joined: Dict[str, Any] = {}
    for shard in shards:
        joined.update(shard)
    return [joined[key] for key in order]
