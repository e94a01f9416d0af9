"""Torch's thread pools sized to the cores this process may run on, not to every core of the machine.

By default torch starts one intra-op thread per physical core of the machine, whatever the process's CPU affinity
(``taskset``, a batch scheduler's cpuset, a container). Two ASSFT jobs side by side then each run as many busy threads
as there are cores, and each runs about five times slower than alone (measured: one Adapt 7 min alone, 35-40 min
beside another). :func:`size_thread_pools` gives torch the cores in the process's affinity mask
(``os.sched_getaffinity``), shared between the ranks of one machine under ``torchrun``; ``ASSFT_NUM_THREADS`` overrides
the count (and an explicit ``OMP_NUM_THREADS`` is respected). The worker and every computing ``assft`` command call it
before their first torch operation.

Sizing alone does not stop two jobs on the same cores from starving each other: libgomp (torch's OpenMP on Linux)
lets a thread that waits for work busy-spin before it sleeps, and each job's spinning threads take the cores the other
job's working threads need. :func:`bound_openmp_spinning` shortens that spin; the worker and ``assft`` call it before
torch is imported.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, MutableMapping, Optional

__all__ = [
    "BOUNDED_SPIN",
    "SPIN_VARIABLE",
    "THREADS_VARIABLE",
    "bound_openmp_spinning",
    "size_thread_pools",
    "thread_count",
]

#: libgomp's busy-wait (iterations) of an idle OpenMP thread before it sleeps; 300,000 when unset.
SPIN_VARIABLE = "GOMP_SPINCOUNT"
#: The bound ASSFT sets. Measured on 2 cores (``Testing/Benchmarks/side_by_side.py``, the shipped sample, 20 + 20
#: steps, no guard): two Adapt jobs side by side took 13.5x one alone with libgomp's default, 2.0x with 10,000, while
#: one alone took 22.9 s against 22.0 s; ``OMP_WAIT_POLICY=PASSIVE`` gave 1.4x but 28.5 s alone.
BOUNDED_SPIN = "10000"

#: Environment variable that sets torch's intra- and inter-op thread counts (a whole number >= 1).
THREADS_VARIABLE = "ASSFT_NUM_THREADS"


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def thread_count(environ: Optional[Mapping[str, str]] = None, cores: Optional[int] = None) -> int:
    """Threads per pool for this process.

    ``ASSFT_NUM_THREADS`` when set, else ``OMP_NUM_THREADS`` when set, else the cores of the affinity mask divided
    among the local ranks (``LOCAL_WORLD_SIZE`` under ``torchrun``), at least 1.

    Raises:
        ValueError: ``ASSFT_NUM_THREADS`` is not a whole number >= 1 (the variable named).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(THREADS_VARIABLE, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_VARIABLE}={value!r}: give a whole number of threads >= 1, or unset it.")
        return int(value)
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp)
    local = environ.get("LOCAL_WORLD_SIZE", "1").strip()
    ranks = int(local) if local.isdigit() and int(local) >= 1 else 1
    return max(1, (cores if cores is not None else _available_cores()) // ranks)


def size_thread_pools(environ: Optional[Mapping[str, str]] = None) -> int:
    """Set torch's intra-op and inter-op thread counts to :func:`thread_count` and return it.

    The inter-op pool can be sized only before torch first uses it; when that already happened, it is left as it is.
    Without torch installed nothing is set.

    Raises:
        ValueError: a malformed ``ASSFT_NUM_THREADS``.
    """
    count = thread_count(environ)
    try:
        import torch
    except ImportError:
        return count
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    try:
        if torch.get_num_interop_threads() != count:
            torch.set_num_interop_threads(count)
    except RuntimeError:  # the inter-op pool already started
        pass
    return count


def bound_openmp_spinning(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Set :data:`SPIN_VARIABLE` to :data:`BOUNDED_SPIN` so that jobs sharing cores do not starve each other.

    libgomp reads the variable once, when torch loads it, so this acts only before torch is imported; the user's own
    ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` is left alone.

    Returns:
        whether the variable was set.
    """
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules or SPIN_VARIABLE in environ or "OMP_WAIT_POLICY" in environ:
        return False
    environ[SPIN_VARIABLE] = BOUNDED_SPIN
    return True
