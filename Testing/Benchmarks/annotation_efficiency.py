"""Annotation efficiency: target-test Dice against the number of expert-labelled volumes, per query strategy.

Setting (issue 5): the pre-trained model is the embedded default (a small MONAI UNet trained on the *source* split
of MSD Hippocampus). The target domain is the other non-reserved cases under a seeded scanner-appearance shift
(``harness.shifts``; kind and strength are parameters), split deterministically into a target pool
(candidates for labelling) and a target test set (``harness.splits``). The 40 cases of ``reserved.txt`` are
never read.

Two anatomies (``--anatomy``, issue 15 item 5), each with its data folder, split, pre-trained model and a mild and a
harsh shift (``--shift``; ``harness.shifts.BENCHMARK_SHIFTS``):

* ``hippocampus`` (default): MSD Hippocampus, split by case, the embedded default model;
* ``acdc``: ACDC cine cardiac MRI (RV, myocardium, LV), split by patient (both frames of a patient in one part,
  ``harness.splits.split_acdc``), the ACDC source model that ``scripts/train_acdc_source.py`` writes to
  ``~/.cache/assft/acdc-source`` (not shipped: ACDC is non-commercial; ``--model`` names another folder).

For each strategy and budget B the pool is ranked, B volumes get their (hidden) expert labels, the pre-trained
model is fine-tuned with the same number of steps and the same seed for every arm, and Dice is measured on the
shifted target-test cases. Arms:

* baselines, supervised fine-tuning on the labelled volumes only: ``random`` (several seeds), ``fg_random``
  (foreground-size-aware random, several seeds: random among the volumes whose predicted foreground is at least
  ``QueryConfig.fg_random_min_share`` of the pool's median), ``mean_entropy``, ``coreset`` (k-centre), ``clasp_pe``
  (volume-level ClaSP PE), ``mc_dropout`` (MONAI Label epistemic) and ``bald`` (MC-dropout mutual information,
  from the same passes);
* ``assft``: the method, DKD+ASD query and selective pseudo-labels;
* ablations: ``dkd_only`` and ``asd_only`` (query ablations, same selective fine-tuning as ``assft``),
  ``assft_no_pseudo`` and ``assft_all_pseudo`` (same query as ``assft``, fine-tuning ablations) and
  ``random_selective`` (random query with ASSFT's selective fine-tuning: separates the query from the SSL);
* ``ceiling``: every pool volume labelled; ``floor``: no adaptation.

One query round (the default of the quick profile) ranks the whole budget from one cold-start pass of the
pre-trained model over the pool, shared by every strategy (MC dropout adds its own stochastic passes). With
``--rounds R`` the budget is split over R rounds and each later round re-ranks the pool with a model fine-tuned
on the volumes labelled so far (the frozen pre-trained encoder runs beside it, so DKD's knowledge divergence is
no longer zero).

Outputs: ``results/annotation_efficiency_<profile><tag>.md`` (tables), ``.json`` (everything, per case),
``.png`` (Dice against budget).

Usage (from the repository root):

    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/annotation_efficiency.py --profile quick   # ~15 min, 2 cores
    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/annotation_efficiency.py --profile full    # hours
    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/annotation_efficiency.py --anatomy acdc --shift mild
    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/annotation_efficiency.py --profile power --shift harsh \
        --arms asd_only_no_pseudo --tag harsh_asd_only                 # one more arm for an earlier run, then
    PYTHONPATH=. .venv/bin/python Testing/Benchmarks/annotation_efficiency.py --tag harsh_variants \
        --merge results/A.json results/B.json                          # one report of both (no computation)
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import math
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for entry in (str(ROOT), str(HERE)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import ae_tasks  # noqa: E402

from Testing.Benchmarks.harness import stats as query_stats  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hippocampus"
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Anatomy:
    """One anatomy of the benchmark: where its data is, how it is split, which model was pre-trained on it.

    Attributes:
        name: ``--anatomy`` value (a key of ``harness.shifts.BENCHMARK_SHIFTS``).
        data: default data folder (``imagesTr``, ``labelsTr``, ``reserved.txt``).
        model: the pre-trained model (``resolve_card`` spec): ``"default"`` or a model folder.
        grouping: ``"case"`` (every case its own group) or ``"patient"`` (ACDC: both frames of a patient in the
            same part), see ``harness.splits``.
        classes: how the table text names the foreground classes.
        make_model: what to run when ``model`` is missing.
    """

    name: str
    data: Path
    model: str
    grouping: str
    classes: str
    make_model: str = ""


#: The ACDC source model: where ``scripts/train_acdc_source.py`` writes it by default (its ``DEFAULT_OUT``).
ACDC_SOURCE_MODEL = Path("~/.cache/assft/acdc-source")

ANATOMIES = {
    "hippocampus": Anatomy("hippocampus", DEFAULT_DATA, "default", "case", "the two hippocampus classes"),
    "acdc": Anatomy("acdc", ROOT.parent / "shared" / "data" / "acdc", str(ACDC_SOURCE_MODEL), "patient",
                    "RV, myocardium and LV",
                    make_model="OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/train_acdc_source.py"),
}


def anatomy_split(anatomy: Anatomy, cases: Sequence[str], reserved: Sequence[str]):
    """The anatomy's source / target pool / target test split (``harness.splits``)."""
    from Testing.Benchmarks.harness.splits import acdc_patient, each_case, split_cases

    group = {"case": each_case, "patient": acdc_patient}[anatomy.grouping]
    return split_cases(cases, reserved, group=group)


def whole_groups(cases: Sequence[str], size: Optional[int], anatomy: Anatomy) -> List[str]:
    """The first ``size`` of ``cases`` (all when ``size`` is falsy), extended to the end of the last group, so that a
    patient is never split between the pool and the test set."""
    from Testing.Benchmarks.harness.splits import acdc_patient, each_case

    cases = list(cases)
    if not size or size >= len(cases):
        return cases
    group = {"case": each_case, "patient": acdc_patient}[anatomy.grouping]
    end = size
    while end < len(cases) and group(cases[end]) == group(cases[end - 1]):
        end += 1
    return cases[:end]


def resolve_model(anatomy: Anatomy, spec: Optional[str]) -> str:
    """The pre-trained model's card spec, checked to load; exits with what to run when it is missing."""
    from ASSFTActive.errors import AssftError
    from ASSFTActive.store import resolve_card

    model = spec or anatomy.model
    if model != "default":
        path = Path(model).expanduser()
        if not path.exists():
            hint = (f"train it with `{anatomy.make_model}` (it writes {anatomy.model}), or " if anatomy.make_model
                    and spec is None else "")
            sys.exit(f"error: the pre-trained {anatomy.name} model {path} does not exist; {hint}pass --model "
                     "<model folder or card.json>.")
        model = str(path.resolve())
    try:
        card = resolve_card(model)
    except AssftError as error:
        sys.exit(f"error: the pre-trained {anatomy.name} model cannot be used: {error}")
    return model if model == "default" else str(card.path)


