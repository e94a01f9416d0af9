"""``assft serve``: the browser annotator (rank, look, paint, adapt) on trame-slicer, on this machine by default.

The server is the ``ASSFTWeb`` package beside the engine in a source checkout; it runs in a child process so that
the engine never imports trame, slicer or vtk. It prints the page's address with a secret made for this start: only
a page opened at that address can drive it (``ASSFTWeb.security``; ``--allow-host`` adds host names it answers to).
It needs the ``web`` extra (``pip install -e '.[web]'``: trame-slicer with slicer-core) and Mesa EGL for rendering
without a display.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from ..errors import InputError

SERVER_PACKAGE = "ASSFTWeb"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve the annotator as a web page (trame-slicer)", description=__doc__
    )
    parser.add_argument("--data", required=True, help="folder of the unlabeled volumes (NIfTI/NRRD/MetaImage)")
    parser.add_argument("--labels", help="folder of label files <case>.nii.gz (default: <data>/labels)")
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (the embedded model), a card JSON, or a store folder <store>/<name>[/v<k>]",
    )
    parser.add_argument("--store", help="model store for adapted models (default: <data>/.assft/models)")
    parser.add_argument("--work", help="folder of job folders (default: <data>/.assft)")
    parser.add_argument("--budget", type=int, default=2, help="volumes proposed for annotation")
    parser.add_argument("--finetune-json", help="engine FinetuneConfig settings for Adapt jobs, as JSON")
    parser.add_argument("--query-json", help="engine QueryConfig settings for every job, as JSON")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--allow-host",
        action="append",
        metavar="NAME",
        help="another host name the page may be opened under (a DNS alias, a reverse proxy); repeatable",
    )
    parser.set_defaults(run=run)


def server_command(args: argparse.Namespace) -> list:
    """``python -m ASSFTWeb ...`` with the arguments given."""
    command = [
        sys.executable,
        "-m",
        SERVER_PACKAGE,
        "--data",
        str(args.data),
        "--model",
        str(args.model),
        "--budget",
        str(args.budget),
        "--host",
        str(args.host),
        "--port",
        str(args.port),
    ]
    for option, value in (
        ("--labels", args.labels),
        ("--store", args.store),
        ("--work", args.work),
        ("--finetune-json", args.finetune_json),
        ("--query-json", args.query_json),
    ):
        if value is not None:
            command += [option, str(value)]
    for name in getattr(args, "allow_host", None) or ():
        command += ["--allow-host", str(name)]
    return command


def run(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[2]
    if not (root / SERVER_PACKAGE / "__main__.py").is_file():
        raise InputError(
            f"assft serve needs the source checkout: {root / SERVER_PACKAGE} is missing. Run it from a "
            "clone of the repository (pip install -e '.[web]')."
        )
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), environment.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen(server_command(args), env=environment)
    try:
        return process.wait()
    except BaseException:  # SIGTERM/SIGINT reach here as a cancellation: stop the server too
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
