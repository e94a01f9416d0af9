"""What is compared: an arm is a query strategy plus a fine-tuning recipe through the product's Adapt Model.

Arms name any ``QueryConfig`` strategy (``Arm.query`` holds ``QueryConfig`` fields, ``strategy`` among them), so a
strategy added to the product is benchmarked by naming it: ``--arms strategy=typicality`` builds the arm
``typicality`` on the fly (:func:`parse_arm`). The recipe is the product's Adapt Model default
(``FinetuneConfig()``) with the guard **off** for the comparisons (every adapted model is scored) and on for the one
final table (``guard=True``). The converged ceiling is the whole pool labelled at 120 / 400 / 800 steps.

An arm may annotate **slices or regions** instead of whole volumes (issue 27 item 4): ``Arm.unit`` is ``slice`` or
``region`` (``--arms strategy=assft,unit=slice``, or the named arms ``slices_by_score``, ``slices_random``,
``regions_by_score_painted``, ...). Its budget B is an *effort equal to B whole volumes* in ``Arm.measure``
(``slices``, ``voxels_changed`` or ``voxels_painted``, :mod:`.sparse`), and its labels are oracle partial labels
(255 outside the proposed units) fed to Adapt Model as a user's partial labels would be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

#: What an arm annotates: whole volumes (the classic arms), slices or regions (``ASSFTActive.query.units.Unit``).
UNITS = ("volume", "slice", "region")
#: Effort measures a sparse arm's budget is counted in (:mod:`.sparse`): ``slices`` (slice-equivalents painted from
#: scratch), ``voxels_changed`` (voxels changed when correcting the source model's pre-filled prediction) and
#: ``voxels_painted`` (foreground voxels painted from scratch: a region's effort where its box is a small part of the
#: slice, as around the heart on a cardiac slice, which slice-equivalents count as a fraction of a slice).
MEASURES = ("slices", "voxels_changed", "voxels_painted")
#: ``UnitConfig`` fields an arm may set (``--arms strategy=assft,unit=region,region_size=16x16x16``).
UNIT_FIELDS = ("axis", "region_size", "min_gap", "per_volume_extra", "prior_weight", "min_foreground_share")

#: Random subsets per pool by budget (the random-subset distribution): ``BENCHMARKS.md`` asks >= 30 at B = 2 and
#: >= 15 at B = 4; larger budgets get 10.
RANDOM_DRAWS = {2: 30, 4: 15}
DEFAULT_RANDOM_DRAWS = 10
#: Draws per pool and budget of the other seeded arms (foreground-aware random, a noised-score sampler): 5 draws x
#: 5 pools = 25 labelled sets per setting, beyond the >= 10 ``BENCHMARKS.md`` asks for a claim.
SEEDED_DRAWS = 5

#: Step counts of the converged ceiling (the whole pool labelled); the flat point is the ceiling.
CEILING_STEPS = (120, 400, 800)


@dataclass(frozen=True)
class Arm:
    """One line of the results table.

    Attributes:
        name: key in the records and reports.
        query: ``QueryConfig`` fields (``strategy`` first); ``()`` for the floor and ceiling arms.
        finetune: ``FinetuneConfig`` overrides as dotted names, e.g. ``(("train.iterations", 400),)``.
        guard: run Adapt Model's activation guard (off for comparisons).
        seeded: the selection is random: one labelled set per draw (the random-subset distribution).
        whole_pool: label every pool case (the ceiling); the budget is ignored.
        label: text in the tables.
        unit: ``volume`` (whole volumes), ``slice`` or ``region``; a slice / region arm's units are proposed by
            the product's ``query.units`` (scored: the volume ranking of ``strategy`` as prior; ``strategy=random``:
            random units under the same spread rule).
        measure: the effort a budget counts (:data:`MEASURES`): a slice / region arm's budget B is an effort equal
            to B whole volumes in this measure (:func:`.sparse.effort_budget`); a volume arm with a measure labels B
            volumes and records the effort (``prefill_correction``: volumes corrected from the pre-fill). ``""``: a
            classic arm (its records carry no effort unless ``record_effort``).
        unit_fields: ``UnitConfig`` overrides (:data:`UNIT_FIELDS`), e.g. ``(("region_size", (16, 16, 16)),)``.
        record_effort: record the annotation effort of a volume arm (set by a profile with ``effort``, so the
            whole-volume reference of the effort table carries its effort).
    """

    name: str
    query: Tuple[Tuple[str, Any], ...] = ()
    finetune: Tuple[Tuple[str, Any], ...] = ()
    guard: bool = False
    seeded: bool = False
    whole_pool: bool = False
    label: str = ""
    unit: str = "volume"
    measure: str = ""
    unit_fields: Tuple[Tuple[str, Any], ...] = ()
    record_effort: bool = False

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"arm {self.name}: unit must be one of {UNITS}, got {self.unit!r}")
        if self.measure and self.measure not in MEASURES:
            raise ValueError(f"arm {self.name}: measure must be one of {MEASURES}, got {self.measure!r}")
        if self.sparse and not self.measure:
            raise ValueError(f"arm {self.name}: a {self.unit} arm needs an effort measure ({MEASURES})")
        if self.sparse and self.whole_pool:
            raise ValueError(f"arm {self.name}: the whole pool is labelled by volume, not by {self.unit}")
        unknown = sorted(k for k, _ in self.unit_fields if k not in UNIT_FIELDS)
        if unknown:
            raise ValueError(f"arm {self.name}: unknown unit fields {unknown}; known: {UNIT_FIELDS}")

    @property
    def strategy(self) -> str:
        return str(dict(self.query).get("strategy", ""))

    @property
    def sparse(self) -> bool:
        """The arm annotates slices or regions (partial labels), not whole volumes."""
        return self.unit != "volume"

    @property
    def records_effort(self) -> bool:
        """The arm's records carry the annotation effort (:func:`.sparse.count_effort`)."""
        return self.sparse or bool(self.measure) or self.record_effort

    def draws(self, budget: int, override: int = 0) -> int:
        """How many labelled sets this arm is measured on per (pool, budget)."""
        if not self.seeded:
            return 1
        if override:
            return override
        if self.strategy == "random" and not self.sparse:
            return RANDOM_DRAWS.get(budget, DEFAULT_RANDOM_DRAWS)
        return SEEDED_DRAWS

    def to_dict(self) -> Dict[str, Any]:
        """The record's ``arm``; the unit fields appear only where they differ from a classic volume arm, so the
        records of the classic arms keep their keys."""
        out = {
            "name": self.name,
            "query": dict(self.query),
            "finetune": dict(self.finetune),
            "guard": self.guard,
            "seeded": self.seeded,
            "whole_pool": self.whole_pool,
            "label": self.label or self.name,
        }
        if self.unit != "volume":
            out["unit"] = self.unit
        if self.measure:
            out["measure"] = self.measure
        if self.unit_fields:
            out["unit_fields"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.unit_fields}
        if self.record_effort:
            out["record_effort"] = True
        return out


