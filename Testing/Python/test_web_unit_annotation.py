"""The browser's annotation at the proposed unit (issue 27 item 3) without a browser: the page's Unit goes into the
jobs, Next proposed slice / Mark done call the module's logic, Save labels writes 255 (not annotated) outside the
done slices, and the label file read back at the next start continues where the annotator stopped (real MRML)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import slicer_scene
from slicer_scene import RecordingRunner

slicer = slicer_scene.requireSlicer()

from ASSFTModuleLib import unitProposals  # noqa: E402
from ASSFTModuleLib.errors import ASSFTModuleError  # noqa: E402
from ASSFTModuleLib.unitProposals import UnitProposal  # noqa: E402

from ASSFTActive.io import read_volume  # noqa: E402
from ASSFTActive.jobs import read_job  # noqa: E402
from ASSFTActive.partial import NOT_ANNOTATED  # noqa: E402
from ASSFTWeb.guidance import next_step  # noqa: E402
from ASSFTWeb.session import AnnotatorSession, ServeConfig  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "ASSFTActive" / "resources" / "sample" / "pool"
CASE = "hippocampus_011"


@pytest.fixture()
def data(tmp_path):
    folder = tmp_path / "data"
    (folder / "labels").mkdir(parents=True)
    shutil.copy(SAMPLE / "images" / f"{CASE}.nii.gz", folder)
    shutil.copy(SAMPLE / "labels" / f"{CASE}.nii.gz", folder / "labels")
    return folder


def sessionOn(data):
    env = slicer_scene.SlicerScene()
    session = AnnotatorSession(env.scene, env.appLogic, ServeConfig(data_dir=data), RecordingRunner)
    session.load_pool()
    return session


def test_the_unit_chosen_on_the_page_goes_into_the_rank_job(data):
    session = sessionOn(data)
    assert session.set_annotation_unit("slice") == "slice"
    job = read_job(session.start_job("rank").jobDir)
    assert job.query == {"rounds": 1, "units": {"unit": "slice"}} and job.unit_config().unit.value == "slice"
    with pytest.raises(ASSFTModuleError, match="Unknown annotation unit 'cube'"):
        session.set_annotation_unit("cube")
    assert session.parameters.annotationUnit.value == "slice"


def test_next_and_mark_done_then_save_writes_not_annotated_outside_the_done_slices(data):
    full = read_volume(data / "labels" / f"{CASE}.nii.gz").array
    session = sessionOn(data)
    node = session.volume_node(CASE)
    k = int(np.argmax((full > 0).sum(axis=(0, 1))))  # the slice with the most foreground, and one beside it
    unitProposals.setProposals(
        node, [UnitProposal("slice", axis=2, index=k), UnitProposal("slice", axis=2, index=k - 3)]
    )

    assert session.next_proposal(node) == f"0 of 2 proposed slices done; now: slice {k} (axis 2)"
    assert session.mark_done(node) == f"1 of 2 proposed slices done; now: slice {k} (axis 2)"
    assert session.next_proposal(node) == f"1 of 2 proposed slices done; now: slice {k - 3} (axis 2)"
    session.mark_done(node)
    assert session.next_proposal(node).startswith("Every proposed unit of hippocampus_011 is done")
    saved = session.save_labels(node)

    written = read_volume(saved.path).array
    expected = np.full(full.shape, NOT_ANNOTATED, np.uint8)
    expected[:, :, [k - 3, k]] = full[:, :, [k - 3, k]]
    np.testing.assert_array_equal(written, expected)

    # the next start reads the partial label back: the painting inside the done slices, those slices done
    again = sessionOn(data)
    node = again.volume_node(CASE)
    assert [(u.axis, u.index) for u in unitProposals.doneUnits(node)] == [(2, k - 3), (2, k)]
    assert again.voxel_counts(node) == {"anterior": int(np.sum(expected == 1)), "posterior": int(np.sum(expected == 2))}
    np.testing.assert_array_equal(read_volume(again.save_labels(node).path).array, expected)


def test_save_refuses_a_volume_with_proposed_slices_and_none_done(data):
    session = sessionOn(data)
    node = session.volume_node(CASE)
    unitProposals.setProposals(node, [UnitProposal("slice", axis=2, index=10)])
    with pytest.raises(ASSFTModuleError, match="none is marked done"):
        session.save_labels(node)
    with pytest.raises(ASSFTModuleError, match="Next proposed slice"):
        session.mark_done(node)


def test_next_proposal_on_a_volume_without_proposals_says_to_rank_by_slice(data):
    session = sessionOn(data)
    with pytest.raises(ASSFTModuleError, match="choose the unit slice or region"):
        session.next_proposal(session.volume_node(CASE))


def test_the_next_step_line_names_the_unit_buttons_when_the_unit_is_not_volume():
    rows = [{"volume": "a", "state": "proposed"}]
    assert "Next proposed slice and Mark done" in next_step(rows, False, unit="slice")
    line = next_step(rows, False, annotated="a", unit="region")
    assert "Next proposed region" in line and "Mark done" in line
    assert "Mark done" not in next_step(rows, False, annotated="a", unit="volume")
