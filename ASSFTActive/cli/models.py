"""``assft models``: list the embedded models and every version in a model store; ``activate`` rolls back.

assft models                                   embedded models
assft models --store STORE                     ... and every model version in STORE (* = active; a version
                                               whose files differ from its manifest is marked CHANGED)
assft models activate --store STORE NAME v2    make v2 the active version of NAME
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list model versions; `activate` switches the active one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", type=Path, help="model store folder")
    parser.add_argument("--json", action="store_true", help="print the listing as JSON")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    activate = actions.add_parser("activate", help="make a stored version the active one (roll back or forward)")
    activate.add_argument("--store", type=Path, default=argparse.SUPPRESS, help="model store folder")
    activate.add_argument("name", help="model name in the store")
    activate.add_argument("version", help="version to activate, e.g. v1")
    activate.set_defaults(run=run_activate)
    parser.set_defaults(run=run_list)


def _store(args: argparse.Namespace):
    from ..errors import InputError
    from ..store import ModelStore

    if getattr(args, "store", None) is None:
        raise InputError("pass --store with the model store folder.")
    if not Path(args.store).is_dir():
        raise InputError(f"{args.store}: model store folder not found.")
    return ModelStore(args.store)


def run_list(args: argparse.Namespace) -> int:
    from ..models import embedded_cards

    embedded = [{"name": c.name, "card": str(c.path), "classes": list(c.class_names[1:])} for c in embedded_cards()]
    stored = []
    if args.store is not None:
        store = _store(args)
        stored = [dict(v.to_dict(), problem=_problem(v)) for name in store.names() for v in store.versions(name)]
    if args.json:
        print(json.dumps({"embedded": embedded, "store": stored}, indent=2))
        return 0
    print("embedded models (--model default):")
    for item in embedded:
        print(f"  {item['name']:<28} {', '.join(item['classes'])}  {item['card']}")
    if args.store is not None:
        print(f"\nmodel store {Path(args.store).resolve()}:")
        if not stored:
            print("  (no versions yet; `assft adapt --store ...` writes one)")
        for item in stored:
            metrics = item["metrics"]
            dice = ""
            if metrics.get("dice_after") is not None:
                before = metrics.get("dice_before")
                dice = (
                    f"Dice {before:.3f} -> {metrics['dice_after']:.3f}"
                    if before is not None
                    else f"Dice {metrics['dice_after']:.3f}"
                )
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(item["created"]))
            marker = "*" if item["active"] else " "
            print(f"{marker} {item['name']:<28} {item['version']:<5} {created}  {dice:<22} {item['card']}")
            if item["problem"]:
                print(f"  ! CHANGED since it was written, not usable: {item['problem']}")
        if stored:
            print("\n* = active version; roll back with `assft models activate --store STORE NAME vK`")
        changed = [f"{item['name']} {item['version']}" for item in stored if item["problem"]]
        if changed:
            print(
                f"! {len(changed)} version(s) differ from their manifest ({', '.join(changed)}): every load refuses "
                "them; activate another version or adapt again."
            )
    return 0


def _problem(version) -> str:
    """Why a listed version cannot be used (its files differ from its manifest), or ``""``; the same check every load
    makes (:func:`ASSFTActive.store.verify_version` without loading the weights)."""
    from ..store import StoreError, verify_version

    try:
        verify_version(version.path, load=False)
    except StoreError as exc:
        return str(exc)
    return ""


def run_activate(args: argparse.Namespace) -> int:
    store = _store(args)
    previous = store.active_version(args.name) if args.name in store.names() else None
    version = store.activate(args.name, args.version)
    print(f"{version.name}: active version {previous or '(none)'} -> {version.version} ({version.card_path})")
    return 0
