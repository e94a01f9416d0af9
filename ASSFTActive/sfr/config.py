"""Every setting of an SFR / SFR+ run, torch-free (beside :mod:`ASSFTActive.finetune.config`), so the job protocol,
the Slicer module and the browser check a settings block without importing torch.

:class:`SfrConfig` is the whole run: SAM fine-tuning (:class:`SfrFinetuneConfig`, stage 2), SFR+'s selection
(:class:`SfrPlusConfig`), the 3D re-training's optimisation (:func:`sfr_train_config`) and Mean Teacher
(:class:`MeanTeacherConfig`, stage 3), and the same guard as Adapt Model
(:class:`~ASSFTActive.finetune.config.ValidationConfig`).

References:
    Li et al., SFR / SFR+, arXiv:2403.11229; ``shared/research/method-spec.md`` §2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from typing import Any, Dict, Mapping, Optional, Tuple

from ..errors import InputError
from ..finetune.config import (
    FinalModel,
    FinetuneConfig,
    Optimizer,
    PseudoLabelConfig,
    PseudoMode,
    TrainConfig,
    ValidationConfig,
    upgrade_validation_keys,
)
from ..settings import check_enum, check_fields, check_keys, check_number, plain

__all__ = [
    "MeanTeacherConfig",
    "SfrConfig",
    "SfrFinetuneConfig",
    "SfrMethod",
    "SfrPlusConfig",
    "known_fields",
    "sfr_train_config",
]


#: Upper bounds of SAM fine-tuning settings: far above any sensible value, far below one that exhausts memory or
#: time before the first step (a batch of 100,000 canvases, a LoRA rank of 10^7).
SAM_LIMITS = {"iterations": 1_000_000, "batch_size": 64, "lora_rank": 256, "canvas": 4096, "seed": 2**32 - 1}


def known_fields(cls: type, data: Mapping[str, Any]) -> Dict[str, Any]:
    """``data`` as keyword arguments of the dataclass ``cls``; an unknown key is an :class:`InputError`."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"unknown {cls.__name__} settings {unknown}; known: {sorted(known)}")
    return dict(data)


@dataclass(frozen=True)
class SfrFinetuneConfig:
    """Settings of SAM fine-tuning on stitched volumes. Defaults are SFR's released script (method-spec §2.2).

    Attributes:
        iterations: optimiser steps (6,000).
        batch_size: stitched canvases per step (2).
        learning_rate, weight_decay, betas: AdamW (1e-3, 0.1, (0.9, 0.999)).
        poly_power: ``lr * (1 - t / iterations) ** poly_power`` after the warm-up (0.9).
        warmup_iterations: linear warm-up steps (0; SFR's optional warm-up is 250).
        lora_rank: LoRA rank on every image-encoder block's q/v, the rest of the encoder frozen (4); 0 trains every
            parameter (pre-training a prior from scratch).
        lora_alpha: LoRA scale numerator (``None``: ``alpha = rank``, scale 1).
        canvas: side of the stitched canvas; ``None`` uses the model's ``image_size`` (they must agree).
        rot_flip: random rot90/flip of the whole canvas (one of the 8 square symmetries).
        bezier_probability: chance that a slice gets a random monotone Bezier intensity curve (0.5; 0 = off).
        amp: bfloat16 autocast on CUDA (ignored on the CPU).
        seed: sampling, augmentation and LoRA initialisation (1337).
    """

    iterations: int = 6000
    batch_size: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    betas: Tuple[float, float] = (0.9, 0.999)
    poly_power: float = 0.9
    warmup_iterations: int = 0
    lora_rank: int = 4
    lora_alpha: Optional[float] = None
    canvas: Optional[int] = None
    rot_flip: bool = True
    bezier_probability: float = 0.5
    amp: bool = True
    seed: int = 1337

    def __post_init__(self) -> None:
        try:
            check_fields(
                self,
                wholes={
                    "iterations": 1,
                    "batch_size": 1,
                    "warmup_iterations": 0,
                    "lora_rank": 0,
                    "seed": 0,
                    "canvas": 16,
                },
                numbers={
                    "learning_rate": (0.0, 1.0, True),
                    "weight_decay": (0.0, 10.0, False),
                    "poly_power": (0.0, 10.0, False),
                    "bezier_probability": (0.0, 1.0, False),
                    "lora_alpha": (0.0, 1e6, True),
                },
                flags=("rot_flip", "amp"),
                optional=("lora_alpha", "canvas"),
            )
            for name, most in SAM_LIMITS.items():
                value = getattr(self, name)
                if value is not None and value > most:
                    raise ValueError(f"SfrFinetuneConfig.{name} must be at most {most}, got {value}.")
            betas = self.betas
            if (
                not isinstance(betas, (list, tuple))
                or len(betas) != 2
                or not all(check_number(b, "SfrFinetuneConfig", "betas", 0.0, 1.0) < 1.0 for b in betas)
            ):
                raise ValueError(f"SfrFinetuneConfig.betas must be two numbers in [0, 1), got {betas!r}.")
            object.__setattr__(self, "betas", tuple(float(b) for b in betas))
            if self.warmup_iterations >= self.iterations:
                raise ValueError(
                    f"SfrFinetuneConfig.warmup_iterations must lie in 0..iterations-1, got "
                    f"{self.warmup_iterations} with iterations {self.iterations}."
                )
        except ValueError as exc:
            raise InputError(f"invalid SFR fine-tuning settings: {exc}") from None

    @classmethod
    def tiny(cls, iterations: int = 40, seed: int = 0) -> SfrFinetuneConfig:
        """A CPU-test preset: few iterations, a higher learning rate, the same recipe otherwise."""
        return cls(iterations=iterations, batch_size=2, learning_rate=3e-3, weight_decay=0.01, seed=seed)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SfrFinetuneConfig:
        return cls(**known_fields(cls, data))