@dataclass(frozen=True)
class Profile:
    """Size of one benchmark run.

    Attributes:
        pool_size: target-pool cases offered for labelling (``None`` = the whole target-pool split).
        test_size: target-test cases evaluated (``None`` = the whole target-test split).
        budgets: numbers of labelled volumes.
        rounds: query rounds per budget.
        iterations: supervised steps of each fine-tuning run (stage 1).
        semi_iterations: steps of stage 2 (labelled + pseudo-labelled, or labelled only).
        random_seeds: seeds of the random strategy.
        train_seeds: training seeds per arm (the spread of deterministic strategies).
        mc_samples: stochastic passes of MC dropout.
        test_adds_unused_pool: the target test also holds the target-pool split's cases (whole groups) that are not
            in the pool, for more test cases (statistical power, issue 15 item 1).
    """

    pool_size: Optional[int]
    test_size: Optional[int]
    budgets: Tuple[int, ...]
    rounds: int
    iterations: int
    semi_iterations: int
    random_seeds: int
    train_seeds: int
    mc_samples: int
    test_adds_unused_pool: bool = False


PROFILES = {
    "quick": Profile(pool_size=36, test_size=20, budgets=(2, 4, 8), rounds=1, iterations=60, semi_iterations=60,
                     random_seeds=3, train_seeds=1, mc_samples=10),
    "full": Profile(pool_size=None, test_size=None, budgets=(2, 4, 8, 16), rounds=2, iterations=200,
                    semi_iterations=200, random_seeds=5, train_seeds=3, mc_samples=10),
    # the query comparison with power (issue 15): budgets 2 and 4, 5 random seeds x 3 training seeds, and every
    # non-reserved, non-source case outside the pool in the test set
    "power": Profile(pool_size=36, test_size=None, budgets=(2, 4), rounds=1, iterations=60, semi_iterations=60,
                     random_seeds=5, train_seeds=3, mc_samples=10, test_adds_unused_pool=True),
}


@dataclass(frozen=True)
class Arm:
    """One line of the results table.

    Attributes:
        name: key in the outputs.
        strategy: the query strategy (``QueryConfig.strategy``).
        pseudo: pseudo-labelling of the fine-tuning (``none``, ``selective``, ``all``).
        label: text in the table.
        seeded: the query is random: run it with every random seed.
        assft_query: the arm uses the ASSFT query settings (``--assft-query`` overrides).
        query_overrides: ``QueryConfig`` fields the arm sets on top (a query variant, issue 15 item 3).
    """

    name: str
    strategy: str
    pseudo: str
    label: str
    seeded: bool = False
    assft_query: bool = False
    query_overrides: Tuple[Tuple[str, Any], ...] = ()


ARMS = (
    Arm("random", "random", "none", "random", seeded=True),
    Arm("mean_entropy", "mean_entropy", "none", "mean entropy"),
    Arm("coreset", "coreset", "none", "k-centre coreset"),
    Arm("clasp_pe", "clasp_pe", "none", "ClaSP PE (volume level)"),
    Arm("mc_dropout", "mc_dropout", "none", "MC dropout (epistemic)"),
    Arm("fg_random", "fg_random", "none", "foreground-aware random", seeded=True),
    Arm("bald", "bald", "none", "BALD (MC-dropout mutual information)"),
    Arm("assft", "assft", "selective", "**ASSFT** (DKD+ASD, selective pseudo-labels)", assft_query=True),
    Arm("dkd_only", "dkd_only", "selective", "ablation: DKD only (+ selective)", assft_query=True),
    Arm("asd_only", "asd_only", "selective", "ablation: ASD only (+ selective)", assft_query=True),
    Arm("assft_no_pseudo", "assft", "none", "ablation: ASSFT query, no pseudo-labels", assft_query=True),
    Arm("assft_all_pseudo", "assft", "all", "ablation: ASSFT query, all pseudo-labels", assft_query=True),
    # query variants with labels-only fine-tuning (issue 15 item 3: which scores earn their weight)
    Arm("assft_class_balanced_no_pseudo", "assft", "none", "variant: ASSFT query, class-balanced ASD, no pseudo-labels",
        assft_query=True, query_overrides=(("asd_reduce", "class_balanced"),)),
    Arm("asd_only_no_pseudo", "asd_only", "none", "variant: ASD only, no pseudo-labels", assft_query=True),
    Arm("dkd_only_no_pseudo", "dkd_only", "none", "variant: DKD only, no pseudo-labels", assft_query=True),
    Arm("assft_two_stage_no_pseudo", "assft", "none",
        "variant: ASSFT query, diversity first (two-stage), no pseudo-labels", assft_query=True,
        query_overrides=(("combine", "two_stage"),)),
    Arm("random_selective", "random", "selective", "control: random query + selective pseudo-labels", seeded=True),
)


# --------------------------------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> Dict[str, Any]:
    """Where the numbers were measured."""
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram": ram, "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(), "gpu": torch.cuda.is_available(),
            "load_average_at_start": [round(x, 2) for x in load]}


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True)
        return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def split_budget(budget: int, rounds: int) -> List[int]:
    """Round sizes: the product's schedule (``ASSFTActive.query.round_budgets``, what ``assft rank --rounds``
    follows): ``budget`` split as evenly as possible over ``min(rounds, budget)`` rounds, larger first."""
    from ASSFTActive.query import round_budgets

    return round_budgets(budget, rounds)


aubc = query_stats.aubc


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class Experiment:
    """Resolved settings of one run (written to the JSON)."""

    profile: str
    tag: str
    data: str
    pool: List[str]
    test: List[str]
    budgets: List[int]
    rounds: int
    shift: Dict[str, Any]
    train: Dict[str, Any]
    semi_iterations: int
    pseudo: Dict[str, Any]
    assft_query: Dict[str, Any]
    random_seeds: List[int]
    train_seeds: List[int]
    mc_samples: int
    workers: int
    arms: List[str]
    command: str
    guard: bool = True
    anatomy: str = "hippocampus"
    model: str = "default"


