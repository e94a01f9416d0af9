"""One sliding-window pass per volume: the reduced voxel maps, the score sums and pooled encoder features.

Each window goes through the current network once; the blended logits stream out in finished rows (:mod:`.sliding`) and
are reduced on the compute device to the one-channel maps and the region sums the scores need (:mod:`.reduction`), so
the softmax ``[C, ...]`` never exists for the whole volume unless a caller asks for it (``keep_probs``, for small class
counts). Scores are computed in model space; only the maps that are written (label, entropy, confidence, regions) are
brought back to the input grid.

Forward hooks on the card's encoder stages pool every stage output over space, and the pooled vectors are averaged
over the windows (method-spec §1.3: "for whole volumes, average over the patches of a sliding window"). The frozen
pre-trained encoder runs on the same windows only up to its deepest encoder stage (the decoder is skipped), and only
when its weights differ from the current ones; its features can be cached on disk because they never change for a
given volume.

A card with ``test_time_mirroring`` (nnU-Net's checkpoints) gets each window's logits averaged over every flip
combination of those axes (:func:`mirrored_logits`), as nnU-Net's default predictor does; the encoder features come
from the unflipped pass only, so there is still one pooled vector per stage and window. The MC-dropout samples stay
single passes (each is one stochastic draw, not a prediction to be made more accurate).

Windows and reductions run on the compute device (CUDA with mixed precision when present); the one-channel maps are
gathered on the CPU, so a large CT does not need a large GPU.
"""

from __future__ import annotations

import hashlib
import itertools
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..io import Volume
from ..models import LoadedModel
from ..query.regions import RegionSpec, RegionSums
from .preprocess import (
    PAD_VALUE,
    ModelSpace,
    from_model_space,
    label_from_model_space,
    to_model_space,
    unit_levels_from_model_space,
)
from .reduction import MapReducer, VoxelMaps
from .sliding import stream_sliding_window


def default_device() -> torch.device:
    """CUDA when present, else Apple's MPS (Apple Silicon; operations MPS lacks fall back to the CPU when the worker's
    environment sets ``PYTORCH_ENABLE_MPS_FALLBACK=1``, as the Slicer module's does), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window settings (method-spec §1.5: roi = training patch, overlap 0.5, Gaussian blending).

    Attributes:
        overlap: fraction of overlap between neighbouring windows.
        blend_mode: ``gaussian`` or ``constant`` weighting of overlapping windows.
        sw_batch_size: windows per forward pass.
        amp: use float16 autocast on CUDA (ignored on CPU).
    """

    overlap: float = 0.5
    blend_mode: str = "gaussian"
    sw_batch_size: int = 4
    amp: bool = True


@dataclass(frozen=True, eq=False)
class Prediction:
    """What one pass over a volume yields.

    Attributes:
        maps: the reduced voxel maps in model space and the region sums of the scores.
        space: how the volume was mapped into model space (to bring maps back to its grid).
        features: pooled features of the current encoder, one ``[D_s]`` array per stage (shallow to deep).
        pretrained_features: the same for the frozen pre-trained encoder.
        probs: softmax probabilities ``[C, I, J, K]`` float32 on the input grid, only when asked for
            (``Predictor.predict(..., keep_probs=True)``), else ``None``.
    """

    maps: VoxelMaps
    space: ModelSpace
    features: Tuple[np.ndarray, ...]
    pretrained_features: Tuple[np.ndarray, ...]
    probs: Optional[np.ndarray] = None

    @property
    def sums(self) -> RegionSums:
        return self.maps.sums

    @cached_property
    def label(self) -> np.ndarray:
        """Hard prediction ``[I, J, K]`` on the input grid (nearest neighbour from model space), uint8 or int16."""
        return label_from_model_space(self.maps.label, self.space)

    @cached_property
    def entropy(self) -> np.ndarray:
        """Normalised entropy ``[I, J, K]`` float32 in ``[0, 1]`` on the input grid."""
        return self._to_input_grid(self.maps.entropy)

    @cached_property
    def entropy_levels(self) -> np.ndarray:
        """The normalised entropy on the input grid as uint8 ``round(255 H)`` (overlays: a quarter of float32)."""
        return unit_levels_from_model_space(self.maps.entropy, self.space)

    @cached_property
    def max_prob(self) -> np.ndarray:
        """``max_c p_c`` ``[I, J, K]`` float32 on the input grid."""
        return self._to_input_grid(self.maps.max_prob)

    @cached_property
    def region(self) -> np.ndarray:
        """The dilated predicted foreground (ASD's region) ``[I, J, K]`` bool on the input grid."""
        return label_from_model_space(self.maps.region, self.space).astype(bool)

    def _to_input_grid(self, array: np.ndarray) -> np.ndarray:
        return np.clip(from_model_space(torch.from_numpy(array)[None], self.space)[0], 0.0, 1.0)


