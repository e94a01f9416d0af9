"""The report of a run, from its records only: a Markdown table, a JSON summary, a PNG per setting (Dice against
budget, the random-subset distribution as a band, each strategy on it) and the goal rows of issue 23 merged into
``Testing/Benchmarks/results/goals.json``.

Everything is recomputed from the records (``results/harness/<run>/...``), so one command regenerates a table:
``python -m Testing.Benchmarks.harness report <run>``. The statistics are :mod:`.stats`'s.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import stats
from .arms import BASELINES
from .goals import merge_goal_rows, taken_over_message
from .guard_report import (
    SPLIT_NAMES,
    guard_goal_rows,
    guard_markdown,
    guard_sets,
    guard_variants,
    guard_variants_markdown,
    guarded_rows,
)
from .recipe_report import is_recipe_arm, recipe_comparisons, recipe_goal_rows, recipe_markdown
from .runner import REPO, RESULTS
from .tasks import SETTINGS

GOALS = RESULTS / "goals.json"

#: A step count is the ceiling's flat point when the next one gains less than this (mean Dice).
FLAT = 0.01


def _case_matrix(records: Sequence[Mapping[str, Any]], cases: Sequence[str]) -> np.ndarray:
    """Per-case Dice ``[draws, N]``: one row per draw, each the mean over that draw's training seeds."""
    return stats.draw_matrix([{"query_seed": r["draw"], "per_case": r["per_case"]} for r in records], cases)


def _index(records: Sequence[Mapping[str, Any]]) -> Dict[Tuple[str, str], Dict[Tuple[str, int], Dict[int, list]]]:
    """``{(setting, split): {(arm, budget): {pool: [records]}}}``."""
    out: Dict[Tuple[str, str], Dict[Tuple[str, int], Dict[int, list]]] = {}
    for r in records:
        cell = out.setdefault((r["setting"], r["split"]), {}).setdefault((r["arm"]["name"], int(r["budget"])), {})
        cell.setdefault(int(r["pool"]), []).append(r)
    return out


def _worst_group(groups: Mapping[str, str], cases: Sequence[str], floor: np.ndarray) -> Optional[str]:
    """The group where the source model is worst (fixed before any arm is looked at); ``None`` with one group."""
    names = sorted({groups[c] for c in cases})
    if len(names) < 2:
        return None
    means = {g: float(np.nanmean([floor[i] for i, c in enumerate(cases) if groups[c] == g])) for g in names}
    return min(means, key=means.get)


def summarise(records: Sequence[Mapping[str, Any]], default_arm: str = "assft") -> Dict[str, Any]:
    """Per (setting, split): floor, ceiling by steps, the random distribution and every arm's statistics."""
    out: Dict[str, Any] = {}
    for (setting, split), cells in sorted(_index(records).items()):
        any_record = next(iter(next(iter(cells.values())).values()))[0]
        cases = list(any_record["eval_cases"])
        clusters = list(any_record["clusters"])
        groups = dict(any_record.get("groups") or {c: "all" for c in cases})
        for cell in cells.values():
            for rs in cell.values():
                for r in rs:
                    if list(r["eval_cases"]) != cases:
                        raise ValueError(f"{r['key']}: evaluated on other cases than the rest of {setting}/{split}")
        pools = sorted(cells.get(("floor", 0), {}))
        floor = {p: _case_matrix(cells[("floor", 0)][p], cases)[0] for p in pools}
        floor_mean = float(np.mean([np.nanmean(floor[p]) for p in pools])) if pools else float("nan")
        worst = _worst_group(groups, cases, np.nanmean(np.stack(list(floor.values())), axis=0)) if pools else None
        worst_idx = [i for i, c in enumerate(cases) if worst is not None and groups[c] == worst]
        entry: Dict[str, Any] = {
            "setting": setting,
            "split": split,
            "pools": pools,
            "cases": len(cases),
            "clusters": len(set(clusters)),
            "floor": floor_mean,
            "worst_group": worst,
            "ceiling": _ceiling(cells, cases),
            "budgets": {},
        }
        budgets = sorted({b for (_, b) in cells if b > 0})
        for budget in budgets:
            random_cell = cells.get(("random", budget), {})
            common = [p for p in pools if p in random_cell] or sorted(random_cell)
            random_m = {p: _case_matrix(random_cell[p], cases) for p in common}
            random_draw_means = {p: np.nanmean(m, axis=1) for p, m in random_m.items()}
            headrooms = {p: stats.oracle_headroom(v) for p, v in random_draw_means.items()}
            row: Dict[str, Any] = {
                "random": {
                    "mean": float(np.mean([h.mean for h in headrooms.values()])) if headrooms else float("nan"),
                    "subsets_per_pool": [h.subsets for h in headrooms.values()],
                    "distinct_sets": stats.distinct_labelled_sets(r for p in common for r in random_cell[p]),
                    "best_gain": float(np.mean([h.best_gain for h in headrooms.values()])) if headrooms else None,
                    "p90_gain": float(np.mean([h.p90_gain for h in headrooms.values()])) if headrooms else None,
                    "band": _band(random_draw_means),
                },
                "arms": {},
            }
            arm_mats: Dict[str, Dict[int, np.ndarray]] = {}
            own_mats: Dict[str, Dict[int, np.ndarray]] = {}  # every pool the arm ran in, random or not
            for (arm, b), cell in sorted(cells.items()):
                if b != budget or arm == "random" or not _is_query_arm(cell):
                    continue
                own_mats[arm] = {p: _case_matrix(cell[p], cases) for p in sorted(cell)}
                arm_mats[arm] = {p: m for p, m in own_mats[arm].items() if p in common}
            for arm, mats in arm_mats.items():
                if set(mats) != set(common) or not common:
                    own = own_mats[arm]
                    row["arms"][arm] = {  # a partial run still shows what each pool gave
                        "mean": float(np.mean([np.nanmean(m) for m in own.values()])) if own else None,
                        "incomplete": True,
                        "pools": sorted(own),
                    }
                    continue
                row["arms"][arm] = _arm_stats(
                    arm, mats, random_m, random_draw_means, headrooms, common, clusters, worst_idx, arm_mats
                )
            entry["budgets"][str(budget)] = row
        entry["default_arm"] = default_arm
        entry["guarded"] = guarded_rows(cells, floor, cases)
        entry["guard_variants"] = guard_variants(cells, floor, cases, clusters)
        entry["recipes"] = [c.to_dict() for c in recipe_comparisons(cells, floor, cases, clusters, worst_idx)]
        out[f"{setting}/{split}"] = entry
    return out


