"""Slicer side of ASSFT: the MRML logic (no Qt) and two GUI helpers.

Importing this package puts the engine shipped beside the module (``ASSFTActive``) on ``sys.path``.

MRML logic, importable headless on slicer-core: ``logic`` (the facade the widget calls), ``geometry``,
``segmentation``, ``ranking``, ``overlay``, ``regions``, ``plot``, ``jobPreparation``.
Plain Python (no MRML): ``jobController`` (the job controller the widget receives: runner, device probe, running
job, the end of a job), ``jobRun`` (one process run and Cancel, with a subprocess runner), ``processTree`` (stopping
a launcher and its worker), ``parameters``, ``guiBinding``, ``jobs``, ``events``, ``workerProcess``,
``requirements``, ``modelCard``, ``records``, ``errors``, ``enginePath``. The job protocol, events and model
cards themselves are the engine's torch-free modules (``ASSFTActive.jobs``, ``ASSFTActive.progress``,
``ASSFTActive.cards``); nothing here imports torch.
GUI helpers, desktop Slicer only: ``jobRunner`` (QProcess runner driving ``jobRun.JobRunCore``), ``installer``
(first-use pip installs; never numpy or SimpleITK, which Slicer ships).
"""

from .enginePath import ensureEngineOnPath

ensureEngineOnPath()