def resolve(args: argparse.Namespace) -> Experiment:
    from ASSFTActive.finetune.config import PseudoLabelConfig, TrainConfig
    from ASSFTActive.io import case_id
    from ASSFTActive.query import QueryConfig
    from Testing.Benchmarks.harness.shifts import ShiftConfig, benchmark_shift
    from Testing.Benchmarks.harness.splits import read_reserved

    profile = PROFILES[args.profile]
    anatomy = ANATOMIES[args.anatomy]
    data = Path(args.data) if args.data is not None else anatomy.data
    if not (data / "imagesTr").is_dir():
        sys.exit(f"error: {data} has no imagesTr folder; pass --data <{anatomy.name} data folder>.")
    reserved = read_reserved(data / "reserved.txt")
    if not reserved:
        sys.exit(f"error: {data / 'reserved.txt'} is missing or empty; it must list the reserved cases.")
    split = anatomy_split(anatomy, [case_id(p) for p in sorted((data / "imagesTr").glob("*.nii.gz"))], reserved)
    pool_size = args.pool_size if args.pool_size is not None else profile.pool_size
    test_size = args.test_size if args.test_size is not None else profile.test_size
    pool = whole_groups(split.target_pool[args.pool_offset:], pool_size, anatomy)
    test = list(split.target_test[args.test_offset:])
    if profile.test_adds_unused_pool:
        test += [c for c in split.target_pool if c not in set(pool)]
    test = test[:test_size] if test_size else test
    overlap = set(reserved) & (set(pool) | set(test))
    if overlap:  # split_cases already drops them; this guards the rule itself
        sys.exit(f"error: reserved cases {sorted(overlap)} reached the benchmark.")
    budgets = sorted(args.budgets or profile.budgets)
    if max(budgets) > len(pool):
        sys.exit(f"error: budget {max(budgets)} exceeds the pool of {len(pool)} cases.")
    preset = benchmark_shift(anatomy.name, args.shift)  # --shift-kind / --shift-strength override its parts
    shift = ShiftConfig(kind=args.shift_kind or preset.kind,
                        strength=preset.strength if args.shift_strength is None else args.shift_strength,
                        seed=args.shift_seed)
    model = resolve_model(anatomy, args.model)
    train = TrainConfig(iterations=args.iterations or profile.iterations, seed=0)  # the product's other defaults
    if args.learning_rate is not None:
        train = TrainConfig.from_dict({**train.to_dict(), "learning_rate": args.learning_rate})
    if args.train_config:
        train = TrainConfig.from_dict({**train.to_dict(), **json.loads(args.train_config)})
    pseudo = PseudoLabelConfig.from_dict(json.loads(args.pseudo_config)) if args.pseudo_config else PseudoLabelConfig()
    assft_query = QueryConfig.from_dict(json.loads(args.assft_query)) if args.assft_query else QueryConfig()
    names = args.arms.split(",") if args.arms else [a.name for a in ARMS]
    unknown = sorted(set(names) - {a.name for a in ARMS})
    if unknown:
        sys.exit(f"error: unknown arm(s) {unknown}; known: {[a.name for a in ARMS]}")
    return Experiment(
        profile=args.profile, tag=args.tag, data=str(data), pool=pool, test=test, budgets=budgets,
        rounds=args.rounds or profile.rounds, shift=shift.to_dict(), train=train.to_dict(),
        semi_iterations=args.semi_iterations or profile.semi_iterations, pseudo=pseudo.to_dict(),
        assft_query={k: v for k, v in assft_query.to_dict().items() if k not in ("strategy", "seed")},
        random_seeds=list(range(args.random_seeds or profile.random_seeds)),
        train_seeds=list(range(args.train_seeds or profile.train_seeds)),
        mc_samples=args.mc_samples or profile.mc_samples, workers=args.workers, arms=names, guard=not args.no_guard,
        anatomy=anatomy.name, model=model,
        command=" ".join(["PYTHONPATH=. .venv/bin/python", "Testing/Benchmarks/annotation_efficiency.py"]
                         + sys.argv[1:]),
    )


def query_config(arm: Arm, seed: int, exp: Experiment):
    from ASSFTActive.query import QueryConfig

    base = dict(exp.assft_query) if arm.assft_query else {}
    return QueryConfig.from_dict({**base, **dict(arm.query_overrides), "strategy": arm.strategy, "seed": seed,
                                  "mc_samples": exp.mc_samples})


_EVIDENCE_CACHE: Dict[str, List[Any]] = {}


def pool_evidence(analysis: Dict[str, Dict[str, Any]], config, exp: Experiment) -> List[Any]:
    """``CaseEvidence`` of every pool case under ``config`` (cached: the strategy and seed do not change it)."""
    key = json.dumps({k: v for k, v in config.to_dict().items() if k not in ("strategy", "seed")}, sort_keys=True)
    if key not in _EVIDENCE_CACHE:
        _EVIDENCE_CACHE[key] = [ae_tasks.summarize(analysis[c], config) for c in exp.pool]
    return _EVIDENCE_CACHE[key]


def first_round(arm: Arm, seed: int, size: int, analysis: Dict[str, Dict[str, Any]], exp: Experiment,
                total_rounds: int) -> List[str]:
    """Round-0 batch of one arm from the shared cold-start analysis (what ``assft rank`` selects)."""
    from ASSFTActive.query import select

    config = query_config(arm, seed, exp)
    evidence = pool_evidence(analysis, config, exp)
    return list(select(evidence, size, config, round_index=0, total_rounds=total_rounds).selected_ids)


