"""The default-query choice rule (``Testing.Benchmarks.harness.query_rule``) on summaries with known answers."""

from __future__ import annotations

import json
from typing import Dict, Tuple

import pytest

from Testing.Benchmarks.harness.query_rule import CellGap, QueryRule, apply_rule, cells_from_summaries, markdown

RULE = QueryRule(candidates=("assft", "clasp_pe", "coreset"))


def _cells(gaps: Dict[str, Tuple[float, float]], rule: QueryRule = RULE) -> Dict[Tuple[str, str, int], CellGap]:
    """Every (candidate, setting, budget) of the rule with the candidate's ``(gap, low)`` everywhere."""
    return {
        (c, s, b): CellGap(gap, low, gap + 0.01, 5, "dev")
        for c, (gap, low) in gaps.items()
        for s in rule.settings
        for b in rule.budgets
    }


def test_the_best_weighted_mean_gap_among_qualifying_candidates_wins():
    decision = apply_rule(_cells({"assft": (0.001, -0.005), "clasp_pe": (0.012, 0.0), "coreset": (0.03, -0.02)}), RULE)
    assert decision.default == "clasp_pe" and "highest weighted mean gap" in decision.reason
    verdicts = {v.candidate: v for v in decision.verdicts}
    assert verdicts["coreset"].failed and not verdicts["coreset"].qualifies  # highest gap, but a bound below -0.01
    assert verdicts["clasp_pe"].score == pytest.approx(0.012)


def test_heterogeneous_settings_weigh_twice():
    cells = _cells({"assft": (0.0, -0.005), "clasp_pe": (0.0, -0.005), "coreset": (0.0, -0.02)})
    for b in RULE.budgets:
        cells[("clasp_pe", "acdc_path", b)] = CellGap(0.016, 0.0, 0.03, 5, "dev2")
    # (2 x 0.016) / (4 x 1 + 2 x 2) = 0.004: a tie with assft's 0, so today's default stays
    decision = apply_rule(cells, RULE)
    assert {v.candidate: v.score for v in decision.verdicts}["clasp_pe"] == pytest.approx(0.004)
    assert decision.default == "assft" and "tie goes to 'assft'" in decision.reason
    for b in RULE.budgets:
        cells[("clasp_pe", "acdc_path", b)] = CellGap(0.024, 0.0, 0.03, 5, "dev2")  # 0.006: beyond the tie
    assert apply_rule(cells, RULE).default == "clasp_pe"


def test_a_tie_without_todays_default_goes_to_the_one_without_an_extra_pass():
    rule = QueryRule(candidates=("assft", "clasp_pe", "coreset"), extra_pass=("coreset",))
    cells = _cells({"assft": (0.0, -0.02), "clasp_pe": (0.010, 0.0), "coreset": (0.012, 0.0)}, rule)
    assert apply_rule(cells, rule).default == "clasp_pe"
    assert apply_rule(cells, RULE).default == "coreset"  # no extra pass anywhere: the best of the tie


def test_no_qualifying_candidate_keeps_todays_default():
    decision = apply_rule(_cells({"assft": (0.0, -0.02), "clasp_pe": (0.01, -0.011), "coreset": (0.02, -0.03)}), RULE)
    assert decision.default == "assft" and "no candidate qualifies" in decision.reason


def test_a_missing_cell_of_a_candidate_not_yet_failed_decides_nothing():
    cells = _cells({"assft": (0.0, -0.005), "clasp_pe": (0.012, 0.0), "coreset": (0.03, -0.02)})
    del cells[("clasp_pe", "hippocampus_mild", 4)]
    del cells[("coreset", "acdc_mild", 2)]  # coreset already fails elsewhere: its gaps do not hold the rule up
    decision = apply_rule(cells, RULE)
    assert decision.default is None
    assert "clasp_pe (B = 4: hippocampus_mild)" in decision.reason and "coreset" not in decision.reason
    assert {v.candidate: v.score for v in decision.verdicts}["clasp_pe"] is None
    text = markdown(decision, RULE)
    assert "**fails**" in text and "not yet failed" in text and "**Decision:** not decided" in text


def _summary(setting: str, split: str, arms: Dict[str, dict]) -> dict:
    return {f"{setting}/{split}": {"setting": setting, "split": split, "budgets": {"2": {"arms": arms}}}}


def _gap(gap: float, pools: int = 5) -> dict:
    return {"gap_vs_random": {"gap": gap, "ci_low": gap - 0.01, "ci_high": gap + 0.01, "pools": pools}}


def test_cells_come_from_the_development_split_complete_arms_and_the_first_source():
    dev2 = _summary("acdc_path", "development", {"assft": _gap(0.002), "clasp_pe": {"mean": 0.7, "incomplete": True}})
    dev = _summary("acdc_path", "development", {"assft": _gap(-0.05), "clasp_pe": _gap(0.009), "coreset": _gap(0.1, 3)})
    test = _summary("acdc_mild", "test", {"assft": _gap(0.5)})
    cells = cells_from_summaries([("dev2", dev2), ("dev", {**dev, **test})], RULE)
    assert cells[("assft", "acdc_path", 2)] == CellGap(0.002, -0.008, 0.012, 5, "dev2")  # the first source wins
    assert cells[("clasp_pe", "acdc_path", 2)].source == "dev"  # dev2's is incomplete
    assert ("coreset", "acdc_path", 2) not in cells  # 3 pools, the rule needs 5
    assert not any(s == "acdc_mild" for _, s, _ in cells)  # the test split never counts


def test_the_rule_command_writes_its_table_and_decision(tmp_path, monkeypatch):
    from Testing.Benchmarks.harness import __main__ as cli
    from Testing.Benchmarks.harness import report, runner

    summary = _summary("acdc_path", "development", {"assft": _gap(0.002), "clasp_pe": _gap(0.009)})
    monkeypatch.setattr(runner, "load_records", lambda root: [root.name])  # the report's own summary is tested apart
    monkeypatch.setattr(report, "summarise", lambda records: summary if records == ["dev2"] else {})
    assert cli.main(["rule", "--names", "dev2", "--records", str(tmp_path), "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "query_rule.json").read_text())
    assert data["default"] is None and data["reason"].startswith("not decided")
    assert {(c["candidate"], c["setting"], c["budget"]) for c in data["cells"]} == {
        ("assft", "acdc_path", 2),
        ("clasp_pe", "acdc_path", 2),
    }
    assert "| `clasp_pe` |" in (tmp_path / "query_rule.md").read_text()
