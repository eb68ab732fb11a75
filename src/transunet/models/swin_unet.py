"""Swin-Unet: Unet-like Pure Transformer for Medical Image Segmentation.

Cao et al. 2021, arXiv 2105.05537 (https://arxiv.org/abs/2105.05537), ECCV 2022 Workshops.
Official code: HuCaoFighting/Swin-Unet (``networks/swin_transformer_unet_skip_expand_decoder_sys.py``,
``networks/vision_transformer.py``).

Read top to bottom: the input-size rule -> blocks (patch embedding, Swin block, patch merging,
patch expanding, encoder and decoder stages) -> the model -> weight converters (official Swin-Unet
state dicts, Microsoft's ImageNet Swin checkpoints) -> the registered entry point.

Architecture (as the official code computes it): a 4x4 patch embedding (conv + LayerNorm); encoder
stages of Swin blocks (pre-norm window attention with relative position bias, every odd block
shifted by ``window_size // 2``, MLP 4x with exact GELU), a patch merging after every stage but the
last, a final LayerNorm; a decoder that starts with a bare patch expanding of the bottleneck, then,
per finer stage, concatenates the skip (the *input* of the matching encoder stage), projects it back
with a Linear, runs Swin blocks and expands again (not after the finest stage); LayerNorm, a final
x4 patch expanding and a bias-free 1x1 conv to the classes. Module names equal the official ones
(``patch_embed``, ``layers``, ``norm``, ``layers_up``, ``concat_back_dim``, ``norm_up``, ``up``,
``output``), so official state dicts load after stripping ``swin_unet.``.

Official behaviours kept on purpose (they change outputs):

* the decoder depths **mirror the encoder**: decoder stage ``s`` has ``depths[s]`` blocks with
  ``num_heads[s]`` heads and stage ``s``'s stochastic-depth rates; the config's
  ``DECODER_DEPTHS`` is never used by the official code (``decoder_depths`` here defaults to the
  mirror and may be set explicitly);
* a stage no larger than the window (``min(H, W) <= window_size``) uses a window of its own size
  and no shift (at 224: the 7x7 bottleneck and its decoder mirror are unshifted);
* shift masks are additive with -100, not ``-inf``.

Differences from the official code, none of which change the computation:

* no hidden repeat of grey input: a 1-channel model keeps the official 3-channel patch kernel and
  sums it over its input channels on the fly (:class:`~transunet.layers.std_conv.FoldConv2d`), so
  parameter counts and state dicts equal the official ones and results agree to float rounding
  (other channel counts than 1 and 3 store their own kernel; 3-channel weights are adapted);
* non-square inputs (the official code assumes square images in the final expansion);
* any number of stages >= 2 (the official decoder hard-codes 4);
* window attention runs through ``F.scaled_dot_product_attention`` with bias + mask as one additive
  ``attn_mask`` by default (``attn_impl="explicit"`` is the official softmax path);
* ``relative_position_index`` and ``attn_mask`` are non-persistent buffers (recomputed; the
  converter checks and drops the file's copies);
* Microsoft ImageNet Swin checkpoints load as the official ``load_from`` does (encoder stage ``s``
  also initialises decoder stage ``s``), but every file key that is not loaded is reported with
  its reason instead of being dropped silently;
* invalid sizes and arguments raise one-line ``ValueError`` messages naming the nearest valid value.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from transunet.errors import CheckpointError, check_choice
from transunet.layers.attention import ATTN_IMPLS
from transunet.layers.drop_path import DropPath
from transunet.layers.mlp import Mlp
from transunet.layers.std_conv import FoldConv2d
from transunet.layers.window_attention import (
    WindowAttention,
    shifted_window_mask,
    stage_window,
    window_partition,
    window_reverse,
)
from transunet.models.base import (
    FeatureInfo,
    SegmentationModel,
    accepted_args,
    check_args,
    check_int,
    check_rate,
)
from transunet.registry import register_model
from transunet.utils import as_pair
from transunet.weights import ConvertedWeights, ForeignWeights, rgb_kernel_fits, strip_prefixes

log = logging.getLogger(__name__)

__all__ = [
    "PATCH_SIZE",
    "SWIN_UNET_ARGS",
    "FinalPatchExpand",
    "PatchEmbed",
    "PatchExpand",
    "PatchMerging",
    "SwinBlock",
    "SwinUnet",
    "check_swin_img_size",
    "is_swin_imagenet_layout",
    "swin_imagenet_to_state_dict",
    "swin_size_ok",
]

#: Patch size of the embedding; the final x4 expansion is tied to it (as in the official code).
PATCH_SIZE = 4


# ----------------------------------------------------------------------------- input-size rule


def stage_resolutions(img_size: tuple[int, int], num_stages: int) -> list[tuple[int, int]]:
    """Token grid ``(H / (4 * 2^s), W / (4 * 2^s))`` of every stage ``s`` (floor division)."""
    h, w = img_size
    return [(h // (PATCH_SIZE * 2**s), w // (PATCH_SIZE * 2**s)) for s in range(num_stages)]


def swin_size_ok(img_size: tuple[int, int], window_size: int, num_stages: int) -> bool:
    """Whether Swin-Unet can be built for ``img_size``.

    Height and width must be multiples of ``4 * 2^(num_stages - 1)`` (patch embedding and the
    patch mergings) and every stage's grid must be cut into whole windows: by ``window_size``, or,
    for a stage with ``min(H, W) <= window_size``, by ``min(H, W)`` (:func:`stage_window`).

    Args:
        img_size: ``(H, W)``.
        window_size: Configured window size.
        num_stages: Number of encoder stages.
    """
    multiple = PATCH_SIZE * 2 ** (num_stages - 1)
    if min(img_size) < multiple or img_size[0] % multiple or img_size[1] % multiple:
        return False
    for res in stage_resolutions(img_size, num_stages):
        win, _ = stage_window(res, window_size, 0)
        if res[0] % win or res[1] % win:
            return False
    return True


def check_swin_img_size(
    model: str, img_size: Any, window_size: int, num_stages: int
) -> tuple[int, int]:
    """Validate ``img_size`` with :func:`swin_size_ok`; the error names the nearest valid size.

    Args:
        model: Registered name (for the message).
        img_size: ``H`` or ``(H, W)``.
        window_size: Configured window size.
        num_stages: Number of encoder stages.

    Returns:
        ``(H, W)``.

    Raises:
        ValueError: One line with the rule and the closest valid ``(H, W)``.
    """
    try:
        h, w = as_pair(img_size, "img_size")
    except ValueError as e:
        raise ValueError(f"{e} ({model})") from None
    if swin_size_ok((h, w), window_size, num_stages):
        return (h, w)
    multiple = PATCH_SIZE * 2 ** (num_stages - 1)
    limit = 2 * max(h, w, 1) + 2 * multiple * window_size
    values = range(multiple, limit + 1, multiple)
    best = min(
        ((a, b) for a in values for b in values if swin_size_ok((a, b), window_size, num_stages)),
        key=lambda p: (abs(p[0] - h) + abs(p[1] - w), -p[0] - p[1]),
    )
    # When only the window breaks the rule, the same size also works with another window_size.
    windows = [v for v in range(1, max(h, w) // PATCH_SIZE + 1) if swin_size_ok((h, w), v, num_stages)]
    alt = ""
    if windows:
        win = min(windows, key=lambda v: (abs(v - window_size), -v))
        alt = f", or keep ({h}, {w}) with window_size={win}"
    raise ValueError(
        f"img_size=({h}, {w}) is invalid for {model}: height and width must be multiples of {multiple} "
        f"(patch {PATCH_SIZE} x 2^{num_stages - 1} patch mergings) and every stage's token grid "
        f"(H/4, W/4, H/8, ...) must split into whole windows of window_size={window_size} (a stage whose "
        f"smaller side is <= window_size uses that side as its window); the closest valid size is "
        f"({best[0]}, {best[1]}){alt}."
    )


# ----------------------------------------------------------------------------- blocks


class PatchEmbed(nn.Module):
    """Non-overlapping 4x4 patches -> tokens: conv (stride 4) + LayerNorm.

    The kernel keeps 3 input channels (the official/ImageNet layout) for 1 or 3 input channels; a
    1-channel model folds it; other counts store their own (3-channel weights are adapted on loading).

    Args:
        embed_dim: Token width ``C``.
        in_channels: Channels of the input (>= 1).
    """

    def __init__(self, embed_dim: int, in_channels: int) -> None:
        super().__init__()
        self.proj = FoldConv2d.rgb_input(in_channels, embed_dim, PATCH_SIZE, stride=PATCH_SIZE)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed.

        Args:
            x: ``(B, in_channels, H, W)``.

        Returns:
            ``(B, H/4 * W/4, C)``.
        """
        x = self.proj(x).flatten(2).transpose(1, 2)  # (B, L, C)
        return self.norm(x)