def ceiling_arm(steps: int) -> Arm:
    """The whole pool labelled, fine-tuned ``steps`` steps (half supervised, half Adapt Model's second stage)."""
    return Arm(
        f"ceiling_{steps}",
        finetune=(("semi_iterations", steps // 2), ("train.iterations", steps - steps // 2)),
        whole_pool=True,
        label=f"whole pool labelled, {steps} steps",
    )


def _strategy(name: str, label: str = "", **query: Any) -> Arm:
    seeded = name in ("random", "fg_random")
    return Arm(name=name, query=(("strategy", name), *sorted(query.items())), seeded=seeded, label=label or name)


def _sparse(name: str, unit: str, strategy: str, measure: str, label: str) -> Arm:
    return Arm(
        name=name,
        query=(("strategy", strategy),),
        seeded=strategy == "random",
        label=label,
        unit=unit,
        measure=measure,
    )


#: The arms of the effort benchmark (issue 27 item 4; profile ``sparse``). ``assft`` is their whole-volume reference.
SPARSE_ARMS = (
    _sparse("slices_by_score", "slice", "assft", "slices", "slices by foreground entropy (ASSFT volume prior)"),
    _sparse("slices_random", "slice", "random", "slices", "random slices (same spread rule)"),
    _sparse("regions_by_score", "region", "assft", "slices", "regions by foreground entropy (ASSFT volume prior)"),
    _sparse("regions_random", "region", "random", "slices", "random regions (same spread rule)"),
    _sparse(
        "regions_by_score_painted", "region", "assft", "voxels_painted", "regions by score, budget in painted voxels"
    ),
    _sparse("regions_random_painted", "region", "random", "voxels_painted", "random regions, budget in painted voxels"),
    Arm(
        "prefill_correction",
        (("strategy", "assft"),),
        measure="voxels_changed",
        label="ASSFT's proposed volumes corrected from the source model's pre-fill",
    ),
    _sparse(
        "slices_by_score_prefill", "slice", "assft", "voxels_changed", "slices by score, corrected from the pre-fill"
    ),
    _sparse("slices_random_prefill", "slice", "random", "voxels_changed", "random slices, corrected from the pre-fill"),
)

#: The named arms. ``random`` is the reference distribution; the product's default query is ``assft``.
ARMS: Dict[str, Arm] = {
    a.name: a
    for a in (
        _strategy("random", "random (the distribution of random subsets)"),
        _strategy("fg_random", "foreground-aware random"),
        _strategy("coreset", "k-centre coreset"),
        _strategy("clasp_pe", "ClaSP PE (volume level)"),
        _strategy("mean_entropy", "mean entropy"),
        _strategy("assft", "ASSFT query (DKD+ASD), the product default"),
        Arm("assft_guarded", (("strategy", "assft"),), guard=True, label="ASSFT query + Adapt Model with its guard"),
        *(ceiling_arm(steps) for steps in CEILING_STEPS),
        *SPARSE_ARMS,
    )
}

#: The baselines a default must match or beat (issue 23's ``gap_vs_best_baseline``), when measured.
BASELINES = ("fg_random", "coreset", "clasp_pe", "typicality")


def parse_arm(text: str) -> Arm:
    """An arm by name (:data:`ARMS`) or built from ``QueryConfig`` fields: ``strategy=typicality`` or
    ``name:strategy=assft,combine=two_stage`` (values parsed as int / float / bool when they look like one). Two
    fields are the arm's, not the query's: ``seeded=true`` (a sampling query: measured on several draws) and
    ``guard=true`` (Adapt Model's guard on); a field named ``finetune.<dotted FinetuneConfig field>`` overrides the
    recipe (``guard=true,finetune.validation.fold_fraction=0.34``: the guard with short folds). An unnamed arm's
    name lists every field besides ``strategy``, so a guarded or re-tuned arm never shares another arm's records.
    Slices and regions: ``unit=slice|region`` (budget in ``measure=slices`` by default, or
    ``measure=voxels_changed``) and the ``UnitConfig`` fields of :data:`UNIT_FIELDS` (``region_size=16x16x16``);
    ``strategy=random`` with a unit gives random units.

    Raises:
        ValueError: an unknown arm name, or fields without ``strategy``; an unknown unit or measure.
    """
    if "=" not in text:
        if text not in ARMS:
            raise ValueError(f"unknown arm {text!r}; known: {sorted(ARMS)}, or strategy=<QueryConfig strategy>")
        return ARMS[text]
    name, _, body = text.rpartition(":") if ":" in text.split("=", 1)[0] else ("", "", text)
    fields: Dict[str, Any] = {}
    for item in body.split(","):
        key, _, value = item.partition("=")
        fields[key.strip()] = _value(value.strip())
    if "strategy" not in fields:
        raise ValueError(f"arm {text!r} names no strategy (e.g. strategy=typicality)")
    strategy = str(fields["strategy"])
    seeded = bool(fields.pop("seeded", strategy in ("random", "fg_random")))
    guard = bool(fields.pop("guard", False))
    unit = str(fields.pop("unit", "volume"))
    measure = str(fields.pop("measure", "slices" if unit != "volume" else ""))
    unit_fields = {k: _unit_value(k, fields.pop(k)) for k in list(fields) if k in UNIT_FIELDS}
    finetune = {k[len("finetune.") :]: fields.pop(k) for k in list(fields) if k.startswith("finetune.")}
    extra = {k: v for k, v in fields.items() if k != "strategy"}
    default_measure = "slices" if unit != "volume" else ""
    named = {**extra, **({"unit": unit} if unit != "volume" else {})}
    named.update({"measure": measure} if measure != default_measure else {})
    named.update({k: "x".join(map(str, v)) if isinstance(v, tuple) else v for k, v in unit_fields.items()})
    named.update(finetune)
    named.update({"guard": True} if guard else {})
    name = name or (strategy if not named else strategy + "_" + "_".join(f"{k}-{v}" for k, v in sorted(named.items())))
    return Arm(
        name=name,
        query=(("strategy", strategy), *sorted(extra.items())),
        finetune=tuple(sorted(finetune.items())),
        seeded=seeded,
        guard=guard,
        label=name,
        unit=unit,
        measure=measure,
        unit_fields=tuple(sorted(unit_fields.items())),
    )


def _unit_value(key: str, value: Any) -> Any:
    """A ``UnitConfig`` field from its command-line text: ``region_size`` as ``16x16x16`` (or one number)."""
    if key == "region_size":
        parts = str(value).split("x")
        try:
            size = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"region_size must look like 16x16x16, got {value!r}") from None
        return size * 3 if len(size) == 1 else size
    return value


def _value(text: str) -> Any:
    """An arm field's value: ``true`` / ``false``, ``null`` (JSON's None, e.g. ``validation.fold_budget=null``; not
    ``none``, which is a value of some settings), a whole or decimal number, else the text itself."""
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
