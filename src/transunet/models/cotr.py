"""CoTr: a CNN encoder, a deformable transformer on its two deepest levels, an additive-skip decoder.

Xie, Zhang, Shen, Xia: "CoTr: Efficiently Bridging CNN and Transformer for 3D Medical Image
Segmentation", MICCAI 2021, arXiv 2103.03024 (https://arxiv.org/abs/2103.03024). Official code:
YtongXie/CoTr (``CoTr_package/CoTr/network_architecture/ResTranUnet.py``, ``CNNBackbone.py``,
``DeTrans/*``), 3D only, no pretrained weights.

What is computed (``spatial_dims=3`` is the official ``ResTranUnet``; module names are the
official ones below ``U_ResTran3D.``, so an official state dict or nnU-Net ``.model`` file loads
through :func:`transunet.weights.load_pretrained`):

* Backbone: ``conv1`` 7^n (stride ``(1, 2, 2)`` in 3D, 2 in 2D, no bias) -> norm -> act gives
  ``x0`` (stride 2); three layers of residual blocks (``blocks`` = 3, 3, 2) give ``x1`` (stride 4,
  ``channels[1]``), ``x2`` (stride 8) and ``x3`` (stride 16), both ``d_model`` wide. A block is one
  3^n conv (stride 2 in block 0, no bias) -> norm, plus the residual (block 0: strided 1^n conv +
  norm), then act.
* DeTrans (encoder only) on ``x2`` and ``x3`` *without* an input projection: ``num_layers``
  post-norm layers ``norm1(x + drop(MSDeformAttn(x + pos, x)))``, ``norm2(x + drop(FFN(x)))``
  (GELU, ``dim_feedforward``), 2 levels, ``num_heads`` heads, ``num_points`` points; ``pos`` is a
  sine encoding plus a learned per-level embedding; the tokens are level 0 first, each flattened
  row-major. No padding masks (all valid).
* Decoder with *added* skips: ``ConvT(level-1 tokens) + level-0 tokens -> stage2_de``,
  ``ConvT + x1 -> stage1_de``, ``ConvT + x0 -> stage0_de`` (ConvT 2^n/stride 2, no bias; a decoder
  block is two [conv3^n -> norm -> act] plus the identity, no act after the add), upsampling
  (``(1, 2, 2)`` trilinear in 3D, x2 bilinear in 2D) and a 1^n ``cls_conv``. Deep supervision
  heads ``ds0_cls_conv`` (stride 2), ``ds1`` (4), ``ds2`` (8): training returns ``[logits, ds0,
  ds1, ds2]`` (the official ``do_ds`` order, full resolution first).
* Norm ``instance`` (InstanceNorm, affine, no stats: the official trainer's ``'IN'``), ``batch``
  (``'BN'``), ``group`` (GroupNorm(16), ``'GN'``); act ``leaky_relu`` (0.01, the trainer's) or
  ``relu``; ``weight_std`` = the official ``Conv3d_wd`` (weights centred and divided by
  ``sqrt(unbiased var + 1e-12)``) on every backbone/decoder conv.
* Official initialisation: Kaiming-normal (fan_out) convolutions, norms 1/0, Xavier-uniform
  transformer matrices, the deformable-attention init, N(0, 1) level embeddings.

Official quirks kept in 3D (``reference_order="official"``, the 3D default, needed for parity):
reference points are stored as ``(d, w, h)`` with offsets normalised by ``(D, W, H)``, while the
5-D ``grid_sample`` reads the components as ``(W, H, D)``: queries sample a transposed, rescaled
location. ``reference_order="corrected"`` stores ``(w, h, d)`` normalised by ``(W, H, D)`` (what
``grid_sample`` expects); official weights then compute something else. The sine encoding follows
the official rule ``dim_t = 10000^(3 (i // 3) / n)`` (not DETR's ``2 (i // 2)``) over thirds
``(d, y, x)``, computed in float32.

The 2D model (``spatial_dims=2``, default; what ``transunet train`` uses) is the faithful 2D
counterpart of FAMILY.md section 8.4: 2D convolutions and norms, conv1 stride 2, 2-level 2D
MSDeformAttn on strides 8 and 16 with Deformable DETR's geometry (references ``((x+.5)/W,
(y+.5)/H)``, normaliser ``(W, H)``, offsets ``Linear(d, M L P 2)`` with the ``(cos, sin)`` direction
bias; dropping ``d`` from the official ``(d, w, h)`` leaves ``(x, y)``, so 2D has no quirk and both
``reference_order`` values are the same), a sine encoding over halves ``(y, x)``, bilinear x2
upsampling. **The one free choice** is the 2D sine-encoding frequency rule: ``pos_rule="detr"``
(``2 (i // 2)``, Deformable DETR's 2D encoding, sin/cos pairs sharing a frequency: the 2D default)
or ``"cotr"`` (the official 3D rule ``3 (i // 3)`` applied to each half).

Differences from the official code:

* widths, block counts, heads, layers, points and FFN width are arguments (official literals are
  the defaults); the number of levels is fixed at the official 2 (``x2``, ``x3``);
* ``deep_supervision=False`` builds no auxiliary heads (the official model always builds and
  computes them); their keys in an official file are then reported unused. With
  ``deep_supervision=True`` the auxiliary heads are computed only in training mode;
* padding masks and valid ratios are not built (the official ones are all-False / all-one; its
  ``.cuda()`` calls that build them are gone, so the model runs on any device);
* the position encoding is cast to the tokens' dtype (the official adds a float32 encoding; the
  values are identical in float32 and float64).

Training (nnU-Net v1 trainer of the official repo): SGD lr 1e-2, momentum 0.99 Nesterov, wd 3e-5,
poly, 1000 x 250 iterations, Dice + CE on the four outputs weighted 8/15, 4/15, 2/15, 1/15 (the
normalised halving weights 1, 1/2, 1/4, 1/8, which is also this package's trainer default); the
configs state them explicitly as ``train.deep_supervision_weights``.

FLOPs: ``transunet profile`` counts the 2D convolutions and Linear layers; the deformable sampling
(``grid_sample`` and the weighted sum, about ``2 * M * Dh * L * P * N`` plus bilinear reads per
layer, small next to the projections) is not counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transunet.layers.deformable_attention import CORRECT_AXES, OFFICIAL_COTR_AXES, MSDeformAttn, reference_points
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
from transunet.weights import ConvertedWeights, ForeignWeights, strip_prefixes

log = logging.getLogger(__name__)

__all__ = ["COTR_ARGS", "CoTr", "DeformableTransformer", "SinePositionEncoding", "cotr"]

NORMS = ("instance", "batch", "group")
ACTS = ("leaky_relu", "relu")
REFERENCE_ORDERS = ("official", "corrected")
POS_RULES = ("cotr", "detr")

# ----------------------------------------------------------------------------- conv building blocks


def _conv_cls(spatial_dims: int, weight_std: bool) -> type[nn.Module]:
    if weight_std:
        return WSConv3d if spatial_dims == 3 else WSConv2d
    return nn.Conv3d if spatial_dims == 3 else nn.Conv2d


def _standardize(weight: torch.Tensor) -> torch.Tensor:
    """The official ``Conv3d_wd`` kernel: centred per output channel, divided by
    ``sqrt(var + 1e-12)`` with the *unbiased* variance."""
    w = weight - weight.mean(dim=tuple(range(1, weight.ndim)), keepdim=True)
    std = torch.sqrt(torch.var(w.reshape(w.shape[0], -1), dim=1) + 1e-12)
    return w / std.view(-1, *([1] * (weight.ndim - 1)))


class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` with the official CoTr weight standardisation (:func:`_standardize`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _standardize(self.weight), self.bias)


class WSConv3d(nn.Conv3d):
    """``nn.Conv3d`` with the official CoTr weight standardisation (:func:`_standardize`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _standardize(self.weight), self.bias)


