"""The harness's runner and report without training: units planned per profile, one record per unit written
atomically, a rerun that skips what exists (resume), arms naming any QueryConfig strategy, the report's statistics
and goal rows from hand-made records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from Testing.Benchmarks.harness import arms, guard_report, recipe_report, report, runner, tasks
from Testing.Benchmarks.harness import work as harness_work


def fake_task(unit, profile):
    setting = tasks.SETTINGS[unit.setting]
    return tasks.Task(
        setting=setting,
        split=unit.split,
        replicate=unit.pool,
        pool=("a", "b", "c", "d"),
        eval=("x1", "x2", "x3"),
        model="default",
        data=Path("/nowhere"),
    )


def fake_execute(calls):
    def execute(task, unit, work):
        calls.append(unit.key)
        base = {"floor": 0.5, "random": 0.6 + 0.01 * unit.draw, "assft": 0.66}.get(unit.arm.name, 0.7)
        dice = {c: [base + 0.01 * i, base + 0.01 * i] for i, c in enumerate(task.eval)}
        return {
            "labelled": list(task.pool[: unit.budget]),
            "per_case": dice,
            "mean_dice": base + 0.01,
            "activated": True,
        }

    return execute


PROFILE = runner.Profile(
    settings=("hippocampus_mild",),
    split="development",
    pools=2,
    budgets=(2,),
    arms=("random", "assft"),
    draws=3,
    ceiling_steps=(4, 8),
)


def _one_pool_profile(arms, draws: int) -> runner.Profile:
    """Hippocampus mild, development split, one pool, B = 2, no ceiling: the guard and recipe tests' profile."""
    return runner.Profile(
        settings=("hippocampus_mild",),
        split="development",
        pools=1,
        budgets=(2,),
        arms=tuple(arms),
        draws=draws,
        ceiling_steps=(),
    )


def test_the_plan_has_a_floor_every_draw_and_the_ceiling_steps_per_pool():
    units = runner.plan(PROFILE)
    keys = [u.key for u in units]
    assert len(keys) == len(set(keys)) == 2 * (1 + 3 + 1 + 2)
    assert "hippocampus_mild/development/pool1/random/B2_d2_s0" in keys
    assert "hippocampus_mild/development/pool0/ceiling_8/B0_d0_s0" in keys
    ceiling = next(u.arm for u in units if u.arm.name == "ceiling_8")
    assert dict(ceiling.finetune) == {"train.iterations": 4, "semi_iterations": 4} and ceiling.whole_pool


def test_the_default_random_distribution_has_30_subsets_at_b2_and_15_at_b4():
    assert arms.ARMS["random"].draws(2) == 30 and arms.ARMS["random"].draws(4) == 15
    assert arms.ARMS["coreset"].draws(2) == 1
    units = runner.plan(runner.PROFILES["development"], settings=["acdc_mild"], pools=[0], arms=["random"])
    assert sum(u.budget == 2 for u in units) == 30 and sum(u.budget == 4 for u in units) == 15


def test_a_budget_filter_keeps_the_floor_and_drops_the_ceiling_unless_zero_is_named():
    profile = runner.PROFILES["development"]
    only_two = runner.plan(profile, settings=["acdc_mild"], pools=[0], arms=["random", "assft"], budgets=[2])
    assert {(u.arm.name, u.budget) for u in only_two} == {("floor", 0), ("random", 2), ("assft", 2)}
    assert sum(u.arm.name == "random" for u in only_two) == 30
    with_ceiling = runner.plan(profile, settings=["acdc_mild"], pools=[0], arms=["assft"], budgets=[0, 4])
    assert {u.arm.name for u in with_ceiling if u.budget == 0} == {"floor", "ceiling_120", "ceiling_400", "ceiling_800"}
    everything = {u.key for u in runner.plan(profile, settings=["acdc_mild"], pools=[0], arms=["random", "assft"])}
    assert {u.key for u in only_two} <= everything, "a filtered run writes the profile's own records"


def test_a_budget_the_profile_does_not_list_is_run_not_dropped():
    profile = runner.PROFILES["test"]
    assert 8 not in profile.budgets
    units = runner.plan(profile, settings=["acdc_path"], pools=[0], arms=["random"], budgets=[8], draws=2)
    assert [(u.arm.name, u.budget, u.draw) for u in units] == [("floor", 0, 0), ("random", 8, 0), ("random", 8, 1)]
    with pytest.raises(ValueError, match="budgets must be"):
        runner.plan(profile, settings=["acdc_path"], pools=[0], arms=["random"], budgets=[-1])


