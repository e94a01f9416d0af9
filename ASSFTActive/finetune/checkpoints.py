"""What a cancelled or killed adaptation run resumes from: typed records, and the folder that holds them.

``work_dir`` holds three kinds of file, each written atomically by rank 0 and read by every rank:

* ``checkpoint.pt``: a :class:`TrainingCheckpoint` of the final training (stage, step, weights, optimiser state);
* ``cv-fold<k>.json``: the :class:`FoldScores` of each finished cross-validation fold (a resumed run skips it);
* ``cv-fold<k>-weights.pt``: that fold's weights at each scored step, kept only when the new model is the folds'
  average (``validation.final = fold_average``);
* ``pseudo-r<k>.json`` + ``.npz``: the :class:`PseudoLabels` of self-training round ``k`` of the final training.

The checkpoint and the fold files carry the run's identity (format, a fingerprint of volumes and settings, the
card's signature) and are refused, with what to do, when it differs: a checkpoint is never applied to another
model card or another set of inputs. The torch file is read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import io as _stdio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from ..errors import JobError, ModelError
from ..evaluate import NOT_SCORED, json_ready
from ..io import atomic_write_bytes, atomic_write_text
from ..models import ModelCard
from .fold_pseudo import PseudoRound
from .pseudo import PseudoDecision

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoints",
    "FoldScores",
    "PseudoLabels",
    "TrainingCheckpoint",
    "card_signature",
    "run_fingerprint",
]

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


def card_signature(card: ModelCard) -> str:
    """Hash of what fixes a network's tensors and inputs (architecture, arguments, classes, patch, preprocessing)."""
    keys = (
        "architecture",
        "arguments",
        "class_names",
        "encoder_stages",
        "patch_size",
        "preprocessing",
        "spacing",
        "orientation",
    )
    data = {k: v for k, v in card.to_dict().items() if k in keys}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def run_fingerprint(images: Mapping[str, str], labels: Mapping[str, str], identity: Mapping[str, Any]) -> str:
    """Hash of a run's volumes and its method's identity (:meth:`~.method.AdaptMethod.identity`: every setting, and
    what else the state depends on): a checkpoint of another run is refused."""
    return hashlib.sha256(
        json.dumps(
            {
                "images": dict(sorted(images.items())),
                "labels": dict(sorted(labels.items())),
                "config": dict(identity),
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()


@dataclass(frozen=True)
class TrainingCheckpoint:
    """Where the final training stands.

    Attributes:
        stage: 0 = the supervised stage, ``k`` = semi-supervised round ``k``; ``stage`` past the last round means
            training finished.
        step: steps done within ``stage``.
        network: the weights (CPU tensors).
        optimizer: the trainer's ``{"optimizer", "scheduler"[, "teacher"]}`` state at ``step`` (``None`` at the
            start of a stage).
    """

    stage: int
    step: int
    network: Mapping[str, torch.Tensor]
    optimizer: Optional[Mapping[str, Any]] = None


@dataclass(frozen=True)
class FoldScores:
    """Held-out Dice of one finished cross-validation fold, and the pseudo-labels it trained with.

    Attributes:
        held_out: the fold's held-out case ids.
        scores: ``{case_id: {global step: (Dice of each foreground class, NaN = not scored)}}``.
        pseudo: the fold's pseudo-labelling rounds (:class:`~.fold_pseudo.PseudoRound`, ``start`` on the final run's
            steps); ``None`` in a file written before they were kept.
    """

    held_out: Tuple[str, ...]
    scores: Mapping[str, Mapping[int, Tuple[float, ...]]]
    pseudo: Optional[Tuple[PseudoRound, ...]] = None

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "held_out": list(self.held_out),
            "scores": {c: {str(s): json_ready(list(v)) for s, v in by.items()} for c, by in self.scores.items()},
        }
        if self.pseudo is not None:
            out["pseudo"] = [r.to_dict() for r in self.pseudo]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FoldScores:
        scores = {
            str(c): {int(s): tuple(NOT_SCORED if v is None else float(v) for v in values) for s, values in by.items()}
            for c, by in data["scores"].items()
        }
        pseudo = data.get("pseudo")
        return cls(
            held_out=tuple(data.get("held_out", ())),
            scores=scores,
            pseudo=None if pseudo is None else tuple(PseudoRound.from_dict(r) for r in pseudo),
        )


@dataclass(frozen=True)
class PseudoLabels:
    """One self-training round: the decision on every unlabelled volume, the label maps (and voxel masks) of those
    kept."""

    decisions: Tuple[PseudoDecision, ...]
    labels: Mapping[str, np.ndarray] = field(default_factory=dict)
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)


class Checkpoints:
    """The resumable state of one run in ``folder`` (``None``: nothing is kept, nothing resumes).

    Args:
        folder: the run's ``work_dir``.
        fingerprint: :func:`run_fingerprint` of the run.
        signature: :func:`card_signature` of its model card.
        writer: this process writes (rank 0); the others only read.
    """

    def __init__(self, folder: Optional[Path], fingerprint: str, signature: str, writer: bool):
        self.folder = folder
        self.fingerprint = fingerprint
        self.signature = signature
        self.writer = writer and folder is not None
        if self.writer:
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def _identity(self) -> Dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "card_signature": self.signature}

    def _verified(self, state: Any, path: Path) -> Dict[str, Any]:
        """``state`` when it was written by this ASSFT version for the same card, volumes and settings."""
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise JobError(f"{path}: not a checkpoint of this ASSFT version. Delete {self.folder} to start over.")
        if state.get("card_signature") != self.signature:
            raise ModelError(
                f"{path}: the checkpoint was written for another model card (different architecture, classes or "
                f"preprocessing) than the job's model now. Restore the job's model, or delete {self.folder} to "
                "start over with the new card."
            )
        if state.get("fingerprint") != self.fingerprint:
            raise JobError(
                f"{path}: the job's volumes or settings changed since this checkpoint was written. Restore them, "
                f"or delete {self.folder} to start over."
            )
        return state

    # ------------------------------------------------------------------ the final training

    def load(self) -> Optional[TrainingCheckpoint]:
        path = None if self.folder is None else self.folder / CHECKPOINT_FILE
        if path is None or not path.is_file():
            return None
        state = self._read_torch(path, "the checkpoint")
        return TrainingCheckpoint(
            stage=int(state["stage"]), step=int(state["step"]), network=state["network"], optimizer=state["optim"]
        )

    def save(self, checkpoint: TrainingCheckpoint) -> None:
        if not self.writer:
            return
        payload = dict(
            self._identity(),
            stage=checkpoint.stage,
            step=checkpoint.step,
            network=dict(checkpoint.network),
            optim=checkpoint.optimizer,
        )
        self._write_torch(self.folder / CHECKPOINT_FILE, payload)

    def _read_torch(self, path: Path, what: str) -> Dict[str, Any]:
        """A torch file this class wrote (read with ``weights_only=True``), verified to be this run's."""
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise JobError(
                f"{path}: {what} cannot be read ({type(exc).__name__}: {exc}). Delete {self.folder} to start the "
                "job over."
            ) from exc
        return self._verified(state, path)

    def _write_torch(self, path: Path, payload: Mapping[str, Any]) -> None:
        buffer = _stdio.BytesIO()
        torch.save(dict(payload), buffer)
        atomic_write_bytes(path, buffer.getvalue())

    # ------------------------------------------------------------------ cross-validation folds

    def load_fold(self, index: int) -> Optional[FoldScores]:
        path = None if self.folder is None else self.folder / f"cv-fold{index}.json"
        if path is None or not path.is_file():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JobError(
                f"{path}: the fold's scores cannot be read ({exc}). Delete {self.folder} to start the job over."
            ) from exc
        return FoldScores.from_dict(self._verified(state, path))

    def save_fold(self, index: int, fold: FoldScores) -> None:
        if self.writer:
            atomic_write_text(
                self.folder / f"cv-fold{index}.json", json.dumps(dict(self._identity(), **fold.to_dict()))
            )

    def _fold_weights_file(self, index: int) -> Path:
        return self.folder / f"cv-fold{index}-weights.pt"

    def load_fold_weights(self, index: int) -> Optional[Dict[int, Dict[str, torch.Tensor]]]:
        """Fold ``index``'s weights by scored step (``{step: state dict}``), or ``None`` when none were kept."""
        if self.folder is None or not self._fold_weights_file(index).is_file():
            return None
        state = self._read_torch(self._fold_weights_file(index), "the fold's weights")
        return {int(step): dict(weights) for step, weights in zip(state["steps"], state["weights"])}

    def save_fold_weights(self, index: int, weights: Mapping[int, Mapping[str, torch.Tensor]]) -> None:
        if not self.writer:
            return
        steps: List[int] = sorted(weights)
        payload = dict(self._identity(), steps=steps, weights=[dict(weights[s]) for s in steps])
        self._write_torch(self._fold_weights_file(index), payload)

    # ------------------------------------------------------------------ pseudo-labels of a self-training round

    def _pseudo_files(self, round_index: int) -> Tuple[Path, Path]:
        return self.folder / f"pseudo-r{round_index}.json", self.folder / f"pseudo-r{round_index}.npz"

    def load_pseudo(self, round_index: int) -> Optional[PseudoLabels]:
        if self.folder is None:
            return None
        meta, data = self._pseudo_files(round_index)
        if not meta.is_file() or not data.is_file():
            return None
        decisions = tuple(PseudoDecision.from_dict(d) for d in json.loads(meta.read_text(encoding="utf-8")))
        with np.load(data) as loaded:
            arrays = {k: loaded[k] for k in loaded.files}

        def named(prefix: str) -> Dict[str, np.ndarray]:
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

        return PseudoLabels(decisions, labels=named("label_"), masks=named("mask_"))

    def save_pseudo(self, round_index: int, round_labels: PseudoLabels) -> None:
        if not self.writer:
            return
        meta, data = self._pseudo_files(round_index)
        arrays = {f"label_{k}": v for k, v in round_labels.labels.items()}
        arrays.update({f"mask_{k}": v for k, v in round_labels.masks.items()})
        buffer = _stdio.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(data, buffer.getvalue())
        atomic_write_text(meta, json.dumps([d.to_dict() for d in round_labels.decisions], indent=1))

    def _filled_file(self, round_index: int) -> Path:
        return self.folder / f"filled-r{round_index}.npz"

    def load_filled(self, round_index: int) -> Optional[Dict[str, Tuple[np.ndarray, np.ndarray]]]:
        """The partially labelled volumes of round ``round_index`` as the teacher filled them
        (:meth:`save_filled`), or None when that round was not saved."""
        if self.folder is None or not self._filled_file(round_index).is_file():
            return None
        with np.load(self._filled_file(round_index)) as loaded:
            arrays = {k: loaded[k] for k in loaded.files}
        cases = [k[len("label_") :] for k in arrays if k.startswith("label_")]
        return {case: (arrays[f"label_{case}"], arrays[f"mask_{case}"].astype(bool)) for case in cases}

    def save_filled(self, round_index: int, filled: Mapping[str, Tuple[np.ndarray, np.ndarray]]) -> None:
        """Keep ``{case_id: (target [I, J, K], mask [I, J, K])}`` of round ``round_index``
        (:func:`~ASSFTActive.partial.fill_from_teacher`), so that a resumed round trains on the same targets."""
        if not self.writer:
            return
        arrays = {f"label_{k}": v[0] for k, v in filled.items()}
        arrays.update({f"mask_{k}": v[1] for k, v in filled.items()})
        buffer = _stdio.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(self._filled_file(round_index), buffer.getvalue())

    def clear(self) -> None:
        """Remove every file this class wrote (after the version was committed: nothing is left to resume)."""
        if not self.writer:
            return
        for pattern in (
            CHECKPOINT_FILE,
            "cv-fold*.json",
            "cv-fold*-weights.pt",
            "pseudo-r*.json",
            "pseudo-r*.npz",
            "filled-r*.npz",
        ):
            for item in self.folder.glob(pattern):
                item.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # the folder holds other files of the caller
