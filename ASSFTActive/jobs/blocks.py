"""One validator per settings block of a job (``query``, ``finetune``, ``sfr``), standard library only.

:class:`~ASSFTActive.jobs.JobSpec` calls all three when it is built, so a bad setting is refused both when the Slicer
module or the browser writes ``job.json`` and when the worker reads it, with the setting named
(``query: QueryConfig.budget ...``, ``sfr.sam.iterations ...``), before a process is started or a volume is read.

``query`` and ``finetune`` are checked by their own settings classes (:class:`~ASSFTActive.query.config.QueryConfig`,
:class:`~ASSFTActive.finetune.config.FinetuneConfig`), which are torch- and numpy-free. SFR's settings classes import
torch, so ``sfr`` is checked here against the same fields, with the ranges that keep a run finite (a batch of
100,000 canvases, a LoRA rank of 10^7 and a boolean for a step count are refused, not discovered later); its
``retrain`` and ``validation`` parts are the shared :class:`~ASSFTActive.finetune.config.TrainConfig` and
:class:`~ASSFTActive.finetune.config.ValidationConfig`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ..settings import check_flag, check_number
from .files import SFR_METHODS

__all__ = ["SAM_LIMITS", "check_finetune", "check_query", "check_sfr"]

#: Upper bounds of SFR's SAM fine-tuning settings (``sfr.sam``): far above any sensible value, far below one that
#: exhausts memory or time before the first step.
SAM_LIMITS = {"iterations": 1_000_000, "batch_size": 64, "lora_rank": 256, "canvas": 4096, "warmup_iterations": 999_999,
              "seed": 2**32 - 1}


def check_query(data: Mapping[str, Any]) -> None:
    """Refuse bad ``query`` settings (:meth:`QueryConfig.from_dict`'s checks).

    Raises:
        ValueError: ``query: <the setting and what is wrong>``.
    """
    from ..query.config import QueryConfig

    try:
        QueryConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"query: {exc}") from None


def check_finetune(data: Mapping[str, Any]) -> None:
    """Refuse bad ``finetune`` settings (:meth:`FinetuneConfig.from_dict`'s checks).

    Raises:
        ValueError: ``finetune: <the setting and what is wrong>``.
    """
    from ..finetune.config import FinetuneConfig

    try:
        FinetuneConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"finetune: {exc}") from None


# ------------------------------------------------------------------------------------------------------------ sfr
def _keys(data: Any, owner: str, known: Sequence[str]) -> Dict[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{owner} must be a JSON object of settings, got {type(data).__name__}.")
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ValueError(f"unknown {owner} setting(s) {unknown}; known settings are {sorted(known)}. Check the "
                         "spelling or remove the key.")
    return dict(data)


def _whole(value: Any, owner: str, name: str, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{name} must be a whole number, got {value!r}.")
    if value < low or (high is not None and value > high):
        wanted = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{owner}.{name} must be {wanted}, got {value}.")
    return value


def _numbers(data: Mapping[str, Any], owner: str, ranges: Mapping[str, Tuple[float, float, bool]],
             optional: Sequence[str] = ()) -> None:
    for name, (low, high, low_open) in ranges.items():
        if name in data and not (name in optional and data[name] is None):
            check_number(data[name], owner, name, low, high, low_open)


def _flags(data: Mapping[str, Any], owner: str, names: Sequence[str]) -> None:
    for name in names:
        if name in data:
            check_flag(data[name], owner, name)


_SAM_FIELDS = ("iterations", "batch_size", "learning_rate", "weight_decay", "betas", "poly_power", "warmup_iterations",
               "lora_rank", "lora_alpha", "canvas", "rot_flip", "bezier_probability", "amp", "seed")


def _check_sam(data: Any) -> None:
    owner = "sfr.sam"
    sam = _keys(data, owner, _SAM_FIELDS)
    for name in ("iterations", "batch_size"):
        if name in sam:
            _whole(sam[name], owner, name, 1, SAM_LIMITS[name])
    for name, low in (("lora_rank", 0), ("warmup_iterations", 0), ("seed", 0)):
        if name in sam:
            _whole(sam[name], owner, name, low, SAM_LIMITS[name])
    if sam.get("canvas") is not None:
        _whole(sam["canvas"], owner, "canvas", 16, SAM_LIMITS["canvas"])
    _numbers(sam, owner, {"learning_rate": (0.0, 1.0, True), "weight_decay": (0.0, 10.0, False),
                          "poly_power": (0.0, 10.0, False), "bezier_probability": (0.0, 1.0, False),
                          "lora_alpha": (0.0, 1e6, True)}, optional=("lora_alpha",))
    _flags(sam, owner, ("rot_flip", "amp"))
    if "betas" in sam:
        betas = sam["betas"]
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ValueError(f"{owner}.betas must be two numbers in [0, 1), got {betas!r}.")
        for beta in betas:
            check_number(beta, owner, "betas", 0.0, 1.0)
            if beta >= 1.0:
                raise ValueError(f"{owner}.betas must be two numbers in [0, 1), got {betas!r}.")
    iterations = sam.get("iterations", 6000)
    if sam.get("warmup_iterations", 0) >= iterations:
        raise ValueError(f"{owner}.warmup_iterations must lie in 0..iterations-1 (iterations = {iterations}), got "
                         f"{sam['warmup_iterations']}.")


def _check_plus(data: Any) -> None:
    owner = "sfr.plus"
    plus = _keys(data, owner, ("kappa", "voxel_threshold", "restart_from_prior"))
    _numbers(plus, owner, {"kappa": (0.0, 1.0, True), "voxel_threshold": (0.0, 1.0, False)},
             optional=("voxel_threshold",))
    _flags(plus, owner, ("restart_from_prior",))


def _check_mean_teacher(data: Any) -> None:
    owner = "sfr.mean_teacher"
    teacher = _keys(data, owner, ("pseudo_weight", "consistency_weight", "consistency_rampup",
                                  "consistency_epoch_steps", "noise_std", "noise_clip", "ema_decay"))
    _numbers(teacher, owner, {"pseudo_weight": (0.0, math.inf, False), "consistency_weight": (0.0, math.inf, False),
                              "noise_std": (0.0, math.inf, False), "noise_clip": (0.0, math.inf, False),
                              "ema_decay": (0.0, 1.0, False)})
    for name, low in (("consistency_rampup", 0), ("consistency_epoch_steps", 1)):
        if name in teacher:
            _whole(teacher[name], owner, name, low)


def _check_shared(data: Mapping[str, Any]) -> None:
    """``retrain`` and ``validation``: the shared trainer's and guard's own settings classes."""
    from ..finetune.config import TrainConfig, ValidationConfig

    for name, kind in (("retrain", TrainConfig), ("validation", ValidationConfig)):
        if name in data:
            if not isinstance(data[name], Mapping):
                raise ValueError(f"sfr.{name} must be a JSON object of settings, got {type(data[name]).__name__}.")
            try:
                kind.from_dict(data[name])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"sfr.{name}: {exc}") from None


_SFR_FIELDS = ("method", "sam", "plus", "plus_voxel_threshold", "retrain", "mean_teacher", "validation",
               "predict_pool", "allow_implausible_labels", "checkpoint_every")


def check_sfr(data: Mapping[str, Any]) -> None:
    """Refuse bad ``sfr`` settings (the fields of :class:`ASSFTActive.sfr.pipeline.SfrConfig`, every part).

    Raises:
        ValueError: ``sfr.<part>.<setting> ...``: which setting, what is allowed, what was given.
    """
    sfr = _keys(data, "sfr", _SFR_FIELDS)
    method = sfr.get("method", SFR_METHODS[0])
    method = getattr(method, "value", method)
    if method not in SFR_METHODS:
        raise ValueError(f"sfr.method must be one of {list(SFR_METHODS)}, got {sfr.get('method')!r}.")
    if "sam" in sfr:
        _check_sam(sfr["sam"])
    if "plus" in sfr:
        _check_plus(sfr["plus"])
    if "mean_teacher" in sfr:
        _check_mean_teacher(sfr["mean_teacher"])
    _numbers(sfr, "sfr", {"plus_voxel_threshold": (0.0, 1.0, False)}, optional=("plus_voxel_threshold",))
    _flags(sfr, "sfr", ("predict_pool", "allow_implausible_labels"))
    if "checkpoint_every" in sfr:
        _whole(sfr["checkpoint_every"], "sfr", "checkpoint_every", 1)
    _check_shared(sfr)