def test_a_rerun_skips_every_record_that_exists_and_computes_only_the_missing(tmp_path):
    units = runner.plan(PROFILE)
    calls = []
    first = runner.run(units, tmp_path, PROFILE, execute=fake_execute(calls), task_of=fake_task, log=lambda _: None)
    assert first.done == len(units) and first.skipped == 0 and len(calls) == len(units)
    record = json.loads(units[1].path(tmp_path).read_text())
    assert record["key"] == units[1].key and record["eval_cases"] == ["x1", "x2", "x3"]
    # a killed run: one record missing, one half-written temporary file left beside it
    units[3].path(tmp_path).unlink()
    (units[3].path(tmp_path).parent / f".{units[3].path(tmp_path).name}.tmp").write_text("{")
    calls.clear()
    again = runner.run(units, tmp_path, PROFILE, execute=fake_execute(calls), task_of=fake_task, log=lambda _: None)
    assert calls == [units[3].key] and again.done == 1 and again.skipped == len(units) - 1
    assert len(runner.load_records(tmp_path)) == len(units)


def test_a_failed_unit_leaves_no_record_and_the_next_run_retries_it(tmp_path):
    units = runner.plan(PROFILE)[:2]

    def failing(task, unit, work):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        runner.run(units, tmp_path, PROFILE, execute=failing, task_of=fake_task, log=lambda _: None)
    assert not list(tmp_path.rglob("*.json"))


def test_arms_name_any_query_strategy_with_fields():
    arm = arms.parse_arm("strategy=typicality")
    assert arm.name == "typicality" and dict(arm.query) == {"strategy": "typicality"} and not arm.seeded
    named = arms.parse_arm("cb:strategy=assft,asd_reduce=class_balanced,dkd_weight=0.3")
    assert named.name == "cb" and dict(named.query) == {
        "strategy": "assft",
        "asd_reduce": "class_balanced",
        "dkd_weight": 0.3,
    }
    assert arms.parse_arm("strategy=random").seeded
    noised = arms.parse_arm("strategy=clasp_pe,seeded=true,guard=true")
    assert noised.seeded and noised.guard and dict(noised.query) == {"strategy": "clasp_pe"}
    assert noised.name == "clasp_pe_guard-True", "a guarded arm must not share the unguarded arm's records"
    assert noised.draws(2) == arms.SEEDED_DRAWS and noised.draws(2, override=7) == 7
    with pytest.raises(ValueError, match="unknown arm"):
        arms.parse_arm("typicality")
    with pytest.raises(ValueError, match="no strategy"):
        arms.parse_arm("dkd_weight=0.3")


def test_an_arm_overrides_the_recipe_with_finetune_fields_and_is_named_apart():
    fast = arms.parse_arm("strategy=random,guard=true,finetune.validation.fold_fraction=0.34")
    assert fast.guard and fast.seeded and dict(fast.query) == {"strategy": "random"}
    assert dict(fast.finetune) == {"validation.fold_fraction": 0.34}
    assert fast.name not in ("random", arms.parse_arm("strategy=random,guard=true").name)
    assert harness_work.finetune_config(fast, seed=0).validation.fold_fraction == 0.34
    whole = arms.parse_arm("strategy=random,guard=true,finetune.validation.fold_budget=null,finetune.pseudo.mode=none")
    assert harness_work.finetune_config(whole, seed=0).validation.fold_budget is None, "null: no fold budget"
    assert harness_work.finetune_config(whole, seed=0).pseudo.mode.value == "none", "none stays a setting's value"
    assert harness_work.finetune_config(fast, seed=0).validation.guard
    typo = arms.parse_arm("strategy=random,finetune.validation.fold_fractoin=0.3")
    with pytest.raises(ValueError, match="fold_fractoin"):
        harness_work.finetune_config(typo, seed=0)


def test_a_draw_filter_keeps_the_first_draws_of_seeded_arms_only():
    profile = runner.PROFILES["development"]
    units = runner.plan(profile, settings=["acdc_mild"], pools=[0], arms=["random", "assft"], budgets=[2], draws=10)
    assert sorted(u.draw for u in units if u.arm.name == "random") == list(range(10))
    assert {u.arm.name for u in units} == {"floor", "random", "assft"}


