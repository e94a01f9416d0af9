"""The README's main job, `assft demo`, runs a whole round on the shipped sample as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_ranks_adapts_evaluates_and_reranks_the_shipped_sample(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ASSFTActive",
            "demo",
            "--out",
            str(out),
            "--budget",
            "2",
            "--iterations",
            "15",
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads((out / "round1" / "ranking.json").read_text())
    proposed = [c["case_id"] for c in first["cases"] if c["selected"]]
    assert len(first["cases"]) == 12 and len(proposed) == 2
    assert f"the shipped labels of {', '.join(proposed)}" in done.stdout
    folder = out / "store" / "hippocampus-unet-adapted"
    assert (folder / "v1" / "card.json").is_file() and "why: " in done.stdout
    activated = "v1 " in done.stdout and "now active" in done.stdout
    assert (folder / "active.json").is_file() == activated, "what the demo says agrees with the store"
    assert "Dice before" in done.stdout and (out / "evaluation.md").is_file()
    second = json.loads((out / "round2" / "ranking.json").read_text())
    assert {c["case_id"] for c in second["cases"] if c["labeled"]} == set(proposed)
    assert not set(proposed) & {c["case_id"] for c in second["cases"] if c["selected"]}
    # re-ranked with the active model: the adapted one (its encoder moved) or, when refused, the pre-trained one
    assert json.loads((out / "round2" / "config.json").read_text())["encoders_identical"] is (not activated)
