"""SAM (Segment Anything) written here, with the parameter names of Meta's segment-anything, and LoRA on q/v.

The network is SAM's architecture: an image encoder ViT (patch embedding, absolute positions, blocks with windowed
or global attention and decomposed relative positions, a convolutional neck), a prompt encoder used *without*
prompts (its no-mask embedding and the dense random-Fourier positional encoding), and a mask decoder (two-way
transformer, one hypernetwork MLP per output token). Every parameter and persistent buffer has the name and shape of
Meta's implementation, so the official ViT-B checkpoint (``sam_vit_b_01ec64.pth``, supplied by the user, never
downloaded here) loads with ``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)`` into
:meth:`SamConfig.vit_b`. **This is not Meta's SAM unless the user loads Meta's weights**; with random or project
weights it is only SAM's architecture.

As in SFR (and SAMed, which SFR builds on), the mask decoder returns *every* mask token as one output channel, so a
decoder with ``num_mask_tokens = C + 1`` gives class logits (background first); the original layout has 4 tokens
(3 multimask outputs plus the single-mask one). :func:`adapt_state_dict` turns an official checkpoint into one for
another number of tokens (and another image size, by interpolating the absolute and global relative positions).

Why not MONAI's blocks: MONAI's ViT parts (``SABlock``, ``MLPBlock``, ``PatchEmbeddingBlock``) use other parameter
names (``linear1``/``linear2``, ``out_proj``, ``rel_positional_embedding``) and MONAI has no SAM prompt encoder,
two-way transformer or mask decoder, so the official checkpoint would not load strictly; MONAI's decomposed
relative-position function (``monai.networks.blocks.attention_utils.add_decomposed_rel_pos``) is used as is.
MONAI has no LoRA either; :class:`LoRAQKV` is written here.

References:
    Kirillov et al., "Segment Anything", ICCV 2023 (architecture and parameter names: github.com/facebookresearch/
    segment-anything, ``segment_anything/modeling``). Hu et al., "LoRA: Low-Rank Adaptation of Large Language
    Models", ICLR 2022. Zhang and Liu, "Customized Segment Anything Model for Medical Image Segmentation" (SAMed,
    LoRA rank 4 on q and v). Li et al., SFR, arXiv:2403.11229 (``shared/research/method-spec.md`` §2.2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from monai.networks.blocks.attention_utils import add_decomposed_rel_pos
from torch import nn

from ..errors import ModelError
from ..settings import check_number, check_whole

__all__ = [
    "LoRAQKV",
    "LoadReport",
    "Sam",
    "SamConfig",
    "adapt_state_dict",
    "apply_lora",
    "build_sam",
    "load_sam_weights",
    "lora_state_dict",
    "merge_lora",
]


# --------------------------------------------------------------------------------------------------- configuration
#: ``(least, most)`` of every size of a :class:`SamConfig`: far beyond ViT-H (1280 wide, 32 deep, 1024 pixels), far
#: below what exhausts memory while the network is built (a depth of 100,000, an embedding of 2^20, a patch of 0).
_SAM_SIZE_RANGES = {
    "image_size": (16, 4096),
    "patch_size": (1, 256),
    "in_chans": (1, 16),
    "embed_dim": (8, 4096),
    "depth": (1, 64),
    "num_heads": (1, 64),
    "window_size": (0, 4096),
    "out_chans": (8, 4096),
    "mask_in_chans": (4, 1024),
    "decoder_depth": (1, 32),
    "decoder_heads": (1, 64),
    "decoder_mlp_dim": (1, 16384),
    "num_mask_tokens": (1, 256),
    "iou_head_depth": (1, 16),
    "iou_head_hidden_dim": (1, 4096),
}


@dataclass(frozen=True)
class SamConfig:
    """Sizes of a SAM. Defaults are ViT-B (``build_sam_vit_b`` of segment-anything) with SFR's pixel normalisation.

    Attributes:
        image_size: side of the square input (1024 for the official weights).
        patch_size: ViT patch side; the image embedding is ``image_size // patch_size`` on a side.
        in_chans: input channels (3; SFR repeats the grey canvas).
        embed_dim, depth, num_heads, mlp_ratio: the image encoder ViT.
        window_size: side of the attention windows of the non-global blocks.
        global_attn_indexes: blocks with global attention (ViT-B: 2, 5, 8, 11).
        out_chans: the neck's output channels = the prompt/decoder embedding dimension (256).
        mask_in_chans: hidden channels of the (unused, loaded) mask-prompt downscaling.
        decoder_depth, decoder_heads, decoder_mlp_dim: the two-way transformer.
        num_mask_tokens: decoder outputs; 4 in the official layout, ``C + 1`` classes for SFR.
        iou_head_depth, iou_head_hidden_dim: the mask-quality head (loaded, not used by SFR's loss).
        pixel_mean, pixel_std: input normalisation; SFR uses 0 and 1 (z-scored CT/MR, no ImageNet statistics).
    """

    image_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    out_chans: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_mask_tokens: int = 4
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    pixel_std: Tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        for name, (low, high) in _SAM_SIZE_RANGES.items():  # a prior card is data from anywhere: bound every size
            check_whole(getattr(self, name), "SamConfig", name, low)
            if getattr(self, name) > high:
                raise ValueError(f"SamConfig.{name} must be at most {high}, got {getattr(self, name)}.")
        check_number(self.mlp_ratio, "SamConfig", "mlp_ratio", 0.0, 16.0, low_open=True)
        for name in ("pixel_mean", "pixel_std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not values:
                raise ValueError(f"SamConfig.{name} must be a list of numbers, got {values!r}.")
            for value in values:
                check_number(
                    value, "SamConfig", name, 0.0 if name == "pixel_std" else -1e6, 1e6, low_open=name == "pixel_std"
                )
        if not isinstance(self.global_attn_indexes, (list, tuple)):
            raise ValueError(f"SamConfig.global_attn_indexes must be a list, got {self.global_attn_indexes!r}.")
        for index in self.global_attn_indexes:
            check_whole(index, "SamConfig", "global_attn_indexes", 0)
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if (self.out_chans // 2) % self.decoder_heads or self.out_chans % 8:
            problems.append(f"out_chans {self.out_chans} must be divisible by 8 and out_chans/2 by decoder_heads")
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes):
            problems.append(f"global_attn_indexes {self.global_attn_indexes} outside 0..{self.depth - 1}")
        if self.num_mask_tokens < 1 or self.window_size < 0 or self.mask_in_chans % 4:
            problems.append("num_mask_tokens >= 1, window_size >= 0 and mask_in_chans divisible by 4 are required")
        if problems:
            raise ValueError("invalid SamConfig: " + "; ".join(problems))

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding (64 for ViT-B at 1024)."""
        return self.image_size // self.patch_size

    @classmethod
    def vit_b(cls, num_mask_tokens: int = 4, image_size: int = 1024) -> SamConfig:
        """Meta's ViT-B SAM (``sam_vit_b_01ec64.pth``); ``num_mask_tokens=4`` is the official layout."""
        return cls(image_size=image_size, num_mask_tokens=num_mask_tokens)

    @classmethod
    def tiny(cls, num_mask_tokens: int = 4, image_size: int = 64) -> SamConfig:
        """A SAM-architecture network small enough for CPU tests (every part present: windowed and global blocks)."""
        return cls(
            image_size=image_size,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            window_size=4,
            global_attn_indexes=(1,),
            out_chans=32,
            mask_in_chans=8,
            decoder_depth=2,
            decoder_heads=2,
            decoder_mlp_dim=64,
            num_mask_tokens=num_mask_tokens,
            iou_head_hidden_dim=32,
        )

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        for key in ("global_attn_indexes", "pixel_mean", "pixel_std"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SamConfig fields {unknown}; known: {sorted(known)}")
        values = dict(data)
        for key in ("global_attn_indexes", "pixel_mean", "pixel_std"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


# --------------------------------------------------------------------------------------------------- common parts
class LayerNorm2d(nn.Module):
    """Layer norm over the channels of ``[B, C, H, W]`` (SAM's; ``weight``/``bias`` names kept)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """``lin2(act(lin1(x)))`` (SAM's names)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (``layers.N``), as the decoder's heads."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + dims, dims + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


# --------------------------------------------------------------------------------------------------- image encoder
class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # [B, H, W, C]


class Attention(nn.Module):
    """Multi-head self-attention over a ``[B, H, W, C]`` token grid with decomposed relative positions.

    ``rel_pos_h``/``rel_pos_w`` have ``2 * size - 1`` rows of ``head_dim`` (size = the window, or the whole
    embedding for global blocks): ViT-B has ``[27, 64]`` in windowed and ``[127, 64]`` in global blocks.
    """

    def __init__(self, dim: int, num_heads: int, input_size: Tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = add_decomposed_rel_pos(attn, q, [self.rel_pos_h, self.rel_pos_w], (h, w), (h, w))
        attn = attn.softmax(dim=-1)
        x = (attn @ v).view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(x)


def window_partition(x: torch.Tensor, window: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """``[B, H, W, C]`` -> ``[B * n_windows, window, window, C]`` (zero padding to a multiple of ``window``)."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: Tuple[int, int], size: Tuple[int, int]
) -> torch.Tensor:
    """The inverse of :func:`window_partition`, cropping the padding."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // (hp * wp // window // window)
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()


class Block(nn.Module):
    """Pre-norm ViT block; attention in windows unless ``window_size == 0`` (global)."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, input_size: Tuple[int, int]
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, input_size if window_size == 0 else (window_size, window_size))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, padded, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """``[B, 3, S, S]`` -> image embedding ``[B, out_chans, S / patch, S / patch]``."""

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.img_size = config.image_size
        side = config.embedding_size
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, side, side, config.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                config.embed_dim,
                config.num_heads,
                config.mlp_ratio,
                0 if i in config.global_attn_indexes else config.window_size,
                (side, side),
            )
            for i in range(config.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(config.embed_dim, config.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


# --------------------------------------------------------------------------------------------------- prompt encoder
class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding; ``positional_encoding_gaussian_matrix`` ``[2, C / 2]`` is a buffer."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def forward(self, size: Tuple[int, int]) -> torch.Tensor:
        """The encoding of every cell centre of an ``h x w`` grid, ``[C, h, w]``."""
        h, w = size
        matrix = self.positional_encoding_gaussian_matrix
        grid = torch.ones((h, w), device=matrix.device, dtype=matrix.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        coords = 2 * torch.stack([x, y], dim=-1) - 1
        coords = 2 * math.pi * (coords @ matrix)
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """SAM's prompt encoder, used without prompts (SFR): empty sparse embeddings, the no-mask dense embedding.

    The point, box and mask-prompt parameters exist (their names and shapes are Meta's) so the official checkpoint
    loads strictly; they take no part in the computation.
    """

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        dim, side = config.out_chans, config.embedding_size
        self.embed_dim = dim
        self.image_embedding_size = (side, side)
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        c = config.mask_in_chans
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            nn.GELU(),
            nn.Conv2d(c // 4, c, kernel_size=2, stride=2),
            LayerNorm2d(c),
            nn.GELU(),
            nn.Conv2d(c, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def get_dense_pe(self) -> torch.Tensor:
        """``[1, C, h, w]`` positional encoding of the image embedding grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def forward(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sparse ``[B, 0, C]`` and dense ``[B, C, h, w]`` embeddings of "no prompt"."""
        weight = self.no_mask_embed.weight
        sparse = weight.new_empty((batch, 0, self.embed_dim))
        dense = weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense


# --------------------------------------------------------------------------------------------------- mask decoder
class DecoderAttention(nn.Module):
    """Attention with separate q/k/v projections to ``embedding_dim // downsample_rate`` (SAM's two-way blocks)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        internal = embedding_dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, internal)
        self.k_proj = nn.Linear(embedding_dim, internal)
        self.v_proj = nn.Linear(embedding_dim, internal)
        self.out_proj = nn.Linear(internal, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        out = (attn @ v).transpose(1, 2)
        return self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, tokens -> image, MLP on tokens, image -> tokens (each followed by a layer norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = DecoderAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0)) for i in range(depth)
        )
        self.final_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        attn_out = self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn_out), keys


class MaskDecoder(nn.Module):
    """Image embedding (+ no-prompt embeddings) -> one low-resolution mask per mask token, ``[B, T, 4h, 4w]``."""

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        dim = config.out_chans
        self.num_mask_tokens = config.num_mask_tokens
        self.transformer = TwoWayTransformer(config.decoder_depth, dim, config.decoder_heads, config.decoder_mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth)

    def forward(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Masks ``[B, T, 4h, 4w]`` (every token, none dropped) and predicted IoU ``[B, T]``."""
        b = image_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        src = image_embeddings + dense
        pos = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, c2, h2, w2 = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c2, h2 * w2)).view(b, -1, h2, w2)
        return masks, self.iou_prediction_head(iou_token_out)


# --------------------------------------------------------------------------------------------------- the whole SAM
class Sam(nn.Module):
    """SAM without prompts: ``[B, in_chans or 1, S, S]`` canvases -> ``[B, num_mask_tokens, S, S]`` logits.

    A single-channel input is repeated to ``in_chans`` (SFR's grey canvas). Inputs are normalised with
    ``pixel_mean``/``pixel_std`` (non-persistent buffers, as in Meta's code, so they are not in the state dict).
    """

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoderViT(config)
        self.prompt_encoder = PromptEncoder(config)
        self.mask_decoder = MaskDecoder(config)
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(-1, 1, 1), False)

    def forward_low_res(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the decoder's resolution, ``[B, T, 4 * S / patch, 4 * S / patch]`` (256 for 1024 inputs)."""
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"expected canvases [B, C, {size}, {size}], got shape {tuple(images.shape)}")
        if images.shape[1] == 1 and self.config.in_chans != 1:
            images = images.expand(-1, self.config.in_chans, -1, -1)
        images = (images - self.pixel_mean) / self.pixel_std
        embeddings = self.image_encoder(images)
        sparse, dense = self.prompt_encoder(images.shape[0])
        masks, _ = self.mask_decoder(embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense)
        return masks

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits upsampled bilinearly to the input size (SAM's ``postprocess_masks`` without padding removal)."""
        size = self.config.image_size
        return F.interpolate(self.forward_low_res(images), (size, size), mode="bilinear", align_corners=False)


def build_sam(config: SamConfig, seed: Optional[int] = None) -> Sam:
    """A randomly initialised :class:`Sam` (deterministic for a given ``seed``)."""
    if seed is None:
        return Sam(config)
    devices: List[int] = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return Sam(config)


# --------------------------------------------------------------------------------------------------- LoRA
class LoRAQKV(nn.Module):
    """A ViT ``qkv`` linear layer with trainable low-rank updates of its q and v parts, and a frozen base.

    ``weight`` ``[3C, C]`` and ``bias`` ``[3C]`` are the base layer's own parameters under the same names, so
    ``...attn.qkv.weight`` stays in the state dict (an official checkpoint still loads into a wrapped model). The
    update is ``q += s * B_q A_q x`` and ``v += s * B_v A_v x`` with ``s = alpha / rank``; ``A`` is initialised
    like a linear layer, ``B`` at zero, so a fresh wrapper computes exactly the base layer.
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: Optional[float] = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        dim = base.in_features
        if base.out_features != 3 * dim:
            raise ValueError(f"expected a qkv layer [3C, C], got [{base.out_features}, {dim}]")
        self.dim, self.rank = dim, rank
        self.scaling = (float(alpha) if alpha is not None else float(rank)) / rank
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a_q = nn.Linear(dim, rank, bias=False, **factory)
        self.lora_b_q = nn.Linear(rank, dim, bias=False, **factory)
        self.lora_a_v = nn.Linear(dim, rank, bias=False, **factory)
        self.lora_b_v = nn.Linear(rank, dim, bias=False, **factory)
        for a, b in ((self.lora_a_q, self.lora_b_q), (self.lora_a_v, self.lora_b_v)):
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)

    @property
    def in_features(self) -> int:
        return self.dim

    @property
    def out_features(self) -> int:
        return 3 * self.dim

    def delta_weight(self) -> torch.Tensor:
        """The low-rank update as a ``[3C, C]`` matrix (zero rows for k)."""
        dq = self.lora_b_q.weight @ self.lora_a_q.weight
        dv = self.lora_b_v.weight @ self.lora_a_v.weight
        return self.scaling * torch.cat([dq, torch.zeros_like(dq), dv], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, self.weight, self.bias)
        dq = self.lora_b_q(self.lora_a_q(x)) * self.scaling
        dv = self.lora_b_v(self.lora_a_v(x)) * self.scaling
        return qkv + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


def apply_lora(model: Sam, rank: int = 4, alpha: Optional[float] = None) -> List[str]:
    """Wrap every image-encoder block's ``attn.qkv`` in :class:`LoRAQKV` and freeze the rest of the encoder.

    SFR's fine-tuning: LoRA rank 4 on q and v of every block, the image encoder otherwise frozen, the prompt encoder
    and the mask decoder trained. Call after loading pre-trained weights (or load them with
    :func:`load_sam_weights`, which accepts a wrapped model). Returns the names of the trainable LoRA parameters.
    """
    for block in model.image_encoder.blocks:
        if isinstance(block.attn.qkv, LoRAQKV):
            raise ValueError("LoRA is already applied to this model")
        block.attn.qkv = LoRAQKV(block.attn.qkv, rank=rank, alpha=alpha)
    for name, param in model.image_encoder.named_parameters():
        param.requires_grad_(".lora_" in name)
    return [f"image_encoder.{n}" for n, p in model.image_encoder.named_parameters() if ".lora_" in n]


def lora_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Only the LoRA tensors of ``model`` (small enough to store beside a reference to the base weights)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" in k}


def merge_lora(model: Sam) -> Dict[str, torch.Tensor]:
    """The state dict of ``model`` in the official layout with the LoRA updates folded into ``qkv.weight``."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    for i, block in enumerate(model.image_encoder.blocks):
        qkv = block.attn.qkv
        if isinstance(qkv, LoRAQKV):
            key = f"image_encoder.blocks.{i}.attn.qkv.weight"
            state[key] = (qkv.weight + qkv.delta_weight()).detach().clone()
    return state


# --------------------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_sam_weights` did: tensors loaded, tensors adapted (and how), LoRA tensors left as built."""

    loaded: int
    adapted: Tuple[str, ...] = ()
    lora_kept: int = 0


def _resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    resized = F.interpolate(rel_pos.t().unsqueeze(0).float(), size=length, mode="linear", align_corners=False)
    return resized[0].t().to(rel_pos.dtype)


def adapt_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: SamConfig, seed: int = 0
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """An official-layout state dict made to fit ``config``: another number of mask tokens or another image size.

    * Mask tokens, hypernetwork MLPs and the IoU head's last layer: the checkpoint's first
      ``min(T_ckpt, T)`` tokens are kept; extra tokens are drawn like ``nn.Embedding`` (seeded) and extra MLPs copy
      the checkpoint's MLP ``i mod T_ckpt`` (SAMed/SFR fine-tune all of them anyway).
    * ``pos_embed`` is resized bicubically to the new embedding grid; the relative positions of the global blocks
      linearly to ``2 * side - 1`` (windowed blocks keep theirs). This is what SAMed does for smaller inputs.

    Returns the new state dict and one line per adapted tensor. Everything else is returned unchanged; a tensor
    whose shape still differs is reported by the strict load that follows.
    """
    state = dict(state_dict)
    notes: List[str] = []
    generator = torch.Generator().manual_seed(seed)
    tokens_key = "mask_decoder.mask_tokens.weight"
    if tokens_key in state and state[tokens_key].shape[0] != config.num_mask_tokens:
        old = state[tokens_key]
        n_old, n_new = old.shape[0], config.num_mask_tokens
        new = torch.randn((n_new, old.shape[1]), generator=generator).to(old.dtype)
        new[: min(n_old, n_new)] = old[: min(n_old, n_new)]
        state[tokens_key] = new
        notes.append(f"{tokens_key}: {n_old} -> {n_new} tokens (first {min(n_old, n_new)} kept)")
        prefix = "mask_decoder.output_hypernetworks_mlps."
        old_mlps = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        for key in [k for k in state if k.startswith(prefix)]:
            del state[key]
        for i in range(n_new):
            for rest, value in old_mlps.items():
                index, tail = rest.split(".", 1)
                if int(index) == i % n_old:
                    state[f"{prefix}{i}.{tail}"] = value.clone()
        notes.append(f"{prefix}*: {n_new} MLPs from the checkpoint's {n_old} (MLP i copies MLP i mod {n_old})")
        last = f"mask_decoder.iou_prediction_head.layers.{config.iou_head_depth - 1}"
        for suffix in ("weight", "bias"):
            key = f"{last}.{suffix}"
            if key in state:
                old_t = state[key]
                new_t = torch.zeros((n_new,) + tuple(old_t.shape[1:]), dtype=old_t.dtype)
                new_t[: min(n_old, n_new)] = old_t[: min(n_old, n_new)]
                state[key] = new_t
        notes.append(f"{last}: {n_old} -> {n_new} outputs (extra rows zero)")
    pos_key = "image_encoder.pos_embed"
    side = config.embedding_size
    if pos_key in state and state[pos_key].shape[1] != side:
        old = state[pos_key]
        resized = F.interpolate(old.permute(0, 3, 1, 2).float(), size=(side, side), mode="bicubic", align_corners=False)
        state[pos_key] = resized.permute(0, 2, 3, 1).to(old.dtype).contiguous()
        notes.append(f"{pos_key}: {old.shape[1]} -> {side} positions per side (bicubic)")
        for i in config.global_attn_indexes:
            for axis in ("h", "w"):
                key = f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"
                if key in state and state[key].shape[0] != 2 * side - 1:
                    state[key] = _resize_rel_pos(state[key], 2 * side - 1)
                    notes.append(f"{key}: resized to {2 * side - 1} (linear)")
    return state, notes


def load_sam_weights(
    model: Sam, source: Union[str, Path, Mapping[str, torch.Tensor]], adapt: bool = False
) -> LoadReport:
    """Load SAM weights into ``model``, every tensor strictly.

    Args:
        model: a :class:`Sam`, with or without :func:`apply_lora` (a wrapped model's LoRA tensors may be absent
            from ``source``: they stay as built, identity at first).
        source: a checkpoint file (read with ``torch.load(weights_only=True)``, never unpickled) holding a state
            dict in Meta's layout (optionally under ``"model"`` or ``"state_dict"``), or the state dict itself.
        adapt: run :func:`adapt_state_dict` first (another number of mask tokens or image size); otherwise a
            differing shape is an error.

    Raises:
        ModelError: the file is not a state dict, or a tensor is missing, unexpected or of another shape; the
            message names the offending tensors.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to read is reported with the file
            raise ModelError(
                f"cannot read SAM weights {path}: {exc}. Give a state dict saved with torch.save "
                "(Meta's sam_vit_b_01ec64.pth is one)"
            ) from exc
        where = str(path)
    else:
        state, where = source, "the given state dict"
    if isinstance(state, Mapping):
        for key in ("model", "state_dict"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{where} is not a state dict of tensors")
    notes: List[str] = []
    if adapt:
        state, notes = adapt_state_dict(state, model.config)
    expected = model.state_dict()
    lora_keys = {k for k in expected if ".lora_" in k}
    missing = sorted(set(expected) - set(state) - lora_keys)
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})"
        for k in set(state) & set(expected)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)):
            if items:
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
        raise ModelError(
            f"SAM weights in {where} do not fit this SamConfig: "
            + "; ".join(parts)
            + ". Check the preset (vit_b), num_mask_tokens and image_size, or load with adapt=True"
        )
    kept = lora_keys - set(state)
    full = dict(state)
    if kept:
        current = model.state_dict()
        full.update({k: current[k] for k in kept})
    model.load_state_dict(full, strict=True)
    return LoadReport(loaded=len(state), adapted=tuple(notes), lora_kept=len(kept))
