"""Errors the module reports to the user: each says what is wrong, where, and what to do."""

from __future__ import annotations

from typing import Sequence


class ASSFTModuleError(Exception):
    """Base class of the errors raised by the ASSFT module logic."""


class UnknownSegmentNamesError(ASSFTModuleError):
    """A segmentation has segments whose names are not classes of the model; they are never guessed.

    Attributes:
        segmentationName: the segmentation node's name.
        segmentNames: the unknown segment names, in segment order.
        classNames: the model's class names (index 0 is background).
    """

    def __init__(self, segmentationName: str, segmentNames: Sequence[str], classNames: Sequence[str]):
        self.segmentationName = segmentationName
        self.segmentNames = tuple(segmentNames)
        self.classNames = tuple(classNames)
        known = ", ".join(self.classNames[1:])
        unknown = ", ".join(repr(name) for name in self.segmentNames)
        super().__init__(
            f"Segmentation '{segmentationName}' has segments that are not classes of the model: {unknown}. "
            f"Rename them to one of: {known} (or delete them) and try again."
        )


class ResultFormatError(ASSFTModuleError):
    """A file written by the worker (result, ranking, regions, events) is missing or malformed."""


class JobFailedError(ASSFTModuleError):
    """The background job ended without a ``done`` result.

    Attributes:
        jobDir: the job folder.
        logTail: the last lines of the job's ``log.txt`` (may be empty).
    """

    def __init__(self, message: str, jobDir: str = "", logTail: str = ""):
        self.jobDir = jobDir
        self.logTail = logTail
        super().__init__(message)
