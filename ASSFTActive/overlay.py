"""Where is the model unsure? A voxel-wise entropy volume and the high-entropy anatomical regions.

The entropy volume lies on the input's exact voxel grid (same shape and affine), so a viewer overlays it directly.
Regions are connected components of high entropy inside the dilated predicted foreground (the ASD region of
method-spec §1.5), so the annotator is sent to uncertain anatomy, not to uncertain background.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
from scipy import ndimage

from .io import Volume, atomic_write_text, write_volume
from .query import QueryConfig, foreground_mask, normalized_entropy


@dataclass(frozen=True)
class OverlayConfig:
    """How high-entropy regions are found.

    Attributes:
        threshold: normalised entropy at or above which a voxel is "uncertain".
        max_regions: how many regions to list (largest total entropy first).
        min_voxels: smaller components are ignored (speckle).
    """

    threshold: float = 0.3
    max_regions: int = 5
    min_voxels: int = 5


@dataclass(frozen=True)
class Region:
    """A connected high-entropy region.

    Attributes:
        center_ras: entropy-weighted centre in RAS mm ``[3]``.
        bbox_ijk_min, bbox_ijk_max: inclusive voxel bounding box ``[3]``.
        volume_mm3: region volume.
        mean_entropy: mean normalised entropy inside the region.
        voxel_count: number of voxels.
    """

    center_ras: Tuple[float, float, float]
    bbox_ijk_min: Tuple[int, int, int]
    bbox_ijk_max: Tuple[int, int, int]
    volume_mm3: float
    mean_entropy: float
    voxel_count: int


def entropy_map(image: Volume, probs: np.ndarray) -> Volume:
    """Normalised entropy ``[I, J, K]`` float32 in [0, 1] of ``probs`` ``[C, I, J, K]``, with ``image``'s geometry."""
    return image.with_array(normalized_entropy(probs).astype(np.float32))


def high_entropy_regions(entropy: Volume, region_mask: np.ndarray,
                         config: OverlayConfig = OverlayConfig()) -> List[Region]:
    """Connected components of ``entropy >= threshold`` inside ``region_mask`` (bool ``[I, J, K]``).

    Sorted by total entropy (mean entropy × voxels), so a large uncertain structure outranks a small hot spot.
    """
    values = np.asarray(entropy.array, dtype=np.float32)
    uncertain = (values >= config.threshold) & region_mask
    labels, count = ndimage.label(uncertain, structure=ndimage.generate_binary_structure(3, 3))
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones_like(values), labels, index)
    totals = ndimage.sum_labels(values, labels, index)
    voxel_volume = float(abs(np.linalg.det(entropy.affine[:3, :3])))
    boxes = ndimage.find_objects(labels)
    regions = []
    for order in np.argsort(-totals):
        size = int(sizes[order])
        if size < config.min_voxels:
            continue
        component = labels == order + 1
        ijk = np.argwhere(component).astype(np.float64)
        weights = values[component].astype(np.float64)
        centre_ijk = (ijk * weights[:, None]).sum(0) / max(weights.sum(), 1e-12)
        centre_ras = entropy.affine @ np.append(centre_ijk, 1.0)
        box = boxes[order]
        regions.append(Region(
            center_ras=tuple(round(float(x), 3) for x in centre_ras[:3]),
            bbox_ijk_min=tuple(int(s.start) for s in box),
            bbox_ijk_max=tuple(int(s.stop) - 1 for s in box),
            volume_mm3=round(size * voxel_volume, 3),
            mean_entropy=round(float(totals[order] / size), 4),
            voxel_count=size,
        ))
        if len(regions) == config.max_regions:
            break
    return regions


def write_overlay(image: Volume, probs: np.ndarray, out_dir: Path, case: str,
                  query: QueryConfig = QueryConfig(), config: OverlayConfig = OverlayConfig()) -> Tuple[Path, Path]:
    """Write ``<case>_entropy.nii.gz`` and ``<case>_regions.json`` into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    entropy = entropy_map(image, probs)
    regions = high_entropy_regions(entropy, foreground_mask(probs, query), config)
    map_path = write_volume(entropy, out_dir / f"{case}_entropy.nii.gz")
    payload = {"case_id": case, "threshold": config.threshold, "regions": [asdict(r) for r in regions]}
    regions_path = atomic_write_text(out_dir / f"{case}_regions.json", json.dumps(payload, indent=2) + "\n")
    return map_path, regions_path