def mirrored_logits(
    network: Callable[[torch.Tensor], torch.Tensor],
    window: torch.Tensor,
    axes: Sequence[int],
    unflipped: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The mean over every subset ``S`` of ``axes`` (the empty one included) of ``flip_S(network(flip_S(window)))``.

    nnU-Net's test-time mirroring (``nnUNetPredictor._internal_maybe_mirror_and_predict``: ``2 ** len(axes)`` passes
    per window, logits averaged before the softmax). MONAI's test-time augmentation draws random transforms and
    averages after inversion per sample, not this fixed exhaustive set of logit flips, hence this function.

    Args:
        network: maps ``[B, C_in, I, J, K]`` to logits ``[B, C, I, J, K]``.
        window: ``[B, C_in, I, J, K]``.
        axes: spatial axes (``0..2`` of ``[I, J, K]``) to mirror.
        unflipped: ``network(window)`` when already computed (the pass whose encoder features are kept).

    Returns:
        float32 logits ``[B, C, I, J, K]``.
    """
    total = (network(window) if unflipped is None else unflipped).float()
    dims = [2 + int(a) for a in axes]
    combinations = [c for size in range(1, len(dims) + 1) for c in itertools.combinations(dims, size)]
    for flip in combinations:
        total = total + torch.flip(network(torch.flip(window, flip)), flip).float()
    return total / (len(combinations) + 1)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the deepest encoder stage ran."""


