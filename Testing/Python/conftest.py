"""What the tests share: the repository on sys.path, the shared data (skipping when absent), the reserved cases,
and a small synthetic world (a tiny 3-class UNet card with random "pre-trained" weights, volumes with two bright
boxes as the two classes) that the fine-tuning, store, worker and CLI tests build on.

Test modules import the helpers with ``from conftest import ...`` (pytest puts this folder on ``sys.path``); no test
module imports another.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Dict, FrozenSet, List, Tuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED_DATA = REPO.parent / "shared" / "data"
HIPPOCAMPUS = SHARED_DATA / "hippocampus"
FIXTURES = SHARED_DATA / "fixtures"
#: Cases kept for external evaluation: never trained, tuned or selected on (``harness.splits``).
RESERVED_LIST = HIPPOCAMPUS / "reserved.txt"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where torch sees a CUDA device and are skipped, saying why, everywhere else."""
    needing = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not needing:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False on this machine)")
    for item in needing:
        item.add_marker(skip)


def require(path: Path) -> Path:
    """``path`` if it exists, else skip the test saying which shared data it needs."""
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared data, present in CI; absent in a bare clone)")
    return path


@pytest.fixture
def one_thread():
    """In-process torch runs use one thread, like the worker subprocesses (the CI machine has two cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def hippocampus_dir() -> Path:
    return require(HIPPOCAMPUS)


@pytest.fixture
def fixtures_dir() -> Path:
    return require(FIXTURES)


@pytest.fixture
def reserved_cases() -> FrozenSet[str]:
    """The case ids of the shared ``reserved.txt``; skips when it is absent, fails when it lists nothing (an empty
    list would make every "no reserved case was used" check pass without checking anything)."""
    from Testing.Benchmarks.harness.splits import read_reserved

    cases = frozenset(read_reserved(require(RESERVED_LIST)))
    assert cases, f"{RESERVED_LIST} lists no case; it must name the reserved cases, one per line"
    return cases


def rotated_affine(angle_deg: float = 30.0, spacing=(0.8, 1.2, 2.5), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """A voxel-to-RAS affine rotated about z with anisotropic spacing."""
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


# ------------------------------------------------------------------ the synthetic world: a tiny card, box volumes

SHAPE = (24, 24, 20)

TINY_CARD = {
    "name": "tiny-unet",
    "architecture": "UNet",
    "arguments": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
        "norm": "instance",
    },
    "weights": "weights.safetensors",
    "class_names": ["background", "box_a", "box_b"],
    "encoder_stages": ["model.0", "model.1.submodule.0", "model.1.submodule.1.submodule"],
    "patch_size": [16, 16, 16],
    "preprocessing": {"profile": "zscore_nonzero"},
    "spacing": None,
    "orientation": "RAS",
}

#: Small, fast fine-tuning settings for tests (dict form, as in job.json).
FAST_FINETUNE = {
    "train": {"iterations": 12, "batch_size": 2, "learning_rate": 0.01},
    "semi_iterations": 8,
    "validation": {"every": 6, "hd95": False},
    "checkpoint_every": 4,
}


def make_tiny_card(folder: Path, seed: int = 0, **changes) -> Path:
    """A tiny UNet card with random weights in ``folder``; returns the card path."""
    import torch

    from ASSFTActive.models import ModelCard, build_network, save_card, save_weights

    folder.mkdir(parents=True, exist_ok=True)
    card = ModelCard.from_dict({**TINY_CARD, **changes})
    torch.manual_seed(seed)
    save_weights(build_network(card), folder / "weights.safetensors")
    save_card(card, folder / "card.json")
    return folder / "card.json"


def synthetic_case(seed: int, contrast: float = 1.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, label, affine)``: two boxes (classes 1 and 2) of different brightness on a noisy background."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 10.0, SHAPE).astype(np.float32)
    label = np.zeros(SHAPE, dtype=np.uint8)
    for cls in (1, 2):
        size = rng.integers(5, 8, size=3)
        start = [int(rng.integers(1, s - z - 1)) for s, z in zip(SHAPE, size)]
        box = tuple(slice(a, a + int(z)) for a, z in zip(start, size))
        label[box] = cls
    for cls, level in ((1, 300.0), (2, 500.0)):
        image[label == cls] = rng.normal(level * contrast, 10.0, int((label == cls).sum()))
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    return image, label, affine


def box_cases(count: int, first_seed: int = 0) -> list:
    """``count`` labelled training cases (:class:`~ASSFTActive.finetune.training.SupervisedCase`, ids ``c<seed>``)
    of :func:`synthetic_case` with seeds ``first_seed``, ``first_seed + 1``, ...; for the trainer's tests."""
    from ASSFTActive.finetune.training import SupervisedCase
    from ASSFTActive.io import Volume

    cases = []
    for seed in range(first_seed, first_seed + count):
        image, label, affine = synthetic_case(seed)
        volume = Volume(image, affine)
        cases.append(SupervisedCase(f"c{seed}", volume, volume.with_array(label)))
    return cases