@dataclass(frozen=True)
class SfrPlusConfig:
    """SFR+ selection settings ([inferred], method-spec §2.4).

    Attributes:
        kappa: share of the unlabelled pool kept for the second fine-tuning, ``ceil(kappa * N)`` volumes (0.5; the
            spec's range is 0.2-0.5).
        voxel_threshold: only voxels with ``max_c p_c >= voxel_threshold`` of a selected pseudo-label count in the
            second fine-tuning (``None``: every voxel of a selected volume counts). The spec's 0.9 is for
            re-training; it is offered here too.
        restart_from_prior: the second fine-tuning starts from the given SAM (true) or continues the first
            stage's fine-tuned SAM (false).
    """

    kappa: float = 0.5
    voxel_threshold: Optional[float] = None
    restart_from_prior: bool = True

    def __post_init__(self) -> None:
        try:
            check_fields(
                self,
                numbers={"kappa": (0.0, 1.0, True), "voxel_threshold": (0.0, 1.0, False)},
                flags=("restart_from_prior",),
                optional=("voxel_threshold",),
            )
        except ValueError as exc:
            raise InputError(f"invalid SFR+ settings: {exc}") from None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SfrPlusConfig:
        return cls(**known_fields(cls, data))


def sfr_validation_config() -> ValidationConfig:
    """SFR's guard: Adapt Model's, with the final run always trained again (``final = retrain``) and folds as long as
    it (no ``fold_budget``: SFR's recipe is its re-training, which the folds' shortcut does not shorten), whatever
    Adapt Model's defaults."""
    return ValidationConfig(final=FinalModel.RETRAIN, fold_budget=None)


def sfr_train_config(**overrides: Any) -> TrainConfig:
    """SFR's re-training optimisation (method-spec §2.3): SGD lr 0.01, momentum 0.9, weight decay 1e-4, ×0.1 every
    2,500 of 6,000 steps, 2 labelled + 2 unlabelled patches per step; ``overrides`` replace any field."""
    base = TrainConfig(
        iterations=6000,
        batch_size=2,
        learning_rate=0.01,
        weight_decay=1e-4,
        optimizer=Optimizer.SGD,
        momentum=0.9,
        lr_step_every=2500,
        lr_step_gamma=0.1,
        seed=1337,
    )
    return replace(base, **overrides) if overrides else base


@dataclass(frozen=True)
class MeanTeacherConfig:
    """SFR's Mean Teacher (method-spec §2.3, §4.2; every default is from the released code).

    Attributes:
        pseudo_weight: constant weight of the Dice+CE loss on SAM's pseudo-labels, 1.0 (no ramp).
        consistency_weight: ``λ_max`` of the consistency term, 0.1.
        consistency_rampup: ramp length in "epochs", 40.
        consistency_epoch_steps: steps per "epoch", 150.
        noise_std, noise_clip: the teacher's input noise ``clamp(N(0, 0.1²), ±0.2)``.
        ema_decay: the teacher's EMA decay, 0.99.
    """

    pseudo_weight: float = 1.0
    consistency_weight: float = 0.1
    consistency_rampup: int = 40
    consistency_epoch_steps: int = 150
    noise_std: float = 0.1
    noise_clip: float = 0.2
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        check_fields(
            self,
            numbers={
                "pseudo_weight": (0.0, math.inf, False),
                "consistency_weight": (0.0, math.inf, False),
                "noise_std": (0.0, math.inf, False),
                "noise_clip": (0.0, math.inf, False),
                "ema_decay": (0.0, 1.0, False),
            },
            wholes={"consistency_rampup": 0, "consistency_epoch_steps": 1},
        )

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeanTeacherConfig:
        return cls(**check_keys(cls, data))


