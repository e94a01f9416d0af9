"""Slicer side of ASSFT: the MRML logic (no Qt) and two GUI helpers.

Importing this package puts the engine shipped beside the module (``ASSFTActive``) on ``sys.path``.

MRML logic, importable headless on slicer-core: ``logic`` (the facade the widget calls), ``geometry``,
``segmentation``, ``ranking``, ``overlay``, ``regions``, ``plot``, ``guidance``.

The job lifecycle, in four files: ``jobFolder`` (a job folder written from the scene, off the GUI thread, and read
back: result, failure report, pruning; MRML), ``jobProcess`` (the worker's command and environment, its output,
one run with Cancel, stopping a process tree; plain Python), ``jobController`` (the job controller the widget and
the browser receive: jobs, device probe, card check, progress, the end of a job; plain Python) and ``jobRunner``
(the ``qt.QProcess`` runner, desktop Slicer only).

Plain Python (no MRML) besides: ``parameters``, ``guiBinding``, ``requirements``, ``modelCard``, ``records``,
``errors``, ``enginePath``. The job protocol, events and model cards themselves are the engine's torch-free modules
(``ASSFTActive.jobs``, ``ASSFTActive.progress``, ``ASSFTActive.cards``); nothing here imports torch.
GUI helpers, desktop Slicer only: ``jobRunner`` and ``installer`` (first-use pip installs; never numpy or
SimpleITK, which Slicer ships; never a second torch).
"""

from .enginePath import ensureEngineOnPath

ensureEngineOnPath()
