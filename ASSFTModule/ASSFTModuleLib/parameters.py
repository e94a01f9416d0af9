"""Panel values that the widget, the parameter node and the job controller share (no Qt, no MRML).

The parameter node itself (``@parameterNodeWrapper``) lives in ``ASSFTModule.py``; its enum and the mapping of
its model fields to the engine's model reference live here, so that the job controller can use them headless.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

from ASSFTActive.cards import DEFAULT_MODEL, EMBEDDED_DEFAULT_CARD

from .errors import ASSFTModuleError

#: Translates the labels below; desktop Slicer sets it to ``slicer.i18n.tr`` (identity here).
translateLabel: Callable[[str], str] = lambda text: text  # noqa: E731


class ModelSource(enum.Enum):
    """Which model the module uses."""

    Default = "default"
    CardFile = "card"

    def label(self) -> str:
        return translateLabel("Embedded default model" if self is ModelSource.Default else "Model card file")


class AdaptMethodChoice(enum.Enum):
    """How Adapt Model adapts the model: ASSFT's selective fine-tuning (an ``adapt`` job) or SFR / SFR+ (an ``sfr``
    job: SAM pseudo-labels and Mean-Teacher re-training, ``ASSFTActive.sfr.pipeline.sfr_adapt``)."""

    ASSFT = "assft"
    SFR = "sfr"
    SFR_PLUS = "sfr_plus"

    def label(self) -> str:
        return translateLabel({"assft": "ASSFT", "sfr": "SFR", "sfr_plus": "SFR+"}[self.value])


def adaptJobFor(method: Union[AdaptMethodChoice, str, None]) -> Tuple[str, Dict[str, str]]:
    """The job kind and SFR settings of the Adapt Model button for ``method``: ``("adapt", {})`` for ASSFT,
    ``("sfr", {"method": ...})`` for SFR and SFR+ (the engine's ``JobSpec.sfr``; its other settings keep SFR's
    defaults)."""
    method = AdaptMethodChoice(method) if method is not None else AdaptMethodChoice.ASSFT
    if method is AdaptMethodChoice.ASSFT:
        return "adapt", {}
    return "sfr", {"method": method.value}


def cardPathText(path: Union[str, Path, None]) -> str:
    """The card path as the user typed it; ``""`` for an empty field (``pathlib.Path("")`` reads as ``"."``)."""
    text = "" if path is None else str(path).strip()
    return "" if text == "." else text


def initialCardPath(current: Union[str, Path, None]) -> Path:
    """What the card field starts with: the current path, or the embedded default card when it is empty.

    Slicer's path field shows ``pathlib.Path("")`` as ``"."``; the embedded card is a real card to start from
    (the field is disabled while the embedded default model is selected).
    """
    text = cardPathText(current)
    return Path(text) if text else EMBEDDED_DEFAULT_CARD


def modelReferenceFor(modelSource: ModelSource, modelCardPath: Optional[Union[str, Path]]) -> str:
    """``"default"`` or the card path chosen in the panel.

    Raises:
        ASSFTModuleError: a card file is chosen but the field is empty.
    """
    if modelSource == ModelSource.Default:
        return DEFAULT_MODEL
    path = cardPathText(modelCardPath)
    if not path:
        raise ASSFTModuleError("Choose a model card file (card.json), or select the embedded default model.")
    return path


#: Query rounds the panel starts with: 1 proposes the whole budget at once (the engine's ``QueryConfig.rounds``).
DEFAULT_QUERY_ROUNDS = 1
#: The most query rounds the panel's field offers.
MAX_QUERY_ROUNDS = 100


def queryRoundsValue(value) -> int:
    """The number of query rounds R of the multi-round test-time query (``QueryConfig.rounds``) as a whole number.

    With R > 1 the budget is the schedule's total over R rounds and each ranking proposes the current round's share
    (``ASSFTActive.query.rounds.plan_round``; the round is read from how many pool volumes are labelled). Accepts a
    whole number, a float without a fraction (a number field's value) or its text.

    Raises:
        ASSFTModuleError: not a whole number, or below 1.
    """
    number = None
    if isinstance(value, str):
        text = value.strip()
        number = int(text) if text.lstrip("+-").isdigit() else None
    elif isinstance(value, float):
        number = int(value) if value.is_integer() else None
    elif not isinstance(value, bool) and hasattr(value, "__index__"):
        number = int(value.__index__())
    if number is None or number < 1:
        raise ASSFTModuleError(
            f"Query rounds must be a whole number of at least 1 (1 proposes the whole budget at once; R > 1 spreads "
            f"the budget over R rounds with Adapt Model between them), got {value!r}."
        )
    if number > MAX_QUERY_ROUNDS:
        raise ASSFTModuleError(f"Query rounds must be at most {MAX_QUERY_ROUNDS}, got {number}.")
    return number


class AnnotationUnitChoice(enum.Enum):
    """What Rank proposes and Annotate steps through (``assft rank --unit``): whole volumes, slices, or regions of
    the image grid (``ASSFTActive.query.units``)."""

    VOLUME = "volume"
    SLICE = "slice"
    REGION = "region"


#: The annotation units' values (job.json's ``query.units.unit``; absent for whole volumes).
ANNOTATION_UNITS = tuple(choice.value for choice in AnnotationUnitChoice)


def jobQuery(rounds, settings: Optional[Dict] = None, unit=AnnotationUnitChoice.VOLUME) -> Dict:
    """The ``query`` of a job's ``job.json``: the engine's ``QueryConfig`` settings ``settings`` (unchanged) with the
    panel's ``rounds`` (:func:`queryRoundsValue`), which decides over any ``rounds`` in ``settings``, and with
    ``unit`` slice or region the block ``units: {"unit": unit}`` (the engine's ``UnitConfig``; the budget then counts
    slices or regions).

    Raises:
        ASSFTModuleError: ``rounds`` is not a whole number >= 1, or ``unit`` is not one of :data:`ANNOTATION_UNITS`.
    """
    unit = getattr(unit, "value", unit)
    if unit not in ANNOTATION_UNITS:
        raise ASSFTModuleError(f"The annotation unit must be one of {', '.join(ANNOTATION_UNITS)}, got {unit!r}.")
    query = {**dict(settings or {}), "rounds": queryRoundsValue(rounds)}
    if unit != "volume":
        query["units"] = {**dict(query.get("units") or {}), "unit": unit}
    return query
