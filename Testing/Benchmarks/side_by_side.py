"""Two Adapt jobs side by side against one alone (issue 29 item 19): does each job size its threads so that sharing
the machine costs about the share, not a thrash?

One ``assft adapt`` on the shipped sample (3 labelled volumes, the unlabelled rest, no guard, a short run) is timed
alone, then two identical ones are started together into separate stores; each job's wall time is divided by the
alone time. On a machine with ``c`` cores two jobs that share it perfectly take 2x; the goal is <= 2.5x. Both jobs
size torch's thread pools as the product does (:mod:`ASSFTActive.threads`: the cores of the affinity mask, unless
``ASSFT_NUM_THREADS`` is set), so the measurement is of the product's default. Run it on a quiet machine: any other
load is counted as slowdown.

    python Testing/Benchmarks/side_by_side.py --repeats 2

Writes ``Testing/Benchmarks/results/side_by_side.json`` (and prints a table).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "ASSFTActive" / "resources" / "sample" / "pool"
RESULTS = REPO / "Testing" / "Benchmarks" / "results" / "side_by_side.json"
LABELLED = 3


def _site(folder: Path) -> Path:
    """The sample pool with its first ``LABELLED`` labels: ``folder/images``, ``folder/labels``."""
    images, labels = folder / "images", folder / "labels"
    shutil.copytree(SAMPLE / "images", images)
    labels.mkdir(parents=True)
    for label in sorted((SAMPLE / "labels").iterdir())[:LABELLED]:
        shutil.copy2(label, labels / label.name)
    return folder


def _command(site: Path, store: Path, iterations: int) -> List[str]:
    assft = Path(sys.executable).with_name("assft")
    return [
        str(assft),
        "adapt",
        "--images",
        str(site / "images"),
        "--labels",
        str(site / "labels"),
        "--store",
        str(store),
        "--iterations",
        str(iterations),
        "--semi-iterations",
        str(iterations),
        "--no-guard",
        "--quiet",
        "--device",
        "cpu",
    ]


def _run_together(commands: List[List[str]], env: Dict[str, str]) -> List[float]:
    """Start every command at once; the wall seconds of each."""
    start = time.perf_counter()
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for command in commands
    ]
    seconds = []
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"assft adapt failed ({process.returncode}): {err.decode(errors='replace')[-2000:]}")
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=30, help="supervised and semi-supervised steps (30)")
    parser.add_argument("--repeats", type=int, default=2, help="alone / together pairs (2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # the product's own sizing, not the caller's
    for variable in ("ASSFT_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):  # the product's own settings
        env.pop(variable, None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="assft-side-by-side-") as tmp:
        site = _site(Path(tmp) / "site")
        for repeat in range(args.repeats):
            stores = [Path(tmp) / f"store-{repeat}-{k}" for k in range(3)]
            (alone,) = _run_together([_command(site, stores[0], args.iterations)], env)
            together = _run_together([_command(site, s, args.iterations) for s in stores[1:]], env)
            rows.append(
                {
                    "alone_s": round(alone, 2),
                    "together_s": [round(s, 2) for s in together],
                    "ratio": round(max(together) / alone, 3),
                }
            )
            print(
                f"repeat {repeat}: alone {alone:.1f} s, two side by side {together[0]:.1f} / {together[1]:.1f} s, "
                f"ratio {max(together) / alone:.2f}"
            )
    ratios = [row["ratio"] for row in rows]
    result = {
        "benchmark": "side_by_side",
        "cores": len(os.sched_getaffinity(0)),
        "iterations": args.iterations,
        "labelled": LABELLED,
        "rows": rows,
        "ratio_max": max(ratios),
        "ratio_median": sorted(ratios)[len(ratios) // 2],
        "goal": 2.5,
        "machine_note": "run on a quiet machine; other load counts as slowdown",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"max ratio {result['ratio_max']:.2f} (goal <= 2.5); written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