def test_the_report_places_the_default_in_the_random_distribution_and_writes_goal_rows(tmp_path):
    units = runner.plan(PROFILE)
    runner.run(units, tmp_path / "records", PROFILE, execute=fake_execute([]), task_of=fake_task, log=lambda _: None)
    summary = report.summarise(runner.load_records(tmp_path / "records"))
    entry = summary["hippocampus_mild/development"]
    row = entry["budgets"]["2"]
    assert row["random"]["subsets_per_pool"] == [3, 3]
    assert row["random"]["best_gain"] == pytest.approx(0.01)  # draws 0.60, 0.61, 0.62 (+ case offsets)
    assisted = row["arms"]["assft"]
    assert assisted["gap_vs_random"]["gap"] == pytest.approx(0.05)
    assert assisted["random_percentile"] == 100.0
    assert assisted["headroom_captured"] == pytest.approx(5.0)
    assert entry["floor"] == pytest.approx(0.51)
    assert entry["ceiling"]["by_steps"] == {"4": pytest.approx(0.71), "8": pytest.approx(0.71)}
    assert entry["ceiling"]["flat_at"] == 4 and entry["ceiling"]["converged"]
    goals = tmp_path / "goals.json"
    goals.write_text(
        json.dumps(
            {"rows": [{"topic": "adapt", "goal": "other", "setting": "s", "budget": 2, "split": "dev", "value": 1.0}]}
        )
    )
    report.merge_goal_rows(goals, report.goal_rows(summary, "assft", "src.json", "abc"))
    report.merge_goal_rows(goals, report.goal_rows(summary, "assft", "src.json", "abc"))  # merged by key, no dup
    rows = json.loads(goals.read_text())["rows"]
    mine = {r["goal"]: r for r in rows if r["topic"] == "query"}
    assert set(mine) == {"gap_vs_random", "random_percentile", "headroom_captured"}
    assert mine["gap_vs_random"]["split"] == "dev" and mine["gap_vs_random"]["value"] == pytest.approx(0.05)
    assert any(r["topic"] == "adapt" for r in rows) and len(rows) == 4


def test_a_heterogeneous_setting_reports_its_worst_group_and_the_best_baseline(tmp_path):
    profile = runner.Profile(
        settings=("hippocampus_multisite",),
        split="development",
        pools=2,
        budgets=(2,),
        arms=("random", "coreset", "assft"),
        draws=3,
        ceiling_steps=(),
    )

    def task_of(unit, profile):
        setting = tasks.SETTINGS[unit.setting]
        cases = tuple(f"hippocampus_{i:03d}" for i in range(40))
        return tasks.Task(
            setting=setting,
            split=unit.split,
            replicate=unit.pool,
            pool=("a", "b", "c"),
            eval=cases,
            model="default",
            data=Path("/nowhere"),
        )

    def execute(task, unit, work):
        worst = task.setting.sites[-1].name  # the source model fails at one site; the default query fixes it
        dice = {}
        for c in task.eval:
            hard = task.setting.group_of(c) == worst
            base = {
                "floor": 0.3 if hard else 0.7,
                "random": 0.4 if hard else 0.75,
                "coreset": 0.42 if hard else 0.75,
                "assft": 0.5 if hard else 0.76,
            }[unit.arm.name]
            dice[c] = [base + 0.01 * unit.draw]
        return {"labelled": [], "per_case": dice, "mean_dice": 0.0}

    runner.run(runner.plan(profile), tmp_path, profile, execute=execute, task_of=task_of, log=lambda _: None)
    entry = report.summarise(runner.load_records(tmp_path))["hippocampus_multisite/development"]
    assert entry["worst_group"] == tasks.SETTINGS["hippocampus_multisite"].sites[-1].name
    assisted = entry["budgets"]["2"]["arms"]["assft"]
    assert assisted["worst_group_gap_vs_random"]["gap"] == pytest.approx(0.09)  # 0.5 vs random's 0.41 draw mean
    assert assisted["gap_vs_best_baseline"]["baseline"] == "coreset"
    rows = {r["goal"]: r for r in report.goal_rows({"e": entry}, "assft", "s.json", "abc")}
    assert rows["hetero_worst_group_gap_vs_random"]["value"] == pytest.approx(0.09)
    assert rows["hetero_worst_group_gap_vs_random"]["target"] == 0.05
    assert {"hetero_mean_gap_vs_random", "gap_vs_best_baseline"} <= set(rows)
    entry["pools"] = entry["pools"] + [max(entry["pools"]) + 1]  # a pool whose budget has not run yet: no row
    assert report.goal_rows({"e": entry}, "assft", "s.json", "abc") == []


def test_the_report_command_regenerates_the_table_from_records_alone(tmp_path):
    from Testing.Benchmarks.harness.__main__ import main

    runner.run(
        runner.plan(PROFILE),
        tmp_path / "runs" / "r",
        PROFILE,
        execute=fake_execute([]),
        task_of=fake_task,
        log=lambda _: None,
    )
    out = tmp_path / "out"
    assert (
        main(["report", "--name", "r", "--records", str(tmp_path / "runs"), "--out-dir", str(out), "--goals", ""]) == 0
    )
    assert (out / "harness_r.md").read_text().count("| assft |") == 1
    assert (out / "harness_r_hippocampus_mild_development.png").is_file()
    assert not list(tmp_path.rglob("goals.json"))  # --goals '' writes no rows
    goals = tmp_path / "goals.json"
    assert (
        main(
            [
                "report",
                "--name",
                "r",
                "--records",
                str(tmp_path / "runs"),
                "--out-dir",
                str(out),
                "--goals",
                str(goals),
                "--default-arm",
                "random",
            ]
        )
        == 0
    )
    assert (out / "harness_r_random.md").is_file()  # another default arm, another file