class StageFeatures:
    """Forward hooks that pool each encoder stage over space and average the pooled vectors over windows.

    Args:
        network: the module to hook.
        stages: module names, shallow to deep.
        stop_after_last: end the forward pass after the last stage (encoder-only pass).
    """

    def __init__(self, network: nn.Module, stages: Sequence[str], stop_after_last: bool = False):
        modules = dict(network.named_modules())
        self._sums: List[Optional[torch.Tensor]] = [None] * len(stages)
        self._count = 0
        self._paused = False
        self._handles = []
        for index, name in enumerate(stages):
            last = index == len(stages) - 1
            self._handles.append(modules[name].register_forward_hook(self._hook(index, last and stop_after_last)))

    def _hook(self, index: int, stop: bool):
        def hook(_module, _inputs, output):
            if self._paused:
                return
            if isinstance(output, (tuple, list)):
                output = output[0]
            pooled = output.detach().float().flatten(2).mean(dim=2).sum(dim=0).cpu()  # [D]
            self._sums[index] = pooled if self._sums[index] is None else self._sums[index] + pooled
            if index == 0:
                self._count += output.shape[0]
            if stop:
                raise _StopForward

        return hook

    @contextmanager
    def paused(self):
        """Forward passes inside this block add nothing (the flipped passes of test-time mirroring)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def result(self) -> Tuple[np.ndarray, ...]:
        if self._count == 0:
            raise RuntimeError("no window was seen by the encoder hooks")
        return tuple((s / self._count).numpy().astype(np.float32) for s in self._sums)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def _weights_digest(network: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in network.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def volume_digest(volume: Volume) -> str:
    """Content hash of a volume (voxels and geometry), the key of cached pre-trained features."""
    digest = hashlib.sha256(np.ascontiguousarray(volume.array).tobytes())
    digest.update(str(volume.array.dtype).encode())
    digest.update(np.asarray(volume.affine, dtype=np.float64).tobytes())
    return digest.hexdigest()


class Predictor:
    """Runs the current model and, when it differs, the frozen pre-trained encoder over volumes.

    Args:
        current: the model being adapted.
        pretrained: the frozen pre-trained model (``None`` or same weights: its features equal ``current``'s).
        config: sliding-window settings.
        device: compute device (default: CUDA when present).
        feature_cache: folder for cached pre-trained features (``.npz`` per volume), or ``None``.
    """

    def __init__(
        self,
        current: LoadedModel,
        pretrained: Optional[LoadedModel] = None,
        config: InferenceConfig = InferenceConfig(),
        device: Optional[torch.device] = None,
        feature_cache: Optional[Path] = None,
    ):
        self.current = current
        self.config = config
        self.device = device or default_device()
        self.current.network.to(self.device).eval()
        self.pretrained = None
        self._pretrained_digest = ""
        if pretrained is not None:
            digest = _weights_digest(pretrained.network)
            if digest != _weights_digest(current.network):
                self.pretrained = pretrained
                self._pretrained_digest = digest
                pretrained.network.to(self.device).eval()
        self.feature_cache = Path(feature_cache) if feature_cache is not None else None

    @property
    def encoders_identical(self) -> bool:
        return self.pretrained is None

    def _autocast(self):
        if self.device.type == "cuda" and self.config.amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    def _window_logits(self, window: torch.Tensor, hooks: Optional[StageFeatures] = None) -> torch.Tensor:
        """The current network's float32 logits ``[B, C, I, J, K]`` of windows ``[B, 1, I, J, K]``: one pass, or
        the mean over the card's test-time mirroring flips (``hooks`` see the unflipped pass only)."""
        network = self.current.network
        logits = network(window)
        axes = self.current.card.test_time_mirroring
        if not axes:
            return logits.float()
        with hooks.paused() if hooks is not None else nullcontext():
            return mirrored_logits(network, window, axes, unflipped=logits)

    def _stream(
        self,
        image: torch.Tensor,
        fn: Callable[[torch.Tensor], torch.Tensor],
        on_rows: Callable[[torch.Tensor, int], None],
    ) -> None:
        stream_sliding_window(
            image,
            self.current.card.patch_size,
            fn,
            on_rows,
            overlap=self.config.overlap,
            mode=self.config.blend_mode,
            sw_batch_size=self.config.sw_batch_size,
            device=self.device,
            cval=PAD_VALUE,
        )

    def _sliding_window(self, image: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """MONAI's whole-volume sliding window (MC dropout needs every class of every sample)."""
        from monai.inferers import sliding_window_inference

        with warnings.catch_warnings():
            # MONAI <= 1.5.2 indexes tensors with a list of slices, and torch >= 2.8 warns at every window: noise on
            # the user's stderr, which must hold nothing but an `error:` line when something fails.
            warnings.filterwarnings(
                "ignore", message=r"Using a non-tuple sequence for multidimensional indexing", category=UserWarning
            )
            return sliding_window_inference(
                image[None],
                roi_size=self.current.card.patch_size,
                sw_batch_size=self.config.sw_batch_size,
                predictor=fn,
                overlap=self.config.overlap,
                mode=self.config.blend_mode,
                sw_device=self.device,
                device=torch.device("cpu"),
                progress=False,
                padding_mode="constant",
                cval=PAD_VALUE,
            )[0]

    @torch.no_grad()
    def predict(
        self,
        volume: Volume,
        *,
        regions: RegionSpec = RegionSpec(),
        keep_probs: bool = False,
        dropout_samples: int = 0,
        sample_callback: Optional[Callable[[np.ndarray], None]] = None,
    ) -> Prediction:
        """Reduced maps, score sums and encoder features of ``volume`` (see :class:`Prediction`).

        Args:
            volume: the input volume.
            regions: the regions of the score sums (``RegionSpec.from_config(query)`` when ranking).
            keep_probs: also return the full softmax on the input grid (memory ``C`` times the volume's).
            dropout_samples: when > 0, also run that many stochastic passes with dropout on (MC dropout) and hand
                each sample's probabilities ``[C, I, J, K]`` to ``sample_callback``, one at a time (memory stays at
                one sample).
            sample_callback: receives each MC-dropout sample.
        """
        card = self.current.card
        image, space = to_model_space(volume, card)
        network = self.current.network
        hooks = StageFeatures(network, card.encoder_stages)
        cached = self._cached_pretrained(volume)
        pre_hooks = None
        if self.pretrained is not None and cached is None:
            pre_hooks = StageFeatures(
                self.pretrained.network, self.pretrained.card.encoder_stages, stop_after_last=True
            )

        def forward(window: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                logits = self._window_logits(window, hooks)
                if pre_hooks is not None:
                    try:
                        self.pretrained.network(window)
                    except _StopForward:
                        pass
            return logits.float()

        reducer = MapReducer(space.model_shape, card.num_classes, regions, self.device)
        full = torch.zeros((card.num_classes,) + tuple(space.model_shape)) if keep_probs else None

        def on_rows(logits: torch.Tensor, first: int) -> None:
            probs = torch.softmax(logits, dim=0)
            reducer.add_probs(probs, first)
            if full is not None:
                full[:, first : first + probs.shape[1]] = probs.cpu()

        try:
            self._stream(image, forward, on_rows)
        finally:
            hooks.close()
            if pre_hooks is not None:
                pre_hooks.close()
        features = hooks.result()
        if self.pretrained is None:
            pretrained_features = features
        elif cached is not None:
            pretrained_features = cached
        else:
            pretrained_features = pre_hooks.result()
            self._store_pretrained(volume, pretrained_features)
        if dropout_samples > 0:
            if sample_callback is None:
                raise ValueError("dropout_samples needs a sample_callback")
            for sample in self._mc_dropout(image, space, dropout_samples):
                sample_callback(sample)
        return Prediction(
            maps=reducer.result(),
            space=space,
            features=features,
            pretrained_features=pretrained_features,
            probs=None if full is None else self._to_input_grid(full, space),
        )

    def _to_input_grid(self, probs: torch.Tensor, space) -> np.ndarray:
        out = from_model_space(probs, space)
        if tuple(space.model_shape) != tuple(space.oriented_shape):
            out /= np.clip(out.sum(axis=0, keepdims=True), 1e-6, None)
        return out

    def _mc_dropout(self, image: torch.Tensor, space, samples: int):
        network = self.current.network
        dropouts = [m for m in network.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.Dropout3d))]
        if not dropouts:
            raise ValueError(f"model {self.current.card.name} has no dropout layers; MC dropout needs them")
        for m in dropouts:
            m.train()
        try:
            for _ in range(samples):

                def forward(window: torch.Tensor) -> torch.Tensor:
                    with self._autocast():
                        return network(window).float()

                logits = self._sliding_window(image, forward)
                yield self._to_input_grid(torch.softmax(logits, dim=0), space)
        finally:
            for m in dropouts:
                m.eval()

    def plain_pass(self, volume: Volume) -> np.ndarray:
        """One plain sliding-window pass without hooks or scores: the label map ``[I, J, K]`` (the benchmark's unit)."""
        image, space = to_model_space(volume, self.current.card)
        label = torch.zeros(tuple(space.model_shape), dtype=torch.int16)

        def forward(window: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                return self._window_logits(window)

        def on_rows(logits: torch.Tensor, first: int) -> None:
            label[first : first + logits.shape[1]] = logits.argmax(dim=0).to(torch.int16).cpu()

        with torch.no_grad():
            self._stream(image, forward, on_rows)
        return label_from_model_space(label.numpy(), space)

    # --------------------------------------------------------------------------------- pre-trained feature cache

    def _cache_file(self, volume: Volume) -> Optional[Path]:
        if self.feature_cache is None or self.pretrained is None:
            return None
        return self.feature_cache / f"{volume_digest(volume)[:32]}-{self._pretrained_digest[:16]}.npz"

    def _cached_pretrained(self, volume: Volume) -> Optional[Tuple[np.ndarray, ...]]:
        path = self._cache_file(volume)
        if path is None or not path.is_file():
            return None
        with np.load(path) as data:
            return tuple(data[f"stage{i}"] for i in range(len(data.files)))

    def _store_pretrained(self, volume: Volume, features: Tuple[np.ndarray, ...]) -> None:
        path = self._cache_file(volume)
        if path is None:
            return
        import io as _stdio

        from ..io import atomic_write_bytes

        buffer = _stdio.BytesIO()
        np.savez(buffer, **{f"stage{i}": f for i, f in enumerate(features)})
        atomic_write_bytes(path, buffer.getvalue())