def write_swapped_label(label: Path, folder: Path) -> Path:
    """A copy of the label file ``label`` in ``folder`` (same name) with classes 1 and 2 swapped: a label that
    contradicts a decent model of the synthetic boxes."""
    from ASSFTActive.io import read_volume, write_volume

    swapped = read_volume(label)
    array = np.asarray(swapped.array).copy()
    array[swapped.array == 1], array[swapped.array == 2] = 2, 1
    return write_volume(swapped.with_array(array), folder / Path(label).name)


def write_dataset(
    folder: Path, count: int, labeled: int, first_seed: int = 0, contrast: float = 1.0
) -> Tuple[Dict[str, Path], Dict[str, Path]]:
    """``count`` synthetic volumes in ``folder/images``, the first ``labeled`` with labels in ``folder/labels``."""
    from ASSFTActive.io import Volume, write_volume

    images, labels = {}, {}
    for index in range(count):
        image, label, affine = synthetic_case(first_seed + index, contrast)
        case = f"case_{index:03d}"
        images[case] = write_volume(Volume(image, affine), folder / "images" / f"{case}.nii.gz")
        if index < labeled:
            labels[case] = write_volume(Volume(label, affine), folder / "labels" / f"{case}.nii.gz")
    return images, labels


def tree(folder: Path) -> List[str]:
    """Every path below ``folder`` (relative, sorted), to compare a folder before and after."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def worker_env(**extra: str) -> Dict[str, str]:
    """Environment of a worker subprocess: the repository importable, one thread (the CI machine is small)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    env.update(extra)
    return env


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def fast_sfr(**changes) -> dict:
    """SFR settings (the ``job.json`` form) that run in seconds on the tiny world: 2 SAM steps, 8 re-training steps,
    a checkpoint every 2."""
    from ASSFTActive.sfr.finetune import SfrFinetuneConfig
    from ASSFTActive.sfr.pipeline import SfrConfig
    from ASSFTActive.sfr.retrain import sfr_train_config

    config = SfrConfig(
        sam=SfrFinetuneConfig.tiny(iterations=2),
        retrain=sfr_train_config(iterations=8, batch_size=1),
        validation={"every": 4, "hd95": False},
        checkpoint_every=2,
    )
    return dict(config.to_dict(), **changes)


def overlay_evaluate_and_rerank(model: Path, images: Path, labels: Path, out: Path) -> None:
    """The rest of a round on ``model`` (a source folder or a store version) through the command line, as a user
    types it: an overlay of the first image, an evaluation on the labelled images, a ranking of the pool. Each
    command must succeed and write its outputs."""
    from ASSFTActive.cli import main

    first = sorted(images.iterdir())[0]
    common = ["--model", str(model), "--device", "cpu"]
    assert main(["overlay", "--image", str(first), "--out", str(out / "overlay"), *common]) == 0
    assert any((out / "overlay").rglob("*_entropy.nii.gz"))
    evaluate = ["evaluate", "--images", str(images), "--labels", str(labels), "--out", str(out / "evaluation")]
    assert main([*evaluate, "--no-hd95", "--allow-implausible-labels", "--quiet", *common]) == 0
    assert any((out / "evaluation").glob("*.csv"))
    rank = ["rank", "--images", str(images), "--labels", str(labels), "--budget", "1", "--out", str(out / "rank")]
    assert main([*rank, "--quiet", *common]) == 0
    cases = json.loads((out / "rank" / "ranking.json").read_text())["cases"]
    assert sum(c["selected"] for c in cases) == 1


def tiny_adapt_args(
    images, labels, model, store, *, iterations: int = 4, semi_iterations: int = 2, guard: bool = False
) -> List[str]:
    """``assft adapt`` arguments for a few steps on CPU into ``store/site``, the labels' checks only warning (the
    synthetic boxes are not real anatomy); the guard off unless asked for."""
    args = [
        "adapt",
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--model",
        str(model),
        "--store",
        str(store),
        "--name",
        "site",
        "--quiet",
        "--iterations",
        str(iterations),
        "--semi-iterations",
        str(semi_iterations),
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--allow-implausible-labels",
    ]
    return args if guard else [*args, "--no-guard"]
