"""The inference path: a volume in, the reduced voxel maps of one sliding-window pass out, and the files written.

In the order a volume goes through them:

1. :mod:`.preprocess`: the input volume into the model's space (orientation, spacing, intensity profile of the
   card) and maps back onto the input's exact voxel grid;
2. :mod:`.sliding`: MONAI's windows and Gaussian blending, streamed out in finished rows;
3. :mod:`.reduction`: rows of probabilities reduced on the compute device to the one-channel maps and region sums
   the scores need (:class:`VoxelMaps`);
4. :mod:`.predictor`: :class:`Predictor`, one pass per volume (maps, score sums, pooled encoder features) and
   :func:`default_device`, the one device default of the engine;
5. :mod:`.overlay` and :mod:`.writing`: the entropy map and its high-entropy regions written beside the input, on a
   background thread while the next volume is predicted (:class:`BackgroundWriter`).

The names below are what the rest of the engine uses; tests and benchmarks that reach a step's internals import its
module.
"""

from .overlay import OverlayConfig, overlay_paths, write_overlay
from .predictor import InferenceConfig, Prediction, Predictor, default_device
from .preprocess import PAD_VALUE, from_model_space, label_to_model_space, to_model_space
from .reduction import VoxelMaps
from .writing import BackgroundWriter

__all__ = [
    "BackgroundWriter",
    "InferenceConfig",
    "OverlayConfig",
    "PAD_VALUE",
    "Prediction",
    "Predictor",
    "VoxelMaps",
    "default_device",
    "from_model_space",
    "label_to_model_space",
    "overlay_paths",
    "to_model_space",
    "write_overlay",
]
