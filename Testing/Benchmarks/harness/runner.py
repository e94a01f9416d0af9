"""The runner: one JSON record per (setting, split, pool replicate, arm, budget, draw, training seed), written
atomically; a rerun skips the records that exist, so a sweep split over stops (or killed) resumes where it was.

A profile says what to run (:data:`PROFILES`): settings, split, pool replicates, budgets, arms, training seeds,
and step overrides for tiny runs. :func:`plan` lists the units; :func:`run` executes the missing ones with
``execute(task, unit, work)`` (default :func:`execute_unit`, the product's Adapt Model via :mod:`.work`).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .arms import ARMS, CEILING_STEPS, Arm, ceiling_arm, parse_arm
from .tasks import REPO, Task, make_task

RESULTS = REPO / "Testing" / "Benchmarks" / "results"
#: Where records go by default: one folder per run name (``results/harness/<name>/<setting>/<split>/...``).
RECORDS = RESULTS / "harness"


@dataclass(frozen=True)
class Unit:
    """One record to compute. ``budget`` is 0 for the floor and the whole-pool (ceiling) arms."""

    setting: str
    split: str
    pool: int
    arm: Arm
    budget: int
    draw: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.split}/pool{self.pool}/{self.arm.name}/B{self.budget}_d{self.draw}_s{self.seed}"

    def path(self, root: Path) -> Path:
        return root / f"{self.key}.json"


FLOOR = Arm("floor", label="no adaptation (the source model)")


@dataclass(frozen=True)
class Profile:
    """Size of one run.

    Attributes:
        settings: setting names (:data:`~.tasks.SETTINGS`).
        split: ``development`` (every choice) or ``test`` (once per default, after the rule is written).
        pools: pool replicates per setting (>= 5 for a decision).
        budgets: labelled volumes per arm.
        arms: arm names or ``strategy=...`` specs (:func:`~.arms.parse_arm`).
        seeds: training seeds per labelled set.
        draws: random subsets per (pool, budget) for seeded arms; 0 = :data:`~.arms.RANDOM_DRAWS`.
        ceiling_steps: step counts of the whole-pool ceiling (half supervised, half second stage).
        finetune: ``FinetuneConfig`` overrides for every arm (tiny runs only; the real profiles use the default).
        pool_size, eval_size: override the settings' pool size / evaluate on the first cases only (tiny runs).
        effort: every arm's records carry the annotation effort (:mod:`.sparse`; the effort profile, so that the
            whole-volume reference is drawn against effort beside the slice and region arms).
    """

    settings: Tuple[str, ...]
    split: str
    pools: int
    budgets: Tuple[int, ...]
    arms: Tuple[str, ...]
    seeds: int = 1
    draws: int = 0
    ceiling_steps: Tuple[int, ...] = CEILING_STEPS
    finetune: Tuple[Tuple[str, Any], ...] = ()
    pool_size: Optional[int] = None
    eval_size: Optional[int] = None
    effort: bool = False

    def to_dict(self) -> Dict[str, Any]:
        """The record's ``profile`` (``effort`` only when set, so the other profiles' records keep their keys)."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}
        if not self.effort:
            del out["effort"]
        return out


UNIFORM = ("hippocampus_mild", "hippocampus_harsh", "acdc_mild", "acdc_harsh")
HETERO = ("hippocampus_multisite", "acdc_path")
COMPARED = ("random", "fg_random", "coreset", "clasp_pe", "assft")
#: The effort benchmark's arms (issue 27 item 4): whole volumes by the default query (the reference, effort recorded;
#: its voxels changed are those of correcting its volumes' pre-fill, so ``prefill_correction``, the same labels and
#: training, is not run twice), slices by score and random slices, each budget an effort of B volumes in painted
#: slices; regions by score within the foreground voxels painted in B volumes (slice-equivalents undercount a box
#: that is a small part of its slices: RESULTS.md, ACDC-Path effort); and slices by score / at random within the
#: voxels changed of B pre-filled volumes.
SPARSE = (
    "assft",
    "slices_by_score",
    "slices_random",
    "regions_by_score_painted",
    "slices_by_score_prefill",
    "slices_random_prefill",
)

