"""Should a failing model's folds need only not lose? The rule of RESULTS.md judged from stored guarded records.

The guard asks every cross-validation fold to gain ``validation.min_fold_gain`` (+0.02). Where the current model
fails on the user's labelled volumes (its cross-validated Dice there, the guard's step 0, is below ``failing_dice``
``D``), the candidates ask only ``failing_min_fold_gain`` ``g`` of every fold (:class:`Candidate`). The decision
is a pure function of a record's folds, its ``dice_before`` and its pool check, so every candidate is judged from
the same records by the guard calibration (:mod:`ASSFTActive.finetune.guard_calibration`); the model a record
trained does not depend on the rule. Its gain on the evaluation cases: the adapted model's mean Dice there,
activated or not, minus the pool's no-adaptation record.

The choice (RESULTS.md, "The rule that decides whether a failing model's folds need only not lose", steps 3-4) is
made on the development records alone (:data:`DEVELOPMENT`); the test records (:data:`TEST`) are judged under the
chosen rule and reported, never used for the choice. Writes ``results/guard_failing_model.{md,json}``:

    .venv/bin/python Testing/Benchmarks/guard_failing_model.py
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ASSFTActive.finetune.config import ValidationConfig  # noqa: E402
from ASSFTActive.finetune.guard import GuardRule  # noqa: E402
from ASSFTActive.finetune.guard_calibration import CalibrationRecord, calibrate, read_records  # noqa: E402
from Testing.Benchmarks.harness.guard_report import FALSE_ACTIVATION_MARGIN, FALSE_REFUSAL_MARGIN  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: The guard's rule today (``min_gain`` 0.005, every fold +0.02).
TODAY = GuardRule.of(ValidationConfig())
#: The development records the rule judges: (record folder, setting, arm), each the default guard of its time.
#: ``dev_budget``'s ACDC-Path pool 1 comes from ``dev_subjects`` (the same sets with the folds by patient).
DEVELOPMENT = (
    ("dev", "acdc_path", "random_guarded"),
    ("dev2", "acdc_path", "random_guarded"),
    ("dev_budget", "acdc_path", "random_guarded_budget15"),
    ("dev_subjects", "acdc_path", "random_guarded_budget15"),
    ("dev", "hippocampus_multisite", "random_guarded"),
    ("dev_budget", "hippocampus_multisite", "random_guarded_budget2"),
    ("dev_uniform", "acdc_mild", "random_guarded_budget15"),
    ("dev_uniform", "acdc_harsh", "random_guarded_budget15"),
)
#: Replaced by another folder's records of the same sets: (folder, setting, pool) -> the folder that replaces it.
REPLACED = {("dev_budget", "acdc_path", 1): "dev_subjects"}
#: Test records judged under the chosen rule (seen: their outcomes were known when the rule was written, except
#: the draws the rule's step 5 runs afterwards).
TEST = (
    ("test_guard2", "acdc_path", "random_guarded"),
    ("test_guard2", "hippocampus_multisite", "random_guarded"),
    ("test_guard4", "acdc_path", "random_guarded_budget15"),
    ("test_guard4", "hippocampus_multisite", "random_guarded_budget2"),
    ("test_uniform", "acdc_mild", "random_guarded_budget15"),
    ("test_uniform", "acdc_harsh", "random_guarded_budget15"),
)
#: Step 3's limit on hippocampus false refusals.
MAX_HIPPOCAMPUS_FALSE_REFUSAL = 0.2


def read_sets(harness: Path, groups: Sequence[Tuple[str, str, str]]) -> List[CalibrationRecord]:
    """The guarded records of ``groups`` under ``harness`` as the guard calibration reads them (records without
    cross-validation are left out: with one subject or one volume no rule can activate)."""
    out = []
    for folder, setting, arm in groups:
        for path in sorted((harness / folder / setting).glob(f"*/pool*/{arm}/B*.json")):
            record = json.loads(path.read_text())
            if REPLACED.get((folder, setting, record["pool"])):
                continue
            activation = record.get("activation") or {}
            if activation.get("method") != "cross_validation":
                continue
            floor = json.loads((path.parent.parent / "floor" / "B0_d0_s0.json").read_text())["mean_dice"]
            adapted = record.get("candidate_mean_dice")
            adapted = record["mean_dice"] if adapted is None else adapted
            item = {
                "setting": setting,
                "budget": record["budget"],
                "set": f"{folder}/pool{record['pool']}/d{record['draw']}",
                "activation": activation,
                "test_gain": adapted - floor,
            }
            out += read_records({"sets": [item]})
    return out


@dataclass(frozen=True)
class Candidate:
    """Today's guard (``min_gain`` 0.005, every fold +0.02), except that a set whose current model's cross-validated
    Dice is below ``failing_dice`` is judged with every fold needing only ``failing_min_fold_gain``; ``None`` =
    today's rule. Kept here, not in the guard: no candidate was adopted (RESULTS.md)."""

    failing_dice: Optional[float] = None
    failing_min_fold_gain: Optional[float] = None

    def rules(self) -> Tuple[GuardRule, GuardRule]:
        """The rule for a model that does well, and the one for a failing model."""
        return TODAY, replace(TODAY, min_fold_gain=self.failing_min_fold_gain)

    def fails(self, record: CalibrationRecord) -> bool:
        return self.failing_dice is not None and record.dice_before < self.failing_dice

    def activated(self, record: CalibrationRecord) -> bool:
        return record.activated(self.rules()[self.fails(record)])

    def name(self) -> str:
        if self.failing_dice is None:
            return "today (every fold +0.02)"
        return f"D {self.failing_dice:.1f}, g {self.failing_min_fold_gain:+.2f}"