def test_the_guard_calibration_scores_a_refused_model_so_a_false_refusal_is_counted(tmp_path):
    """A refused record's own Dice is the source model's; its candidate's Dice decides false refusal / activation."""
    profile = _one_pool_profile(("assft_guarded",), draws=1)
    verdicts = iter([False, True])  # budget 2 draw 0 refused; then (second run) activated

    def execute(task, unit, work):
        floor_dice = {c: [0.5] for c in task.eval}
        if unit.arm.name == "floor":
            return {"labelled": [], "per_case": floor_dice, "mean_dice": 0.5, "activated": False}
        activated = next(verdicts)
        candidate = {c: [0.56] for c in task.eval}  # better than the floor by 0.06
        record = {"labelled": ["a", "b"], "activated": activated, "activation": {"method": "cross_validation"}}
        if activated:
            return {**record, "per_case": candidate, "mean_dice": 0.56}
        return {**record, "per_case": floor_dice, "mean_dice": 0.5, "candidate_per_case": candidate}

    runner.run(runner.plan(profile), tmp_path, profile, execute=execute, task_of=fake_task, log=lambda _: None)
    (row,) = report.summarise(runner.load_records(tmp_path))["hippocampus_mild/development"]["guarded"]
    assert row["activated"] is False
    assert row["test_gain_over_floor"] == pytest.approx(0.0)
    assert row["candidate_gain_over_floor"] == pytest.approx(0.06)
    assert row["false_refusal"] and not row["false_activation"]
    text = report.markdown(report.summarise(runner.load_records(tmp_path)), "t", "c")
    assert "false refusals (better by > 0.02 yet refused) 1 / 1" in text


def test_guarded_arms_are_judged_again_under_fold_limits_and_compared_on_the_same_labelled_sets(tmp_path):
    """Two guarded arms on the same draws: each has its own calibration line and rule table (a fold that lost 0.2
    is activated without a fold limit and refused when every fold must reach -0.1), their agreement is counted,
    and ``write`` leaves the sets in the guard calibration's input format."""
    from ASSFTActive.finetune.guard_calibration import read_records

    profile = _one_pool_profile(("full:strategy=random,guard=true", "short:strategy=random,guard=true"), draws=2)

    def execute(task, unit, work):
        floor_dice = {c: [0.5] for c in task.eval}
        if unit.arm.name == "floor":
            return {"labelled": [], "per_case": floor_dice, "mean_dice": 0.5, "activated": False}
        # draw 0: fold 'b' lost 0.2 but the mean gained 0.05; the model is worse on the evaluation cases (0.45)
        # draw 1: both folds gained 0.05; the model is better (0.6). 'short' refuses draw 1 (a false refusal).
        after = {"a": 0.8, "b": 0.3} if unit.draw == 0 else {"a": 0.55, "b": 0.55}
        cv = {"steps": [0, 25], "dice": {"a": [0.5, after["a"]], "b": [0.5, after["b"]]}, "folds": [["a"], ["b"]]}
        activated = not (unit.arm.name == "short" and unit.draw == 1)
        test = {c: [0.45 if unit.draw == 0 else 0.6] for c in task.eval}
        record = {"labelled": ["a", "b"], "activated": activated, "cross_validation": cv}
        record["activation"] = {"method": "cross_validation", "stop_step": 25}
        if activated:
            return {**record, "per_case": test, "mean_dice": 0.5}
        return {**record, "per_case": floor_dice, "mean_dice": 0.5, "candidate_per_case": test}

    runner.run(runner.plan(profile), tmp_path, profile, execute=execute, task_of=fake_task, log=lambda _: None)
    summary = report.summarise(runner.load_records(tmp_path))
    text = report.markdown(summary, "t", "c")
    assert "`full`, B = 2, 2 guarded labelled sets (1 distinct): activated 2; false activations" in text
    assert "yet active) 1 / 2" in text.split("`full`, B = 2, 2 guarded")[1].split("\n")[0]
    assert "| 0.005 | none | 2 / 2 | 1 / 1 | 0 / 1 |" in text
    assert "| 0.005 | -0.1 | 1 / 2 | 0 / 1 | 0 / 1 |" in text, "the fold that lost 0.2 is refused at -0.1"
    assert "| 0.01 | +0.02 | 1 / 2 | 0 / 1 | 0 / 1 |" in text, "every min_gain is crossed with every fold limit"
    assert "Spearman of the cross-validated mean gain with the evaluation-case gain - (too few" in text
    assert "`full` and `short` decided alike on 1 of 2 shared labelled sets." in text

    rows = {(r["setting"], r["goal"]): r for r in guard_report.guard_goal_rows(summary, "s.json", "abc")}
    assert rows[("hippocampus_mild:full", "false_activation_rate")]["value"] == 1.0
    assert rows[("hippocampus_mild:short", "false_refusal_rate")]["value"] == 1.0
    assert rows[("hippocampus_mild:full", "false_refusal_rate")]["count"] == "0 / 1"
    assert rows[("hippocampus_mild:full", "false_activation_rate")]["split"] == "dev"
    assert rows[("hippocampus_mild:full", "worst_set_gap_vs_floor")]["value"] == pytest.approx(-0.05)
    assert rows[("hippocampus_mild:short", "worst_set_gap_vs_floor")]["value"] == pytest.approx(-0.05), "draw 0"

    out = tmp_path / "out"
    result = report.write(tmp_path, out / "harness_g", goals=None)
    sets = json.loads((out / "harness_g_guard_sets.json").read_text())["sets"]
    assert result["guard_sets"].endswith("harness_g_guard_sets.json") and len(sets) == 4
    records = read_records({"sets": sets})
    worse = [r for r in records if r.labelled_set == "full/pool0/d0_s0"]
    assert worse[0].fold_gains == pytest.approx((0.3, -0.2)) and worse[0].test_gain == pytest.approx(-0.05)


