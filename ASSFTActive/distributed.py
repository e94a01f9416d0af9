"""Data parallelism for the worker: the same code runs as one process or as N ranks under ``torchrun``.

``torchrun --nproc_per_node N -m ASSFTActive.worker JOB_DIR`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous variables; :func:`init_from_env` then joins the process group (NCCL when every rank has a GPU, Gloo on
CPU) and returns a :class:`DistContext`. Without those variables it returns a single-process context whose
collectives are plain identities, so callers never branch on whether they run distributed.

Work over a list of items goes through :func:`map_shards`, the one place that shards (every ``world_size``-th item
starting at ``rank``), runs, gathers (Python objects, pickled by ``torch.distributed``; only ever exchanged between
ranks of the same job), ships a failing rank's error to every rank and merges the results back in the items' order.
What is mapped is decided by its callers (ranking: :func:`ASSFTActive.api.rank_pool`; evaluation, cross-validation,
pseudo-labelling, label checks and pool predictions in :mod:`ASSFTActive.finetune` and :mod:`ASSFTActive.evaluate`).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, List, Optional, Sequence, TypeVar, Union

import torch

__all__ = ["DistContext", "init_from_env", "map_shards", "shippable"]

T = TypeVar("T")
R = TypeVar("R")

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
        return list(items[self.rank :: self.world_size])

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


def shippable(exc: BaseException) -> BaseException:
    """``exc`` itself when it can be sent to the other ranks (pickled), else a :class:`~ASSFTActive.errors.JobError`
    with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        from .errors import JobError

        return JobError(f"{type(exc).__name__}: {exc}")


def map_shards(
    ctx: Optional[DistContext], items: Sequence[T], fn: Callable[[Any], Any], *, whole_shard: bool = False
) -> List[Any]:
    """``[fn(item) for item in items]`` with the items shared out over the ranks of ``ctx``, on every rank.

    Each rank runs ``fn`` on its share (``items[rank::world_size]``), the results are gathered on every rank and
    merged back in the items' order. When ``fn`` raises on any rank, the rank stops its share and still reaches the
    gather with the error; then **every** rank raises: the failing rank its own exception, the others the first
    failing rank's (pickled, or a :class:`~ASSFTActive.errors.JobError` with its message). So no rank waits in the
    gather for a rank that died, and rank 0, which writes ``result.json``, reports the real error. Without a
    distributed ``ctx`` (``None`` or one process) this is the plain loop and the exception propagates unchanged.

    Args:
        ctx: the data-parallel context, or ``None`` for one process.
        items: what to map over, in the order of the result.
        fn: one item to its result; with ``whole_shard``, this rank's list of items to a list of results in the
            same order (for work that overlaps items, e.g. writing one volume's files while the next is predicted).
        whole_shard: call ``fn`` once on the rank's share instead of once per item.

    Returns:
        the results in the items' order (the same list on every rank).

    Raises:
        Exception: ``fn``'s exception, on every rank.
    """
    items = list(items)
    if ctx is None or not ctx.distributed:
        return list(fn(items)) if whole_shard else [fn(item) for item in items]
    mine = ctx.shard(items)
    error: Optional[BaseException] = None
    results: List[Any] = []
    try:
        results = list(fn(mine)) if whole_shard else [fn(item) for item in mine]
        if len(results) != len(mine):
            raise ValueError(f"map_shards: fn returned {len(results)} results for {len(mine)} items")
    except Exception as exc:  # every rank must reach the gather, or the others wait for it until the timeout
        error = exc
    shards = ctx.all_gather((results, None if error is None else shippable(error)))
    if error is not None:
        raise error
    failed = [shipped for _, shipped in shards if shipped is not None]
    if failed:
        raise failed[0]
    merged: List[Any] = [None] * len(items)
    for rank, (values, _) in enumerate(shards):
        for offset, value in enumerate(values):
            merged[rank + offset * ctx.world_size] = value
    return merged