def _is_query_arm(cell: Mapping[int, Sequence[Mapping[str, Any]]]) -> bool:
    """Whether an arm belongs in the query table: not a recipe arm (its own section, :mod:`.recipe_report`) and not
    random subsets run another way (e.g. ``random_guarded``: the guard's section), which are no query."""
    queries = {json.dumps(r["arm"].get("query") or {}, sort_keys=True) for rs in cell.values() for r in rs}
    return not is_recipe_arm(cell) and queries != {json.dumps({"strategy": "random"})}


def _band(random_draw_means: Mapping[int, np.ndarray]) -> Dict[str, float]:
    """Percentiles and maximum of the random subsets' mean Dice (NaN without random subsets, without a warning)."""
    keys = ("p10", "p25", "p50", "p75", "p90", "max")
    values = np.concatenate(list(random_draw_means.values())) if random_draw_means else np.array([])
    if not np.isfinite(values).any():
        return dict.fromkeys(keys, float("nan"))
    return {
        k: float(np.nanpercentile(values, q))
        for k, q in (("p10", 10), ("p25", 25), ("p50", 50), ("p75", 75), ("p90", 90))
    } | {"max": float(np.nanmax(values))}


def _restrict(mats: Mapping[int, np.ndarray], idx: Sequence[int]) -> List[np.ndarray]:
    return [m[:, list(idx)] for _, m in sorted(mats.items())]


def _arm_stats(
    arm: str,
    mats: Mapping[int, np.ndarray],
    random_m: Mapping[int, np.ndarray],
    random_draw_means: Mapping[int, np.ndarray],
    headrooms: Mapping[int, stats.Headroom],
    pools: Sequence[int],
    clusters: Sequence[str],
    worst_idx: Sequence[int],
    all_arms: Mapping[str, Mapping[int, np.ndarray]],
) -> Dict[str, Any]:
    per_pool = {p: float(np.nanmean(mats[p])) for p in pools}
    gap = stats.clustered_gap([mats[p] for p in pools], [random_m[p] for p in pools], clusters)
    result: Dict[str, Any] = {
        "mean": float(np.mean(list(per_pool.values()))),
        "per_pool": per_pool,
        "draws": [int(mats[p].shape[0]) for p in pools],
        "gap_vs_random": gap.to_dict(),
        "random_percentile": stats.pooled_percentile(
            [per_pool[p] for p in pools], [random_draw_means[p] for p in pools]
        ),
        "headroom_captured": _nanmean([stats.headroom_captured(per_pool[p], headrooms[p]) for p in pools]),
    }
    if worst_idx:
        worst = stats.clustered_gap(
            _restrict(mats, worst_idx), _restrict(random_m, worst_idx), [clusters[i] for i in worst_idx]
        )
        result["worst_group_gap_vs_random"] = worst.to_dict()
        result["worst_group_mean"] = float(np.mean([np.nanmean(m) for m in _restrict(mats, worst_idx)]))
    baselines = {b: m for b, m in all_arms.items() if b in BASELINES and b != arm and set(m) == set(pools)}
    if baselines:
        best = max(baselines, key=lambda b: np.mean([np.nanmean(baselines[b][p]) for p in pools]))
        result["gap_vs_best_baseline"] = {
            "baseline": best,
            **stats.clustered_gap([mats[p] for p in pools], [baselines[best][p] for p in pools], clusters).to_dict(),
        }
    return result