class SwinBlock(nn.Module):
    """Swin Transformer block: ``x + DropPath(W-MSA(LN x))``, then ``x + DropPath(MLP(LN x))``.

    Args:
        dim: Token width ``C``.
        resolution: Token grid ``(H, W)`` of the stage.
        num_heads: Attention heads.
        window_size: Configured window size (clamped by :func:`stage_window`).
        shift_size: Configured shift (0 or ``window_size // 2``; clamped likewise).
        mlp_ratio: MLP width / ``C``.
        qkv_bias: Bias on the ``qkv`` projection.
        drop: Dropout after the attention projection and in the MLP.
        attn_drop: Dropout on the attention weights.
        drop_path: Stochastic-depth rate of both residual branches.
        attn_impl: ``"fused"`` or ``"explicit"`` (see :class:`WindowAttention`).
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_impl: str = "fused",
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.window, self.shift = stage_window(resolution, window_size, shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim,
            self.window,
            num_heads,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=drop,
            attn_impl=attn_impl,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=drop)
        mask = shifted_window_mask(resolution, self.window, self.shift) if self.shift > 0 else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: ``(B, H * W, C)``.

        Returns:
            ``(B, H * W, C)``.
        """
        H, W = self.resolution
        B, L, C = x.shape
        y = self.norm1(x).view(B, H, W, C)  # (B, H, W, C)
        if self.shift > 0:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.window), mask=self.attn_mask)  # (B*nW, w*w, C)
        y = window_reverse(y, self.window, H, W)  # (B, H, W, C)
        if self.shift > 0:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(B, L, C))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, window={self.window}, shift={self.shift}"