#: The rule's candidates: ``failing_dice`` D with ``failing_min_fold_gain`` g; first, today's rule.
CANDIDATES: Tuple[Candidate, ...] = (Candidate(), *(Candidate(d, g) for d in (0.4, 0.5, 0.6) for g in (0.0, -0.01)))


def tally(sets: Sequence[CalibrationRecord], candidate: Candidate) -> Dict[str, Any]:
    """The calibration's counts (:func:`~ASSFTActive.finetune.guard_calibration.calibrate`: false activation =
    activated and worse than no adaptation by > 0.01, false refusal = refused and better by > 0.02), summed over the
    sets of a model that does well and of a failing one (each judged by its rule), and the worst activated model."""
    keys = ("sets", "activated", "worse_sets", "false_activations", "better_sets", "false_refusals")
    total = dict.fromkeys(keys, 0)
    for failing, rule in zip((False, True), candidate.rules()):
        group = [s for s in sets if candidate.fails(s) == failing]
        if group:
            counts = calibrate(group, rule, FALSE_ACTIVATION_MARGIN, FALSE_REFUSAL_MARGIN)
            total = {k: total[k] + counts[k] for k in keys}
    return {
        "sets": total["sets"],
        "activated": total["activated"],
        "worse": total["worse_sets"],
        "false_activations": total["false_activations"],
        "better": total["better_sets"],
        "false_refusals": total["false_refusals"],
        "worst_active_gain": min((s.test_gain for s in sets if candidate.activated(s)), default=None),
    }


def cells(sets: Sequence[CalibrationRecord]) -> Dict[str, List[CalibrationRecord]]:
    """The sets per ``setting B=budget`` (the rows of the tables)."""
    out: Dict[str, List[CalibrationRecord]] = {}
    for s in sorted(sets, key=lambda s: (s.setting, s.budget)):
        out.setdefault(f"{s.setting} B={s.budget}", []).append(s)
    return out