def _nanmean(values: Sequence[float]) -> Optional[float]:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def _ceiling(cells: Mapping[Tuple[str, int], Mapping[int, list]], cases: Sequence[str]) -> Dict[str, Any]:
    """Whole-pool Dice per step count and the flat point: the first step count the next one improves by < FLAT."""
    steps = sorted(int(a[len("ceiling_") :]) for (a, _) in cells if a.startswith("ceiling_"))
    means = {}
    for s in steps:
        cell = cells[(f"ceiling_{s}", 0)]
        means[s] = float(np.mean([np.nanmean(_case_matrix(rs, cases)) for rs in cell.values()]))
    flat = next((s for s, t in zip(steps, steps[1:]) if means[t] - means[s] < FLAT), None)
    # the ceiling: the flat point's Dice (or, not flat yet, the best measured, a lower bound of the ceiling)
    value = means[flat] if flat is not None else (max(means.values()) if means else None)
    return {
        "by_steps": {str(s): v for s, v in means.items()},
        "flat_at": flat,
        "value": value,
        "converged": flat is not None,
    }


# ------------------------------------------------------------------------------------------------ goal rows


def goal_rows(summary: Mapping[str, Any], default_arm: str, source: str, git: str) -> List[Dict[str, Any]]:
    """Issue 23's goal rows (topic ``query``) of the default arm, per setting, budget and split; a budget whose
    random subsets have not run in every pool of the setting yet (a run still under way) writes none."""
    rows = []
    for entry in summary.values():
        for budget, row in entry["budgets"].items():
            arm = row["arms"].get(default_arm)
            if not arm or arm.get("incomplete") or len(row["random"]["subsets_per_pool"]) < len(entry["pools"]):
                continue
            hetero = SETTINGS[entry["setting"]].heterogeneous if entry["setting"] in SETTINGS else False
            base = {
                "topic": "query",
                "setting": entry["setting"],
                "budget": int(budget),
                "split": SPLIT_NAMES.get(entry["split"], entry["split"]),
                "source": source,
                "git": git,
            }
            gap = arm["gap_vs_random"]
            rows.append(
                {
                    **base,
                    "goal": "gap_vs_random",
                    "value": gap["gap"],
                    "ci_low": gap["ci_low"],
                    "ci_high": gap["ci_high"],
                    "target": -0.01,
                    "higher_is_better": True,
                }
            )
            if hetero:
                rows.append(
                    {
                        **base,
                        "goal": "hetero_mean_gap_vs_random",
                        "value": gap["gap"],
                        "ci_low": gap["ci_low"],
                        "ci_high": gap["ci_high"],
                        "target": 0.03,
                        "higher_is_better": True,
                    }
                )
                worst = arm.get("worst_group_gap_vs_random")
                if worst:
                    rows.append(
                        {
                            **base,
                            "goal": "hetero_worst_group_gap_vs_random",
                            "value": worst["gap"],
                            "ci_low": worst["ci_low"],
                            "ci_high": worst["ci_high"],
                            "target": 0.05,
                            "higher_is_better": True,
                        }
                    )
            rows.append(
                {
                    **base,
                    "goal": "random_percentile",
                    "value": arm["random_percentile"],
                    "ci_low": None,
                    "ci_high": None,
                    "target": 75.0,
                    "higher_is_better": True,
                }
            )
            rows.append(
                {
                    **base,
                    "goal": "headroom_captured",
                    "value": arm["headroom_captured"],
                    "ci_low": None,
                    "ci_high": None,
                    "target": 0.5,
                    "higher_is_better": True,
                }
            )
            best = arm.get("gap_vs_best_baseline")
            if best:
                rows.append(
                    {
                        **base,
                        "goal": "gap_vs_best_baseline",
                        "value": best["gap"],
                        "ci_low": best["ci_low"],
                        "ci_high": best["ci_high"],
                        "target": 0.0,
                        "higher_is_better": True,
                        "baseline": best["baseline"],
                    }
                )
    return rows


