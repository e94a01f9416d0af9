"""Did the guard's folds divide a patient's frames, and what did that do to the folds' gain? From stored records.

ACDC holds two frames of every patient. Before the guard's folds held a subject's volumes out together
(``ASSFTActive.finetune.guard.assign_folds``), a fold could train on one frame and score the other frame of the same
heart. This reads the guarded harness records made with volume folds (``results/harness/<name>/acdc*/``, all
but :data:`PATIENT_FOLDS`), finds the labelled sets whose
``cross_validation.folds`` put two frames of one patient in different folds, and compares their cross-validated
gain (``activation.gain``) and their gain on the evaluation patients (the adapted model's mean Dice, activated or
not, minus the pool's no-adaptation record) with the other sets. Development sets are counted once per distinct
labelled set (its guarded arms averaged); test records are listed as seen, never used for a choice.

Used by RESULTS.md, "The guard's folds by patient". Writes ``results/guard_fold_patients.{md,json}``:

    .venv/bin/python Testing/Benchmarks/guard_fold_patients.py
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from Testing.Benchmarks.harness.tasks import ANATOMIES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PATIENT = ANATOMIES["acdc"].group
#: Record folders made with the folds by patient (from 2026-12-07 19:02 UTC): their folds cannot divide a patient,
#: so they would only blur the comparison (``test_uniform_divided`` keeps that run's records made before).
PATIENT_FOLDS = ("dev_subjects", "test_uniform")


def divides_a_patient(labelled: Sequence[str], folds: Sequence[Sequence[str]]) -> bool:
    """True when two labelled frames of one patient were held out in different folds."""
    fold_of = {case: index for index, fold in enumerate(folds) for case in fold}
    return any(PATIENT(a) == PATIENT(b) and fold_of[a] != fold_of[b] for a in labelled for b in labelled if a < b)


def guarded_records(harness: Path) -> List[Dict[str, Any]]:
    """One row per guarded ACDC record with its folds: where it is, its set, its two gains, whether it divided."""
    rows = []
    for path in sorted(harness.glob("*/acdc*/*/pool*/*/B*.json")):
        if path.relative_to(harness).parts[0] in PATIENT_FOLDS:
            continue
        record = json.loads(path.read_text())
        activation = record.get("activation") or {}
        folds = (record.get("cross_validation") or {}).get("folds")
        if activation.get("method") != "cross_validation" or not folds:
            continue
        floor = json.loads((path.parent.parent / "floor" / "B0_d0_s0.json").read_text())["mean_dice"]
        adapted = record.get("candidate_mean_dice")
        adapted = record["mean_dice"] if adapted is None else adapted
        rows.append(
            {
                "folder": path.relative_to(harness).parts[0],
                "setting": record["setting"],
                "split": record["split"],
                "budget": record["budget"],
                "pool": record["pool"],
                "arm": record["arm"]["name"],
                "labelled": sorted(record["labelled"]),
                "divided": divides_a_patient(record["labelled"], folds),
                "folds_gain": activation["gain"],
                "evaluation_gain": adapted - floor,
                "activated": bool(record["activated"]),
            }
        )
    return rows


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def summarise(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Per (setting, split, budget): the sets (development: distinct labelled sets, arms averaged; test: records),
    how many divided a patient, and the mean folds' and evaluation gains of both kinds."""
    groups: Dict[tuple, Dict[tuple, List[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        one_set = (row["pool"], tuple(row["labelled"])) if row["split"] == "development" else (row["folder"], id(row))
        groups[(row["setting"], row["split"], row["budget"])][one_set].append(row)
    table = []
    for (setting, split, budget), sets in sorted(groups.items()):
        divided = [s for s in sets.values() if any(r["divided"] for r in s)]
        whole = [s for s in sets.values() if not any(r["divided"] for r in s)]

        def gain(group, key):
            return _mean([float(np.mean([r[key] for r in s])) for s in group])

        table.append(
            {
                "setting": setting,
                "split": split,
                "budget": budget,
                "sets": len(sets),
                "divided": len(divided),
                "divided_activated": sum(any(r["activated"] for r in s) for s in divided),
                "folds_gain_divided": gain(divided, "folds_gain"),
                "folds_gain_not": gain(whole, "folds_gain"),
                "evaluation_gain_divided": gain(divided, "evaluation_gain"),
                "evaluation_gain_not": gain(whole, "evaluation_gain"),
            }
        )
    return table


def markdown(table: Sequence[Mapping[str, Any]]) -> str:
    def f(x: Optional[float]) -> str:
        return "-" if x is None else f"{x:+.3f}"

    lines = [
        "# The guard's folds and ACDC's two frames per patient",
        "",
        "Regenerate: `.venv/bin/python Testing/Benchmarks/guard_fold_patients.py` (reads `results/harness/`).",
        "Development rows count distinct labelled sets (guarded arms averaged); test rows count records (seen only).",
        "",
        "| setting | split | B | sets | folds divided a patient (activated) | folds' gain: divided / not "
        "| evaluation gain: divided / not |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table:
        lines.append(
            f"| {row['setting']} | {row['split']} | {row['budget']} | {row['sets']} | {row['divided']} "
            f"({row['divided_activated']}) | {f(row['folds_gain_divided'])} / {f(row['folds_gain_not'])} "
            f"| {f(row['evaluation_gain_divided'])} / {f(row['evaluation_gain_not'])} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    table = summarise(guarded_records(RESULTS / "harness"))
    text = markdown(table)
    (RESULTS / "guard_fold_patients.md").write_text(text)
    (RESULTS / "guard_fold_patients.json").write_text(json.dumps({"rows": table}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
