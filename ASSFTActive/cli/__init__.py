"""The ``assft`` command line: a thin shell over the engine's API.

Each subcommand lives in its own module of this package with two functions, ``add_parser(subparsers)`` and
``run(args) -> int``. :func:`main` is the one place that turns expected failures into the user contract:

* an :class:`ASSFTActive.errors.AssftError` (bad input, card, store, output; see :mod:`ASSFTActive.errors`) or an
  ``OSError`` from a file or the disk: one line ``error: ...`` on stderr, exit code 2, no traceback;
* SIGTERM or SIGINT (:mod:`ASSFTActive.cli.signals`): ``cancelled``, exit code 130, also when the cancellation
  arrived inside code that wraps any failure in an error of its own (:func:`ASSFTActive.errors.cancelled_by`).

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .. import __version__
from ..errors import AssftError, CancelledError, cancelled_by

SUBCOMMANDS = ("rank", "overlay", "adapt", "sfr", "evaluate", "models", "demo", "check_card", "export_nnunet", "serve")
#: Exit code of an expected failure (bad input, card, store, output) and of a cancelled command.
EXIT_ERROR, EXIT_CANCELLED = 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assft",
        description="Rank unlabeled 3D volumes for annotation and adapt a segmentation model to a new site.",
    )
    parser.add_argument("--version", action="version", version=f"assft {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from ..threads import bound_openmp_spinning

    bound_openmp_spinning()  # before any subcommand imports torch
    from ..caches import keep_library_caches_out_of_home

    keep_library_caches_out_of_home()  # matplotlib's font cache (MONAI imports it): a temporary folder, not $HOME
    from .signals import cancel_on_signals

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command not in _NO_TORCH:
            _size_threads()
        with cancel_on_signals() as cancellation:
            args.cancellation = cancellation
            return int(args.run(args) or 0)
    except (CancelledError, KeyboardInterrupt):
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except (AssftError, OSError) as exc:
        if cancelled_by(exc):  # a signal that arrived inside a reader's "cannot read the file" and the like
            print("cancelled", file=sys.stderr)
            return EXIT_CANCELLED
        # an OSError: a file or the disk (permissions, a file where a folder should be, disk full)
        print(f"error: {exc if isinstance(exc, AssftError) else describe_os_error(exc)}", file=sys.stderr)
        return EXIT_ERROR


#: Subcommands that run no torch computation in this process (listing a store; the browser server starts workers).
_NO_TORCH = ("models", "serve")


def _size_threads() -> None:
    """Torch's thread pools sized to the cores this process may use (``ASSFT_NUM_THREADS`` overrides)."""
    from ..errors import InputError
    from ..threads import size_thread_pools

    try:
        size_thread_pools()
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def describe_os_error(exc: OSError) -> str:
    """``<file>: <reason>`` of a file-system error, with what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}. Check the path, its permissions and the free disk space."


if __name__ == "__main__":
    sys.exit(main())
