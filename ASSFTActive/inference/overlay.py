"""Where is the model unsure? A voxel-wise entropy volume and the high-entropy anatomical regions.

The entropy volume lies on the input's exact voxel grid (same shape and affine), so a viewer overlays it directly;
it is stored as uint8 with a NIfTI scale (:func:`~ASSFTActive.io.write_unit_map`), a quarter of float32's size.
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

from ..io import UNIT_MAP_LEVELS, Volume, atomic_write_text, unit_levels, write_unit_map


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

    def __post_init__(self) -> None:
        # normalised entropy lies in [0, 1]: a threshold of 0 marks every voxel, one of 1 or more none
        if isinstance(self.threshold, bool) or not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1 (normalised entropy), got {self.threshold}")
        for name in ("max_regions", "min_voxels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


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


def high_entropy_regions(
    entropy: Volume, region_mask: np.ndarray, config: OverlayConfig = OverlayConfig()
) -> List[Region]:
    """Connected components of ``entropy >= threshold`` inside ``region_mask`` (bool ``[I, J, K]``).

    ``entropy.array`` holds the normalised entropy ``[I, J, K]``, as floats in ``[0, 1]`` or as uint8 levels
    ``round(255 H)`` (:func:`~ASSFTActive.io.unit_levels`). Sorted by total entropy (mean entropy × voxels), so a
    large uncertain structure outranks a small hot spot. Memory stays at the component labels plus one value per
    uncertain voxel, whatever the region sizes (a CT grid has 78 M voxels).
    """
    values = np.asarray(entropy.array)
    scale = 1.0 / UNIT_MAP_LEVELS if values.dtype == np.uint8 else 1.0
    limit = config.threshold / scale - (1e-6 if values.dtype == np.uint8 else 0.0)  # 0.2 * 255 is 51.000000001
    uncertain = (values >= limit) & np.asarray(region_mask, dtype=bool)
    labels, count = ndimage.label(uncertain, structure=ndimage.generate_binary_structure(3, 3))
    if count == 0:
        return []
    component = labels[uncertain]
    sizes = np.bincount(component, minlength=count + 1)[1:]
    totals = np.bincount(component, weights=values[uncertain], minlength=count + 1)[1:] * scale
    del component
    voxel_volume = float(abs(np.linalg.det(entropy.affine[:3, :3])))
    boxes = ndimage.find_objects(labels)
    regions = []
    for order in np.argsort(-totals):
        size = int(sizes[order])
        if size < config.min_voxels:
            continue
        box = boxes[order]
        inside = labels[box] == order + 1
        weights = values[box]
        centre_ijk = []
        for axis in range(3):  # entropy-weighted centre from marginal sums: no per-voxel coordinate arrays
            others = tuple(a for a in range(3) if a != axis)
            marginal = np.sum(weights, axis=others, where=inside, dtype=np.float64)
            coordinate = np.arange(box[axis].start, box[axis].stop, dtype=np.float64)
            centre_ijk.append(float((coordinate * marginal).sum() / max(marginal.sum(), 1e-12)))
        centre_ras = entropy.affine @ np.append(centre_ijk, 1.0)
        regions.append(
            Region(
                center_ras=tuple(round(float(x), 3) for x in centre_ras[:3]),
                bbox_ijk_min=tuple(int(s.start) for s in box),
                bbox_ijk_max=tuple(int(s.stop) - 1 for s in box),
                volume_mm3=round(size * voxel_volume, 3),
                mean_entropy=round(float(totals[order] / size), 4),
                voxel_count=size,
            )
        )
        if len(regions) == config.max_regions:
            break
    return regions


def overlay_paths(out_dir: Path, case: str) -> Tuple[Path, Path]:
    """``(entropy map, regions)`` files of ``case`` in ``out_dir``: the one naming rule of :func:`write_overlay`."""
    out_dir = Path(out_dir)
    return out_dir / f"{case}_entropy.nii.gz", out_dir / f"{case}_regions.json"


def write_overlay(
    image: Volume,
    entropy: np.ndarray,
    region_mask: np.ndarray,
    out_dir: Path,
    case: str,
    config: OverlayConfig = OverlayConfig(),
) -> Tuple[Path, Path]:
    """Write ``<case>_entropy.nii.gz`` and ``<case>_regions.json`` into ``out_dir``; returns both paths.

    Args:
        image: the input volume (its geometry is the overlay's).
        entropy: normalised entropy ``[I, J, K]`` on the input grid, floats in ``[0, 1]`` or uint8 levels
            ``round(255 H)`` (``Prediction.entropy_levels``).
        region_mask: bool ``[I, J, K]``, where regions may lie: the dilated predicted foreground
            (``Prediction.region``).
    """
    out_dir = Path(out_dir)
    if entropy.shape != image.shape or region_mask.shape != image.shape:
        raise ValueError(
            f"entropy {entropy.shape} and region mask {region_mask.shape} must have the image's shape {image.shape}"
        )
    entropy_volume = image.with_array(unit_levels(entropy))
    regions = high_entropy_regions(entropy_volume, np.asarray(region_mask, dtype=bool), config)
    map_path, regions_path = overlay_paths(out_dir, case)
    write_unit_map(entropy_volume, map_path)
    payload = {"case_id": case, "threshold": config.threshold, "regions": [asdict(r) for r in regions]}
    atomic_write_text(regions_path, json.dumps(payload, indent=2) + "\n")
    return map_path, regions_path