# ------------------------------------------------------------------------------------------------- rendering


def _f(x: Optional[float], sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.3f}" if sign else f"{x:.3f}"


def _gap_cell(gap: Optional[Mapping[str, Any]]) -> str:
    if not gap:
        return "–"
    p = gap.get("p_wilcoxon")
    return f"{_f(gap['gap'], True)} [{_f(gap['ci_low'], True)}, {_f(gap['ci_high'], True)}]" + (
        f", p {p:.3f}" if p is not None else ""
    )


def markdown(summary: Mapping[str, Any], title: str, command: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"Regenerate: `{command}`",
        "",
        "Mean Dice over pool replicates; gaps are paired per pool and evaluation case, with 95 % intervals from a "
        "bootstrap over pools, draws and evaluation cases (ACDC: by patient); p: Wilcoxon signed-rank over the "
        "per-pool gaps (from 5 pools). Percentile: where the arm sits in the pool's random-subset distribution "
        "(mean over pools). Headroom: best / 90th-percentile random subset minus random's mean; captured: "
        "(arm - random mean) / (best - random mean).",
        "",
    ]
    for name, entry in summary.items():
        ceiling = entry["ceiling"]
        steps = ", ".join(f"{s} steps {_f(v)}" for s, v in ceiling["by_steps"].items()) or "not run"
        flat = (
            (f"flat at {ceiling['flat_at']} steps" if ceiling["converged"] else "not flat yet")
            if ceiling["by_steps"]
            else ""
        )
        lines += [
            f"## {name} ({len(entry['pools'])} pools, {entry['cases']} evaluation cases in "
            f"{entry['clusters']} clusters)",
            "",
            f"No adaptation: {_f(entry['floor'])}. Whole pool labelled: {steps} ({flat})."
            + (f" Worst group (by the source model): {entry['worst_group']}." if entry["worst_group"] else ""),
            "",
        ]
        for budget, row in entry["budgets"].items():
            rnd = row["random"]
            if not rnd["subsets_per_pool"] and not row["arms"]:
                continue  # no query at this budget (only guarded or recipe arms: their sections below)
            lines += [
                f"B = {budget}: random mean {_f(rnd['mean'])} over {sum(rnd['subsets_per_pool'])} subsets "
                f"({rnd['subsets_per_pool']} per pool; {rnd['distinct_sets']} distinct labelled sets: pools "
                "that share volumes can draw the same set); oracle-subset headroom best "
                f"{_f(rnd['best_gain'], True)}, 90th percentile {_f(rnd['p90_gain'], True)}.",
                "",
            ]
            if not row["arms"]:
                continue  # random subsets only (e.g. the recipe section's references): no query to compare
            lines += [
                "| arm | mean Dice | gap vs random | percentile | headroom captured | worst-group gap | "
                "gap vs best baseline |",
                "|---|---|---|---|---|---|---|",
            ]
            for arm, s in row["arms"].items():
                if s.get("incomplete"):
                    lines.append(
                        f"| {arm} | {_f(s['mean'])} | not comparable yet (the arm in pools {s['pools']}, random "
                        f"subsets in {len(rnd['subsets_per_pool'])} pools) | | | | |"
                    )
                    continue
                best = s.get("gap_vs_best_baseline")
                lines.append(
                    f"| {arm} | {_f(s['mean'])} | {_gap_cell(s['gap_vs_random'])} | "
                    f"{s['random_percentile']:.0f} | {_f(s['headroom_captured'])} | "
                    f"{_gap_cell(s.get('worst_group_gap_vs_random'))} | "
                    + (f"{_gap_cell(best)} ({best['baseline']})" if best else "–")
                    + " |"
                )
            lines.append("")
        lines += guard_markdown(name, entry.get("guarded") or [])
        lines += guard_variants_markdown(entry.get("guard_variants") or [])
        lines += recipe_markdown(entry.get("recipes") or [])
    return "\n".join(lines) + "\n"


