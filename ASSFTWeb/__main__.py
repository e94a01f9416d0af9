"""``python -m ASSFTWeb --data DIR ...``: the browser annotator's server (what ``assft serve`` starts)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assft serve",
        description="Serve the ASSFT annotator (rank, look, paint, adapt) as a web page on trame-slicer.",
    )
    parser.add_argument("--data", required=True, type=Path, help="folder of the unlabeled volumes (NIfTI/NRRD/MHA)")
    parser.add_argument(
        "--labels",
        type=Path,
        help="folder of label files <case>.nii.gz, read at start and written by Save labels (default: <data>/labels)",
    )
    parser.add_argument(
        "--model",
        default="default",
        help="'default' (the embedded model), a card JSON, or a store folder <store>/<name>[/v<k>]",
    )
    parser.add_argument("--store", type=Path, help="model store for adapted models (default: <work>/models)")
    parser.add_argument("--work", type=Path, help="folder of job folders (default: <data>/.assft)")
    parser.add_argument("--budget", type=int, default=2, help="volumes proposed for annotation (default 2)")
    parser.add_argument(
        "--query-json",
        default="{}",
        help="engine QueryConfig settings for every job, as JSON; its 'rounds' is where the page's "
        "Query rounds field starts (e.g. '{\"rounds\": 2}')",
    )
    parser.add_argument(
        "--finetune-json",
        default="{}",
        help='engine FinetuneConfig settings for Adapt jobs, as JSON (e.g. \'{"train": {"iterations": 50}}\')',
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name the page may be opened under (a DNS alias or a reverse proxy's "
        "name); requests naming any other host are refused. Repeatable",
    )
    return parser


def _json_option(text: str, option: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {option} is not valid JSON ({exc.msg} at character {exc.pos}).") from exc
    if not isinstance(value, dict):
        raise SystemExit(f'error: {option} must be a JSON object such as \'{{"train": {{"iterations": 50}}}}\'.')
    return value


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data}: data folder not found. Pass an existing folder to --data.", file=sys.stderr)
        return 2
    if args.budget < 1:
        print(f"error: --budget must be at least 1, got {args.budget}.", file=sys.stderr)
        return 2
    from . import ensure_module_lib_on_path

    ensure_module_lib_on_path()
    from ASSFTModuleLib.errors import ASSFTModuleError
    from ASSFTModuleLib.parameters import queryRoundsValue

    from ASSFTActive.errors import OutputError

    from .label_files import check_labels_folder
    from .session import ServeConfig

    query = _json_option(args.query_json, "--query-json")
    if "rounds" in query:
        try:
            queryRoundsValue(query["rounds"])
        except ASSFTModuleError as error:
            print(f"error: --query-json: {error}", file=sys.stderr)
            return 2
    config = ServeConfig(
        data_dir=args.data.resolve(),
        labels_dir=args.labels.resolve() if args.labels else None,
        model=args.model,
        store_dir=args.store.resolve() if args.store else None,
        work_dir=args.work.resolve() if args.work else None,
        budget=args.budget,
        query=query,
        finetune=_json_option(args.finetune_json, "--finetune-json"),
    )
    try:
        check_labels_folder(config.labels_folder)
    except OutputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from .app import serve

    sys.argv = sys.argv[:1]  # trame parses the command line again; it must not see ours
    serve(config, host=args.host, port=args.port, allow_hosts=args.allow_host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