def test_the_guard_cost_is_the_ratio_to_the_unguarded_run_of_the_same_query_on_the_same_labelled_sets(tmp_path):
    profile = _one_pool_profile(
        ("random", "g:strategy=random,guard=true,finetune.validation.fold_fraction=0.5"), draws=2
    )

    def execute(task, unit, work):
        dice = {c: [0.5] for c in task.eval}
        body = {"labelled": [task.pool[unit.draw], task.pool[2]], "per_case": dice, "mean_dice": 0.5}
        if unit.arm.name == "floor":
            return {**body, "labelled": [], "activated": False}
        if unit.arm.name == "random":
            return {**body, "activated": True, "train_seconds": 100.0}
        cv = {"steps": [0, 25], "dice": {"a": [0.5, 0.6], "b": [0.5, 0.6]}, "folds": [["a"], ["b"]]}
        activation = {"method": "cross_validation", "stop_step": 25}
        return {**body, "activated": True, "train_seconds": 150.0, "cross_validation": cv, "activation": activation}

    runner.run(runner.plan(profile), tmp_path, profile, execute=execute, task_of=fake_task, log=lambda _: None)
    summary = report.summarise(runner.load_records(tmp_path))
    assert [g["unguarded_train_seconds"] for g in summary["hippocampus_mild/development"]["guarded"]] == [100.0] * 2
    assert list(summary["hippocampus_mild/development"]["budgets"]["2"]["arms"]) == []  # random, guarded: no query
    assert "150 s per guarded Adapt against 100 s unguarded" in report.markdown(summary, "t", "c")
    (cost,) = [r for r in guard_report.guard_goal_rows(summary, "s", "g") if r["goal"] == "guard_cost_ratio"]
    assert cost["value"] == 1.5 and cost["topic"] == "speed" and cost["sets"] == 2


def test_a_budget_run_only_by_a_guarded_random_arm_prints_no_empty_random_distribution(tmp_path):
    profile = _one_pool_profile(("g:strategy=random,guard=true",), draws=1)

    def execute(task, unit, work):
        dice = {c: [0.5] for c in task.eval}
        if unit.arm.name == "floor":
            return {"labelled": [], "per_case": dice, "mean_dice": 0.5, "activated": False}
        activation = {"method": "cross_validation", "stop_step": 25}
        return {"labelled": ["a", "b"], "per_case": dice, "mean_dice": 0.5, "activated": True, "activation": activation}

    runner.run(runner.plan(profile), tmp_path, profile, execute=execute, task_of=fake_task, log=lambda _: None)
    text = report.markdown(report.summarise(runner.load_records(tmp_path)), "t", "c")
    assert "Guard (issue 25 calibration), `g`, B = 2" in text
    assert "B = 2: random mean" not in text, "no query ran at B = 2: the guard's section is the budget's only one"