class PatchMerging(nn.Module):
    """2x2 neighbours -> one token: concat (4C) -> LayerNorm -> Linear(4C, 2C, no bias).

    The four neighbours are concatenated in the official order ``(0,0), (1,0), (0,1), (1,1)``
    (row offset first).

    Args:
        resolution: Token grid ``(H, W)`` of the input (even sides).
        dim: Input width ``C``.
    """

    def __init__(self, resolution: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Merge.

        Args:
            x: ``(B, H * W, C)``.

        Returns:
            ``(B, H/2 * W/2, 2C)``.
        """
        H, W = self.resolution
        B, _, C = x.shape
        x = x.view(B, H, W, C)  # (B, H, W, C)
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))  # (B, H/2 * W/2, 2C)


class PatchExpand(nn.Module):
    """One token -> ``scale x scale`` tokens: Linear(C, scale^2 * C_out, no bias), rearrange, LayerNorm.

    The expanded channels are read as ``(p1, p2, c)`` (row offset, column offset, channel), as the
    official ``rearrange('b h w (p1 p2 c) -> b (h p1) (w p2) c')``.

    Args:
        resolution: Token grid ``(H, W)`` of the input.
        dim: Input width ``C``.
        scale: Upsampling factor ``p``.
        out_dim: Output width (official: ``C / 2`` for ``p = 2``, ``C`` for the final ``p = 4``).
    """

    def __init__(
        self, resolution: tuple[int, int], dim: int, scale: int = 2, out_dim: int | None = None
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.scale = scale
        self.out_dim = dim // 2 if out_dim is None else out_dim
        self.expand = nn.Linear(dim, scale * scale * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand.

        Args:
            x: ``(B, H * W, C)``.

        Returns:
            ``(B, pH * pW, C_out)``.
        """
        H, W = self.resolution
        p, c = self.scale, self.out_dim
        B = x.shape[0]
        x = self.expand(x).view(B, H, W, p, p, c)  # (B, H, W, p1, p2, c)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, H * p * W * p, c)  # (B, pH * pW, c)
        return self.norm(x)


class FinalPatchExpand(PatchExpand):
    """The final x4 expansion back to pixel resolution (``C -> 16C -> 4x4 tokens of C``).

    Args:
        resolution: Token grid of the finest stage (``(H/4, W/4)``).
        dim: Token width ``C`` (kept).
    """

    def __init__(self, resolution: tuple[int, int], dim: int) -> None:
        super().__init__(resolution, dim, scale=PATCH_SIZE, out_dim=dim)


class EncoderStage(nn.Module):
    """Swin blocks (even unshifted, odd shifted by ``window_size // 2``) then optional patch merging.

    Args:
        dim: Token width.
        resolution: Token grid ``(H, W)``.
        depth: Number of blocks.
        num_heads: Attention heads.
        window_size: Configured window size.
        drop_path: Stochastic-depth rate per block (``depth`` values).
        downsample: Append a :class:`PatchMerging`.
        **block_kwargs: ``mlp_ratio``, ``qkv_bias``, ``drop``, ``attn_drop``, ``attn_impl``.
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        downsample: bool,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                SwinBlock(
                    dim,
                    resolution,
                    num_heads,
                    window_size,
                    0 if i % 2 == 0 else window_size // 2,
                    drop_path=drop_path[i],
                    **block_kwargs,
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H * W, C)`` -> ``(B, H * W, C)``, or ``(B, H/2 * W/2, 2C)`` with merging."""
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class DecoderStage(nn.Module):
    """Swin blocks then optional patch expanding (x2, ``C -> C/2``); the official ``BasicLayer_up``.

    Args:
        dim: Token width.
        resolution: Token grid ``(H, W)``.
        depth: Number of blocks.
        num_heads: Attention heads.
        window_size: Configured window size.
        drop_path: Stochastic-depth rate per block (``depth`` values).
        upsample: Append a :class:`PatchExpand`.
        **block_kwargs: ``mlp_ratio``, ``qkv_bias``, ``drop``, ``attn_drop``, ``attn_impl``.
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
        upsample: bool,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                SwinBlock(
                    dim,
                    resolution,
                    num_heads,
                    window_size,
                    0 if i % 2 == 0 else window_size // 2,
                    drop_path=drop_path[i],
                    **block_kwargs,
                )
                for i in range(depth)
            ]
        )
        self.upsample = PatchExpand(resolution, dim) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H * W, C)`` -> ``(B, H * W, C)``, or ``(B, 2H * 2W, C/2)`` with expanding."""
        for blk in self.blocks:
            x = blk(x)
        return self.upsample(x) if self.upsample is not None else x


# ----------------------------------------------------------------------------- model


class SwinUnet(SegmentationModel):
    """Swin-Unet (see the module docstring). Build it with ``create_model("Swin-Unet", ...)``.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels (>= 1; 1 folds the 3-channel patch kernel).
        img_size: ``(H, W)`` accepted by :func:`swin_size_ok`.
        embed_dim: Width ``C`` of stage 0 (stage ``s`` has ``C * 2^s``).
        depths: Swin blocks per encoder stage (its length is the number of stages).
        num_heads: Attention heads per stage.
        window_size: Window size ``w`` (shift ``w // 2``).
        mlp_ratio: MLP width / token width.
        qkv_bias: Bias on the ``qkv`` projections.
        drop_rate: Dropout after the patch embedding, attention projections and MLPs.
        attn_drop_rate: Dropout on attention weights.
        drop_path_rate: Largest stochastic-depth rate (linear over the encoder blocks; decoder
            stage ``s`` reuses encoder stage ``s``'s rates, as the official code).
        decoder_depths: Blocks of the decoder stages at the resolutions of encoder stages
            ``0 .. n-2`` (finest first); ``None``: ``depths[:-1]``, the official mirror.
        attn_impl: ``"fused"`` or ``"explicit"``.
    """

    attention_kind = "window"
    fixed_input_size = True
    foreign_prefixes = ("swin_unet.",)

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        img_size: tuple[int, int],
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        decoder_depths: Sequence[int] | None = None,
        attn_impl: str = "fused",
    ) -> None:
        n = len(depths)
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            img_size=img_size,
            size_multiple=PATCH_SIZE * 2 ** (n - 1),
        )
        decoder_depths = tuple(depths[:-1]) if decoder_depths is None else tuple(decoder_depths)
        self.num_stages = n
        self.embed_dim = embed_dim
        self.window_size = window_size
        res = stage_resolutions(self.img_size, n)
        dims = [embed_dim * 2**s for s in range(n)]
        block_kwargs = {
            "mlp_ratio": mlp_ratio,
            "qkv_bias": qkv_bias,
            "drop": drop_rate,
            "attn_drop": attn_drop_rate,
            "attn_impl": attn_impl,
        }
        dpr = [r.item() for r in torch.linspace(0, drop_path_rate, sum(depths), device="cpu")]
        start = [sum(depths[:s]) for s in range(n)]
        # The decoder reuses encoder stage s's rates when it mirrors it (the official rule); an
        # explicit decoder_depths gets its own linear schedule.
        if decoder_depths == tuple(depths[:-1]):
            dec_dpr = [dpr[start[s] : start[s] + depths[s]] for s in range(n - 1)]
        else:
            flat = [
                r.item()
                for r in torch.linspace(
                    0, drop_path_rate, max(sum(decoder_depths), 1), device="cpu"
                )
            ]
            dec_dpr = [
                flat[sum(decoder_depths[:s]) : sum(decoder_depths[: s + 1])] for s in range(n - 1)
            ]

        #: Skips offered to the decoder: the input of every encoder stage but the last.
        self.feature_info = [FeatureInfo(PATCH_SIZE * 2**s, dims[s]) for s in range(n - 1)]

        self.patch_embed = PatchEmbed(embed_dim, in_channels)
        self.pos_drop = nn.Dropout(drop_rate)
        self.layers = nn.ModuleList(
            [
                EncoderStage(
                    dims[s],
                    res[s],
                    depths[s],
                    num_heads[s],
                    window_size,
                    dpr[start[s] : start[s] + depths[s]],
                    downsample=s < n - 1,
                    **block_kwargs,
                )
                for s in range(n)
            ]
        )
        self.norm = nn.LayerNorm(dims[-1])

        # Decoder: layers_up.0 expands the bottleneck; layers_up.i (i >= 1) works at the resolution
        # of encoder stage s = n-1-i, after concatenating that stage's input (skip) and projecting
        # 2C -> C with concat_back_dim.i (index 0 is an identity, as in the official module list).
        self.layers_up = nn.ModuleList([PatchExpand(res[-1], dims[-1])])
        self.concat_back_dim = nn.ModuleList([nn.Identity()])
        for info in reversed(self.feature_info):
            s = int(math.log2(info.stride // PATCH_SIZE))
            r = (self.img_size[0] // info.stride, self.img_size[1] // info.stride)
            self.concat_back_dim.append(nn.Linear(2 * info.channels, info.channels))
            self.layers_up.append(
                DecoderStage(
                    info.channels,
                    r,
                    decoder_depths[s],
                    num_heads[s],
                    window_size,
                    dec_dpr[s],
                    upsample=s > 0,
                    **block_kwargs,
                )
            )
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = FinalPatchExpand(res[0], embed_dim)
        self.output = nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """Official init: truncated normal (std 0.02) Linear weights, zero biases, LayerNorm 1/0."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segment a batch.

        Args:
            x: ``(B, in_channels, H, W)`` with ``(H, W) == img_size``.

        Returns:
            Logits ``(B, num_classes, H, W)``.
        """
        B = x.shape[0]
        x = self.pos_drop(self.patch_embed(x))  # (B, H/4 * W/4, C)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        x = self.norm(x)  # (B, H/2^(n+1) * W/2^(n+1), C * 2^(n-1))
        x = self.layers_up[0](x)
        for i in range(1, self.num_stages):
            x = self.concat_back_dim[i](torch.cat([x, skips[self.num_stages - 1 - i]], dim=-1))
            x = self.layers_up[i](x)
        x = self.up(self.norm_up(x))  # (B, H * W, C)
        H, W = self.img_size
        x = x.view(B, H, W, self.embed_dim).permute(0, 3, 1, 2)  # (B, C, H, W)
        return self.output(x)

    def profile_parts(self) -> list[tuple[str, str]]:
        """Encoder (embedding, stages, bottleneck norm), decoder (expansions, stages, concat
        projections, final x4 expansion) and the class-dependent ``head`` (the 1x1 output conv)."""
        return [
            ("encoder", "patch_embed"),
            ("encoder", "layers"),
            ("encoder", "norm"),
            ("decoder", "layers_up"),
            ("decoder", "concat_back_dim"),
            ("decoder", "norm_up"),
            ("decoder", "up"),
            ("head", "output"),
        ]

    # ------------------------------------------------------------------ foreign weights

    def convert_state_dict(self, weights: ForeignWeights) -> ConvertedWeights:
        """Official Swin-Unet state dicts, Microsoft ImageNet Swin checkpoints, our checkpoints.

        * ``swin_unet.`` / ``module.swin_unet.`` prefixes are stripped; the file's
          ``relative_position_index`` / ``attn_mask`` buffers are checked against the recomputed
          ones and dropped (a shift mask made for another ``img_size`` is just dropped);
        * a file with encoder keys (``layers.*``) but no decoder keys (``layers_up.*``) is a Swin
          classifier checkpoint: see :func:`swin_imagenet_to_state_dict`.

        Raises:
            CheckpointError: For ``.npz`` files and buffers that disagree with this model's.
        """
        if weights.kind == "npz":
            raise CheckpointError(
                f"{weights.source} is a Google ViT .npz, which {self.model_name} cannot use; "
                "pass an official Swin-Unet state dict, a Microsoft Swin ImageNet checkpoint "
                "(swin_tiny_patch4_window7_224.pth) or a transunet checkpoint."
            )
        sd = strip_prefixes(weights.tensors, extra=self.foreign_prefixes)
        if weights.kind != "checkpoint" and is_swin_imagenet_layout(sd):
            return swin_imagenet_to_state_dict(sd, self, weights.source)
        return ConvertedWeights(_drop_checked_buffers(sd, self, weights.source), [])

    def explain_mismatch(
        self, key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]
    ) -> str | None:
        """Name the argument that differs for window tables, the patch kernel and stage widths."""
        if key.endswith("relative_position_bias_table") and len(file_shape) == 2:
            fw = (math.isqrt(file_shape[0]) + 1) // 2
            mw = (math.isqrt(model_shape[0]) + 1) // 2
            return (
                f"the file's table is for a {fw}x{fw} window with {file_shape[1]} heads, this block uses "
                f"{mw}x{mw} with {model_shape[1]} heads: window_size, num_heads or img_size differ (a "
                "stage no larger than window_size uses a window of its own size)"
            )
        if key == "patch_embed.proj.weight" and len(file_shape) == 4:
            return (
                f"the file embeds {file_shape[1]}-channel 4x4 patches into {file_shape[0]} channels, this "
                f"model {model_shape[1]} into {model_shape[0]}: embed_dim differs or the kernel is not RGB"
            )
        if len(file_shape) >= 1 and len(model_shape) >= 1 and file_shape[0] != model_shape[0]:
            return "the file was made with another embed_dim (stage widths) or mlp_ratio"
        return None

    def explain_keys(self, keys: Sequence[str]) -> str | None:
        """Block-count differences: other ``depths`` / ``decoder_depths`` or number of stages."""
        if any(".blocks." in k for k in keys):
            return (
                f"a Swin-Unet with other depths/decoder_depths or number of stages (this model: depths "
                f"{self.model_kwargs.get('depths')}, decoder_depths {self.model_kwargs.get('decoder_depths')})"
            )
        return None


# ----------------------------------------------------------------------------- weight converters

_BUFFER_SUFFIXES = (".relative_position_index", ".attn_mask")


def _drop_checked_buffers(
    sd: Mapping[str, torch.Tensor], model: nn.Module, source: str
) -> dict[str, torch.Tensor]:
    """Drop the file's ``relative_position_index`` / ``attn_mask`` after checking them.

    A buffer with this model's shape must equal the recomputed one (otherwise the file uses another
    indexing or masking convention); one of another shape (a mask made for another ``img_size``)
    is dropped: the model recomputes its own.

    Raises:
        CheckpointError: A buffer of the right shape with other values.
    """
    own = dict(model.named_buffers())
    out = {}
    for k, v in sd.items():
        if not k.endswith(_BUFFER_SUFFIXES):
            out[k] = v
            continue
        mine = own.get(k)
        if (
            mine is not None
            and tuple(mine.shape) == tuple(v.shape)
            and not torch.equal(mine.to(v.dtype), v)
        ):
            raise CheckpointError(
                f"{source}: buffer '{k}' differs from the one {getattr(model, 'model_name', 'the model')} "
                "recomputes; the file uses another relative-position or shift-mask convention than Swin's "
                "(masks of -100 between regions), so its weights would compute something else."
            )
    return out


def is_swin_imagenet_layout(sd: Mapping[str, Any]) -> bool:
    """``True`` for a Swin classifier state dict (encoder ``layers.*`` keys, no ``layers_up.*``)."""
    return any(k.startswith("layers.") and ".blocks." in k for k in sd) and not any(
        k.startswith("layers_up.") for k in sd
    )


def swin_imagenet_to_state_dict(
    sd: Mapping[str, torch.Tensor], model: SwinUnet, source: str
) -> ConvertedWeights:
    """Initialise a Swin-Unet from a Microsoft ImageNet Swin checkpoint, as the official ``load_from``.

    Official rule (``SwinUnet.load_from`` with a ``{'model': ...}`` file): every key is copied to
    the same name and every ``layers.s.*`` also to ``layers_up.(n-1-s).*`` (decoder stage at the
    resolution of encoder stage ``s``); tensors of another shape are deleted; the rest is loaded
    non-strictly. So the patch embedding, the encoder stages (blocks and patch mergings), the
    final ``norm`` and the decoder blocks are initialised; ``layers_up.0``, the ``upsample``
    expansions, ``concat_back_dim``, ``norm_up``, ``up`` and ``output`` keep their initialisation.

    Unlike the official code, nothing is dropped silently: the ImageNet classifier ``head.*`` is
    dropped with an info line, the relative-position/mask buffers are recomputed, and every other
    file key that loads nowhere (blocks this model does not have, e.g. Swin-T's
    ``layers.2.blocks.2-5`` for depths (2, 2, 2, 2); tensors of another shape) is logged with its
    reason and returned as unused (:func:`transunet.load_pretrained` reports it as unexpected).

    Args:
        sd: The checkpoint's ``model`` entry, prefixes stripped.
        model: Target model.
        source: File name for messages.

    Returns:
        The tensors to load and the unused file keys.

    Raises:
        CheckpointError: When no tensor of the file fits the model.
    """
    own = model.state_dict()
    n = model.num_stages
    out: dict[str, torch.Tensor] = {}
    reasons: dict[str, list[str]] = defaultdict(list)
    head = [k for k in sd if k.startswith("head.")]
    buffers = [k for k in sd if k.endswith(_BUFFER_SUFFIXES)]
    for k, v in sd.items():
        if k in head or k in buffers:
            continue
        targets = [k]
        m = re.match(r"layers\.(\d+)\.(blocks\..+)$", k)
        if m and int(m.group(1)) < n - 1:
            targets.append(f"layers_up.{n - 1 - int(m.group(1))}.{m.group(2)}")
        loaded = False
        why = ""
        for t in targets:
            if t not in own:
                why = why or "no such layer in this model (other depths or number of stages)"
            elif tuple(own[t].shape) != tuple(v.shape) and not rgb_kernel_fits(model, t, v.shape):
                why = f"shape {tuple(v.shape)} in the file, {tuple(own[t].shape)} in {t}"
            else:
                out[t] = v
                loaded = True
        if not loaded:
            reasons[why].append(k)
    if not out:
        raise CheckpointError(
            f"{source} looks like a Swin classifier checkpoint but none of its tensors fits "
            f"{model.model_name} (embed_dim {model.embed_dim}); it was made for another width."
        )
    if head:
        log.info(
            "%s: ImageNet classifier %s not used by a segmentation model", source, ", ".join(head)
        )
    if buffers:
        log.info(
            "%s: %d relative_position_index/attn_mask buffers recomputed, not loaded",
            source,
            len(buffers),
        )
    unused = []
    for why, keys in reasons.items():
        log.warning(
            "%s: %d key(s) not loaded (%s): %s", source, len(keys), why, ", ".join(_compress(keys))
        )
        unused.extend(keys)
    log.info(
        "%s: Swin ImageNet weights -> %d tensors (encoder, final norm and mirrored decoder blocks)",
        source,
        len(out),
    )
    return ConvertedWeights(out, unused)


def _compress(keys: Sequence[str]) -> list[str]:
    """``layers.2.blocks.2.*`` style summary of many keys (one entry per block or module)."""
    seen: dict[str, None] = {}
    for k in keys:
        m = re.match(r"(.*?\.blocks\.\d+)\.", k)
        seen[(m.group(1) + ".*") if m else k] = None
    return list(seen)


# ----------------------------------------------------------------------------- entry point

#: The paper's configuration (``swin_tiny_patch4_window7_224_lite.yaml``): Swin-T widths with depths 2.
SWIN_UNET_ARGS: dict[str, Any] = {
    "embed_dim": 96,
    "depths": (2, 2, 2, 2),
    "num_heads": (3, 6, 12, 24),
    "window_size": 7,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "drop_rate": 0.0,
    "attn_drop_rate": 0.0,
    "drop_path_rate": 0.2,
    "decoder_depths": None,
    "attn_impl": "fused",
}


def _int_list(model: str, name: str, value: Any, example: str, minimum: int = 1) -> tuple[int, ...]:
    """A list/tuple of integers ``>= minimum``; one-line ``ValueError`` otherwise."""
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or not value
        or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value)
    ):
        raise ValueError(
            f"{name}={value!r} is invalid for {model}: it must be a list of integers >= {minimum}, "
            f"e.g. {example}."
        )
    return tuple(int(v) for v in value)