PROFILES: Dict[str, Profile] = {
    # the whole pipeline on tiny settings (the slow-marked smoke test): < 3 min on one thread
    "smoke": Profile(
        settings=("hippocampus_mild",),
        split="development",
        pools=2,
        budgets=(2,),
        arms=("random", "assft"),
        draws=2,
        ceiling_steps=(4,),
        finetune=(("train.iterations", 2), ("semi_iterations", 2), ("train.batch_size", 1)),
        pool_size=5,
        eval_size=3,
    ),
    # every choice is made here
    "development": Profile(settings=UNIFORM + HETERO, split="development", pools=5, budgets=(2, 4), arms=COMPARED),
    # once per default, after the choice rule is in RESULTS.md
    "test": Profile(settings=UNIFORM + HETERO, split="test", pools=5, budgets=(2, 4), arms=COMPARED),
    # the one final table with the guard on
    "guarded": Profile(
        settings=UNIFORM + HETERO, split="test", pools=5, budgets=(2, 4), arms=("assft_guarded",), ceiling_steps=()
    ),
    # effort as the budget (issue 27 item 4), development split: Dice against annotation effort at 2 and 4 whole
    # volumes' effort, and 8 so that the curves reach 95 % of the converged ceiling
    "sparse": Profile(
        settings=UNIFORM + HETERO, split="development", pools=5, budgets=(2, 4, 8), arms=SPARSE, effort=True
    ),
}


def with_finetune(arm: Arm, overrides: Sequence[Tuple[str, Any]]) -> Arm:
    if not overrides:
        return arm
    merged = dict(overrides)
    merged.update(dict(arm.finetune))  # an arm's own steps (the ceiling) win over the profile's
    return replace(arm, finetune=tuple(sorted(merged.items())))


def with_effort(arm: Arm, profile: Profile) -> Arm:
    """The arm as ``profile`` runs it: a volume arm of an effort profile records its effort."""
    return replace(arm, record_effort=True) if profile.effort and not arm.records_effort else arm


def plan(
    profile: Profile,
    settings: Optional[Sequence[str]] = None,
    pools: Optional[Iterable[int]] = None,
    arms: Optional[Sequence[str]] = None,
    budgets: Optional[Iterable[int]] = None,
    draws: Optional[int] = None,
) -> List[Unit]:
    """Every unit of ``profile`` (optionally only some settings, pool replicates, arms or budgets), in run order:
    per pool, the floor, then each arm's budgets, draws and seeds, then the ceiling step counts.

    ``budgets`` runs those budgets instead of the profile's, and the floor (every gap is measured against it): a
    budget the profile does not list is run too (e.g. B = 8 on the test split, whose profile runs 2 and 4), never
    dropped in silence; the whole-pool units (the ceiling, budget 0) are kept only when 0 is among them. ``draws``
    keeps only the first that many draws of each seeded arm (e.g. 10 guarded labelled sets before the rest). The
    records are the profile's own either way, so a later run without the filters resumes over them.

    Raises:
        ValueError: a budget below 0.
    """
    chosen = [parse_arm(a) for a in (arms or profile.arms)]
    replicates = list(pools) if pools is not None else list(range(profile.pools))
    wanted = None if budgets is None else set(budgets)
    if wanted is not None and min(wanted, default=0) < 0:
        raise ValueError(f"budgets must be 0 (the whole-pool ceiling) or more labelled volumes, got {sorted(wanted)}")
    labelled_budgets = profile.budgets if wanted is None else tuple(sorted(b for b in wanted if b > 0))
    units: List[Unit] = []
    for name in settings or profile.settings:
        for pool in replicates:
            units.append(Unit(name, profile.split, pool, FLOOR, 0, 0, 0))
            for arm in chosen:
                arm = with_effort(with_finetune(arm, profile.finetune), profile)
                for budget in (0,) if arm.whole_pool else labelled_budgets:
                    for draw in range(arm.draws(budget, profile.draws)):
                        for seed in range(profile.seeds):
                            units.append(Unit(name, profile.split, pool, arm, budget, draw, seed))
            for steps in profile.ceiling_steps:
                for seed in range(profile.seeds):
                    ceiling = with_effort(with_finetune(ceiling_arm(steps), profile.finetune), profile)
                    units.append(Unit(name, profile.split, pool, ceiling, 0, 0, seed))
    if wanted is not None:
        units = [u for u in units if u.arm.name == FLOOR.name or u.budget in wanted]
    if draws is not None:
        units = [u for u in units if u.draw < draws]
    return units


