"""A resumable SFR run (``sfr_adapt(work_dir=...)``, ``assft sfr --work-dir``): finished cross-validation folds and the
final run's SAM pseudo-labels are kept and not redone, the re-training continues from its checkpoint, and the state
of a run with other settings is refused."""

from __future__ import annotations

import pytest
import torch
from conftest import fast_sfr, make_tiny_card, write_dataset

from ASSFTActive.errors import CancelledError, JobError
from ASSFTActive.sfr.pipeline import SfrConfig, sfr_adapt
from ASSFTActive.store import ModelStore


@pytest.fixture
def world(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # the embedded SAM prior's classes: SFR refuses a prior whose class names differ from the model's
    card = make_tiny_card(tmp_path / "base", class_names=["background", "anterior", "posterior"])
    images, labels = write_dataset(tmp_path / "data", count=5, labeled=2)
    yield {"card": card, "images": images, "labels": labels, "store": tmp_path / "store", "work": tmp_path / "work"}
    torch.set_num_threads(threads)


def _run(world, config: SfrConfig, cancel_at=None):
    """One ``sfr_adapt`` call; ``cancel_at(event)`` True cancels it. Returns the result (None when cancelled) and
    every event."""
    events = []

    def progress(event):
        events.append(event)
        if cancel_at is not None and cancel_at(event):
            raise CancelledError("cancelled")

    try:
        result = sfr_adapt(
            world["images"],
            world["labels"],
            store=world["store"],
            model=world["card"],
            name="site",
            config=config,
            progress=progress,
            work_dir=world["work"],
        )
    except CancelledError:
        return None, events
    return result, events


def _final_training(event) -> bool:
    """A step of the final run's re-training (the folds' events carry a ``fold k/n`` prefix)."""
    return event.event == "progress" and event.phase == "train" and not event.message.startswith("fold")


def _stage3_starts(event) -> bool:
    """The final run announces its re-training: its SAM stage is done."""
    return event.event == "phase" and event.phase == "train" and event.message.startswith("sfr stage 3")


def test_a_run_cancelled_after_its_sam_stage_resumes_without_redoing_it_or_its_folds(world):
    config = SfrConfig.from_dict(fast_sfr())
    first, events = _run(world, config, cancel_at=_stage3_starts)
    assert first is None and ModelStore(world["store"]).versions("site") == []
    fine_tunings = [e for e in events if e.event == "phase" and e.phase == "sfr_finetune" and "stage 2" in e.message]
    assert len(fine_tunings) == 3  # two folds and the final run
    kept = sorted(p.name for p in world["work"].iterdir())
    assert kept == ["checkpoint.pt", "cv-fold0.json", "cv-fold1.json", "pseudo-r0.json", "pseudo-r0.npz"]

    result, again = _run(world, config)
    assert not any(e.phase in ("sfr_finetune", "sfr_pseudo_labels") for e in again)  # SAM is not fine-tuned again
    resumed = [e for e in again if e.phase == "resume"]
    assert [e.message.startswith("cross-validation fold") for e in resumed] == [True, True, False]
    assert "SAM's pseudo-labels of 3 volume(s) kept" in resumed[-1].message and resumed[-1].step == 0
    assert [e.step for e in again if _final_training(e)][0] == 1
    assert result.resumed_from == 0 and result.version == "v1"
    assert result.metrics["evaluated_on"] == "cross_validation" and result.decision.reason
    assert len(result.pseudo) == 3 and all(p.kept for p in result.pseudo)
    assert not world["work"].exists()  # the commit removed what a resume would read


def test_the_state_of_a_run_with_other_settings_is_refused(world):
    config = SfrConfig.from_dict(fast_sfr())
    _run(world, config, cancel_at=_final_training)
    assert (world["work"] / "pseudo-r0.npz").is_file()
    other = SfrConfig.from_dict(fast_sfr(sam=dict(fast_sfr()["sam"], iterations=3)))
    with pytest.raises(JobError, match="settings changed"):
        _run(world, other)
    assert ModelStore(world["store"]).versions("site") == []
