"""Write a ranking's per-volume files on a background thread while the next volume is predicted.

On a GPU a CT-sized volume ranks in about the time of a plain inference pass, but its outputs (the uint8 entropy
overlay, its regions and the predicted label map, all gzip NIfTI) take about as long again when written on the
critical path. :class:`BackgroundWriter` runs those writes on one worker thread, in submission order, so the
outputs of volume ``i`` are written while volume ``i + 1`` is predicted. A thread suffices: zlib (gzip
compression) and torch's kernels release the GIL, so compression overlaps the torch pass.

Not MONAI: it has no such thing. Its threads feed inputs (``ThreadBuffer``, ``ThreadDataLoader``, the patch buffer
of ``SlidingWindowInferer``); ``SaveImage`` and its image writers write in the calling thread. A bare executor would
neither bound the memory held by waiting outputs nor hand a failed write back to the ranking that must then fail.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Callable, Optional, Type

#: Writes that may wait beyond the running one: about two volumes' outputs held in memory at most.
DEFAULT_MAX_PENDING = 1


class BackgroundWriter:
    """Runs write callables on one worker thread, in submission order, with a bound on the writes waiting.

    Use it as a context manager: leaving the block waits for every write and raises the first write error. A write
    error is never lost: it is raised by the next :meth:`submit` and by :meth:`close` (every later call raises it
    again), and the writes not yet started when it happened are skipped. When the block itself raises, the writes
    not yet started are skipped, the running one is waited for (so nothing is written after the caller cleans up)
    and the block's exception propagates.

    Args:
        max_pending: writes that may wait while one runs; :meth:`submit` blocks until there is room, so at most
            ``max_pending + 1`` submitted writes (and what they hold) are alive at once.
        enabled: ``False`` runs every write synchronously in :meth:`submit` (tests, debugging); its error is
            raised at once, and again by :meth:`close`.
    """

    def __init__(self, max_pending: int = DEFAULT_MAX_PENDING, enabled: bool = True):
        if max_pending < 0:
            raise ValueError(f"max_pending must be 0 or more, got {max_pending}")
        self.enabled = enabled
        self._slots = threading.Semaphore(max_pending + 1)
        self._lock = threading.Lock()
        self._error: Optional[BaseException] = None
        self._abandoned = False
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assft-writer") if enabled else None

    def submit(self, write: Callable[[], object]) -> None:
        """Queue ``write`` (called with no argument; its return value is ignored) after the writes before it.

        Raises:
            BaseException: the first error of an earlier write.
            RuntimeError: the writer is closed.
        """
        self._raise_error()
        if self._closed:
            raise RuntimeError("the background writer is closed")
        if self._executor is None:
            try:
                write()
            except BaseException as exc:
                self._record(exc)
                raise
            return
        self._slots.acquire()
        if self._error is not None:  # a write failed while this one waited for room
            self._slots.release()
            self._raise_error()
        self._executor.submit(self._run, write)

    def close(self) -> None:
        """Wait for every submitted write, then raise the first write error if there was one."""
        self._shutdown()
        self._raise_error()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], traceback: Optional[TracebackType]
    ) -> None:
        if exc is None:
            self.close()
        else:
            self._abandoned = True
            self._shutdown()

    def _run(self, write: Callable[[], object]) -> None:
        try:
            if self._error is None and not self._abandoned:
                write()
        except BaseException as exc:  # kept for the caller's thread; the worker thread would only log it
            self._record(exc)
        finally:
            self._slots.release()

    def _record(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _shutdown(self) -> None:
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)
