"""Write the evidence shown beside "where the model is probably wrong": how well class-balanced ASD predicts error.

Reads committed benchmark JSON (``pool_diagnostics.score_vs_pretrained_error.asd_class_balanced``: Spearman rho of
the score with the pre-trained model's ``1 - Dice`` over a pool, hidden labels) and writes
``ASSFTActive/resources/query/error_predictor.json`` (:class:`ASSFTActive.query.wrong.ErrorEvidence`), which the
ranking copies into ``ranking.json``. Nothing is typed by hand: every number comes from a results file named in the
output.

A results file counts as the development split only when its ``experiment`` says so (``"split": "development"``);
until such a file exists the default inputs are the power profile's runs, measured on the *target pool* of that
profile, and the output says so.

Usage: ``PYTHONPATH=. .venv/bin/python Testing/Benchmarks/error_predictor_evidence.py [--results FILE ...]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Sequence

from ASSFTActive.query.wrong import ERROR_EVIDENCE_FILE, WRONG_SCORE, ErrorEvidence

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent.parent

#: The runs RESULTS.md's "Scores against the pre-trained model's error" reads (hippocampus and ACDC, mild and harsh).
DEFAULT_RESULTS = (
    ("hippocampus mild", "annotation_efficiency_power_mild.json"),
    ("hippocampus harsh", "annotation_efficiency_power_harsh.json"),
    ("ACDC mild", "annotation_efficiency_acdc_power_mild.json"),
    ("ACDC harsh", "annotation_efficiency_acdc_power_harsh.json"),
)


def _split_of(data: dict) -> str:
    experiment = data.get("experiment", {})
    if experiment.get("split") == "development":
        return "development split"
    profile = experiment.get("profile", "?")
    return f"target pool of the {profile} profile, not the development split"


def evidence(files: Sequence[tuple]) -> ErrorEvidence:
    """The :class:`ErrorEvidence` of ``(setting, results path)`` pairs."""
    settings: List[tuple] = []
    splits = set()
    for name, path in files:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        row = data["pool_diagnostics"]["score_vs_pretrained_error"][WRONG_SCORE]
        settings.append((name, float(row["spearman_rho"]), int(row["n"]), str(Path(path).resolve().relative_to(ROOT))))
        splits.add(_split_of(data))
    split = "; ".join(sorted(splits))
    rhos = [rho for _, rho, _, _ in settings]
    span = f"{min(rhos):+.2f}" if len(rhos) == 1 else f"{min(rhos):+.2f} to {max(rhos):+.2f}"
    summary = (
        f"Spearman {span} with the pre-trained model's error (1 - Dice) over {len(settings)} benchmark "
        f"pool{'s' if len(settings) != 1 else ''}; measured on the {split}"
    )
    return ErrorEvidence(score=WRONG_SCORE, split=split, summary=summary, settings=tuple(settings))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results",
        nargs="+",
        metavar="SETTING=FILE",
        help="setting name and results JSON, e.g. 'hippocampus dev=results/x.json' (default: the "
        "four power-profile runs)",
    )
    parser.add_argument("--out", type=Path, default=ERROR_EVIDENCE_FILE)
    args = parser.parse_args(argv)
    if args.results:
        files = []
        for item in args.results:
            name, _, path = item.partition("=")
            if not path:
                parser.error(f"--results {item!r}: write SETTING=FILE")
            files.append((name, Path(path)))
    else:
        files = [(name, RESULTS / file) for name, file in DEFAULT_RESULTS]
    record = evidence(files)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record.to_dict(), indent=2) + "\n", encoding="utf-8")
    for name, rho, n, source in record.settings:
        print(f"{name:<20} rho {rho:+.3f}  n {n:>3}  {source}")
    print(record.summary)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