def choose(development: Sequence[CalibrationRecord]) -> Dict[str, Any]:
    """Steps 3-4 of the rule: the eligible candidates (no development false activation; at most 20 % of the
    hippocampus sets better by > 0.02 refused) and the chosen one (most activations; ties to the smaller ``D``, then
    the larger ``g``); today's rule stays unless a candidate activates more."""
    hippocampus = [s for s in development if s.setting.startswith("hippocampus")]
    rows = []
    for candidate in CANDIDATES:
        overall, hippo = tally(development, candidate), tally(hippocampus, candidate)
        refusal = hippo["false_refusals"] / hippo["better"] if hippo["better"] else 0.0
        eligible = overall["false_activations"] == 0 and refusal <= MAX_HIPPOCAMPUS_FALSE_REFUSAL
        rows.append({**asdict(candidate), "eligible": eligible, **overall})
    today = rows[0]
    eligible = [r for r in rows[1:] if r["eligible"] and r["activated"] > today["activated"]]
    eligible.sort(key=lambda r: (-r["activated"], r["failing_dice"], -r["failing_min_fold_gain"]))
    chosen = eligible[0] if eligible else today
    return {"candidates": rows, "chosen": {k: chosen[k] for k in ("failing_dice", "failing_min_fold_gain")}}


def markdown(decision: Mapping[str, Any], dev: Sequence[CalibrationRecord], test: Sequence[CalibrationRecord]) -> str:
    def f(x: Optional[float]) -> str:
        return "-" if x is None else f"{x:+.3f}"

    lines = [
        "# A failing model's folds: the candidates judged from the stored guarded records",
        "",
        "Regenerate: `.venv/bin/python Testing/Benchmarks/guard_failing_model.py` (reads `results/harness/`).",
        'The rule: RESULTS.md, "The rule that decides whether a failing model\'s folds need only not lose".',
        "Every row counts records; false activation = activated and worse than no adaptation by > 0.01;",
        "false refusal = refused and better by > 0.02.",
        "",
        "## Development split: the choice",
        "",
        "| candidate | eligible | activated | false activations | false refusals |",
        "|---|---|---|---|---|",
    ]
    for row in decision["candidates"]:
        name = Candidate(row["failing_dice"], row["failing_min_fold_gain"]).name()
        lines.append(
            f"| {name} | {'yes' if row['eligible'] else 'no'} "
            f"| {row['activated']} of {row['sets']} | {row['false_activations']} of {row['worse']} "
            f"| {row['false_refusals']} of {row['better']} |"
        )
    chosen = Candidate(**decision["chosen"])
    lines += ["", f"**Chosen: {chosen.name()}.**", ""]
    # beside today's rule: the chosen candidate, or (today's kept) the loosest, to show what the family would do
    other = chosen if chosen != Candidate() else CANDIDATES[-1]
    label = "chosen" if other == chosen else other.name()
    parts = (("Development split, per setting", dev), ("Test split, per setting (judged, not chosen on)", test))
    for title, sets in parts:
        lines += [
            f"## {title}",
            "",
            f"Each pair: today's rule / {label}.",
            "",
            "| setting | records | current model's CV Dice (min-max) | activated | false activations "
            "| false refusals | worst active model minus no adaptation |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, group in cells(sets).items():
            a, b = tally(group, Candidate()), tally(group, other)
            before = [s.dice_before for s in group]
            lines.append(
                f"| {name} | {len(group)} | {min(before):.2f}-{max(before):.2f} "
                f"| {a['activated']} / {b['activated']} "
                f"| {a['false_activations']} / {b['false_activations']} of {a['worse']} "
                f"| {a['false_refusals']} / {b['false_refusals']} of {a['better']} "
                f"| {f(a['worst_active_gain'])} / {f(b['worst_active_gain'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    harness = RESULTS / "harness"
    dev, test = read_sets(harness, DEVELOPMENT), read_sets(harness, TEST)
    decision = choose(dev)
    text = markdown(decision, dev, test)
    (RESULTS / "guard_failing_model.md").write_text(text)
    payload = {
        **decision,
        "development": [asdict(s) for s in dev],
        "test": [asdict(s) for s in test],
    }
    (RESULTS / "guard_failing_model.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