class SfrMethod(str, Enum):
    """Which of the two SFR variants runs."""

    SFR = "sfr"  #: SAM fine-tuned on the labels; every pool volume pseudo-labelled and re-trained on
    SFR_PLUS = "sfr_plus"  #: confident selection for a second SAM fine-tuning and for the re-training


@dataclass(frozen=True)
class SfrConfig:
    """Every setting of an SFR / SFR+ run (saved with the new version).

    Attributes:
        method: ``sfr`` or ``sfr_plus``.
        sam: SAM fine-tuning (stage 2; :class:`~.finetune.SfrFinetuneConfig`, SFR's recipe by default).
        plus: SFR+'s selection for the second SAM fine-tuning (:class:`~.plus.SfrPlusConfig`).
        plus_voxel_threshold: SFR+'s re-training counts only pseudo-label voxels with SAM confidence at least this,
            0.9 (method-spec §2.4, [inferred]); ``None`` = every voxel of a selected volume.
        retrain: 3D re-training optimisation (:func:`~.retrain.sfr_train_config`: SGD, 6,000 steps); a mapping
            given here (``job.json``, a settings file) overrides SFR's defaults key by key.
        mean_teacher: pseudo-label weight and consistency term (:class:`~.retrain.MeanTeacherConfig`).
        validation: the guard, as for Adapt Model (:class:`~ASSFTActive.finetune.config.ValidationConfig`), except
            that the final run is trained again on every labelled volume (``final = retrain``,
            :func:`sfr_validation_config`): the folds' average was measured for Adapt Model only, and SFR's final
            run also fine-tunes SAM on every labelled volume; its folds run whole (no ``fold_budget``); a mapping
            given here overrides it key by key.
        predict_pool: predict the unlabelled volumes with the new model when a predictions folder is given.
        allow_implausible_labels: as for Adapt Model.
        checkpoint_every: with a work dir, the final re-training writes a resumable checkpoint every this many
            steps, 25 (as Adapt Model).
    """

    method: SfrMethod = SfrMethod.SFR
    sam: SfrFinetuneConfig = field(default_factory=SfrFinetuneConfig)
    plus: SfrPlusConfig = field(default_factory=SfrPlusConfig)
    plus_voxel_threshold: Optional[float] = 0.9
    retrain: TrainConfig = field(default_factory=sfr_train_config)
    mean_teacher: MeanTeacherConfig = field(default_factory=MeanTeacherConfig)
    validation: ValidationConfig = field(default_factory=sfr_validation_config)
    predict_pool: bool = True
    allow_implausible_labels: bool = False
    checkpoint_every: int = 25

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", check_enum(SfrMethod, self.method, "SfrConfig", "method"))
        # key by key over SFR's own defaults (its optimisation, its retrained final run), not the classes' defaults
        for name, kind, defaults in (
            ("validation", ValidationConfig, sfr_validation_config),
            ("retrain", TrainConfig, sfr_train_config),
        ):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                if kind is ValidationConfig:
                    value = upgrade_validation_keys(value)
                merged = dict(defaults().to_dict(), **check_keys(kind, value, f"SfrConfig.{name}"))
                object.__setattr__(self, name, kind.from_dict(merged))
        for name, kind in (
            ("sam", SfrFinetuneConfig),
            ("plus", SfrPlusConfig),
            ("retrain", TrainConfig),
            ("mean_teacher", MeanTeacherConfig),
            ("validation", ValidationConfig),
        ):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, kind.from_dict(value))
            elif not isinstance(value, kind):
                raise ValueError(f"SfrConfig.{name} must be a {kind.__name__} or a mapping, got {type(value).__name__}")
        check_fields(
            self,
            numbers={"plus_voxel_threshold": (0.0, 1.0, False)},
            wholes={"checkpoint_every": 1},
            flags=("predict_pool", "allow_implausible_labels"),
            optional=("plus_voxel_threshold",),
        )

    def finetune_config(self) -> FinetuneConfig:
        """The :class:`FinetuneConfig` the shared run state and guard read (re-training steps, validation)."""
        return FinetuneConfig(
            train=self.retrain,
            semi_iterations=1,
            pseudo=PseudoLabelConfig(mode=PseudoMode.NONE),
            validation=self.validation,
            predict_pool=self.predict_pool,
            allow_implausible_labels=self.allow_implausible_labels,
            checkpoint_every=self.checkpoint_every,
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "method": plain(self.method),
            "sam": self.sam.to_dict(),
            "plus": self.plus.to_dict(),
            "plus_voxel_threshold": self.plus_voxel_threshold,
            "retrain": self.retrain.to_dict(),
            "mean_teacher": self.mean_teacher.to_dict(),
            "validation": self.validation.to_dict(),
            "predict_pool": self.predict_pool,
            "allow_implausible_labels": self.allow_implausible_labels,
            "checkpoint_every": self.checkpoint_every,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SfrConfig:
        return cls(**check_keys(cls, data))