def _norm(norm: str, channels: int, spatial_dims: int) -> nn.Module:
    if norm == "instance":
        return (nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d)(channels, affine=True)
    if norm == "batch":
        return (nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d)(channels)
    return nn.GroupNorm(16, channels)


def _act(act: str) -> nn.Module:
    return nn.LeakyReLU(0.01) if act == "leaky_relu" else nn.ReLU()


class BackboneBlock(nn.Module):
    """The official backbone ``ResBlock``: ``act(norm1(conv1(x)) + residual)``, one 3^n conv.

    Args:
        in_channels, out_channels: Widths.
        stride: Stride of ``conv1`` (and of the ``downsample`` projection when given).
        downsample: Build the residual projection ``Sequential(conv 1^n strided, norm)``.
        norm, act, spatial_dims, weight_std: See :class:`CoTr`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int | tuple[int, ...],
        downsample: bool,
        norm: str,
        act: str,
        spatial_dims: int,
        weight_std: bool,
    ) -> None:
        super().__init__()
        conv = _conv_cls(spatial_dims, weight_std)
        self.conv1 = conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, out_channels, spatial_dims)
        self.nonlin = _act(act)
        self.downsample = (
            nn.Sequential(
                conv(in_channels, out_channels, 1, stride=stride, bias=False), _norm(norm, out_channels, spatial_dims)
            )
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.nonlin(self.norm1(self.conv1(x)) + residual)


class Backbone(nn.Module):
    """The official CNN encoder: stem (stride 2 in-plane) and three layers of stride 2.

    Args:
        in_channels: Input channels.
        widths: Output widths of stem, layer1, layer2, layer3 (official 64, 192, 384, 384).
        blocks: Blocks of layer1..3 (official 3, 3, 2).
        norm, act, spatial_dims, weight_std: See :class:`CoTr`.

    Attributes:
        feature_info: The four outputs by in-plane stride (2, 4, 8, 16).
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int],
        blocks: Sequence[int],
        norm: str,
        act: str,
        spatial_dims: int,
        weight_std: bool,
    ) -> None:
        super().__init__()
        stem_stride = (1, 2, 2) if spatial_dims == 3 else 2
        self.conv1 = _conv_cls(spatial_dims, weight_std)(
            in_channels, widths[0], 7, stride=stem_stride, padding=3, bias=False
        )
        self.norm1 = _norm(norm, widths[0], spatial_dims)
        self.nonlin = _act(act)
        for i, n in enumerate(blocks):
            layer = [
                BackboneBlock(
                    widths[i] if b == 0 else widths[i + 1],
                    widths[i + 1],
                    2 if b == 0 else 1,
                    b == 0,
                    norm,
                    act,
                    spatial_dims,
                    weight_std,
                )
                for b in range(n)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
        self.feature_info = [FeatureInfo(2 ** (i + 1), w) for i, w in enumerate(widths)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, [D,] H, W)`` -> ``[x0, x1, x2, x3]`` at in-plane strides 2, 4, 8, 16."""
        x = self.nonlin(self.norm1(self.conv1(x)))
        out = [x]
        for name in ("layer1", "layer2", "layer3"):
            x = getattr(self, name)(x)
            out.append(x)
        return out


class ConvNormAct(nn.Module):
    """``act(norm(conv3^n(x)))`` without conv bias (official ``Conv3dBlock``)."""

    def __init__(self, channels: int, norm: str, act: str, spatial_dims: int, weight_std: bool) -> None:
        super().__init__()
        self.conv = _conv_cls(spatial_dims, weight_std)(channels, channels, 3, padding=1, bias=False)
        self.norm = _norm(norm, channels, spatial_dims)
        self.nonlin = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.norm(self.conv(x)))


class DecoderBlock(nn.Module):
    """The official decoder ``ResBlock``: ``x + resconv2(resconv1(x))`` (no act after the add)."""

    def __init__(self, channels: int, norm: str, act: str, spatial_dims: int, weight_std: bool) -> None:
        super().__init__()
        self.resconv1 = ConvNormAct(channels, norm, act, spatial_dims, weight_std)
        self.resconv2 = ConvNormAct(channels, norm, act, spatial_dims, weight_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.resconv2(self.resconv1(x))


# ----------------------------------------------------------------------------- deformable transformer


class SinePositionEncoding(nn.Module):
    """Normalised sine position encoding over the axes of a 2D or 3D map (no parameters).

    Axis ``a`` of size ``S`` gets ``e = (k - 0.5) / (S + 1e-6) * 2 pi`` for ``k = 1..S`` and features
    ``e / 10000^(r(i) / n)``, ``i < n``, sin on even and cos on odd ``i`` (interleaved); the axes
    are concatenated ``(d, y, x)`` (3D, ``n = d_model // 3``, the remainder to ``d``) or ``(y, x)``
    (2D, ``n = d_model // 2``). Float32 always, as the official code.

    Args:
        d_model: Output channels.
        spatial_dims: 2 or 3.
        rule: ``"cotr"``: ``r(i) = 3 (i // 3)`` (official CoTr); ``"detr"``: ``r(i) = 2 (i // 2)``.
    """

    def __init__(self, d_model: int, spatial_dims: int, rule: str) -> None:
        super().__init__()
        n = d_model // spatial_dims
        # feature count per axis in output order (d, y, x) / (y, x); the remainder goes to the first
        self.counts = [n + d_model % spatial_dims] + [n] * (spatial_dims - 1)
        self.spatial_dims, self.rule = spatial_dims, rule
        self.step = 3 if rule == "cotr" else 2

    def _axis(self, size: int, count: int, device: torch.device) -> torch.Tensor:
        e = torch.arange(1, size + 1, dtype=torch.float32, device=device)
        e = (e - 0.5) / (e[-1:] + 1e-6) * (2 * math.pi)  # (S,)
        i = torch.arange(count, dtype=torch.float32, device=device)
        dim_t = 10000 ** (self.step * (i // self.step) / count)
        pos = e[:, None] / dim_t  # (S, count)
        return torch.stack((pos[:, 0::2].sin(), pos[:, 1::2].cos()), dim=2).flatten(1)  # (S, count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, [D,] H, W)`` -> ``(1, d_model, [D,] H, W)`` float32."""
        shape = x.shape[2:]
        parts = []
        for a, (size, count) in enumerate(zip(shape, self.counts)):
            p = self._axis(size, count, x.device)  # (S_a, count)
            view = [1] * len(shape)
            view[a] = size
            parts.append(p.T.reshape(count, *view).expand(count, *shape))
        return torch.cat(parts, 0)[None]


class DeformableTransformerEncoderLayer(nn.Module):
    """Post-norm deformable encoder layer (official names).

    Args:
        d_model, d_ffn, dropout, n_levels, n_heads, n_points: Widths and rates.
        spatial_dims: 2 or 3.
        axes: Reference-point component axes (see :mod:`transunet.layers.deformable_attention`).
    """

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
        spatial_dims: int,
        axes: Sequence[int],
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, spatial_dims, axes)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, spatial_shapes: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """``(B, N, d)`` tokens, ``(1, N, d)`` position codes, ``(1, N, n)`` references -> ``(B, N, d)``."""
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference, src, spatial_shapes)))
        ffn = self.linear2(self.dropout2(F.gelu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableTransformerEncoder(nn.Module):
    """A stack of :class:`DeformableTransformerEncoderLayer` (official ``encoder.layers.k``)."""

    def __init__(self, num_layers: int, **layer_kwargs: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableTransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, spatial_shapes: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos, reference, spatial_shapes)
        return src


class DeformableTransformer(nn.Module):
    """CoTr's DeTrans: flatten the levels, add position + level embeddings, run the encoder.

    Args:
        d_model: Token width (= the channels of the levels; there is no input projection).
        num_heads, num_layers, num_points, dim_feedforward, dropout: See :class:`CoTr`.
        n_levels: Feature levels (CoTr: 2).
        spatial_dims: 2 or 3.
        axes: Reference-point component axes.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_layers: int,
        num_points: int,
        dim_feedforward: int,
        dropout: float,
        n_levels: int,
        spatial_dims: int,
        axes: Sequence[int],
    ) -> None:
        super().__init__()
        self.axes = tuple(axes)
        self.encoder = DeformableTransformerEncoder(
            num_layers,
            d_model=d_model,
            d_ffn=dim_feedforward,
            dropout=dropout,
            n_levels=n_levels,
            n_heads=num_heads,
            n_points=num_points,
            spatial_dims=spatial_dims,
            axes=axes,
        )
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official: Xavier-uniform on every matrix, then the MSDeformAttn init, N(0, 1) level embeddings."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: Sequence[torch.Tensor], pos_embeds: Sequence[torch.Tensor]) -> torch.Tensor:
        """Levels ``(B, d, [D,] H, W)`` and their encodings -> memory ``(B, sum N_l, d)`` (level 0 first)."""
        tokens, pos, shapes = [], [], []
        for lvl, (src, p) in enumerate(zip(srcs, pos_embeds)):
            shapes.append(tuple(src.shape[2:]))
            tokens.append(src.flatten(2).transpose(1, 2))  # (B, N_l, d)
            pos.append(p.flatten(2).transpose(1, 2).to(src.dtype) + self.level_embed[lvl].view(1, 1, -1))
        ref = reference_points(shapes, self.axes, device=srcs[0].device)  # (1, N, n)
        return self.encoder(torch.cat(tokens, 1), torch.cat(pos, 1), ref, shapes)


# ----------------------------------------------------------------------------- model


class CoTr(SegmentationModel):
    """CoTr (official ``ResTranUnet``/``U_ResTran3D``) in 3D, and its faithful 2D counterpart.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels (native; the official model has 1).
        img_size: ``(H, W)`` or ``(D, H, W)``; any multiple of 16 (``(8, 16, 16)`` in 3D) works whose
            stride-16 map has more than one position (16 x 16 does not: instance norm needs two).
        spatial_dims: 2 (slices, trainable here) or 3 (the official volumes).
        channels: Backbone widths at in-plane strides 2 and 4 (strides 8, 16 are ``d_model``).
        blocks: Residual blocks of backbone layers 1-3.
        d_model: Transformer width (= backbone width at strides 8 and 16).
        num_heads, num_layers, num_points, dim_feedforward, dropout: Deformable encoder.
        norm: ``instance`` / ``batch`` / ``group`` (official ``IN``/``BN``/``GN``).
        act: ``leaky_relu`` (0.01) or ``relu``.
        weight_std: Weight-standardised convolutions (official ``Conv3d_wd``).
        deep_supervision: Build the auxiliary heads; training returns ``[logits, ds0, ds1, ds2]``.
        reference_order: ``official`` (3D: ``(d, w, h)`` references, see the module docstring) or
            ``corrected``; identical in 2D.
        pos_rule: Sine-encoding frequency rule ``cotr`` (``3 (i // 3)``) or ``detr`` (``2 (i // 2)``).
    """

    attention_kind = "deformable"
    fixed_input_size = False
    foreign_prefixes = ("U_ResTran3D.",)

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        img_size: Sequence[int],
        spatial_dims: int = 2,
        channels: Sequence[int] = (64, 192),
        blocks: Sequence[int] = (3, 3, 2),
        d_model: int = 384,
        num_heads: int = 6,
        num_layers: int = 6,
        num_points: int = 4,
        dim_feedforward: int = 1536,
        dropout: float = 0.1,
        norm: str = "instance",
        act: str = "leaky_relu",
        weight_std: bool = False,
        deep_supervision: bool = True,
        reference_order: str = "official",
        pos_rule: str = "cotr",
    ) -> None:
        multiple = (8, 16, 16) if spatial_dims == 3 else 16
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            img_size=img_size,
            size_multiple=multiple,
            spatial_dims=spatial_dims,
        )
        n = spatial_dims
        self.deep_supervision = bool(deep_supervision)
        self.reference_order, self.pos_rule = reference_order, pos_rule
        widths = (channels[0], channels[1], d_model, d_model)
        self.backbone = Backbone(in_channels, widths, blocks, norm, act, n, weight_std)
        self.feature_info = self.backbone.feature_info
        axes = OFFICIAL_COTR_AXES if (n == 3 and reference_order == "official") else CORRECT_AXES[n]
        self.position_embed = SinePositionEncoding(d_model, n, pos_rule)
        self.encoder_Detrans = DeformableTransformer(
            d_model, num_heads, num_layers, num_points, dim_feedforward, dropout, 2, n, axes
        )
        convt = nn.ConvTranspose3d if n == 3 else nn.ConvTranspose2d
        conv = nn.Conv3d if n == 3 else nn.Conv2d
        c0, c1 = channels
        self.transposeconv_stage2 = convt(d_model, d_model, 2, stride=2, bias=False)
        self.transposeconv_stage1 = convt(d_model, c1, 2, stride=2, bias=False)
        self.transposeconv_stage0 = convt(c1, c0, 2, stride=2, bias=False)
        self.stage2_de = DecoderBlock(d_model, norm, act, n, weight_std)
        self.stage1_de = DecoderBlock(c1, norm, act, n, weight_std)
        self.stage0_de = DecoderBlock(c0, norm, act, n, weight_std)
        if self.deep_supervision:
            self.ds2_cls_conv = conv(d_model, num_classes, 1)
            self.ds1_cls_conv = conv(c1, num_classes, 1)
            self.ds0_cls_conv = conv(c0, num_classes, 1)
        self.cls_conv = conv(c0, num_classes, 1)
        self.upsample = nn.Upsample(
            scale_factor=(1, 2, 2) if n == 3 else 2, mode="trilinear" if n == 3 else "bilinear", align_corners=False
        )
        self._init_cnn()

    def _init_cnn(self) -> None:
        """Official: Kaiming-normal (fan_out) conv/transposed-conv weights, norm weight 1 / bias 0."""
        for name, m in self.named_modules():
            if name.startswith("encoder_Detrans"):
                continue
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm)):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def check_input_size(
        self, size: int | Sequence[int], batch_shape: tuple[int, ...] | None = None
    ) -> tuple[int, ...]:
        """Multiples of 16 (3D: 8, 16, 16) whose deepest map (stride 16) holds more than one position."""
        dims = super().check_input_size(size, batch_shape)
        check_deepest_map(self.model_name, dims, self.spatial_dims, "input size")
        return dims

    def segment(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment.

        Args:
            x: ``(B, in_channels, H, W)`` (2D) or ``(B, in_channels, D, H, W)`` (3D).

        Returns:
            Logits ``(B, num_classes, [D,] H, W)``; in training mode with deep supervision
            ``[logits, ds0, ds1, ds2]`` at in-plane strides 1, 2, 4, 8 (3D: depth strides 1, 1, 2, 4).
        """
        x0, x1, x2, x3 = self.backbone(x)
        levels = [x2, x3]
        pos = [self.position_embed(f) for f in levels]
        memory = self.encoder_Detrans(levels, pos)  # (B, N2 + N3, d)
        n2 = math.prod(x2.shape[2:])
        skip2 = memory[:, :n2].transpose(1, 2).reshape(x2.shape)  # (B, N2, d) -> (B, d, [D,] H/8, W/8)
        deep = memory[:, n2:].transpose(1, 2).reshape(x3.shape)  # (B, N3, d) -> (B, d, [D,] H/16, W/16)
        aux = self.training and self.deep_supervision
        d2 = self.stage2_de(self.transposeconv_stage2(deep) + skip2)
        d1 = self.stage1_de(self.transposeconv_stage1(d2) + x1)
        d0 = self.stage0_de(self.transposeconv_stage0(d1) + x0)
        logits = self.cls_conv(self.upsample(d0))
        if not aux:
            return logits
        return [logits, self.ds0_cls_conv(d0), self.ds1_cls_conv(d1), self.ds2_cls_conv(d2)]

    def profile_parts(self) -> list[tuple[str, str]]:
        """``encoder`` (CNN backbone), ``transformer`` (DeTrans), ``decoder``, ``head`` (all 1^n heads)."""
        return [
            ("encoder", "backbone"),
            ("transformer", "encoder_Detrans"),
            *(("decoder", name) for i in (2, 1, 0) for name in (f"transposeconv_stage{i}", f"stage{i}_de")),
            ("head", "cls_conv"),
            *(("head", f"ds{i}_cls_conv") for i in (0, 1, 2)),
        ]

    # ------------------------------------------------------------------ foreign weights

    def convert_state_dict(self, weights: ForeignWeights) -> ConvertedWeights:
        """Official ``ResTranUnet`` state dicts (``U_ResTran3D.*``; nnU-Net ``.model`` files are unwrapped
        by :func:`transunet.weights.read_weights`) and this package's own. Without deep supervision
        the official auxiliary heads are reported unused."""
        if weights.kind == "npz":
            return super().convert_state_dict(weights)
        sd = strip_prefixes(weights.tensors, extra=self.foreign_prefixes)
        unused = []
        if not self.deep_supervision:
            unused = [k for k in sd if k.startswith(("ds0_cls_conv.", "ds1_cls_conv.", "ds2_cls_conv."))]
            if unused:
                log.info("%s: auxiliary heads dropped (deep_supervision=False): %s", weights.source, unused)
            sd = {k: v for k, v in sd.items() if k not in unused}
        return ConvertedWeights(sd, unused)

    def explain_mismatch(self, key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str | None:
        """3D files on a 2D model (and back) and other widths get their own causes."""
        if len(file_shape) == len(model_shape) + 1 and len(model_shape) >= 3:
            return "the file is a 3D CoTr (build the model with spatial_dims=3)"
        if len(file_shape) + 1 == len(model_shape) and len(file_shape) >= 3:
            return "the file is a 2D CoTr (build the model with spatial_dims=2)"
        if key.endswith("sampling_offsets.weight") or key.endswith("sampling_offsets.bias"):
            if file_shape[0] * 2 == model_shape[0] * 3:
                return "the file is a 3D CoTr (3 offset components per point); build it with spatial_dims=3"
            if file_shape[0] * 3 == model_shape[0] * 2:
                return "the file is a 2D CoTr (2 offset components per point); build it with spatial_dims=2"
        return None


# ----------------------------------------------------------------------------- entry point

#: The architecture arguments of ``CoTr`` and their defaults (the official literals; ``None``
#: resolves by ``spatial_dims``: ``reference_order`` official in 3D / corrected in 2D, ``pos_rule``
#: cotr in 3D / detr in 2D).
COTR_ARGS: dict[str, Any] = {
    "spatial_dims": 2,
    "channels": (64, 192),
    "blocks": (3, 3, 2),
    "d_model": 384,
    "num_heads": 6,
    "num_layers": 6,
    "num_points": 4,
    "dim_feedforward": 1536,
    "dropout": 0.1,
    "norm": "instance",
    "act": "leaky_relu",
    "weight_std": False,
    "deep_supervision": True,
    "reference_order": None,
    "pos_rule": None,
}


def check_deepest_map(model: str, dims: Sequence[int], spatial_dims: int, what: str) -> None:
    """Refuse sizes whose stride-16 map is one position: instance norm cannot normalise it in training
    (the official model has the same limit); the closest valid size doubles the width."""
    strides = (8, 16, 16) if spatial_dims == 3 else (16, 16)
    if math.prod(d // s for d, s in zip(dims, strides)) == 1:
        closest = (*dims[:-1], 2 * dims[-1])
        raise ValueError(
            f"{what}={tuple(dims)} is invalid for {model}: the stride-16 map would be a single position, which "
            f"instance norm cannot normalise in training; the closest valid size is {closest}."
        )


def _int_list(name: str, value: Any, length: int, example: Sequence[int]) -> tuple[int, ...]:
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or len(value) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(
            f"{name}={value!r} is invalid for CoTr: it must be {length} positive integers, e.g. {list(example)}."
        )
    return tuple(int(v) for v in value)


@register_model(name="CoTr")
def cotr(num_classes: int = 9, in_channels: int = 1, img_size: int | Sequence[int] = 224, **kwargs: Any) -> CoTr:
    """CoTr (defaults: :data:`COTR_ARGS`; ``spatial_dims=3`` is the official 3D ``ResTranUnet``).

    Args:
        num_classes: Output classes including background.
        in_channels: Image channels (native).
        img_size: ``H`` or ``(H, W)`` (multiples of 16); in 3D ``(D, H, W)`` (multiples of 8, 16, 16).
        **kwargs: Architecture arguments (keys of :data:`COTR_ARGS`, see :class:`CoTr`).
    """
    name = "CoTr"
    check_args(name, kwargs, ["num_classes", "in_channels", "img_size", *COTR_ARGS])
    a = {**COTR_ARGS, **kwargs}
    num_classes = check_int(name, "num_classes", num_classes)
    in_channels = check_int(name, "in_channels", in_channels)
    sd = a["spatial_dims"]
    if sd not in (2, 3) or isinstance(sd, bool):
        raise ValueError(f"spatial_dims={sd!r} is invalid for CoTr: it must be 2 or 3.")
    try:
        size = as_size(img_size, sd, "img_size")
    except ValueError as e:
        raise ValueError(f"{e} ({name})") from None
    size = check_img_size(name, size, (8, 16, 16) if sd == 3 else 16, spatial_dims=sd)
    check_deepest_map(name, size, sd, "img_size")
    a["channels"] = _int_list("channels", a["channels"], 2, COTR_ARGS["channels"])
    a["blocks"] = _int_list("blocks", a["blocks"], 3, COTR_ARGS["blocks"])
    for k in ("d_model", "num_heads", "num_layers", "num_points", "dim_feedforward"):
        a[k] = check_int(name, k, a[k])
    d, heads = a["d_model"], a["num_heads"]
    step = 2 * sd  # an even number of sine features per axis
    if d % step:
        raise ValueError(
            f"d_model={d} is invalid for CoTr: with spatial_dims={sd} it must be a multiple of {step} "
            f"(an even sine-encoding width per axis); closest valid: {max(step, round(d / step) * step)}."
        )
    if d % heads:
        divisors = [v for v in range(1, d + 1) if d % v == 0]
        closest = min(divisors, key=lambda v: (abs(v - heads), v))
        raise ValueError(
            f"num_heads={heads} is invalid for CoTr: it must divide d_model={d}; closest valid: {closest}."
        )
    a["dropout"] = check_rate(name, "dropout", a["dropout"])
    a["norm"] = check_option("CoTr", "norm", a["norm"], NORMS)
    a["act"] = check_option("CoTr", "act", a["act"], ACTS)
    if a["norm"] == "group":
        bad = [c for c in (*a["channels"], d) if c % 16]
        if bad:
            raise ValueError(
                f"norm='group' is invalid for CoTr with widths {bad}: GroupNorm(16) needs multiples of "
                f"16; closest valid width: {max(16, round(bad[0] / 16) * 16)}."
            )
    for k in ("weight_std", "deep_supervision"):
        a[k] = check_bool("CoTr", k, a[k])
    default_order = "official" if sd == 3 else "corrected"
    a["reference_order"] = check_option("CoTr", "reference_order", a["reference_order"] or default_order,
                                        REFERENCE_ORDERS)
    a["pos_rule"] = check_option("CoTr", "pos_rule", a["pos_rule"] or ("cotr" if sd == 3 else "detr"), POS_RULES)
    model = CoTr(num_classes=num_classes, in_channels=in_channels, img_size=size, **a)
    model.model_kwargs = {"num_classes": num_classes, "in_channels": in_channels, "img_size": size, **a}
    return model
