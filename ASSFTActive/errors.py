"""Errors a user can act on.

Every error raised for bad input names the file (or setting), says what is wrong and what to do. The CLI and the
worker print the message of an :class:`AssftError` without a traceback.
"""

from __future__ import annotations


class AssftError(Exception):
    """Base class of the errors ASSFT reports to users (message only, no traceback)."""


class InputError(AssftError):
    """An image or label file cannot be used: unreadable, wrong dimensions, NaN, geometry mismatch, bad labels."""


class ModelError(AssftError):
    """A model card or checkpoint cannot be used: unknown layout, missing weights, encoder not loaded."""


class JobError(AssftError):
    """A background job cannot run or was cancelled."""


class CancelledError(JobError):
    """The user asked to cancel."""