def run(exp: Experiment, out_stem: Path) -> Dict[str, Any]:
    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="annotation-efficiency-")
    image_dir = write_shifted_pool(exp, Path(work))
    setup = ae_tasks.Setup(data=exp.data, pool=tuple(exp.pool), test=tuple(exp.test), shift=exp.shift,
                           train=exp.train, semi_iterations=exp.semi_iterations, pseudo=exp.pseudo,
                           guard=exp.guard, image_dir=str(image_dir), model=exp.model)
    try:
        return _run(exp, setup, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_shifted_pool(exp: Experiment, work: Path) -> Path:
    """The shifted pool volumes as NIfTI files (``adapt_model`` reads its images from disk)."""
    from ASSFTActive.io import write_volume

    folder = work / "images"
    ae_tasks.init_worker(ae_tasks.Setup(data=exp.data, pool=tuple(exp.pool), test=(), shift=exp.shift, train={},
                                        semi_iterations=0, pseudo={}, model=exp.model), threads=1)
    for case in exp.pool:
        image = ae_tasks.shifted_case(case)[0]
        write_volume(image, folder / f"{case}.nii.gz")
    ae_tasks._STATE.clear()
    return folder


def _run(exp: Experiment, setup: ae_tasks.Setup, started: float) -> Dict[str, Any]:
    arms = [a for a in ARMS if a.name in exp.arms]
    context = multiprocessing.get_context("spawn")
    timings: Dict[str, float] = {}
    with futures.ProcessPoolExecutor(max_workers=exp.workers, mp_context=context, initializer=ae_tasks.init_worker,
                                     initargs=(setup, 1)) as pool:
        # phase 0: one cold-start pass of the pre-trained model over the pool (with MC-dropout samples)
        t0 = time.perf_counter()
        wants_mc = any(a.strategy in ae_tasks.MC_STRATEGIES for a in arms)
        chunks = [exp.pool[i::exp.workers * 2] for i in range(exp.workers * 2)]
        jobs = [pool.submit(ae_tasks.analyse_cases, chunk, None, exp.mc_samples if wants_mc else 0, "cold")
                for chunk in chunks if chunk]
        floor_job = pool.submit(ae_tasks.train_and_evaluate, [], "none", 0)
        analysis = {a["case_id"]: a for job in jobs for a in job.result()}
        timings["cold_start_analysis_s"] = time.perf_counter() - t0
        log(f"cold-start analysis of {len(analysis)} pool volumes: {timings['cold_start_analysis_s']:.1f} s "
            f"(MC dropout {'on' if wants_mc else 'off'})")

        # phase A: which volumes each arm labels, per budget (and random seed)
        t0 = time.perf_counter()
        selections: Dict[Tuple[str, int, int], Dict[str, Any]] = {}
        path_jobs = {}
        for arm in arms:
            seeds = exp.random_seeds if arm.seeded else [0]
            for seed in seeds:
                for budget in exp.budgets:
                    sizes = split_budget(budget, exp.rounds)
                    first = first_round(arm, seed, sizes[0], analysis, exp, len(sizes))
                    key = (arm.name, seed, budget)
                    if len(sizes) == 1:
                        selections[key] = {"labeled": first, "rounds": [{"selected": first}]}
                        continue
                    # arms sharing a query share a path
                    query_key = (arm.strategy, arm.assft_query, arm.query_overrides, seed, budget)
                    if query_key not in path_jobs:
                        config = query_config(arm, seed, exp).to_dict()
                        path_jobs[query_key] = pool.submit(ae_tasks.query_path, f"{arm.strategy}-{seed}-{budget}",
                                                           config, first, sizes, exp.train_seeds[0], exp.mc_samples)
                    selections[key] = path_jobs[query_key]
        for key, value in list(selections.items()):
            if isinstance(value, futures.Future):
                selections[key] = value.result()
        timings["selection_s"] = time.perf_counter() - t0
        log(f"selections done: {len(selections)} ({len(path_jobs)} multi-round paths) in "
            f"{timings['selection_s']:.1f} s")

        # phase B: fine-tune and evaluate every distinct (labelled set, pseudo mode, training seed) once
        t0 = time.perf_counter()
        runs: Dict[Tuple[Tuple[str, ...], str, int], futures.Future] = {}
        for arm in arms:
            for seed in (exp.random_seeds if arm.seeded else [0]):
                for budget in exp.budgets:
                    labeled = tuple(sorted(selections[(arm.name, seed, budget)]["labeled"]))
                    for train_seed in exp.train_seeds:
                        key = (labeled, arm.pseudo, train_seed)
                        if key not in runs:
                            runs[key] = pool.submit(ae_tasks.train_and_evaluate, list(labeled), arm.pseudo,
                                                    train_seed)
        for train_seed in exp.train_seeds:
            key = (tuple(sorted(exp.pool)), "none", train_seed)
            runs.setdefault(key, pool.submit(ae_tasks.train_and_evaluate, list(exp.pool), "none", train_seed))
        log(f"{len(runs)} distinct fine-tuning runs queued on {exp.workers} worker(s)")
        done = 0
        for job in futures.as_completed(list(runs.values())):
            result = job.result()
            done += 1
            log(f"  run {done}/{len(runs)}: mean Dice {result['mean_dice']:.3f} "
                f"({result['train'].get('pseudo_mode')}, {result['seconds']:.1f} s)")
        results = {key: job.result() for key, job in runs.items()}
        floor = floor_job.result()
        timings["finetune_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started

    train_seconds = [r["train"]["seconds"] for r in results.values()]
    timings["mean_train_seconds_per_run"] = float(np.mean(train_seconds))
    arm_rows: Dict[str, Any] = {}
    for arm in arms:
        per_budget = {}
        for budget in exp.budgets:
            entries = []
            for seed in (exp.random_seeds if arm.seeded else [0]):
                selection = selections[(arm.name, seed, budget)]
                labeled = tuple(sorted(selection["labeled"]))
                for train_seed in exp.train_seeds:
                    r = results[(labeled, arm.pseudo, train_seed)]
                    entries.append({"query_seed": seed, "train_seed": train_seed, "labeled": selection["labeled"],
                                    "rounds": selection["rounds"], "mean_dice": r["mean_dice"],
                                    "per_class": r["per_class"], "per_case": r["per_case"], "train": r["train"],
                                    "selected_pretrained_dice": float(np.mean([analysis[c]["dice"]
                                                                                for c in selection["labeled"]]))})
            dice = [e["mean_dice"] for e in entries]
            per_budget[budget] = {"mean": float(np.mean(dice)), "sd": float(np.std(dice, ddof=1)) if len(dice) > 1
                                  else None, "n": len(dice), "runs": entries}
        arm_rows[arm.name] = {"label": arm.label, "strategy": arm.strategy, "pseudo": arm.pseudo,
                              "budgets": per_budget,
                              "aubc": aubc(exp.budgets, [per_budget[b]["mean"] for b in exp.budgets]),
                              "aubc_runs": query_stats.aubc_runs({b: per_budget[b]["runs"] for b in exp.budgets},
                                                                 aubc)}
    ceiling_runs = [results[(tuple(sorted(exp.pool)), "none", s)] for s in exp.train_seeds]
    pool_dice = {c: analysis[c]["dice"] for c in exp.pool}
    return {
        "experiment": asdict(exp), "machine": MACHINE, "git": MACHINE["git"], "timings": timings,
        "floor": {"mean_dice": floor["mean_dice"], "per_class": floor["per_class"], "per_case": floor["per_case"]},
        "ceiling": {"mean": float(np.mean([r["mean_dice"] for r in ceiling_runs])),
                    "sd": float(np.std([r["mean_dice"] for r in ceiling_runs], ddof=1)) if len(ceiling_runs) > 1
                    else None, "n": len(ceiling_runs), "runs": [{k: r[k] for k in ("mean_dice", "per_class",
                                                                                   "per_case")}
                                                                for r in ceiling_runs]},
        "arms": arm_rows,
        "pool_diagnostics": diagnostics(analysis, exp),
        "pool_pretrained_dice": pool_dice,
        # cold-start evidence under the ASSFT query settings, to replay any selection offline
        "pool_evidence": [e.to_dict() for e in pool_evidence(
            analysis, query_config(next(a for a in ARMS if a.name == "assft"), 0, exp), exp)],
    }


def diagnostics(analysis: Dict[str, Dict[str, Any]], exp: Experiment) -> Dict[str, Any]:
    """How well each cold-start score predicts where the pre-trained model fails (Spearman rho with 1 - Dice).

    Uses the hidden pool labels, so it is a diagnosis of the scores, never an input of any selector. The scores
    and the correlation are the product's (``ASSFTActive.query.score_error_correlations``): ASD voxel mean and
    class-balanced, ClaSP PE class mean and plain, mean entropy, DKD and KD (constant at cold start, so no
    correlation), MC-dropout epistemic and BALD when the passes were run.
    """
    from ASSFTActive.query import QueryConfig, RegionSpec, region_sums
    from Testing.Benchmarks.harness.diagnostics import score_error_correlations

    config = QueryConfig.from_dict({**exp.assft_query, "strategy": "assft", "mc_samples": exp.mc_samples})
    evidence = pool_evidence(analysis, config, exp)
    error = np.array([1.0 - analysis[c]["dice"] for c in exp.pool])
    spec = RegionSpec.from_config(config)
    sums = [region_sums(analysis[c]["probs"].astype(np.float32), spec) for c in exp.pool]
    extra = {}
    for key, name in (("epistemic", "mc_dropout"), ("mutual_information", "bald")):
        if all(analysis[c].get(key) is not None for c in exp.pool):
            extra[name] = [analysis[c][key] for c in exp.pool]
    result = score_error_correlations(sums, error, config, evidence=evidence, extra=extra)
    return {"score_vs_pretrained_error": {name: r.to_dict() for name, r in result.items()},
            "pool_pretrained_mean_dice": float(np.mean(1 - error)),
            "pool_pretrained_dice_range": [float(np.min(1 - error)), float(np.max(1 - error))]}


# -------------------------------------------------------------------------------------------------- report


def _home_relative(path: str) -> str:
    """``path`` with the user's home folder written ``~`` (reports name no machine's home)."""
    home = str(Path.home())
    return "~" + path[len(home):] if path.startswith(home + "/") else path


def _aubc_cell(row: Dict[str, Any]) -> str:
    """The AUBC of the mean curve, ± the spread of the per-run AUBCs (runs present at every budget)."""
    sd = query_stats.spread(row.get("aubc_runs", []))
    return f"{row['aubc']:.3f}" if sd is None else f"{row['aubc']:.3f} ± {sd:.3f}"


def _cell(entry: Dict[str, Any]) -> str:
    if entry["sd"] is None:
        return f"{entry['mean']:.3f}"
    return f"{entry['mean']:.3f} ± {entry['sd']:.3f}"


def _runs(report: Dict[str, Any], arm: str, budget: int) -> List[Dict[str, Any]]:
    row = report["arms"][arm]
    return row["budgets"][_k(row, budget)]["runs"]


def gap(report: Dict[str, Any], arm: str, reference: str, budget: int):
    """``query_stats.PairedGap`` of ``arm`` over ``reference`` at ``budget``, paired over the target-test cases."""
    cases = report["experiment"]["test"]
    return query_stats.paired_gap(query_stats.draw_matrix(_runs(report, arm, budget), cases),
                                  query_stats.draw_matrix(_runs(report, reference, budget), cases))


def _gap_cell(g) -> str:
    p = "" if math.isnan(g.p_wilcoxon) else f", p {g.p_wilcoxon:.3f}"
    return f"{g.gap:+.3f} [{g.low:+.3f}, {g.high:+.3f}]{p}"


#: Arms that run ASSFT's query with labels-only fine-tuning: the candidates of issue 15's goal.
QUERY_ARMS = (
    "assft_no_pseudo",
    "assft_class_balanced_no_pseudo",
    "asd_only_no_pseudo",
    "dkd_only_no_pseudo",
    "assft_two_stage_no_pseudo",
)
#: The strongest simple baselines of issue 15's goal.
STRONG_BASELINES = ("coreset", "clasp_pe")
#: Issue 15's goal: at least this much over random (bootstrap interval above 0) and over the best strong baseline.
GOAL_OVER_RANDOM, GOAL_OVER_BEST = 0.05, 0.02


def headroom(report: Dict[str, Any], budget: int) -> float:
    """Ceiling minus random's mean Dice at ``budget``: the most any query could gain over random here."""
    random_row = report["arms"]["random"]
    return float(report["ceiling"]["mean"] - random_row["budgets"][_k(random_row, budget)]["mean"])


#: The product's default query (labels-only arm), the reference of :func:`variant_lines`.
DEFAULT_QUERY_ARM = "assft_no_pseudo"


def variant_lines(report: Dict[str, Any]) -> List[str]:
    """The paired gap of each query variant to the default query: the evidence a default change needs."""
    rows = report["arms"]
    variants = [a for a in QUERY_ARMS if a in rows and a != DEFAULT_QUERY_ARM]
    if DEFAULT_QUERY_ARM not in rows or not variants:
        return []
    budgets = report["experiment"]["budgets"]
    lines = ["", f"Difference of each query variant to the default ({rows[DEFAULT_QUERY_ARM]['label']}): mean "
             "over the test cases of the per-case Dice difference, [95 % bootstrap interval], Wilcoxon p (same "
             "model, same fine-tuning):", "",
             "| variant | " + " | ".join(f"B = {b}" for b in budgets) + " |", "|" + "---|" * (len(budgets) + 1)]
    for name in variants:
        lines.append(f"| {rows[name]['label']} | "
                     + " | ".join(_gap_cell(gap(report, name, DEFAULT_QUERY_ARM, b)) for b in budgets) + " |")
    return lines


def comparison_lines(report: Dict[str, Any]) -> List[str]:
    """The paired gaps to random, the noise floor, and the goal of issue 15 (met / missed)."""
    exp = report["experiment"]
    budgets = exp["budgets"]
    rows = report["arms"]
    if "random" not in rows:
        return []
    floors = [gap(report, "random", "random", b).noise_floor for b in budgets]
    lines = ["", "Difference to random: mean over the target-test cases of the per-case Dice difference (each side "
             "averaged over its runs), [95 % interval] from a two-level bootstrap that resamples the test cases "
             "and the query seeds together, and the two-sided Wilcoxon signed-rank p over the test cases. "
             "Noise floor: the standard deviation of random's mean Dice between its query seeds "
             + ", ".join(f"B = {b}: {f:.3f}" for b, f in zip(budgets, floors)) + ".", ""]
    lines += ["| strategy | " + " | ".join(f"B = {b}" for b in budgets) + " | noise floor |",
              "|" + "---|" * (len(budgets) + 2)]
    for name, row in rows.items():
        if name == "random":
            continue
        cells = [_gap_cell(gap(report, name, "random", b)) for b in budgets]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " | "
                     + " / ".join(f"{f:.3f}" for f in floors) + " |")
    candidates = [a for a in QUERY_ARMS if a in rows]
    baselines = [a for a in STRONG_BASELINES if a in rows]
    if not candidates:
        return lines
    lines += ["", f"Goal of issue 15 (labels-only fine-tuning): ASSFT's query >= random + {GOAL_OVER_RANDOM} with the "
              f"interval above 0, and >= the best of {' / '.join(baselines) or 'the strong baselines'} + "
              f"{GOAL_OVER_BEST} (the best chosen per budget by its mean). Headroom: the ceiling (every pool "
              "volume labelled, same fine-tuning) minus random; where it is below "
              f"{GOAL_OVER_RANDOM}, no query can reach the goal over random in this setting.", "",
              "| query | B | vs random | vs best strong baseline | headroom | goal |", "|---|---|---|---|---|---|"]
    for name in candidates:
        for b in budgets:
            over_random = gap(report, name, "random", b)
            best = max(baselines, key=lambda a: rows[a]["budgets"][_k(rows[a], b)]["mean"]) if baselines else None
            over_best = gap(report, name, best, b) if best else None
            met = (over_random.gap >= GOAL_OVER_RANDOM and over_random.low > 0
                   and (over_best is None or over_best.gap >= GOAL_OVER_BEST))
            lines.append(f"| {rows[name]['label']} | {b} | {_gap_cell(over_random)} | "
                         + (f"{best}: {_gap_cell(over_best)}" if best else "n/a") + f" | "
                         f"{headroom(report, b):+.3f} | {'met' if met else 'missed'} |")
    return lines


def markdown(report: Dict[str, Any]) -> str:
    exp = report["experiment"]
    budgets = exp["budgets"]
    m = report["machine"]
    t = report["timings"]
    guard = "on" if exp.get("guard", True) else "off"
    anatomy = ANATOMIES[exp.get("anatomy", "hippocampus")]
    where = "" if anatomy.name == "hippocampus" else f", {anatomy.name}"
    lines = [f"# Annotation efficiency ({exp['profile']} profile{where}{' ' + exp['tag'] if exp['tag'] else ''})",
             ""]
    lines += [
        f"- Command: `{exp['command']}`",
        f"- Machine: {m['nproc']} CPU cores ({m['cpu']}), {m['ram']} RAM, torch {m['torch']}, "
        f"GPU {'yes' if m['gpu'] else 'no'}; load average at start {m['load_average_at_start']}; "
        f"{exp['workers']} worker process(es) x 1 torch thread; revision {report['git']}",
        f"- Wall time: **{t['total_s'] / 60:.1f} min** (cold-start analysis {t['cold_start_analysis_s']:.0f} s, "
        f"selection {t['selection_s']:.0f} s, fine-tuning + evaluation {t['finetune_s']:.0f} s; "
        f"{t['mean_train_seconds_per_run']:.1f} s of training per run on average)",
        f"- Shift: `{exp['shift']}`; target pool {len(exp['pool'])} cases ({exp['pool'][0]} .. {exp['pool'][-1]}), "
        f"target test {len(exp['test'])} cases ({exp['test'][0]} .. {exp['test'][-1]}) (hash split, reserved cases "
        "excluded)",
        f"- Fine-tuning, identical for every arm: {exp['train']['iterations']} supervised steps + "
        f"{exp['semi_iterations']} second-stage steps through `adapt_model` (guard {guard}; batch "
        f"{exp['train']['batch_size']} patches {exp['train']['patch_size'] or 'of the card'}, AdamW lr "
        f"{exp['train']['learning_rate']}, pseudo-loss weight {exp['train']['pseudo_weight']} ramped over "
        f"{exp['train']['rampup_fraction']:.0%} of the stage), training seeds {exp['train_seeds']}; query rounds "
        f"{exp['rounds']}; random seeds {exp['random_seeds']}; MC dropout {exp['mc_samples']} passes",
        f"- ASSFT query settings: `{ {k: v for k, v in exp['assft_query'].items() if k in _SHOWN_QUERY} }`; "
        f"pseudo-labels: `{ {k: v for k, v in exp['pseudo'].items() if k in _SHOWN_PSEUDO} }`",
    ]
    for index, part in enumerate(exp.get("merged_from", [])):
        lines.insert(3 + index, f"- Merged from `{part['file']}` (revision {part['git']}, "
                                f"{part['total_s'] / 60:.1f} min): `{part['command']}`")
    if anatomy.name != "hippocampus":
        lines.insert(3, f"- Anatomy: {anatomy.name}, pre-trained model `{_home_relative(exp['model'])}` (split by "
                        f"{anatomy.grouping})")
    lines += ["", f"Mean target-test Dice (mean of {anatomy.classes}); ± is the standard deviation over "
              "runs (random query seeds x training seeds), shown where an arm has more than one run. AUBC: "
              "normalised area under the Dice-versus-budget curve on a log2 budget axis, ± the spread of the "
              "per-run AUBCs.", ""]
    header = "| strategy | fine-tuning | " + " | ".join(f"B = {b}" for b in budgets) + " | AUBC |"
    lines += [header, "|" + "---|" * (len(budgets) + 3)]
    lines.append("| no adaptation (floor) | none | " + " | ".join(f"{report['floor']['mean_dice']:.3f}"
                                                                for _ in budgets)
                 + f" | {report['floor']['mean_dice']:.3f} |")
    for row in report["arms"].values():
        cells = [_cell(row["budgets"][_k(row, b)]) for b in budgets]
        n = row["budgets"][_k(row, budgets[0])]["n"]
        lines.append(f"| {row['label']}{f' (n={n})' if n > 1 else ''} | {row['pseudo']} | " + " | ".join(cells)
                     + f" | {_aubc_cell(row)} |")
    ceiling = report["ceiling"]
    lines.append(f"| all {len(exp['pool'])} pool volumes labelled (ceiling) | none | "
                 + " | ".join(_cell(ceiling) for _ in budgets) + f" | {ceiling['mean']:.3f} |")
    lines += comparison_lines(report)
    lines += variant_lines(report)
    lines += ["", "Mean cold-start Dice of the pre-trained model on the volumes each arm chose (low = the arm "
              "picked volumes the model fails on; hidden labels, diagnostic only):", ""]
    lines += ["| strategy | " + " | ".join(f"B = {b}" for b in budgets) + " |", "|" + "---|" * (len(budgets) + 1)]
    for row in report["arms"].values():
        cells = [f"{np.mean([r['selected_pretrained_dice'] for r in row['budgets'][_k(row, b)]['runs']]):.3f}"
                 for b in budgets]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    diag = report["pool_diagnostics"]
    lines += ["", f"Pool under the shift, pre-trained model: mean Dice {diag['pool_pretrained_mean_dice']:.3f} "
              f"(range {diag['pool_pretrained_dice_range'][0]:.3f} to {diag['pool_pretrained_dice_range'][1]:.3f}). "
              "Spearman correlation of each cold-start score with the model's error (1 - Dice) over the pool:", ""]
    lines += ["| score | rho | p |", "|---|---|---|"]
    for name, v in diag["score_vs_pretrained_error"].items():
        if v["spearman_rho"] is None:
            lines.append(f"| {name} | n/a (constant over the pool) | |")
        else:
            lines.append(f"| {name} | {v['spearman_rho']:+.2f} | {v['p']:.3f} |")
    lines += interim_table(report)
    pseudo_rows = []
    for row in report["arms"].values():
        if row["pseudo"] == "none":
            continue
        for b in budgets:
            runs = row["budgets"][_k(row, b)]["runs"]
            kept = [len(r["train"]["kept"]) for r in runs]
            quality = [r["train"].get("kept_pseudo_dice") for r in runs if r["train"].get("kept_pseudo_dice")]
            shown = f"{np.mean(quality):.3f}" if quality else "not recorded"
            pseudo_rows.append(f"| {row['label']} | {b} | {np.mean(kept):.1f} | {shown} |")
    if pseudo_rows:
        lines += ["", "Pseudo-labelled volumes used, and their true Dice against the hidden labels (diagnostic):",
                  "", "| strategy | B | volumes | Dice of the pseudo-labels |", "|---|---|---|---|"] + pseudo_rows
    lines += ["", f"![Dice against budget]({Path(report['png']).name})", ""]
    return "\n".join(lines)


_INTERIM_SCORES = ("asd_voxel_mean", "asd_class_balanced", "clasp_class_mean", "mean_entropy", "dkd",
                   "knowledge_divergence", "mc_dropout", "bald")


def interim_rhos(row: Dict[str, Any]) -> Dict[str, List[float]]:
    """``{score: [Spearman rho with the interim model's error]}`` over the later rounds of every run of an arm."""
    collected: Dict[str, List[float]] = {}
    for entry in row["budgets"].values():
        for run in entry["runs"]:
            for record in run.get("rounds", [])[1:]:
                for name, value in record.get("score_vs_interim_error", {}).items():
                    if value.get("spearman_rho") is not None:
                        collected.setdefault(name, []).append(value["spearman_rho"])
    return collected


def interim_table(report: Dict[str, Any]) -> List[str]:
    """With several rounds: Spearman rho of each score with the interim (adapted) model's error over the remaining
    candidates, mean over the later rounds of every path of an arm (hidden labels, diagnostic only)."""
    rows = []
    for row in report["arms"].values():
        collected = {n: v for n, v in interim_rhos(row).items() if not n.startswith("kd_")}
        if collected:
            cells = [f"{np.mean(collected[n]):+.2f}" if n in collected else "n/a" for n in _INTERIM_SCORES]
            rows.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return _interim_lines(rows) + kd_variant_table(report)


def kd_variant_table(report: Dict[str, Any]) -> List[str]:
    """With several rounds: Spearman rho of the knowledge divergence of each metric and number of deepest encoder
    stages with the interim model's error (``ASSFTActive.query.kd_variant_correlations``), mean over the later
    rounds of an arm's paths, with the number of rounds averaged (hidden labels, diagnostic only)."""
    rows, names = [], []
    for row in report["arms"].values():
        collected = {n: v for n, v in interim_rhos(row).items() if n.startswith("kd_")}
        if collected:
            names = names or list(collected)
            count = max(len(v) for v in collected.values())
            rows.append(f"| {row['label']} | {count} | " + " | ".join(
                f"{np.mean(collected[n]):+.2f}" if n in collected else "n/a" for n in names) + " |")
    if not rows:
        return []
    return ["", "Knowledge divergence variants after adaptation: Spearman rho with the interim model's error over "
            "the remaining candidates, per divergence and number of deepest encoder stages (features globally "
            "mean-pooled), mean over the arm's later rounds (hidden labels, diagnostic only):", "",
            "| strategy | rounds | " + " | ".join(n[3:] for n in names) + " |",
            "|" + "---|" * (len(names) + 2)] + rows


def _interim_lines(rows: List[str]) -> List[str]:
    return ["", "After adaptation (rounds 2+): Spearman rho of each score with the interim model's error over the "
            "remaining candidates, mean over the arm's later rounds (KD is live here; hidden labels, diagnostic "
            "only):", "", "| strategy | " + " | ".join(_INTERIM_SCORES) + " |",
            "|" + "---|" * (len(_INTERIM_SCORES) + 1)] + rows


_SHOWN_QUERY = ("combine", "dkd_weight", "asd_reduce", "div_space", "fg_mask", "fg_dilation", "kd_metric",
                "kd_stages", "normalise_scores")
_SHOWN_PSEUDO = ("select_mode", "keep_fraction", "dist_weight", "confidence", "voxel_threshold", "teacher")


def _k(row: Dict[str, Any], budget: int):
    return budget if budget in row["budgets"] else str(budget)


def plot(report: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = report["experiment"]
    budgets = exp["budgets"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = {"assft": dict(color="C3", lw=2.5, marker="o"), "random": dict(color="k", lw=2, marker="s")}
    for index, (name, row) in enumerate(report["arms"].items()):
        means = [row["budgets"][_k(row, b)]["mean"] for b in budgets]
        sds = [row["budgets"][_k(row, b)]["sd"] or 0.0 for b in budgets]
        style = styles.get(name, dict(color=f"C{(index + 4) % 10}", lw=1.2, marker=".",
                                      ls="--" if name.startswith(("assft_", "dkd", "asd", "random_")) else "-"))
        ax.errorbar(budgets, means, yerr=sds if any(sds) else None, label=name, capsize=3, **style)
    ax.axhline(report["floor"]["mean_dice"], color="grey", ls=":", label="no adaptation")
    ax.axhline(report["ceiling"]["mean"], color="grey", ls="-.", label=f"all {len(exp['pool'])} labelled")
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    ax.set_xlabel("labelled target volumes (budget)")
    ax.set_ylabel("target-test mean Dice")
    anatomy = exp.get("anatomy", "hippocampus")
    ax.set_title(f"Annotation efficiency{'' if anatomy == 'hippocampus' else ', ' + anatomy}, {exp['profile']} "
                 f"profile, shift {exp['shift']['kind']} {exp['shift']['strength']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line (a function so that tests can resolve an experiment without running it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--anatomy", choices=sorted(ANATOMIES), default="hippocampus",
                        help="data folder, split, pre-trained model and shifts of this anatomy (default hippocampus)")
    parser.add_argument("--data", type=Path, help="data folder (default: ../shared/data/<anatomy>)")
    parser.add_argument("--model", help="pre-trained model folder or card.json (default: the anatomy's: the embedded "
                                        "default for hippocampus, ~/.cache/assft/acdc-source for acdc)")
    parser.add_argument("--shift", choices=("mild", "harsh"), default="harsh",
                        help="the anatomy's mild or harsh shift (harness.shifts.BENCHMARK_SHIFTS; hippocampus: "
                             "scanner 0.3 / 0.7)")
    parser.add_argument("--shift-kind", choices=("gamma", "inversion", "bias_field", "noise", "blur", "scanner"),
                        help="override the kind of --shift")
    parser.add_argument("--shift-strength", type=float, help="override the strength of --shift")
    parser.add_argument("--shift-seed", type=int, default=0)
    parser.add_argument("--budgets", type=int, nargs="+", help="override the profile's budgets")
    parser.add_argument("--rounds", type=int, help="query rounds per budget (profile default)")
    parser.add_argument("--pool-size", type=int, help="target-pool cases (0 = all)")
    parser.add_argument("--test-size", type=int, help="target-test cases (0 = all)")
    parser.add_argument("--pool-offset", type=int, default=0,
                        help="skip this many target-pool cases (a disjoint development pool for tuning)")
    parser.add_argument("--test-offset", type=int, default=0,
                        help="skip this many target-test cases (a disjoint development test set for tuning)")
    parser.add_argument("--iterations", type=int, help="supervised fine-tuning steps per run")
    parser.add_argument("--semi-iterations", type=int, help="second-stage steps per run")
    parser.add_argument("--learning-rate", type=float, help="AdamW learning rate (default: the product's)")
    parser.add_argument("--random-seeds", type=int, help="number of random-query seeds")
    parser.add_argument("--train-seeds", type=int, help="number of training seeds per arm")
    parser.add_argument("--mc-samples", type=int, help="MC-dropout passes")
    parser.add_argument("--arms", help=f"comma-separated subset of {','.join(a.name for a in ARMS)}")
    parser.add_argument("--assft-query", help="JSON QueryConfig overrides for the ASSFT arms, e.g. "
                                              "'{\"asd_reduce\": \"class_balanced\"}'")
    parser.add_argument("--pseudo-config", help="JSON PseudoLabelConfig overrides, e.g. '{\"keep_fraction\": 0.3}'")
    parser.add_argument("--train-config", help="JSON TrainConfig overrides, e.g. '{\"pseudo_weight\": 0.5}'")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes, one torch thread each (default: CPU cores)")
    parser.add_argument("--no-guard", action="store_true",
                        help="use every adapted model, whatever Adapt Model's guard would decide (one training run "
                             "per arm instead of folds + 1)")
    parser.add_argument("--tag", default="", help="suffix of the output names (for variants)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="write one report from the arms of several runs of the same experiment (no "
                             "computation; name it with --tag)")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="only re-render the .md and .png of an earlier run's JSON (no computation)")
    return parser


#: Experiment settings two runs must share for their arms to stand in one table.
MERGE_KEYS = ("anatomy", "model", "data", "pool", "test", "budgets", "rounds", "shift", "train", "semi_iterations",
              "pseudo", "assft_query", "random_seeds", "train_seeds", "mc_samples", "guard", "profile")


#: How far two runs' floor, ceiling or shared arm may differ and still be the same experiment: CPU training of one
#: seeded run repeats to about 1e-5 mean Dice between processes (measured: ceilings 2e-6 and 6e-6 apart), far below
#: the reported digits and every noise floor.
MERGE_TOLERANCE = 1e-4


def merge_reports(reports: Sequence[Dict[str, Any]], names: Sequence[str] = ()) -> Dict[str, Any]:
    """One report holding the arms of several runs of the same experiment (add arms without re-running the rest).

    Each run seeds every arm by itself, so an arm's numbers do not depend on which other arms ran beside it; only
    runs with equal :data:`MERGE_KEYS` settings and the same floor and ceiling (within :data:`MERGE_TOLERANCE`) may
    be merged. The first run
    gives the machine, the pool diagnostics and the pool evidence; ``experiment["merged_from"]`` keeps each run's
    command, revision and wall time, and the timings are their sums.

    Raises:
        ValueError: fewer than two reports, a setting that differs, or one arm with different results in two runs.
    """
    if len(reports) < 2:
        raise ValueError("merging needs at least two reports.")
    names = list(names) or [f"report {i + 1}" for i in range(len(reports))]
    first = reports[0]
    for name, other in zip(names[1:], reports[1:]):
        for key in MERGE_KEYS:
            if first["experiment"].get(key) != other["experiment"].get(key):
                raise ValueError(f"cannot merge {name}: its setting {key!r} differs from {names[0]}'s.")
        for part, key in (("floor", "mean_dice"), ("ceiling", "mean")):
            if not math.isclose(first[part][key], other[part][key], abs_tol=MERGE_TOLERANCE):
                raise ValueError(f"cannot merge {name}: its {part} ({other[part][key]:.6f}) differs from "
                                 f"{names[0]}'s ({first[part][key]:.6f}); the runs are not the same experiment.")
    arms: Dict[str, Any] = {}
    for name, report in zip(names, reports):
        for arm, row in report["arms"].items():
            if arm in arms and not math.isclose(arms[arm]["aubc"], row["aubc"], abs_tol=MERGE_TOLERANCE):
                raise ValueError(f"arm {arm!r} has different results in {name} and an earlier report.")
            arms.setdefault(arm, row)
    merged = json.loads(json.dumps(first))
    merged["arms"] = arms
    merged["experiment"]["arms"] = list(arms)
    merged["experiment"]["merged_from"] = [
        {"file": name, "command": r["experiment"]["command"], "git": r["git"], "total_s": r["timings"]["total_s"]}
        for name, r in zip(names, reports)]
    merged["git"] = " + ".join(dict.fromkeys(r["git"] for r in reports))
    merged["timings"] = {key: float(sum(r["timings"][key] for r in reports)) for key in first["timings"]}
    runs = sum(r["timings"]["finetune_s"] / r["timings"]["mean_train_seconds_per_run"] for r in reports
               if r["timings"]["mean_train_seconds_per_run"])
    merged["timings"]["mean_train_seconds_per_run"] = (
        float(sum(r["timings"]["finetune_s"] for r in reports) / runs) if runs else 0.0)
    return merged


def report_stem(out_dir: Path, anatomy: str, profile: str, tag: str) -> Path:
    """The one naming rule of the outputs: ``annotation_efficiency_[<anatomy>_]<profile>[_<tag>]`` (no suffix)."""
    where = "" if anatomy == "hippocampus" else f"{anatomy}_"
    return out_dir / f"annotation_efficiency_{where}{profile}{('_' + tag) if tag else ''}"


def write_report(report: Dict[str, Any], stem: Path, with_json: bool = True) -> None:
    """Write ``stem``.md and .png (and .json unless ``with_json`` is false) and print the tables."""
    report["png"] = str(stem.with_suffix(".png"))
    plot(report, stem.with_suffix(".png"))
    if with_json:
        stem.with_suffix(".json").write_text(json.dumps(_jsonable(report), indent=1) + "\n")
    text = markdown(_jsonable(report))
    stem.with_suffix(".md").write_text(text + "\n")
    print(text)


def render(json_path: Path) -> None:
    """Re-render the tables and the plot of an earlier run from its JSON (after a change of the report only)."""
    write_report(json.loads(json_path.read_text()), json_path.with_suffix(""), with_json=False)


def main() -> None:
    global ARGS, MACHINE
    ARGS = build_parser().parse_args()
    if ARGS.report is not None:
        render(ARGS.report)
        return
    if ARGS.merge:
        missing = [str(path) for path in ARGS.merge if not path.is_file()]
        if missing:
            raise SystemExit(f"error: --merge: no such report: {', '.join(missing)}")
        reports = [json.loads(path.read_text()) for path in ARGS.merge]
        try:
            merged = merge_reports(reports, [path.name for path in ARGS.merge])
        except ValueError as error:
            raise SystemExit(f"error: {error}") from error
        merged["experiment"]["tag"] = ARGS.tag
        merged["experiment"]["command"] = " ".join(["PYTHONPATH=. .venv/bin/python",
                                                    "Testing/Benchmarks/annotation_efficiency.py", *sys.argv[1:]])
        stem = report_stem(ARGS.out_dir, merged["experiment"]["anatomy"], merged["experiment"]["profile"], ARGS.tag)
        if any(stem.with_suffix(".json").resolve() == path.resolve() for path in ARGS.merge):
            raise SystemExit(f"--merge would overwrite its input {stem}.json; give another --tag.")
        ARGS.out_dir.mkdir(parents=True, exist_ok=True)
        write_report(merged, stem)
        return
    MACHINE = {**machine(), "git": git_revision()}  # the revision the run started from
    exp = resolve(ARGS)
    ARGS.out_dir.mkdir(parents=True, exist_ok=True)
    stem = report_stem(ARGS.out_dir, exp.anatomy, exp.profile, exp.tag)
    log(f"{exp.anatomy}, profile {exp.profile}: pool {len(exp.pool)}, test {len(exp.test)}, budgets {exp.budgets}, "
        f"rounds {exp.rounds}, arms {len(exp.arms)}, workers {exp.workers}; machine {MACHINE['nproc']} cores")
    report = run(exp, stem)
    write_report(report, stem)
    log(f"wrote {stem}.md, .json, .png; wall time {report['timings']['total_s'] / 60:.1f} min")


ARGS: argparse.Namespace
MACHINE: Dict[str, Any]

if __name__ == "__main__":
    main()
