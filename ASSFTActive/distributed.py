"""Data parallelism for the worker: the same code runs as one process or as N ranks under ``torchrun``.

``torchrun --nproc_per_node N -m ASSFTActive.worker JOB_DIR`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous variables; :func:`init_from_env` then joins the process group (NCCL when every rank has a GPU, Gloo on
CPU) and returns a :class:`DistContext`. Without those variables it returns a single-process context whose
collectives are plain identities, so callers never branch on whether they run distributed.

Work is split by :meth:`DistContext.shard` (every ``world_size``-th item starting at ``rank``) and results are joined
with :meth:`DistContext.all_gather` / :meth:`DistContext.gather_to_main` (Python objects, pickled by
``torch.distributed``; only ever exchanged between ranks of the same job).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TypeVar

import torch

__all__ = ["DistContext", "init_from_env", "merge_shards", "rank_pool_distributed"]

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
    def single(cls, device: Optional[torch.device] = None) -> DistContext:
        """A one-process context on ``device`` (CUDA when present)."""
        if device is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return cls(device=device)

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

    def close(self) -> None:
        """Leave the process group (no-op when not distributed)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def init_from_env(device: Optional[str] = None) -> DistContext:
    """Join the process group described by torchrun's environment, or return a single-process context.

    Args:
        device: ``"cpu"`` forces CPU (and Gloo); ``None`` uses CUDA when every rank can have its own GPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext.single(torch.device(device) if device else None)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() > local_rank
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


def rank_pool_distributed(images: Sequence[Path], card, budget: int, out_dir: Path, *, labeled_ids: Sequence[str] = (),
                          query=None, ctx: Optional[DistContext] = None, progress=None, predictor=None):
    """Rank a pool with its volumes sharded across ranks; the scores are gathered and selected on rank 0.

    With one process this is :func:`ASSFTActive.api.rank_pool`. With several, every rank analyses
    ``images[rank::world_size]`` (one sliding-window pass per volume, its overlay and predicted label map written to
    ``out_dir`` as each is finished), the per-volume evidence is gathered on rank 0 in the original order, and rank 0
    selects the budget and writes ``ranking.json``, ``ranking.csv`` and ``config.json``, exactly as a single process
    would.

    Args:
        images: image files of the pool (labelled ones included).
        card: the current model's card.
        budget: volumes to propose.
        out_dir: the ranking folder.
        labeled_ids: case ids with expert labels (anchors of diversity, not candidates).
        query: :class:`~ASSFTActive.query.QueryConfig` (default settings when ``None``).
        ctx: the data-parallel context (default: one process).
        progress: event callback (every rank calls it; only rank 0's usually prints).
        predictor: already loaded models (default: built from ``card``).

    Returns:
        the :class:`~ASSFTActive.api.RankResult` on rank 0; on other ranks a result with the same ranking and only
        their own volumes.
    """
    from . import api
    from .io import case_id
    from .query import QueryConfig

    ctx = ctx or DistContext.single()
    query = query or QueryConfig()
    if not ctx.distributed:
        return api.rank_pool(list(images), card, budget, Path(out_dir), labeled_ids=labeled_ids, query=query,
                             device=ctx.device, progress=progress, predictor=predictor)
    from .errors import InputError
    from .progress import emit

    if budget < 0:
        raise InputError(f"--budget must be 0 or more, got {budget}.")
    images = [Path(p) for p in images]
    names = [case_id(p) for p in images]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"several images share the case id(s) {duplicates}; give each volume a unique file name.")
    out_dir = Path(out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    predictor = predictor or api.make_predictor(card, ctx.device)
    emit(progress, "phase", phase="rank", total=len(images),
         message=f"ranking {len(images)} volumes on {ctx.world_size} ranks ({predictor.device.type})")
    mine = ctx.shard(images)
    reports = api.analyse_pool(mine, predictor, query, labeled_ids, out_dir, progress)
    gathered = ctx.all_gather({r.case_id: r for r in reports})
    ordered = merge_shards(gathered, names)
    ranking = api.select_from_reports(ordered, budget, query)
    files = {}
    if ctx.is_main:
        files = api.write_ranking(out_dir, ranking, ordered, card, query,
                                  extra={"encoders_identical": predictor.encoders_identical,
                                         "device": predictor.device.type, "world_size": ctx.world_size})
    ctx.barrier()
    return api.RankResult(ranking=ranking, volumes=ordered if ctx.is_main else reports, out_dir=out_dir, files=files)