#: Measured cost on one CPU thread of the shared 2-core machine (AMD EPYC), seconds: per training step of Adapt
#: Model's default recipe, and per unit for loading, the label pass and the evaluation (see RESULTS.md, harness).
SECONDS_PER_STEP = {"hippocampus": 0.55, "acdc": 0.35, "acdc_path": 0.35}
SECONDS_PER_UNIT = {"hippocampus": 15.0, "acdc": 15.0, "acdc_path": 10.0}
#: Adapt Model's default steps (100 supervised + 100 second stage), for arms that do not set their own.
DEFAULT_STEPS = 200


def unit_steps(unit: Unit) -> int:
    """Training steps of a unit: the arm's overrides, else the product default; 0 for the floor."""
    if unit.arm.name == FLOOR.name:
        return 0
    finetune = dict(unit.arm.finetune)
    supervised = int(finetune.get("train.iterations", DEFAULT_STEPS // 2))
    return supervised + int(finetune.get("semi_iterations", supervised) or 0)


def estimate_cpu_hours(units: Sequence[Unit]) -> Dict[str, float]:
    """CPU hours (one thread) per setting, from :data:`SECONDS_PER_STEP` and :data:`SECONDS_PER_UNIT`."""
    from .tasks import SETTINGS

    hours: Dict[str, float] = {}
    for unit in units:
        anatomy = SETTINGS[unit.setting].anatomy
        seconds = SECONDS_PER_UNIT[anatomy] + unit_steps(unit) * SECONDS_PER_STEP[anatomy]
        hours[unit.setting] = hours.get(unit.setting, 0.0) + seconds / 3600.0
    return hours


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def write_atomic(path: Path, data: Dict[str, Any]) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place: a reader (or a resumed run) sees
    the whole record or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, allow_nan=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_done(path: Path) -> bool:
    """The record exists and parses (a half-written file cannot exist: see :func:`write_atomic`)."""
    try:
        return "per_case" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


class StaleRecord(ValueError):
    """A record on disk was made for another pool or other evaluation cases than its unit's task has now."""


def check_same_task(path: Path, task: Task) -> None:
    """Refuse to resume over a record whose pool or evaluation cases differ from ``task``'s (the setting or the
    split changed since it was written), or that was trained with another anatomy recipe than Adapt Model's default
    for the task's model is now: skipping it would mix two benchmarks in one table. An unguarded record is compared
    without the recipe's guard settings (``validation.*``), which its training never read.

    Raises:
        StaleRecord: naming the record and what differs.
    """
    from .work import anatomy_recipe

    record = json.loads(path.read_text())
    for name, now in (("pool_cases", task.pool), ("eval_cases", task.eval)):
        if list(record.get(name, now)) != list(now):
            raise StaleRecord(
                f"{path}: its {name} differ from the task's now ({task.key}); the setting or split changed since it "
                f"was written. Move the record folder away (or run under another --name) and run again."
            )
    if (record.get("arm") or {}).get("name") != FLOOR.name:
        made, now = record.get("anatomy_recipe", {}), anatomy_recipe(task)
        if not (record.get("arm") or {}).get("guard"):  # the guard's own settings never touch an unguarded training
            made, now = ({k: v for k, v in r.items() if not k.startswith("validation.")} for r in (made, now))
        if made != now:
            raise StaleRecord(
                f"{path}: trained with the anatomy recipe {made} of an earlier Adapt Model default, the default for "
                f"this model is now {now} (ANATOMY_RECIPES); a table would mix the two. Run under another --name."
            )


def execute_unit(task: Task, unit: Unit, work: Path) -> Dict[str, Any]:
    """Select, adapt and evaluate one unit through the product (see :mod:`.work`)."""
    from . import work as units

    if unit.arm.name == FLOOR.name:
        return {"labelled": [], **units.floor(task)}
    if unit.arm.sparse:  # slices or regions: oracle partial labels within an effort budget
        from . import sparse

        return sparse.execute_sparse(task, unit, work)
    labelled = units.select_cases(task, unit.arm, unit.budget, unit.draw)
    result = units.adapt_and_evaluate(task, unit.arm, labelled, unit.seed, work)
    body = {
        "labelled": labelled,
        "labelled_source_dice": list(units.pool_dice(task, labelled)) if not unit.arm.whole_pool else None,
        **result,
    }
    if unit.arm.records_effort:
        from . import sparse

        body["effort"] = sparse.volume_arm_effort(task, unit.arm, labelled)
    return body


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0
    seconds: float = 0.0
    keys: List[str] = field(default_factory=list)


def run(
    units: Sequence[Unit],
    root: Path,
    profile: Profile,
    execute: Callable[[Task, Unit, Path], Dict[str, Any]] = execute_unit,
    task_of: Optional[Callable[[Unit, Profile], Task]] = None,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Compute every unit whose record is missing under ``root``; skip the others.

    Args:
        units: from :func:`plan`.
        root: record folder (``results/harness/<run name>``).
        profile: the run's profile (pool / evaluation size overrides reach the task).
        execute: computes one record's body (a test passes a fake).
        task_of: builds the unit's task (default :func:`default_task`).
        log: progress lines.
    """
    task_of = task_of or default_task
    summary = RunSummary()
    started = time.perf_counter()
    revision = git_revision()
    tasks: Dict[Tuple[str, str, int], Task] = {}
    work = Path(tempfile.mkdtemp(prefix="harness-"))
    try:
        for index, unit in enumerate(units, start=1):
            path = unit.path(root)
            task_key = (unit.setting, unit.split, unit.pool)
            if task_key not in tasks:
                tasks[task_key] = task_of(unit, profile)
            task = tasks[task_key]
            if is_done(path):
                check_same_task(path, task)
                summary.skipped += 1
                continue
            start = time.perf_counter()
            body = execute(task, unit, work)
            record = {
                "key": unit.key,
                "setting": unit.setting,
                "split": unit.split,
                "pool": unit.pool,
                "arm": unit.arm.to_dict(),
                "budget": unit.budget,
                "draw": unit.draw,
                "seed": unit.seed,
                "pool_cases": list(task.pool),
                "eval_cases": list(task.eval),
                "clusters": task.clusters(),
                "groups": {c: task.setting.group_of(c) for c in task.eval},
                "model": task.model,
                "profile": profile.to_dict(),
                "git": revision,
                "seconds": round(time.perf_counter() - start, 2),
                **body,
            }
            write_atomic(path, record)
            summary.done += 1
            summary.keys.append(unit.key)
            log(f"[{index}/{len(units)}] {unit.key}: mean Dice {record['mean_dice']:.3f} ({record['seconds']:.1f} s)")
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    summary.seconds = time.perf_counter() - started
    return summary


def default_task(unit: Unit, profile: Profile) -> Task:
    return make_task(unit.setting, unit.split, unit.pool, pool_size=profile.pool_size, eval_size=profile.eval_size)


def load_records(root: Path) -> List[Dict[str, Any]]:
    """Every record under ``root`` (sorted by key)."""
    records = []
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        if "per_case" in record and "key" in record:
            records.append(record)
    return records


__all__ = ["ARMS", "PROFILES", "Profile", "Unit", "execute_unit", "load_records", "plan", "run", "write_atomic"]