def test_a_guard_variant_is_compared_with_the_shipped_guard_on_the_same_labelled_sets(tmp_path):
    """A guarded arm that changes only the guard's settings (here the final model) is paired with the shipped
    guard's arm by labelled set: decisions alike, its candidate model's paired gap (a refused model counts), the
    sets it left worse, and its cost. A variant of the variant (two folds) is paired with both."""
    profile = _one_pool_profile(
        (
            "shipped:strategy=random,guard=true",
            "soup:strategy=random,guard=true,finetune.validation.final=fold_average",
            "soup2:strategy=random,guard=true,finetune.validation.final=fold_average,finetune.validation.folds=2",
            "short:strategy=random,guard=true,finetune.validation.fold_fraction=0.5",
        ),
        draws=2,
    )

    def execute(task, unit, work):
        floor_dice = {c: [0.5] for c in task.eval}
        if unit.arm.name == "floor":
            return {"labelled": [], "per_case": floor_dice, "mean_dice": 0.5, "activated": False}
        # the soup is 0.02 below the shipped model on draw 0 and equal on draw 1; draw 1 is refused by both
        dice = 0.6 - (0.02 if unit.arm.name in ("soup", "soup2") and unit.draw == 0 else 0.0)
        model = {c: [dice] for c in task.eval}
        activated = unit.draw == 0
        record = {"labelled": [task.pool[unit.draw], task.pool[2]], "activated": activated}
        record.update(activation={"method": "cross_validation", "stop_step": 25}, train_seconds=50.0)
        if unit.arm.name == "shipped":
            record["train_seconds"] = 100.0
        if activated:
            return {**record, "per_case": model, "mean_dice": dice}
        return {**record, "per_case": floor_dice, "mean_dice": 0.5, "candidate_per_case": model}

    runner.run(runner.plan(profile), tmp_path, profile, execute=execute, task_of=fake_task, log=lambda _: None)
    summary = report.summarise(runner.load_records(tmp_path))
    variants = summary["hippocampus_mild/development"]["guard_variants"]
    assert sorted((v["arm"], v["reference"]) for v in variants) == [
        ("short", "shipped"),
        ("soup", "shipped"),
        ("soup2", "shipped"),
        ("soup2", "soup"),  # it extends soup's settings; not short's, whose settings it does not contain
    ]
    (of_soup,) = [v for v in variants if v["arm"] == "soup2" and v["reference"] == "soup"]
    assert of_soup["gap"]["gap"] == pytest.approx(0.0) and of_soup["decided_alike"] == 2
    (variant,) = [v for v in variants if v["arm"] == "soup" and v["reference"] == "shipped"]
    assert (variant["arm"], variant["reference"], variant["sets"], variant["decided_alike"]) == (
        "soup",
        "shipped",
        2,
        2,
    )
    assert variant["gap"]["gap"] == pytest.approx(-0.01) and variant["gap"]["per_set"] == pytest.approx([-0.02, 0.0])
    assert variant["worse_sets"] == 1 and variant["cost_vs_reference"] == pytest.approx(0.5)
    text = report.markdown(summary, "t", "c")
    assert "Guard variant `soup` against `shipped`, B = 2, 2 shared labelled sets: decided alike on 2" in text
    assert (
        "Guard variant `soup2` against `soup`, B = 2, 2 shared labelled sets: decided alike on 2; its model minus "
        "`soup`'s +0.000" in text
    )


def test_a_guard_variant_extends_a_reference_whose_option_is_switched_off_but_not_a_sibling():
    def record(**settings):
        return {"arm": {"finetune": {f"validation.{k}": v for k, v in settings.items()}}}

    whole = record(final="fold_average", fold_budget=None)
    assert guard_report.guard_settings_extend(whole, record(final="fold_average", fold_budget=2))
    assert guard_report.guard_settings_extend(record(), record(final="fold_average"))
    assert not guard_report.guard_settings_extend(record(fold_budget=2), record(fold_budget=1.5)), "siblings"
    assert not guard_report.guard_settings_extend(record(final="retrain"), record(final="fold_average", folds=2))
    assert not guard_report.guard_settings_extend(whole, whole), "not itself"


def test_guard_variants_are_judged_again_by_today_s_guard_from_their_folds(tmp_path):
    """Records written under a former rule (both recorded as activated) are compared on today's rule: every fold must
    gain 0.02. The variant's folds gained +0.30 and +0.01, so today's guard refuses its model, 0.1 better than no
    adaptation (a false refusal); the reference's folds gained +0.10 and +0.05: activated."""
    profile = _one_pool_profile(
        (
            "shipped:strategy=random,guard=true",
            "short:strategy=random,guard=true,finetune.validation.fold_budget=2",
        ),
        draws=1,
    )

    def execute(task, unit, work):
        dice = {c: [0.5] for c in task.eval}
        body = {"labelled": [task.pool[0], task.pool[2]], "per_case": dice, "mean_dice": 0.5}
        if unit.arm.name == "floor":
            return {**body, "labelled": [], "activated": False}
        late = {"shipped": [0.6, 0.55], "short": [0.8, 0.51]}[unit.arm.name]
        cv = {"steps": [0, 25], "dice": {"a": [0.5, late[0]], "b": [0.5, late[1]]}, "folds": [["a"], ["b"]]}
        activation = {"method": "cross_validation", "stop_step": 25, "pool": {"passed": True}}
        model = {c: [0.6] for c in task.eval}
        return {
            **body,
            "per_case": model,
            "mean_dice": 0.6,
            "activated": True,
            "cross_validation": cv,
            "activation": activation,
        }

    runner.run(runner.plan(profile), tmp_path, profile, execute=execute, task_of=fake_task, log=lambda _: None)
    summary = report.summarise(runner.load_records(tmp_path))
    (variant,) = summary["hippocampus_mild/development"]["guard_variants"]
    assert variant["decided_alike"] == 1, "as recorded"
    today = variant["today"]
    assert today["decided_alike"] == 0
    assert today["variant"] == {"activated": 0, "false_activations": 0, "better_sets": 1, "false_refusals": 1}
    assert today["reference"] == {"activated": 1, "false_activations": 0, "better_sets": 1, "false_refusals": 0}
    assert "Both judged by today's guard: decided alike on 0; activated 0 against 1" in report.markdown(
        summary, "t", "c"
    )