@register_model(name="Swin-Unet")
def swin_unet(
    num_classes: int = 9,
    in_channels: int = 1,
    img_size: int | Sequence[int] = 224,
    embed_dim: int = 96,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.2,
    decoder_depths: Sequence[int] | None = None,
    attn_impl: str = "fused",
    **unknown: Any,
) -> SwinUnet:
    """Swin-Unet as in the paper (defaults: :data:`SWIN_UNET_ARGS`, 27,168,900 parameters at 224).

    Args:
        num_classes: Output classes including background (9 Synapse, 4 ACDC).
        in_channels: Input channels >= 1 (1: grey, the 3-channel patch kernel is folded; other
            counts than 1 and 3: 3-channel pretrained patch kernels are adapted on loading).
        img_size: ``H`` or ``(H, W)``: multiples of ``4 * 2^(stages - 1)`` whose stage grids split
            into whole windows (224 and 448 with window 7; 256 is not: use window 8).
        embed_dim: Width of stage 0.
        depths: Blocks per encoder stage (>= 2 stages).
        num_heads: Heads per stage (same length; each divides ``embed_dim * 2^s``).
        window_size: Window size (shift ``window_size // 2``).
        mlp_ratio: MLP width / token width.
        qkv_bias: Bias on the ``qkv`` projections.
        drop_rate: Dropout after the embedding, attention projections and MLPs.
        attn_drop_rate: Dropout on attention weights.
        drop_path_rate: Largest stochastic-depth rate (official 0.2).
        decoder_depths: Decoder blocks at the resolutions of encoder stages ``0 .. n-2`` (finest
            first); ``None`` mirrors the encoder (``depths[:-1]``), as the official code builds it.
        attn_impl: ``"fused"`` or ``"explicit"``.
        **unknown: Refused with the list of accepted arguments.
    """
    name = "Swin-Unet"
    check_args(name, unknown, accepted_args(swin_unet))
    num_classes = check_int(name, "num_classes", num_classes)
    in_channels = check_int(name, "in_channels", in_channels)
    embed_dim = check_int(name, "embed_dim", embed_dim)
    depths = _int_list(name, "depths", depths, "[2, 2, 2, 2]")
    n = len(depths)
    if n < 2:
        raise ValueError(
            f"depths={list(depths)} is invalid for {name}: it needs at least 2 stages (one per "
            "resolution; the paper uses 4), e.g. [2, 2, 2, 2]."
        )
    num_heads = _int_list(name, "num_heads", num_heads, "[3, 6, 12, 24]")
    if len(num_heads) != n:
        raise ValueError(
            f"num_heads={list(num_heads)} has {len(num_heads)} entries but depths={list(depths)} has "
            f"{n}: give one head count per stage, e.g. {[3 * 2**s for s in range(n)]}."
        )
    for s, h in enumerate(num_heads):
        width = embed_dim * 2**s
        if width % h:
            closest = min(
                (d for d in range(1, width + 1) if width % d == 0), key=lambda d: (abs(d - h), -d)
            )
            raise ValueError(
                f"num_heads[{s}]={h} is invalid for {name}: it must divide the stage width "
                f"{width} (embed_dim * 2^{s}); closest valid: {closest}."
            )
    window_size = check_int(name, "window_size", window_size)
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
        raise ValueError(
            f"mlp_ratio={mlp_ratio!r} is invalid for {name}: it must be a positive number, e.g. 4.0."
        )
    if not isinstance(qkv_bias, bool):
        raise ValueError(f"qkv_bias={qkv_bias!r} is invalid for {name}: it must be true or false.")  # noqa: TRY004
    drop_rate = check_rate(name, "drop_rate", drop_rate)
    attn_drop_rate = check_rate(name, "attn_drop_rate", attn_drop_rate)
    drop_path_rate = check_rate(name, "drop_path_rate", drop_path_rate)
    if decoder_depths is not None:
        decoder_depths = _int_list(name, "decoder_depths", decoder_depths, str(list(depths[:-1])))
        if len(decoder_depths) != n - 1:
            raise ValueError(
                f"decoder_depths={list(decoder_depths)} has {len(decoder_depths)} entries but must have "
                f"{n - 1} (one per decoder stage, finest first; the bottleneck has none), e.g. "
                f"{list(depths[:-1])} (the official mirror), or null."
            )
    check_choice("attn_impl", attn_impl, ATTN_IMPLS)
    size = check_swin_img_size(name, img_size, window_size, n)

    model = SwinUnet(
        num_classes=num_classes,
        in_channels=int(in_channels),
        img_size=size,
        embed_dim=embed_dim,
        depths=depths,
        num_heads=num_heads,
        window_size=window_size,
        mlp_ratio=float(mlp_ratio),
        qkv_bias=qkv_bias,
        drop_rate=drop_rate,
        attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate,
        decoder_depths=decoder_depths,
        attn_impl=attn_impl,
    )
    model.model_name = name
    model.model_kwargs = {
        "num_classes": num_classes,
        "in_channels": int(in_channels),
        "img_size": size,
        "embed_dim": embed_dim,
        "depths": depths,
        "num_heads": num_heads,
        "window_size": window_size,
        "mlp_ratio": float(mlp_ratio),
        "qkv_bias": qkv_bias,
        "drop_rate": drop_rate,
        "attn_drop_rate": attn_drop_rate,
        "drop_path_rate": drop_path_rate,
        "decoder_depths": decoder_depths,
        "attn_impl": attn_impl,
    }
    return model
