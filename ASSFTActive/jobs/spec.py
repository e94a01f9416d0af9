"""``job.json``: the inputs of one background job (:class:`JobSpec`), written by the GUI, read by the worker.

A spec is checked completely when it is built: its paths and kinds here, its three settings blocks by
:mod:`.blocks`. :func:`write_job` (the Slicer module, the browser) therefore never writes a job the worker would
refuse, and :func:`read_job` (the worker) refuses a hand-edited one with the file and the setting named.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..errors import JobError
from .blocks import check_finetune, check_query, check_sfr
from .files import ADAPT_KINDS, JOB_FILE, JOB_KINDS, SFR_METHODS, PathLike, write_text_atomic

__all__ = ["JobSpec", "read_job", "write_job"]


@dataclass(frozen=True)
class JobSpec:
    """The inputs of one background job, as stored in ``JOB_DIR/job.json``.

    Attributes:
        kind: ``"rank"`` (score the unlabelled pool and propose ``budget`` volumes), ``"adapt"`` (fine-tune on
            the labelled volumes plus reliable pseudo-labelled ones, store a new model version, re-rank) or
            ``"sfr"`` (the same with SFR / SFR+: SAM pseudo-labels and Mean-Teacher re-training,
            :func:`ASSFTActive.sfr.pipeline.sfr_adapt`).
        images: ``{case_id: image path}``, every volume of the pool (labelled or not).
        labels: ``{case_id: label path}`` for the labelled volumes; each id must be in ``images``.
        subjects: ``{case_id: subject}`` where volumes share a subject (a patient id: two frames of one heart,
            two scans of one patient); an adapt or sfr job's guard then holds a subject's volumes out together.
            Each id must be in ``images``; volumes not named are each their own subject.
        model: a model card path, ``"default"`` (the embedded model), or a store folder
            (``<store>/<name>`` for its active version, ``<store>/<name>/v<k>``).
        store: model store folder (required for ``adapt`` and ``sfr``).
        name: model name in the store; ``""`` derives one from the card.
        budget: volumes to propose when ranking.
        query: :class:`ASSFTActive.query.config.QueryConfig` settings (a dict), and optionally ``units``: the
            :class:`~ASSFTActive.query.units.UnitConfig` settings of slice / region proposals (:meth:`unit_config`).
        finetune: :class:`ASSFTActive.finetune.config.FinetuneConfig` settings (a dict).
        sfr: :class:`ASSFTActive.sfr.config.SfrConfig` settings of an ``sfr`` job (a dict, e.g.
            ``{"method": "sfr_plus"}``; missing keys take SFR's defaults). Refused in a ``rank`` or ``adapt`` job,
            which would run without it.
        sam_prior: SAM prior folder (``sam-card.json`` + weights) of an ``sfr`` job; ``""`` is the embedded
            ``sfr-sam-tiny`` (not Meta's SAM). Refused in other kinds, like ``sfr``.

    Every settings block is checked when the spec is built (:mod:`.blocks`).
    """

    kind: str
    images: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)
    subjects: Mapping[str, str] = field(default_factory=dict)
    model: str = "default"
    store: str = ""
    name: str = ""
    budget: int = 0
    query: Mapping[str, Any] = field(default_factory=dict)
    finetune: Mapping[str, Any] = field(default_factory=dict)
    sfr: Mapping[str, Any] = field(default_factory=dict)
    sam_prior: str = ""

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"kind must be one of {list(JOB_KINDS)}, got {self.kind!r}")
        for key in ("images", "labels"):
            value = getattr(self, key)
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, (str, os.PathLike)) for k, v in value.items()
            ):
                raise ValueError(f"{key} must map case ids to file paths")
            object.__setattr__(self, key, {str(k): str(v) for k, v in value.items()})
        if not self.images:
            raise ValueError("images is empty; list the volumes of the pool")
        stray = sorted(set(self.labels) - set(self.images))
        if stray:
            raise ValueError(f"labels {stray} have no image in images; every labelled case needs its image")
        if not isinstance(self.subjects, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in self.subjects.items()
        ):
            raise ValueError("subjects must map case ids to non-empty subject ids (e.g. patient ids)")
        stray = sorted(set(self.subjects) - set(self.images))
        if stray:
            raise ValueError(f"subjects {stray} name no image in images; use the images' case ids")
        object.__setattr__(self, "subjects", dict(self.subjects))
        for key in ("model", "store", "name", "sam_prior"):
            if not isinstance(getattr(self, key), (str, os.PathLike)):
                raise ValueError(f"{key} must be a string")
            object.__setattr__(self, key, str(getattr(self, key)))
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 0:
            raise ValueError(f"budget must be a whole number >= 0, got {self.budget!r}")
        if self.kind != "sfr":  # a rank or adapt job would run without them, as if they had not been given
            given = [k for k in ("sfr", "sam_prior") if getattr(self, k)]
            if given:
                verb = "apply" if len(given) > 1 else "applies"
                raise ValueError(
                    f"{' and '.join(given)} {verb} only to an sfr job; this {self.kind} job would run without "
                    'them. Use "kind": "sfr", or leave them out'
                )
        if self.kind in ADAPT_KINDS:
            if not self.store:
                raise ValueError(f"an {self.kind} job needs store (the model store folder)")
            if not self.labels:
                raise ValueError(f"an {self.kind} job needs at least one labelled volume in labels")
        for key, check in (("query", check_query), ("finetune", check_finetune), ("sfr", check_sfr)):
            value = getattr(self, key)
            if not isinstance(value, Mapping):
                raise ValueError(f"{key} must be a JSON object of settings")
            object.__setattr__(self, key, dict(value))
            check(value)

    @property
    def sfr_method(self) -> str:
        """The SFR variant of an ``sfr`` job (``sfr`` unless the settings say ``sfr_plus``)."""
        method = self.sfr.get("method", SFR_METHODS[0])
        return method.value if hasattr(method, "value") else method

    def finetune_config(self, anatomy: Optional[str] = None):
        """The :class:`~ASSFTActive.finetune.config.FinetuneConfig` of this job for a model of ``anatomy``: that
        anatomy's recipe (:data:`~ASSFTActive.finetune.config.ANATOMY_RECIPES`) under the job's settings."""
        from ..finetune.config import FinetuneConfig

        return FinetuneConfig.for_anatomy(self.finetune, anatomy)

    def sfr_config(self):
        """The :class:`~ASSFTActive.sfr.config.SfrConfig` of this job (torch-free).

        Raises:
            JobError: invalid SFR settings.
        """
        from ..errors import InputError
        from ..sfr.config import SfrConfig

        try:
            return SfrConfig.from_dict(dict(self.sfr))
        except (InputError, TypeError, ValueError) as exc:
            raise JobError(f"job.json: invalid sfr settings: {exc}") from exc

    def query_config(self):
        """The :class:`~ASSFTActive.query.config.QueryConfig` of this job."""
        from ..query.config import QueryConfig

        return QueryConfig.from_dict({k: v for k, v in self.query.items() if k != "units"})

    def unit_config(self):
        """The :class:`~ASSFTActive.query.units.UnitConfig` of this job (``query.units``; whole volumes when
        absent): what a rank job, or the re-rank after an adaptation, proposes (``assft rank --unit``)."""
        from .blocks import unit_config

        return unit_config(self.query.get("units"))

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form; ``sfr`` and ``sam_prior`` only for an ``sfr`` job or when set, ``subjects`` when set."""
        data = {
            f.name: (
                dict(getattr(self, f.name)) if isinstance(getattr(self, f.name), Mapping) else getattr(self, f.name)
            )
            for f in fields(self)
        }
        if self.kind != "sfr":
            for key in ("sfr", "sam_prior"):
                if not data[key]:
                    del data[key]
        if not data["subjects"]:
            del data["subjects"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSpec:
        """Build and check a spec.

        Raises:
            ValueError: unknown or missing keys, wrong types, invalid settings (the setting named).
        """
        if not isinstance(data, Mapping):
            raise ValueError("a job must be a JSON object")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; a job has the keys {known}")
        missing = [k for k in ("kind", "images") if k not in data]
        if missing:
            raise ValueError(f"missing key(s) {missing}")
        return cls(**dict(data))


def write_job(job_dir: PathLike, spec: JobSpec) -> Path:
    """Create ``job_dir`` (if needed) and write ``job.json`` atomically; returns its path.

    ``spec`` was checked when it was built; it is checked again here (a caller may have built it with
    ``object.__new__`` or changed a settings dict in place), so no job the worker would refuse is ever written.

    Raises:
        ValueError: an invalid spec (the setting named).
    """
    data = spec.to_dict()
    JobSpec.from_dict(data)
    return write_text_atomic(Path(job_dir) / JOB_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_job(job_dir: PathLike) -> JobSpec:
    """Read and check ``JOB_DIR/job.json``.

    Raises:
        JobError: missing or unreadable file, or an invalid spec (the message names the file and the setting).
    """
    path = Path(job_dir) / JOB_FILE
    if not path.is_file():
        raise JobError(f"{path}: job file not found. Write it with ASSFTActive.jobs.write_job first.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise JobError(f"{path}: not a readable JSON job ({exc}).") from exc
    try:
        return JobSpec.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise JobError(f"{path}: {str(exc).rstrip('.')}.") from exc
