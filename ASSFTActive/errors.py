"""Errors a user can act on.

Every error raised for bad input names the file (or setting), says what is wrong and what to do. The CLI and the
worker print the message of an :class:`AssftError` without a traceback.

The hierarchy (what a caller may expect, by where it comes from)::

    AssftError
    ├── InputError      an image, label, settings file or option
    ├── ModelError      a model card or its weights
    ├── OutputError     an output cannot be written (permissions, a file where a folder should be, a full disk)
    ├── StoreError      the model store (ASSFTActive.store)
    └── JobError        a background job; CancelledError: the user cancelled (SIGTERM, SIGINT, Cancel)

``assft`` maps them in one place (:func:`ASSFTActive.cli.main`): one ``error: ...`` line and exit code 2, or
``cancelled`` and exit code 130.
"""

from __future__ import annotations


class AssftError(Exception):
    """Base class of the errors ASSFT reports to users (message only, no traceback)."""


class InputError(AssftError):
    """An image or label file cannot be used: unreadable, wrong dimensions, NaN, geometry mismatch, bad labels."""


class ModelError(AssftError):
    """A model card or checkpoint cannot be used: unknown layout, missing weights, encoder not loaded."""


class OutputError(AssftError, OSError):
    """An output file or folder cannot be written: not writable, a file in the way, the disk is full."""


class JobError(AssftError):
    """A background job cannot run or was cancelled."""


class CancelledError(JobError):
    """The user asked to cancel."""


def cancelled_by(error: BaseException) -> bool:
    """Whether ``error`` is a cancellation or was raised while handling one.

    A signal raises :class:`CancelledError` wherever the computation stands, also inside a ``try`` that turns any
    failure into an error of its own (a reader's "cannot read the file"); such an error is the cancellation, not
    a fault of the input, and is reported as ``cancelled``.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (CancelledError, KeyboardInterrupt)):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False
