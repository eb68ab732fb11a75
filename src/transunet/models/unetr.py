"""UNETR in 2D (and 3D): a plain ViT encoder whose hidden states feed a CNN decoder.

Hatamizadeh et al., "UNETR: Transformers for 3D Medical Image Segmentation", WACV 2022,
https://arxiv.org/abs/2103.10504. Reference: MONAI 1.6.1 ``monai.networks.nets.UNETR`` with
``spatial_dims=2`` (the authors' research-contributions copy is 3D only); a MONAI state dict loads
through :func:`transunet.weights.load_pretrained` and reproduces MONAI's logits (max |diff| ~1e-7).
``spatial_dims=3`` builds the volumetric form (``Conv3d``/``ConvTranspose3d``, ``16^3`` patches,
input ``(B, C, D, H, W)``) so MONAI's 3D state dicts (e.g. NVIDIA's BTCV UNETR) load too; the
slice-wise training pipeline uses the 2D form (``transunet train`` refuses 3D models).

What is computed (as MONAI):

* ViT with 16 x 16 patches and no class token: patch projection (``proj_type="conv"``: strided
  conv; ``"perceptron"``: Linear on flattened patches, the same function), learned position
  embeddings, pre-norm blocks (LayerNorm eps 1e-5, exact GELU), q/k/v without bias by default
  (``qkv_bias``), final LayerNorm.
* Skips from the hidden states of blocks ``L/4, L/2, 3L/4`` (0-based: 3, 6, 9 of 12; MONAI's
  ``hidden_states_out[3/6/9]``, i.e. the outputs of blocks 4, 7 and 10), projected to strides
  8/4/2 by transposed 2 x 2 convolutions (+ conv blocks), and the input itself through a conv
  block (stride 1). The *normed* final output is the bottleneck.
* Decoder: transposed 2 x 2 conv, ``cat([up, skip])``, conv block, four times; 1 x 1 output conv.
  Conv block (``res_block=True``): conv3x3 -> norm -> LeakyReLU(0.01) -> conv3x3 -> norm, plus
  (1 x 1 conv + norm when channels change) -> LeakyReLU; ``res_block=False``: two conv -> norm
  -> LeakyReLU. ``norm_name="instance"`` is InstanceNorm2d without affine parameters.

Differences from MONAI:

* Module names: the ViT uses the package's names (``vit.embeddings``, ``vit.encoder.layer.N.attn.
  {query,key,value,out}``, ``attention_norm``, ``ffn.fc1/fc2``, ``ffn_norm``, ``encoder_norm``),
  so the package's attention layer (fused SDPA + explicit path recording maps) and MLP are
  reused and Google ``.npz`` weights map with :func:`transunet.models.vit.google_vit_key_map`. The
  CNN modules keep MONAI's names without its ``Convolution`` wrapper level (``.conv``) and
  ``encoder1.layer``. :meth:`UNETR.convert_state_dict` maps MONAI's layout (``qkv`` split into
  query/key/value rows ``[0:D]``, ``[D:2D]``, ``[2D:3D]``; a perceptron weight
  ``(D, p*p*C)`` reshaped to the conv kernel ``(D, C, p, p)``).
* MONAI's never-used ``norm_cross_attn`` LayerNorm of every block (cross-attention is off in
  UNETR) is not built: the full-size model has 18,432 fewer parameters than MONAI's
  (87,269,433 vs 87,287,865 at 224, 1 -> 9 classes); the converter drops those keys.
* ``proj_type="perceptron"`` is computed by the same strided convolution as ``"conv"`` (a Linear
  on ``(p1 p2 c)``-flattened patches is exactly that conv); the argument selects MONAI's
  initialisation (trunc-normal 0.02 weights, zero bias) and documents which MONAI key to expect.
* ``num_layers`` is an argument (MONAI fixes 12); the skip taps scale with it.
* Beyond MONAI: Google ImageNet ViT ``.npz`` (``ViT-B_16.npz``) initialises the encoder (class
  token dropped, position grid resized, RGB patch kernel folded for 1-channel input). Google's
  ViT has q/k/v biases: build with ``qkv_bias=True`` to use them (with ``False`` they are reported
  unused); its LayerNorms were trained with eps 1e-6 (here 1e-5, as MONAI).
* ``spatial_dims=3`` is Python-only (weight loading, the planned 3D pipeline); Google ``.npz``
  files (2D patch kernels) initialise only the 2D form.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transunet.errors import CheckpointError
from transunet.layers.attention import ATTN_IMPLS, Attention
from transunet.layers.mlp import Mlp
from transunet.layers.pos_embed import resize_pos_embed
from transunet.models.base import (
    FeatureInfo,
    SegmentationModel,
    check_args,
    check_bool,
    check_img_size,
    check_int,
    check_option,
    check_rate,
)
from transunet.registry import register_model
from transunet.utils import as_size
from transunet.weights import (
    ConvertedWeights,
    ForeignWeights,
    convert_npz,
    npz_conv,
    npz_vec,
    strip_prefixes,
)

__all__ = [
    "UNETR",
    "UnetrBasicBlock",
    "UnetrPrUpBlock",
    "UnetrResBlock",
    "UnetrUpBlock",
    "ViTEncoder",
    "unetr",
]

log = logging.getLogger(__name__)

#: UNETR's patch size (four x2 upsamplings of the decoder bring the token grid back to the input).
PATCH_SIZE = 16
PROJ_TYPES = ("conv", "perceptron")
NORM_NAMES = ("instance", "batch")
_NPZ_POS_KEY = "Transformer/posembed_input/pos_embedding"
_NPZ_CLASSIFIER = ("cls", "head/", "pre_logits/")
_LEAKY_SLOPE = 0.01
SPATIAL_DIMS = (2, 3)
_CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T: dict[int, type[nn.Module]] = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_INSTANCE_NORM: dict[int, type[nn.Module]] = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_BATCH_NORM: dict[int, type[nn.Module]] = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _conv(
    spatial_dims: int, in_channels: int, out_channels: int, kernel: int, bias: bool = False
) -> nn.Module:
    """``Conv2d``/``Conv3d`` with a cubic ``kernel``, stride 1, "same" padding."""
    return _CONV[spatial_dims](in_channels, out_channels, kernel, padding=kernel // 2, bias=bias)


# ----------------------------------------------------------------------------- ViT encoder


class PatchEmbedding(nn.Module):
    """Cut the image into ``16 x 16`` (3D: ``16^3``) patches, project them to ``D`` and add
    position embeddings.

    Args:
        in_channels: Image channels ``C``.
        hidden_size: Token width ``D``.
        grid_size: Token grid ``(gh, gw)`` (3D: ``(gd, gh, gw)``; its length sets the dims).
        proj_type: ``"conv"`` (PyTorch default init) or ``"perceptron"`` (trunc-normal 0.02 weights,
            zero bias, as MONAI's Linear); both compute the same function.
        dropout: Dropout on the embedded tokens.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_size: int,
        grid_size: tuple[int, ...],
        proj_type: str = "conv",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.patch_embeddings = _CONV[len(self.grid_size)](
            in_channels, hidden_size, PATCH_SIZE, stride=PATCH_SIZE
        )
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, math.prod(self.grid_size), hidden_size)
        )
        self.dropout = nn.Dropout(dropout)
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        if proj_type == "perceptron":
            nn.init.trunc_normal_(self.patch_embeddings.weight, std=0.02)
            nn.init.zeros_(self.patch_embeddings.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed.

        Args:
            x: ``(B, C, H, W)`` with ``(H / 16, W / 16) == grid_size`` (3D: ``(B, C, D, H, W)``).

        Returns:
            Tokens ``(B, gh * gw, D)`` (3D: ``gd * gh * gw``), row-major over the grid.
        """
        x = self.patch_embeddings(x)  # (B, D, gh, gw) or (B, D, gd, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        return self.dropout(x + self.position_embeddings)


class Block(nn.Module):
    """Pre-norm ViT block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))`` (LayerNorm eps 1e-5).

    Args:
        hidden_size: Token width ``D``.
        mlp_dim: MLP inner width.
        num_heads: Attention heads.
        dropout: Dropout on attention weights, attention output and MLP (MONAI's one rate).
        qkv_bias: Bias on the query/key/value projections (MONAI default: none).
        attn_impl: ``"fused"`` or ``"explicit"``.
    """

    def __init__(
        self,
        hidden_size: int,
        mlp_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        attn_impl: str = "fused",
    ) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size, eps=1e-5)
        self.attn = Attention(hidden_size, num_heads, dropout, attn_impl)
        if not qkv_bias:
            for proj in (self.attn.query, self.attn.key, self.attn.value):
                proj.register_parameter("bias", None)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=1e-5)
        self.ffn = Mlp(hidden_size, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to tokens ``(B, N, D)``; returns ``(B, N, D)``."""
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Module):
    """``num_layers`` blocks and the final LayerNorm; returns the tapped hidden states too.

    Args:
        hidden_size: Token width ``D``.
        mlp_dim: MLP inner width.
        num_heads: Attention heads.
        num_layers: Blocks ``L``.
        taps: 0-based indices of the blocks whose outputs are returned as skips.
        dropout: Dropout rate of the blocks.
        qkv_bias: Bias on query/key/value.
        attn_impl: ``"fused"`` or ``"explicit"``.
    """

    def __init__(
        self,
        hidden_size: int,
        mlp_dim: int,
        num_heads: int,
        num_layers: int,
        taps: Sequence[int],
        dropout: float = 0.0,
        qkv_bias: bool = False,
        attn_impl: str = "fused",
    ) -> None:
        super().__init__()
        self.taps = tuple(taps)
        self.layer = nn.ModuleList(
            Block(hidden_size, mlp_dim, num_heads, dropout, qkv_bias, attn_impl)
            for _ in range(num_layers)
        )
        self.encoder_norm = nn.LayerNorm(hidden_size, eps=1e-5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode tokens ``(B, N, D)``.

        Returns:
            ``(normed output (B, N, D), [hidden state (B, N, D) of each tap])`` (taps un-normed).
        """
        hidden: list[torch.Tensor] = []
        for i, blk in enumerate(self.layer):
            x = blk(x)
            if i in self.taps:
                hidden.append(x)
        return self.encoder_norm(x), hidden


class ViTEncoder(nn.Module):
    """Patch embedding + :class:`Encoder` (module names as the package's TransUNet ViT).

    Args:
        in_channels: Image channels.
        grid_size: Token grid ``(gh, gw)`` or ``(gd, gh, gw)``.
        hidden_size, mlp_dim, num_heads, num_layers, dropout, qkv_bias, attn_impl: See
            :class:`Encoder`.
        proj_type: ``"conv"`` or ``"perceptron"`` (:class:`PatchEmbedding`).
    """

    def __init__(
        self,
        in_channels: int,
        grid_size: tuple[int, ...],
        hidden_size: int,
        mlp_dim: int,
        num_heads: int,
        num_layers: int,
        proj_type: str = "conv",
        dropout: float = 0.0,
        qkv_bias: bool = False,
        attn_impl: str = "fused",
    ) -> None:
        super().__init__()
        taps = (num_layers // 4, num_layers // 2, 3 * num_layers // 4)
        self.embeddings = PatchEmbedding(in_channels, hidden_size, grid_size, proj_type, dropout)
        self.encoder = Encoder(
            hidden_size, mlp_dim, num_heads, num_layers, taps, dropout, qkv_bias, attn_impl
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image ``(B, C, H, W)`` or ``(B, C, D, H, W)`` -> ``(normed tokens, 3 tapped hidden
        states)``, each ``(B, N, D)``."""
        return self.encoder(self.embeddings(x))


# ----------------------------------------------------------------------------- CNN blocks


def _norm(norm_name: str, channels: int, spatial_dims: int = 2) -> nn.Module:
    """``instance``: InstanceNorm2d/3d, no affine/stats (MONAI's default); ``batch``:
    BatchNorm2d/3d."""
    table = _INSTANCE_NORM if norm_name == "instance" else _BATCH_NORM
    return table[spatial_dims](channels)


def _up(in_channels: int, out_channels: int, spatial_dims: int = 2) -> nn.Module:
    """Transposed 2 x 2 (x 2) convolution with stride 2, no bias (doubles the resolution)."""
    return _CONV_T[spatial_dims](in_channels, out_channels, 2, stride=2, bias=False)


class UnetrBasicBlock(nn.Module):
    """Two ``conv3x3 (no bias) -> norm -> LeakyReLU(0.01)`` (MONAI ``UnetBasicBlock``).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        norm_name: ``"instance"`` or ``"batch"``.
        spatial_dims: 2 or 3 (``3 x 3 x 3`` kernels).
    """

    def __init__(
        self, in_channels: int, out_channels: int, norm_name: str, spatial_dims: int = 2
    ) -> None:
        super().__init__()
        self.conv1 = _conv(spatial_dims, in_channels, out_channels, 3)
        self.conv2 = _conv(spatial_dims, out_channels, out_channels, 3)
        self.norm1 = _norm(norm_name, out_channels, spatial_dims)
        self.norm2 = _norm(norm_name, out_channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in, *S) -> (B, out, *S)`` (``S`` = ``(H, W)`` or ``(D, H, W)``)."""
        x = F.leaky_relu(self.norm1(self.conv1(x)), _LEAKY_SLOPE)
        return F.leaky_relu(self.norm2(self.conv2(x)), _LEAKY_SLOPE)


class UnetrResBlock(nn.Module):
    """Residual conv block (MONAI ``UnetResBlock``).

    ``LeakyReLU(norm2(conv2(LeakyReLU(norm1(conv1 x)))) + shortcut)``; the shortcut is
    ``norm3(conv3 x)`` (1 x 1 conv) when the channels change, else ``x``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        norm_name: ``"instance"`` or ``"batch"``.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self, in_channels: int, out_channels: int, norm_name: str, spatial_dims: int = 2
    ) -> None:
        super().__init__()
        self.conv1 = _conv(spatial_dims, in_channels, out_channels, 3)
        self.conv2 = _conv(spatial_dims, out_channels, out_channels, 3)
        self.norm1 = _norm(norm_name, out_channels, spatial_dims)
        self.norm2 = _norm(norm_name, out_channels, spatial_dims)
        self.conv3: nn.Module | None = None
        self.norm3: nn.Module | None = None
        if in_channels != out_channels:
            self.conv3 = _conv(spatial_dims, in_channels, out_channels, 1)
            self.norm3 = _norm(norm_name, out_channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in, *S) -> (B, out, *S)`` (``S`` = ``(H, W)`` or ``(D, H, W)``)."""
        out = F.leaky_relu(self.norm1(self.conv1(x)), _LEAKY_SLOPE)
        out = self.norm2(self.conv2(out))
        residual = (
            self.norm3(self.conv3(x)) if self.conv3 is not None and self.norm3 is not None else x
        )
        return F.leaky_relu(out + residual, _LEAKY_SLOPE)


def _conv_block(
    in_channels: int, out_channels: int, norm_name: str, res_block: bool, spatial_dims: int = 2
) -> nn.Module:
    block = UnetrResBlock if res_block else UnetrBasicBlock
    return block(in_channels, out_channels, norm_name, spatial_dims)


class UnetrPrUpBlock(nn.Module):
    """Project a ViT hidden state to a skip: transposed conv ``D -> out``, then ``num_layer`` times
    [transposed conv (+ conv block)], i.e. ``2 ** (num_layer + 1)`` times the token grid.

    Args:
        in_channels: Token width ``D``.
        out_channels: Skip channels.
        num_layer: Extra x2 stages.
        norm_name: ``"instance"`` or ``"batch"``.
        conv_block: A conv block after every extra transposed conv.
        res_block: Residual (``True``) or basic conv blocks.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layer: int,
        norm_name: str,
        conv_block: bool = True,
        res_block: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        nd = spatial_dims
        self.transp_conv_init = _up(in_channels, out_channels, nd)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                _up(out_channels, out_channels, nd),
                _conv_block(out_channels, out_channels, norm_name, res_block, nd),
            )
            if conv_block
            else _up(out_channels, out_channels, nd)
            for _ in range(num_layer)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, D, gh, gw) -> (B, out, gh * 2**(num_layer+1), gw * 2**(num_layer+1))`` (3D
        alike)."""
        x = self.transp_conv_init(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class UnetrUpBlock(nn.Module):
    """Decoder stage: transposed conv ``in -> out`` (x2), ``cat([up, skip])``, conv block
    ``2 out -> out``.

    Args:
        in_channels: Channels of the deeper feature map.
        out_channels: Channels of the skip and of the output.
        norm_name: ``"instance"`` or ``"batch"``.
        res_block: Residual (``True``) or basic conv block.
        spatial_dims: 2 or 3.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_name: str,
        res_block: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.transp_conv = _up(in_channels, out_channels, spatial_dims)
        self.conv_block = _conv_block(
            2 * out_channels, out_channels, norm_name, res_block, spatial_dims
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x (B, in, h, w)``, ``skip (B, out, 2h, 2w)`` -> ``(B, out, 2h, 2w)`` (3D alike)."""
        return self.conv_block(
            torch.cat([self.transp_conv(x), skip], dim=1)
        )  # (B, 2 out, 2h, 2w) in


# ----------------------------------------------------------------------------- model


class UNETR(SegmentationModel):
    """UNETR: ViT encoder, skips from its hidden states, CNN decoder (see the module doc).

    Args:
        num_classes: Output classes including background.
        in_channels: Image channels.
        img_size: ``(H, W)`` (3D: ``(D, H, W)``), multiples of 16 (fixed: learned position
            embeddings).
        feature_size: Base width ``fs``; skips have ``fs, 2fs, 4fs, 8fs`` channels at strides 1-8.
        hidden_size: ViT token width.
        mlp_dim: ViT MLP width.
        num_heads: Attention heads.
        num_layers: ViT blocks (MONAI: 12); skips tap blocks ``L/4, L/2, 3L/4``.
        proj_type: ``"conv"`` or ``"perceptron"`` patch projection.
        norm_name: ``"instance"`` or ``"batch"`` in the CNN blocks.
        conv_block: Conv blocks inside the skip projections (MONAI default ``True``).
        res_block: Residual conv blocks (``True``) or basic ones.
        dropout_rate: Dropout of the ViT (embeddings, attention, MLP).
        qkv_bias: Bias on query/key/value (MONAI default ``False``; ``True`` to use Google's).
        attn_impl: ``"fused"`` (SDPA) or ``"explicit"``.
        spatial_dims: 2 (slices; the default and what the pipeline trains) or 3 (volumes
            ``(B, C, D, H, W)``, MONAI's ``spatial_dims=3``).
    """

    attention_kind = "global"
    fixed_input_size = True

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        img_size: tuple[int, ...],
        feature_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        num_layers: int = 12,
        proj_type: str = "conv",
        norm_name: str = "instance",
        conv_block: bool = True,
        res_block: bool = True,
        dropout_rate: float = 0.0,
        qkv_bias: bool = False,
        attn_impl: str = "fused",
        spatial_dims: int = 2,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            img_size=img_size,
            size_multiple=PATCH_SIZE,
            spatial_dims=spatial_dims,
        )
        nd = self.spatial_dims
        #: Token grid ``(gh, gw)`` or ``(gd, gh, gw)``.
        self.grid_size: tuple[int, ...] = tuple(s // PATCH_SIZE for s in self.img_size)
        self.hidden_size = hidden_size
        self.qkv_bias = qkv_bias
        fs = feature_size
        #: Skips offered to the decoder by stride (stride 16 = the transformer output).
        self.feature_info = [
            FeatureInfo(1, fs),
            FeatureInfo(2, 2 * fs),
            FeatureInfo(4, 4 * fs),
            FeatureInfo(8, 8 * fs),
            FeatureInfo(PATCH_SIZE, hidden_size),
        ]
        ch = {f.stride: f.channels for f in self.feature_info}
        self.vit = ViTEncoder(
            in_channels,
            self.grid_size,
            hidden_size,
            mlp_dim,
            num_heads,
            num_layers,
            proj_type,
            dropout_rate,
            qkv_bias,
            attn_impl,
        )
        self.encoder1 = _conv_block(in_channels, ch[1], norm_name, res_block, nd)
        self.encoder2 = UnetrPrUpBlock(hidden_size, ch[2], 2, norm_name, conv_block, res_block, nd)
        self.encoder3 = UnetrPrUpBlock(hidden_size, ch[4], 1, norm_name, conv_block, res_block, nd)
        self.encoder4 = UnetrPrUpBlock(hidden_size, ch[8], 0, norm_name, conv_block, res_block, nd)
        self.decoder5 = UnetrUpBlock(ch[16], ch[8], norm_name, res_block, nd)
        self.decoder4 = UnetrUpBlock(ch[8], ch[4], norm_name, res_block, nd)
        self.decoder3 = UnetrUpBlock(ch[4], ch[2], norm_name, res_block, nd)
        self.decoder2 = UnetrUpBlock(ch[2], ch[1], norm_name, res_block, nd)
        self.out = _conv(nd, ch[1], num_classes, 1, bias=True)

    def _to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        B, _, D = tokens.shape
        # (B, N, D) -> (B, D, gh, gw) or (B, D, gd, gh, gw)
        return tokens.transpose(1, 2).reshape(B, D, *self.grid_size)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segment (shape comments: 2D; a 3D model has a leading depth axis ``D`` alike).

        Args:
            x: ``(B, in_channels, H, W)`` with ``(H, W) == img_size`` (3D: ``(B, in_channels,
                D, H, W)``).

        Returns:
            Logits ``(B, num_classes, H, W)`` (3D: ``(B, num_classes, D, H, W)``).
        """
        tokens, (h1, h2, h3) = self.vit(x)  # (B, N, D) each
        enc1 = self.encoder1(x)  # (B, fs, H, W)
        enc2 = self.encoder2(self._to_map(h1))  # (B, 2fs, H/2, W/2)
        enc3 = self.encoder3(self._to_map(h2))  # (B, 4fs, H/4, W/4)
        enc4 = self.encoder4(self._to_map(h3))  # (B, 8fs, H/8, W/8)
        d = self.decoder5(self._to_map(tokens), enc4)  # (B, 8fs, H/8, W/8)
        d = self.decoder4(d, enc3)  # (B, 4fs, H/4, W/4)
        d = self.decoder3(d, enc2)  # (B, 2fs, H/2, W/2)
        d = self.decoder2(d, enc1)  # (B, fs, H, W)
        return self.out(d)

    def profile_parts(self) -> list[tuple[str, str]]:
        """``transformer`` (the whole ViT: the group two-stage training freezes), ``skip_encoder``
        (``encoder1-4``), ``decoder`` (``decoder5-2``), ``head`` (``out``)."""
        return [
            ("transformer", "vit"),
            *(("skip_encoder", f"encoder{i}") for i in (1, 2, 3, 4)),
            *(("decoder", f"decoder{i}") for i in (5, 4, 3, 2)),
            ("head", "out"),
        ]

    def attention_grid(self) -> tuple[int, ...]:
        """The token grid ``(H / 16, W / 16)`` (3D: ``(D / 16, H / 16, W / 16)``)."""
        return self.grid_size

    # ------------------------------------------------------------------ foreign weights

    def convert_state_dict(self, weights: ForeignWeights) -> ConvertedWeights:
        """MONAI ``UNETR`` state dicts, Google ViT ``.npz`` and this package's own weights.

        MONAI (recognised by ``vit.blocks.*`` / ``vit.patch_embedding.*`` keys): see
        :func:`monai_to_unetr`. ``.npz``: the encoder only (:func:`google_npz_to_unetr`); the CNN
        path and head keep their initialisation.
        """
        if weights.kind == "npz":
            if self.spatial_dims != 2:
                raise CheckpointError(
                    f"{weights.source} is a Google ViT .npz (2D 16x16 patch kernels), which "
                    "initialises only the 2D UNETR; build it with spatial_dims=2 or load a 3D "
                    "MONAI UNETR state dict."
                )
            return google_npz_to_unetr(self, weights.tensors, weights.source)
        sd = strip_prefixes(weights.tensors, extra=self.foreign_prefixes)
        if any(k.startswith(("vit.blocks.", "vit.patch_embedding.", "vit.norm.")) for k in sd):
            converted = monai_to_unetr(sd, self.hidden_size, self.spatial_dims)
        else:
            converted = ConvertedWeights(sd, [])
        kernel = converted.state_dict.get("vit.embeddings.patch_embeddings.weight")
        if kernel is not None and kernel.ndim in (4, 5) and kernel.ndim != self.spatial_dims + 2:
            file_dims = kernel.ndim - 2
            raise CheckpointError(
                f"{weights.source} holds a {file_dims}D UNETR (spatial_dims={file_dims}, patch "
                f"kernel {tuple(kernel.shape)}); this model is {self.spatial_dims}D: build it with "
                f"spatial_dims={file_dims}."
            )
        return converted

    def explain_mismatch(
        self, key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]
    ) -> str | None:
        """3D/2D files, other image sizes and other widths get their own causes."""
        if len(file_shape) == len(model_shape) + 1 and len(model_shape) == 4:
            return "the file is a 3D UNETR (spatial_dims=3); this model is 2D (spatial_dims=2)"
        if len(file_shape) + 1 == len(model_shape) and len(model_shape) == 5:
            return "the file is a 2D UNETR (spatial_dims=2); this model is 3D (spatial_dims=3)"
        if (
            key.endswith("position_embeddings")
            and len(file_shape) == 3
            and file_shape[2] == model_shape[2]
        ):
            return (
                f"the file was made for another img_size ({file_shape[1]} token positions, "
                f"this model "
                f"has {model_shape[1]} = {'x'.join(map(str, self.grid_size))})"
            )
        if key.startswith("vit."):
            return "the file's ViT has another hidden_size/mlp_dim/in_channels"
        return None


# ----------------------------------------------------------------------------- weight converters


def monai_to_unetr(
    state_dict: Mapping[str, torch.Tensor], hidden_size: int, spatial_dims: int = 2
) -> ConvertedWeights:
    """Rename a MONAI ``UNETR`` state dict (``spatial_dims`` 2 or 3) to :class:`UNETR`'s keys.

    The key names are the same in 2D and 3D; only the kernels gain an axis. A perceptron patch
    weight ``(D, p^n * C)`` (MONAI's ``b c (h p1) (w p2) [(d p3)] -> b (h w [d]) (p1 p2 [p3] c)``)
    becomes the conv kernel ``(D, C, p, p[, p])``.

    Args:
        state_dict: MONAI keys (``vit.blocks.N.attn.qkv.weight``,
            ``encoder1.layer.conv1.conv.weight``, ...).
        hidden_size: ``D``, to split the fused ``qkv`` projection.
        spatial_dims: 2 or 3 (the perceptron reshape).

    Returns:
        The converted state dict; the unused ``norm_cross_attn`` entries are dropped (expected),
        keys that match no rule are returned as unused.
    """
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    dropped = 0
    D = hidden_size
    for key, t in state_dict.items():
        m = re.fullmatch(r"vit\.blocks\.(\d+)\.(.+)", key)
        if m:
            ours, rest = f"vit.encoder.layer.{m.group(1)}.", m.group(2)
            if rest.startswith("norm_cross_attn."):
                dropped += 1
                continue
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]
                if t.shape[0] != 3 * D:
                    raise CheckpointError(
                        f"'{key}' has {t.shape[0]} rows; a qkv projection of hidden_size={D} "
                        f"has {3 * D}: the file was made for another hidden_size."
                    )
                for i, name in enumerate(
                    ("query", "key", "value")
                ):  # rows (qkv, heads, d): q first
                    out[f"{ours}attn.{name}.{kind}"] = t[i * D : (i + 1) * D]
                continue
            for theirs, mine in (
                ("norm1.", "attention_norm."),
                ("norm2.", "ffn_norm."),
                ("mlp.linear1.", "ffn.fc1."),
                ("mlp.linear2.", "ffn.fc2."),
                ("attn.out_proj.", "attn.out."),
            ):
                if rest.startswith(theirs):
                    out[ours + mine + rest[len(theirs) :]] = t
                    break
            else:
                unused.append(key)
            continue
        if key == "vit.patch_embedding.position_embeddings":
            out["vit.embeddings.position_embeddings"] = t
        elif key in (
            "vit.patch_embedding.patch_embeddings.weight",
            "vit.patch_embedding.patch_embeddings.bias",
        ):
            out["vit.embeddings.patch_embeddings." + key.rsplit(".", 1)[1]] = t  # conv projection
        elif (
            key == "vit.patch_embedding.patch_embeddings.1.weight"
        ):  # perceptron: Linear on (p1 p2 c)
            p, n = PATCH_SIZE, spatial_dims
            c = t.shape[1] // p**n
            if t.ndim != 2 or c * p**n != t.shape[1]:
                raise CheckpointError(
                    f"'{key}' has shape {tuple(t.shape)}, not (hidden_size, {p}^{n} * channels): "
                    f"the file is not a {n}D UNETR with 16-pixel patches."
                )
            # (D, p1, p2[, p3], C) -> (D, C, p1, p2[, p3])
            kernel = t.reshape(t.shape[0], *([p] * n), c).permute(0, n + 1, *range(1, n + 1))
            out["vit.embeddings.patch_embeddings.weight"] = kernel.contiguous()
        elif key == "vit.patch_embedding.patch_embeddings.1.bias":
            out["vit.embeddings.patch_embeddings.bias"] = t
        elif key.startswith("vit.norm."):
            out["vit.encoder.encoder_norm." + key[len("vit.norm.") :]] = t
        elif re.match(r"(encoder[1-4]|decoder[2-5]|out)\.", key):
            k = re.sub(r"\.conv\.(weight|bias)$", r".\1", key)  # MONAI's Convolution wrapper level
            k = k.replace("encoder1.layer.", "encoder1.", 1)
            k = re.sub(r"^out\.conv\.", "out.", k)
            out[k] = t
        else:
            unused.append(key)
    if dropped:
        log.info("MONAI UNETR: %d never-used norm_cross_attn tensors dropped", dropped)
    return ConvertedWeights(out, unused)


def _npz_patch_kernel(
    model: UNETR, npz: Mapping[str, np.ndarray], source: str
) -> dict[str, torch.Tensor]:
    """Google ``embedding/kernel`` (16, 16, 3, D) -> ``(D, C, 16, 16)``; RGB summed for grey."""
    out: dict[str, torch.Tensor] = {}
    if "embedding/kernel" not in npz:
        return out
    w = npz_conv(np.asarray(npz["embedding/kernel"], dtype=np.float32))  # (D, 3, p, p)
    if model.in_channels == 1 and w.shape[1] == 3:
        w = w.sum(axis=1, keepdims=True)  # exact for a grey image repeated to RGB
    own = tuple(model.vit.embeddings.patch_embeddings.weight.shape)
    if tuple(w.shape) != own:
        raise CheckpointError(
            f"{source}: 'embedding/kernel' converts to {tuple(w.shape)} but the UNETR patch "
            f"projection is {own}; UNETR needs 16x16 patches of a ViT of the same hidden_size "
            "(ViT-B_16.npz for the default "
            "hidden_size=768) and in_channels 1 or 3."
        )
    out["vit.embeddings.patch_embeddings.weight"] = torch.from_numpy(np.ascontiguousarray(w))
    if "embedding/bias" in npz:
        out["vit.embeddings.patch_embeddings.bias"] = torch.from_numpy(
            npz_vec(np.asarray(npz["embedding/bias"], np.float32))
        )
    return out


def _npz_pos_embed(model: UNETR, posemb: np.ndarray, source: str) -> torch.Tensor:
    """Google position embeddings (class token first) -> ``(1, gh * gw, D)`` on the model's grid."""
    n = posemb.shape[1] if posemb.ndim == 3 else -1
    for skip in (1, 0):  # Google ViT checkpoints carry a class-token position first
        g = math.isqrt(max(n - skip, 0))
        if n > 0 and g * g == n - skip:
            return resize_pos_embed(posemb[:, skip:], (g, g), model.grid_size)
    raise CheckpointError(
        f"{source}: '{_NPZ_POS_KEY}' has shape {posemb.shape}, not (1, 1 + g*g, D); "
        "the file is not a ViT checkpoint."
    )


def google_npz_to_unetr(
    model: UNETR, npz: Mapping[str, np.ndarray], source: str
) -> ConvertedWeights:
    """Initialise UNETR's ViT from a Google ImageNet ViT ``.npz`` (e.g. ``ViT-B_16.npz``).

    Blocks and final norm through :func:`transunet.models.vit.google_vit_key_map`; the patch
    kernel is folded to one channel for grey input; the class-token position is dropped and the
    14 x 14 grid resized to the model's (``scipy.ndimage.zoom(order=1)``). The classifier entries
    are dropped; q/k/v biases of a model built with ``qkv_bias=False`` are reported unused.
    """
    from transunet.models.vit import google_vit_key_map  # the package's ViT key map

    own = model.state_dict()
    key_map = {
        k: v
        for k, v in google_vit_key_map(
            "vit.", len(model.vit.encoder.layer), patch_embedding=None
        ).items()
        if k in own
    }  # without qkv_bias the model has no query/key/value biases
    sd, used = convert_npz(npz, key_map, model, source)
    used_set = set(used)
    for k, t in _npz_patch_kernel(model, npz, source).items():
        sd[k] = t
    used_set.update(k for k in ("embedding/kernel", "embedding/bias") if k in npz)
    if _NPZ_POS_KEY in npz:
        pos = _npz_pos_embed(model, np.asarray(npz[_NPZ_POS_KEY], dtype=np.float32), source)
        own_pos = tuple(own["vit.embeddings.position_embeddings"].shape)
        if tuple(pos.shape) != own_pos:
            raise CheckpointError(
                f"{source}: '{_NPZ_POS_KEY}' gives {tuple(pos.shape)} but the model has {own_pos}; "
                "the ViT's hidden_size differs (ViT-B_16.npz needs hidden_size=768)."
            )
        sd["vit.embeddings.position_embeddings"] = pos
        used_set.add(_NPZ_POS_KEY)
    leftover = [k for k in npz if k not in used_set]
    ignored = [k for k in leftover if k.startswith(_NPZ_CLASSIFIER)]
    if ignored:
        log.info("%s: %d ImageNet classifier entries ignored", source, len(ignored))
    unused = [k for k in leftover if k not in ignored]
    if not model.qkv_bias and any(
        "MultiHeadDotProductAttention_1/" in k and k.endswith("/bias") and "/out/" not in k
        for k in unused
    ):
        log.warning(
            "%s: UNETR built with qkv_bias=False cannot use the file's query/key/value biases; "
            "build it with qkv_bias=True to load them.",
            source,
        )
    return ConvertedWeights(sd, unused)


# ----------------------------------------------------------------------------- registry

#: Architecture arguments of the registered UNETR (MONAI's defaults: ViT-B/16, feature_size 16).
UNETR_ARGS: dict[str, Any] = {
    "feature_size": 16,
    "hidden_size": 768,
    "mlp_dim": 3072,
    "num_heads": 12,
    "num_layers": 12,
    "proj_type": "conv",
    "norm_name": "instance",
    "conv_block": True,
    "res_block": True,
    "dropout_rate": 0.0,
    "qkv_bias": False,
    "attn_impl": "fused",
    "spatial_dims": 2,
}


@register_model(name="UNETR")
def unetr(
    num_classes: int = 9, in_channels: int = 1, img_size: int | Sequence[int] = 224, **kwargs: Any
) -> UNETR:
    """UNETR as MONAI's ``UNETR(spatial_dims=2)`` (defaults: :data:`UNETR_ARGS`), or with
    ``spatial_dims=3`` as MONAI's 3D UNETR.

    Args:
        num_classes: Output classes including background.
        in_channels: Image channels (the patch projection and ``encoder1`` take them natively).
        img_size: ``H`` or ``(H, W)`` (3D: ``S`` or ``(D, H, W)``), multiples of 16.
        **kwargs: Architecture arguments (keys of :data:`UNETR_ARGS`, see :class:`UNETR`).
    """
    name = "UNETR"
    check_args(name, kwargs, ["num_classes", "in_channels", "img_size", *UNETR_ARGS])
    a = {**UNETR_ARGS, **kwargs}
    num_classes = check_int(name, "num_classes", num_classes)
    in_channels = check_int(name, "in_channels", in_channels)
    nd = a["spatial_dims"]
    if nd not in SPATIAL_DIMS or isinstance(nd, bool):
        closest = 3 if isinstance(nd, (int, float)) and not isinstance(nd, bool) and nd > 2 else 2
        raise ValueError(
            f"spatial_dims={nd!r} is invalid for UNETR: it must be 2 (slices) or 3 (volumes); "
            f"closest valid: {closest}."
        )
    try:
        size = as_size(img_size, nd, "img_size")
    except ValueError as e:
        raise ValueError(f"{e} ({name}, spatial_dims={nd})") from None
    size = check_img_size(name, size, PATCH_SIZE, spatial_dims=nd)
    for k in ("feature_size", "hidden_size", "mlp_dim", "num_heads"):
        a[k] = check_int(name, k, a[k])
    a["num_layers"] = check_int(name, "num_layers", a["num_layers"], minimum=4)
    if a["hidden_size"] % a["num_heads"]:
        divisors = [d for d in range(1, a["hidden_size"] + 1) if a["hidden_size"] % d == 0]
        closest = min(divisors, key=lambda d: (abs(d - a["num_heads"]), d))
        raise ValueError(
            f"num_heads={a['num_heads']} is invalid for UNETR: it must divide hidden_size="
            f"{a['hidden_size']}; closest valid: {closest}."
        )
    a["proj_type"] = check_option("UNETR", "proj_type", a["proj_type"], PROJ_TYPES)
    a["norm_name"] = check_option("UNETR", "norm_name", a["norm_name"], NORM_NAMES)
    a["attn_impl"] = check_option("UNETR", "attn_impl", a["attn_impl"], ATTN_IMPLS)
    for k in ("conv_block", "res_block", "qkv_bias"):
        a[k] = check_bool("UNETR", k, a[k])
    a["dropout_rate"] = check_rate(name, "dropout_rate", a["dropout_rate"])
    model = UNETR(num_classes=num_classes, in_channels=in_channels, img_size=size, **a)
    model.model_kwargs = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "img_size": size,
        **a,
    }
    return model