def plot(summary: Mapping[str, Any], path_of) -> List[Path]:
    """One PNG per (setting, split): Dice against budget; random's 10-90 % and 25-75 % bands with its median;
    each arm's mean; the floor and the ceiling as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, entry in summary.items():
        budgets = sorted(int(b) for b in entry["budgets"])
        if not budgets:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        bands = [entry["budgets"][str(b)]["random"]["band"] for b in budgets]
        # the random-subset distribution: a band between budgets, a bar at each budget (visible with one budget)
        if len(budgets) > 1:
            ax.fill_between(budgets, [b["p10"] for b in bands], [b["p90"] for b in bands], alpha=0.1, color="grey")
            ax.fill_between(budgets, [b["p25"] for b in bands], [b["p75"] for b in bands], alpha=0.2, color="grey")
        ax.vlines(
            budgets,
            [b["p10"] for b in bands],
            [b["p90"] for b in bands],
            lw=14,
            alpha=0.25,
            color="grey",
            label="random subsets 10-90 %",
        )
        ax.vlines(
            budgets,
            [b["p25"] for b in bands],
            [b["p75"] for b in bands],
            lw=14,
            alpha=0.5,
            color="grey",
            label="random subsets 25-75 %",
        )
        ax.plot(budgets, [b["p50"] for b in bands], color="grey", lw=1, marker="_", ms=16, label="random median")
        arms = sorted({a for b in budgets for a in entry["budgets"][str(b)]["arms"]})
        for arm in arms:
            ys = [entry["budgets"][str(b)]["arms"].get(arm, {}).get("mean") for b in budgets]
            ax.plot(budgets, [np.nan if y is None else y for y in ys], marker="o", label=arm)
        ax.axhline(entry["floor"], color="black", ls=":", label="no adaptation")
        if entry["ceiling"]["value"] is not None:
            ax.axhline(entry["ceiling"]["value"], color="black", ls="--", label="whole pool (ceiling)")
        ax.set_xlabel("labelled volumes (B)")
        ax.set_ylabel("mean Dice (evaluation cases)")
        ax.set_xticks(budgets)
        ax.set_title(name)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = path_of(name)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write(
    records_root: Path,
    out_stem: Path,
    *,
    default_arm: str = "assft",
    goals: Optional[Path] = GOALS,
    git: str = "",
    command: str = "",
) -> Dict[str, Any]:
    """Summarise the records under ``records_root`` into ``<out_stem>.md``, ``.json`` and one PNG per setting;
    merge the goal rows into ``goals`` (skipped when ``None``). Records that carry an annotation effort (the
    ``sparse`` profile, issue 27) add the Dice-against-effort section, its PNG per setting
    (``<stem>_effort_<setting>.png``) and the ``sparse`` goal rows (:mod:`.sparse_report`); without them the
    outputs are exactly the query report's."""
    from . import sparse_report
    from .runner import load_records

    records = load_records(records_root)
    if not records:
        raise FileNotFoundError(f"no record under {records_root}; run `python -m Testing.Benchmarks.harness run` first")
    summary = summarise(records, default_arm)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    source = _relative(out_stem.with_suffix(".json"))
    report = {
        "records": _relative(records_root),
        "default_arm": default_arm,
        "git": git,
        "command": command,
        "summary": summary,
    }
    text = markdown(summary, f"Query benchmark: {out_stem.name}", command)
    effort = sparse_report.summarise(records) if sparse_report.has_effort(records) else None
    if effort is not None:
        report["effort"] = effort
        text += "\n" + sparse_report.markdown(effort)
    sets = [s for name, entry in summary.items() for s in guard_sets(name, entry.get("guarded") or [])]
    if sets:  # the guard calibration's input: python -m ASSFTActive.finetune.guard_calibration <this file>
        calibration = out_stem.parent / f"{out_stem.name}_guard_sets.json"
        calibration.write_text(json.dumps({"sets": sets}, indent=1, default=_jsonable) + "\n")
        report["guard_sets"] = _relative(calibration)
    out_stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=_jsonable) + "\n")
    out_stem.with_suffix(".md").write_text(text)
    pngs = plot(summary, lambda name: out_stem.parent / f"{out_stem.name}_{name.replace('/', '_')}.png")
    if effort is not None:
        pngs += sparse_report.plot(
            effort, lambda name: out_stem.parent / f"{out_stem.name}_effort_{name.replace('/', '_')}.png"
        )
    if goals is not None:
        rows = (
            goal_rows(summary, default_arm, source, git)
            + guard_goal_rows(summary, source, git)
            + recipe_goal_rows(summary, source, git, SPLIT_NAMES)
            + (sparse_report.goal_rows(effort, source, git) if effort is not None else [])
        )
        note = taken_over_message(merge_goal_rows(goals, rows), goals)
        if note:
            print(note, file=sys.stderr)
    report["png"] = [_relative(p) for p in pngs]
    return report


def _relative(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")