def test_a_resume_over_records_of_another_pool_is_refused_not_mixed_into_the_table(tmp_path):
    calls = []
    runner.run(runner.plan(PROFILE), tmp_path, PROFILE, execute=fake_execute(calls), task_of=fake_task, log=print)

    def changed_task(unit, profile):
        task = fake_task(unit, profile)
        return tasks.Task(
            task.setting, task.split, task.replicate, ("a", "b", "c", "e"), task.eval, task.model, task.data
        )

    with pytest.raises(runner.StaleRecord, match="pool_cases differ"):
        runner.run(runner.plan(PROFILE), tmp_path, PROFILE, execute=fake_execute([]), task_of=changed_task, log=print)


def test_a_partial_run_without_random_subsets_still_shows_each_arms_mean_and_says_why_no_gap(tmp_path):
    profile = runner.Profile(
        settings=("hippocampus_mild",),
        split="development",
        pools=2,
        budgets=(2,),
        arms=("assft",),
        ceiling_steps=(),
    )
    runner.run(runner.plan(profile), tmp_path, profile, execute=fake_execute([]), task_of=fake_task, log=print)
    summary = report.summarise(runner.load_records(tmp_path))
    arm = summary["hippocampus_mild/development"]["budgets"]["2"]["arms"]["assft"]
    assert arm["incomplete"] and arm["pools"] == [0, 1]
    assert arm["mean"] == pytest.approx(0.67)  # 0.66, 0.67, 0.68 over the three cases
    assert "not comparable yet (the arm in pools [0, 1], random subsets in 0 pools)" in report.markdown(
        summary, "t", "c"
    )


def test_a_recipe_arm_is_compared_with_the_default_recipe_on_the_same_labelled_sets_not_with_random(tmp_path):
    profile = _one_pool_profile(("random", "labels_only:strategy=random,finetune.pseudo.mode=none"), draws=3)

    def execute(task, unit, work):
        # each draw labels another pair; the default recipe scores 0.6 + 0.1 * draw, labels only 0.03 less, and
        # draw 0's default is worse than no adaptation (0.55)
        base = {"floor": 0.55, "random": 0.5 + 0.1 * unit.draw}.get(unit.arm.name, 0.47 + 0.1 * unit.draw)
        body = {"labelled": [task.pool[unit.draw], task.pool[3]], "per_case": {c: [base] for c in task.eval}}
        # one default run took 4,000 s on a busy machine: the median ratio is not moved by it
        seconds = 60.0 if unit.arm.name == "labels_only" else (4000.0 if unit.draw == 2 else 80.0)
        return {**body, "mean_dice": base, "activated": unit.arm.name != "floor", "train_seconds": seconds}

    runner.run(runner.plan(profile), tmp_path, profile, execute=execute, task_of=fake_task, log=lambda _: None)
    summary = report.summarise(runner.load_records(tmp_path))
    entry = summary["hippocampus_mild/development"]
    assert "labels_only" not in entry["budgets"]["2"]["arms"]  # not a query: no gap against the random subsets
    (recipe,) = entry["recipes"]
    assert recipe["reference"] == "random" and recipe["changes"] == {"pseudo.mode": "none"}
    assert recipe["gap"]["gap"] == pytest.approx(-0.03) and recipe["gap"]["sets"] == 3
    assert recipe["gap"]["ci_low"] == pytest.approx(-0.03) and recipe["gap"]["ci_high"] == pytest.approx(-0.03)
    assert (recipe["worse"], recipe["reference_worse"]) == (1, 1)  # 0.47 and 0.5 against the floor's 0.55
    assert recipe["cost_ratio"] == pytest.approx(0.75)
    row = "| labels_only | `pseudo.mode=none` | 2 | 3 | 0.570 (0.600) | -0.030 [-0.030, -0.030] | – | 1 (1) | 0.75x |"
    text = report.markdown(summary, "t", "c")
    assert row in text  # one group only: no worst group
    assert "| arm | mean Dice | gap vs random |" not in text  # random subsets only: no empty query table
    (row,) = recipe_report.recipe_goal_rows(summary, "s", "g", guard_report.SPLIT_NAMES)
    assert (row["goal"], row["value"], row["split"], row["budget"]) == ("ssl_gap_vs_labels_only", 0.03, "dev", 2)


