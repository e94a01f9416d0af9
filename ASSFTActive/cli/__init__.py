"""The ``assft`` command line: a thin shell over the engine's API.

Each subcommand lives in its own module of this package with two functions, ``add_parser(subparsers)`` and
``run(args) -> int``. Errors a user can act on (:class:`ASSFTActive.errors.AssftError`) are printed as one line,
``error: ...``, with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .. import __version__
from ..errors import AssftError

SUBCOMMANDS = ("rank", "overlay", "adapt", "evaluate", "models", "demo")


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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except AssftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