def test_overrides_the_profile_gives_every_arm_are_the_runs_default_recipe_not_a_recipe_arm(tmp_path):
    profile = runner.Profile(
        settings=("hippocampus_mild",),
        split="development",
        pools=1,
        budgets=(2,),
        arms=("random", "assft", "short:strategy=random,finetune.semi_iterations=1"),
        draws=2,
        ceiling_steps=(),
        finetune=(("train.iterations", 2),),
    )
    runner.run(runner.plan(profile), tmp_path, profile, execute=fake_execute([]), task_of=fake_task, log=print)
    entry = report.summarise(runner.load_records(tmp_path))["hippocampus_mild/development"]
    assert list(entry["budgets"]["2"]["arms"]) == ["assft"]  # a query, though its records carry the profile's steps
    (recipe,) = entry["recipes"]
    assert recipe["arm"] == "short" and recipe["changes"] == {"semi_iterations": 1}


def test_a_random_draw_picks_another_labelled_set_on_another_pool_replicate():
    """Replicates that each leave out one patient of 8 (ACDC-Path's test part) drew the same random pairs when the
    draw alone seeded the query. The seed now depends on the replicate too (and is the same again for the same
    replicate and draw), so draw 0 of the replicates is not one labelled set."""
    import numpy as np

    from ASSFTActive.query import select
    from ASSFTActive.query.records import CaseEvidence

    def evidence(case_id):
        return CaseEvidence(
            case_id=case_id,
            knowledge_divergence=0.0,
            asd=0.5,
            mean_entropy=0.5,
            pretrained_embedding=np.ones(2),
            current_embedding=np.ones(2),
            clasp_scores=np.array([0.5]),
        )

    cases = [f"p{p}_f{f}" for p in range(8) for f in (1, 2)]
    random_arm = arms.parse_arm("random")
    picked = []
    for replicate in range(5):
        pool = [c for c in cases if not c.startswith(f"p{replicate}_")]  # each replicate leaves one patient out
        config = harness_work.query_config(random_arm, 0, replicate)
        picked.append(tuple(select([evidence(c) for c in pool], 2, config).selected_ids))
    assert len(set(picked)) >= 4, picked
    again = harness_work.query_config(random_arm, 0, 2)
    assert again.seed == harness_work.query_seed(2, 0), "the same replicate and draw give the same seed"
    typiclust = harness_work.query_config(arms.parse_arm("typiclust:strategy=typiclust"), 0, 3)
    assert typiclust.seed == 0, "a deterministic arm runs with the product's default seed on every replicate"


def test_guard_arms_are_paired_only_on_the_same_labelled_volumes():
    """Two guarded records with the same pool, budget, draw and seed but other labelled volumes (made before and
    after the query's seed changed) are not compared as one labelled set."""
    base = {"pool": 0, "budget": 2, "draw": 0, "seed": 0}
    guarded = [
        dict(base, arm="a", labelled=["x", "y"], activated=True),
        dict(base, arm="b", labelled=["x", "z"], activated=False),
        dict(base, arm="b", pool=1, labelled=["x", "y"], activated=True),
        dict(base, arm="a", pool=1, labelled=["y", "x"], activated=True),
    ]
    pairs = guard_report._same_sets(guarded, "a", "b")
    assert [(a["pool"], b["pool"]) for a, b in pairs] == [(1, 1)]


def test_the_harness_names_each_patient_as_the_guards_subject(monkeypatch, tmp_path):
    import ASSFTActive.finetune.adapt as adapt

    pool = ("patient001_frame01", "patient001_frame12", "patient002_frame01")
    task = tasks.Task(tasks.setting("acdc_path"), "test", 0, pool, ("patient003_frame01",), "model", tmp_path)
    seen = {}

    class Stop(Exception):
        pass

    def adapt_model(images, labels, **kwargs):
        seen.update(kwargs["subjects"])
        raise Stop

    monkeypatch.setattr(harness_work, "pool_images", lambda task, work: {c: f"/{c}.nii.gz" for c in task.pool})
    monkeypatch.setattr(harness_work, "anatomy_recipe", lambda task: {})
    monkeypatch.setattr(adapt, "adapt_model", adapt_model)
    with pytest.raises(Stop):
        harness_work.adapt_and_evaluate(task, arms.Arm("random_guarded", guard=True), pool[:2], 0, tmp_path)
    assert seen == {
        "patient001_frame01": "patient001",
        "patient001_frame12": "patient001",
        "patient002_frame01": "patient002",
    }
