"""UNet++: nested U-Net with redesigned (dense) skip pathways and deep supervision.

Zhou, Rahman Siddiquee, Tajbakhsh, Liang: "UNet++: A Nested U-Net Architecture for Medical Image
Segmentation", DLMIA 2018, arXiv 1807.10165 (https://arxiv.org/abs/1807.10165); and "UNet++:
Redesigning Skip Connections to Exploit Multiscale Features in Image Segmentation", IEEE TMI 2019,
arXiv 1912.05074 (https://arxiv.org/abs/1912.05074).

What is computed is the official PyTorch implementation, the nnU-Net v1 based
``Generic_UNetPlusPlus`` of MrGiovanni/UNetPlusPlus (``pytorch/nnunet/network_architecture/
generic_UNetPlusPlus.py``) in 2D with the arguments of its trainer ``nnUNetPlusPlusTrainerV2``:

* node ``x(i, j)`` (level ``i``, column ``j``): ``x(i, 0)`` is the encoder (two blocks, the first
  strided for ``i >= 1``; the bottleneck ``i = L`` is two single-block stacks); for ``j >= 1``,
  ``x(i, j) = block(block(cat([x(i, 0), ..., x(i, j-1), up(x(i+1, j-1))])))`` with ``up`` a
  2x2/stride-2 transposed convolution without bias (the dense skip pathway);
* block = Conv3x3 (with bias) -> InstanceNorm (affine, eps 1e-5) -> LeakyReLU(0.01) (nnU-Net's
  ``ConvDropoutNormNonlin``; its dropout has p = 0);
* widths ``base * 2**i`` capped at ``max_features`` (2D nnU-Net: base 32, cap 480 -> 32, 64, 128,
  256, 480, 480); node ``x(i, j)`` has the width of level ``i``;
* one 1x1 head without bias per column, ``seg_outputs.k`` on ``x(0, L-k)``; with deep supervision
  the outputs in the official order ``(x(0,L), x(0,L-1), ..., x(0,1))``, all at full resolution:
  the final (full-depth) output first, as this package's contract wants;
* He initialisation (Kaiming normal, ``a = 0.01``, biases 0) of every (transposed) convolution.

Module names equal the official ones (``conv_blocks_context.*``, ``loc{k}.{m}``, ``up{k}.{m}``,
``seg_outputs.{k}``, with ``loc{k}.{m}`` the node ``x(L-1-k-m, m+1)``), so official state dicts load
unchanged through :func:`transunet.load_pretrained`.

Differences from the official code:

* the depth is an argument (``num_pool``; the official ``forward`` is hard-wired to 5 pools) and
  widths may be given explicitly (``features``); 3x3 kernels and 2x2 pooling only (2D);
* ``deep_supervision=False`` builds only the final head (the official class builds all heads and
  leaves four unused; their keys in an official file are dropped by the converter);
* **pruning** (the papers' UNet++ L^p): ``prune_level=p < num_pool`` makes evaluation compute only
  the sub-network ``x(i, j), i + j <= p`` and predict from the head on ``x(0, p)``; training still
  runs the whole network with deep supervision, as the paper trains before pruning;
* ``norm="batch"`` is offered besides the official instance norm (parameter names unchanged).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from transunet.errors import did_you_mean
from transunet.models.base import FeatureInfo, SegmentationModel, check_args, check_img_size, check_int
from transunet.registry import register_model
from transunet.utils import as_pair
from transunet.weights import ConvertedWeights, ForeignWeights

log = logging.getLogger(__name__)

__all__ = ["ARCH", "NORMS", "ConvNormNonlin", "StackedConvs", "UNetPlusPlus", "nnunet_widths",
           "unet_plusplus"]

#: Normalisations a block may use (``instance`` is the official one).
NORMS = ("instance", "batch")


# ----------------------------------------------------------------------------- blocks


class ConvNormNonlin(nn.Module):
    """Conv3x3 (bias) -> norm (affine) -> LeakyReLU(0.01): nnU-Net's ``ConvDropoutNormNonlin``.

    Children are named ``conv``, ``instnorm`` (whatever the norm) and ``lrelu`` as in nnU-Net.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the convolution (2 for the first block of an encoder level).
        norm: One of :data:`NORMS`.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 norm: str = "instance") -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=True)
        self.instnorm: nn.Module
        if norm == "instance":
            self.instnorm = nn.InstanceNorm2d(out_channels, eps=1e-5, affine=True)
        else:
            self.instnorm = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride)``."""
        return self.lrelu(self.instnorm(self.conv(x)))


class StackedConvs(nn.Module):
    """``num_convs`` blocks in ``self.blocks``, the first strided (nnU-Net ``StackedConvLayers``).

    Args:
        in_channels: Input channels.
        out_channels: Output channels of every block.
        num_convs: Number of blocks (>= 1).
        first_stride: Stride of the first block.
        norm: One of :data:`NORMS`.
    """

    def __init__(self, in_channels: int, out_channels: int, num_convs: int, first_stride: int = 1,
                 norm: str = "instance") -> None:
        super().__init__()
        self.out_channels = out_channels
        self.blocks = nn.Sequential(*[
            ConvNormNonlin(in_channels if n == 0 else out_channels, out_channels,
                           stride=first_stride if n == 0 else 1, norm=norm)
            for n in range(num_convs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W) -> (B, out_channels, H / first_stride, W / first_stride)``."""
        return self.blocks(x)


def _two_stacks(in_channels: int, out_channels: int, first_stride: int, norm: str) -> nn.Sequential:
    """Two single-block stacks (children ``0``, ``1``): the official bottleneck and decoder node."""
    return nn.Sequential(StackedConvs(in_channels, out_channels, 1, first_stride, norm),
                         StackedConvs(out_channels, out_channels, 1, 1, norm))


def nnunet_widths(base_features: int, max_features: int, num_pool: int) -> tuple[int, ...]:
    """Widths of levels ``0..num_pool``: ``base * 2**i`` capped at ``max_features`` (nnU-Net).

    Args:
        base_features: Width of level 0.
        max_features: Cap (480 for 2D nnU-Net).
        num_pool: Number of downsamplings.
    """
    widths, w = [], base_features
    for _ in range(num_pool + 1):
        widths.append(min(w, max_features))
        w = min(w * 2, max_features)
    return tuple(widths)


# ----------------------------------------------------------------------------- model


class UNetPlusPlus(SegmentationModel):
    """UNet++ as the official nnU-Net-based ``Generic_UNetPlusPlus`` (2D) computes it.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels.
        img_size: ``H`` or ``(H, W)``, multiples of ``2**num_pool`` (any such size runs).
        features: Width of each level ``0..num_pool`` (``num_pool + 1`` entries).
        deep_supervision: Build one head per column and return the list
            ``[x(0,L), x(0,L-1), ..., x(0,1)]`` heads in training mode (full depth first).
        prune_level: Evaluate the pruned UNet++ L^p (``1 <= p <= num_pool``; ``None``: full depth).
        norm: ``"instance"`` (official) or ``"batch"``.

    Attributes:
        conv_blocks_context: Encoder levels ``0..L`` (level ``L`` = bottleneck).
        loc0 ... loc{L-1}: Decoder nodes; ``loc{k}[m]`` computes ``x(L-1-k-m, m+1)``.
        up0 ... up{L-1}: Their transposed convolutions, ``up{k}[m]`` upsamples ``x(L-k-m, m)``.
        seg_outputs: 1x1 heads; ``seg_outputs[k]`` reads ``x(0, L-k)``.
    """

    fixed_input_size = False
    attention_kind = None

    def __init__(self, *, num_classes: int = 9, in_channels: int = 1,
                 img_size: int | Sequence[int] = 224,
                 features: Sequence[int] = (32, 64, 128, 256, 480, 480),
                 deep_supervision: bool = True, prune_level: int | None = None,
                 norm: str = "instance") -> None:
        num_pool = len(features) - 1
        super().__init__(num_classes=num_classes, in_channels=in_channels, img_size=img_size,
                         size_multiple=2 ** num_pool)
        self.num_pool = num_pool
        self.features = tuple(int(f) for f in features)
        self.deep_supervision = bool(deep_supervision)
        self.prune_level = num_pool if prune_level is None else int(prune_level)
        L, w = num_pool, self.features

        self.conv_blocks_context = nn.ModuleList(
            [StackedConvs(in_channels if i == 0 else w[i - 1], w[i], 2, 1 if i == 0 else 2, norm)
             for i in range(L)] + [_two_stacks(w[L - 1], w[L], 2, norm)])
        for k in range(L):
            # loc{k}[m] is node x(i, j), i = L-1-k-m, j = m+1: j earlier nodes + 1 upsampled map.
            nodes = [(L - 1 - k - m, m + 1) for m in range(L - k)]
            setattr(self, f"loc{k}", nn.ModuleList(
                [_two_stacks(w[i] * (j + 1), w[i], 1, norm) for i, j in nodes]))
            setattr(self, f"up{k}", nn.ModuleList(
                [nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2, bias=False) for i, _ in nodes]))
        n_heads = L if self.deep_supervision else 1
        self.seg_outputs = nn.ModuleList(
            [nn.Conv2d(w[0], num_classes, 1, bias=False) for _ in range(n_heads)])
        self.apply(_init_he)

    def feature_info(self) -> list[FeatureInfo]:
        """The encoder's feature maps ``x(i, 0)`` by stride (``1, 2, ..., 2**num_pool``)."""
        return [FeatureInfo(2 ** i, c) for i, c in enumerate(self.features)]

    def node(self, i: int, j: int) -> nn.Module:
        """The decoder node computing ``x(i, j)`` (``j >= 1``)."""
        return getattr(self, f"loc{self.num_pool - i - j}")[j - 1]

    def upsampler(self, i: int, j: int) -> nn.Module:
        """The transposed convolution feeding ``x(i, j)`` from ``x(i+1, j-1)``."""
        return getattr(self, f"up{self.num_pool - i - j}")[j - 1]

    def head(self, j: int) -> nn.Module:
        """The 1x1 head reading ``x(0, j)``."""
        return self.seg_outputs[self.num_pool - j]

    def set_prune_level(self, level: int | None) -> None:
        """Evaluate UNet++ L^``level`` from now on (``None``: full depth).

        Raises:
            ValueError: Level outside ``1..num_pool``, or pruning without deep supervision heads.
        """
        self.prune_level = _check_prune_level(self.model_name, level, self.num_pool,
                                              self.deep_supervision)

    def segment(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Nested encoder-decoder.

        Args:
            x: ``(B, in_channels, H, W)``, ``H`` and ``W`` multiples of ``2**num_pool``.

        Returns:
            Training with deep supervision: ``num_pool`` logits ``(B, K, H, W)``, heads on
            ``x(0, L), x(0, L-1), ..., x(0, 1)``. Otherwise ``(B, K, H, W)`` from ``x(0, p)``
            (``p = prune_level`` in eval mode, ``num_pool`` in training).
        """
        ds = self.training and self.deep_supervision
        depth = self.prune_level if not self.training else self.num_pool
        nodes: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(depth + 1):  # encoder x(i, 0), then the anti-diagonal it completes
            nodes[i, 0] = self.conv_blocks_context[i](x if i == 0 else nodes[i - 1, 0])
            for j in range(1, i + 1):
                r = i - j  # node x(r, j) needs x(r+1, j-1), finished on this diagonal
                up = self.upsampler(r, j)(nodes[r + 1, j - 1])  # (B, w_r, H / 2**r, W / 2**r)
                dense = torch.cat([nodes[r, c] for c in range(j)] + [up], 1)  # (B, (j+1) w_r, h, w)
                nodes[r, j] = self.node(r, j)(dense)
        if ds:
            return [self.head(j)(nodes[0, j]) for j in range(self.num_pool, 0, -1)]
        return self.head(depth)(nodes[0, depth])

    def profile_parts(self) -> list[tuple[str, str]]:
        """Parts: encoder (``conv_blocks_context``), decoder (``loc*``, ``up*``), head."""
        return ([("encoder", "conv_blocks_context")]
                + [("decoder", f"{p}{k}") for p in ("loc", "up") for k in range(self.num_pool)]
                + [("head", "seg_outputs")])

    # ------------------------------------------------------------------ foreign weights

    def convert_state_dict(self, weights: ForeignWeights) -> ConvertedWeights:
        """Official ``Generic_UNetPlusPlus`` state dicts load unchanged (official names).

        Without deep supervision this model has only the final head (``seg_outputs.0``); the
        auxiliary heads ``seg_outputs.1..`` of an official file are dropped (logged).
        """
        converted = super().convert_state_dict(weights)
        sd, own = dict(converted.state_dict), self.state_dict()
        aux = [k for k in sd if k.startswith("seg_outputs.") and k not in own
               and k.split(".")[1].isdigit() and int(k.split(".")[1]) < self.num_pool]
        if aux and not self.deep_supervision:
            log.info("%s: auxiliary heads dropped (deep_supervision=False): %s", weights.source,
                     ", ".join(aux))
            for k in aux:
                del sd[k]
        return ConvertedWeights(sd, list(converted.unused))

    def explain_mismatch(self, key: str, file_shape: tuple[int, ...],
                         model_shape: tuple[int, ...]) -> str | None:
        """Input-channel and width mismatches (official widths: base 32, cap 480)."""
        if key.startswith("seg_outputs.") and file_shape[:1] != model_shape[:1]:
            return None  # the generic num_classes message
        if key == "conv_blocks_context.0.blocks.0.conv.weight" and file_shape[0] == model_shape[0]:
            return (f"the file was made for in_channels={file_shape[1]} (this model has "
                    f"{model_shape[1]}); pass in_channels={file_shape[1]}")
        return (f"the file was made with other level widths (this model: "
                f"features={list(self.features)}); "
                "set model.args.features (or base_features/max_features) to the file's")

    def explain_keys(self, keys: Sequence[str]) -> str | None:
        """Missing/unexpected keys usually mean another depth or deep-supervision setting."""
        if any(k.startswith("seg_outputs.") for k in keys) and all(
                k.startswith("seg_outputs.") for k in keys):
            return f"a model with deep_supervision={not self.deep_supervision}"
        return (f"a UNet++ of another depth (this model: num_pool={self.num_pool}) "
                "or another architecture")


def _init_he(module: nn.Module) -> None:
    """nnU-Net's ``InitWeights_He(1e-2)``: Kaiming normal (``a = 0.01``, fan in), zero biases."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------- entry point

#: The official architecture arguments (nnU-Net 2D: base 32, cap 480, 5 pools; the trainer's
#: deep supervision); the defaults of :func:`unet_plusplus`.
ARCH: dict[str, Any] = {
    "base_features": 32,
    "max_features": 480,
    "num_pool": 5,
    "features": None,
    "deep_supervision": True,
    "prune_level": None,
    "norm": "instance",
}


def _check_prune_level(model: str, level: Any, num_pool: int, deep_supervision: bool) -> int:
    """``prune_level`` as an int in ``1..num_pool`` (``None``: ``num_pool``); one-line errors."""
    if level is None:
        return num_pool
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= num_pool:
        number = isinstance(level, (int, float)) and not isinstance(level, bool)
        closest = min(max(int(level), 1), num_pool) if number else num_pool
        raise ValueError(f"prune_level={level!r} is invalid for {model}: it must be an integer in "
                         f"1..num_pool={num_pool} or null (full depth); closest valid: {closest}.")
    if level < num_pool and not deep_supervision:
        raise ValueError(f"prune_level={level} is invalid for {model}: pruning predicts from an "
                         "auxiliary head, which exists only with deep_supervision=true; closest "
                         "valid: null (or set deep_supervision: true).")
    return int(level)


@register_model(name="UNetPlusPlus")
def unet_plusplus(num_classes: int = 9, in_channels: int = 1, img_size: int | Sequence[int] = 224,
                  base_features: int = 32, max_features: int = 480, num_pool: int | None = None,
                  features: Sequence[int] | None = None, deep_supervision: bool = True,
                  prune_level: int | None = None, norm: str = "instance",
                  **unknown: Any) -> UNetPlusPlus:
    """UNet++ (nnU-Net ``Generic_UNetPlusPlus``, 2D); official widths 32, 64, 128, 256, 480, 480.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels.
        img_size: ``H`` or ``(H, W)``, multiples of ``2**num_pool``.
        base_features: Width of level 0; level ``i`` has ``base * 2**i`` ...
        max_features: ... capped at this (nnU-Net 2D: 480).
        num_pool: Number of downsamplings (null: 5, or ``len(features) - 1``).
        features: Explicit widths of levels ``0..num_pool`` (overrides base/max).
        deep_supervision: One head per column; training returns their list (full depth first).
        prune_level: Evaluate the pruned UNet++ L^p from the head on ``x(0, p)`` (null: full).
        norm: ``"instance"`` (official) or ``"batch"``.
        **unknown: Refused with the accepted names.
    """
    name = "UNetPlusPlus"
    check_args(name, unknown, list(ARCH))
    num_classes = check_int(name, "num_classes", num_classes)
    in_channels = check_int(name, "in_channels", in_channels)
    base = check_int(name, "base_features", base_features)
    cap = check_int(name, "max_features", max_features)
    feats = features
    if feats is not None and (isinstance(feats, (str, bytes)) or not isinstance(feats, Sequence)):
        raise ValueError(f"features={feats!r} is invalid for {name}: it must be a list of one "
                         f"width per level 0..num_pool, e.g. {list(nnunet_widths(32, 480, 5))}.")
    if num_pool is None:
        num_pool = 5 if feats is None else len(feats) - 1  # the depth follows given widths
    num_pool = check_int(name, "num_pool", num_pool)
    if feats is None:
        widths = nnunet_widths(base, cap, num_pool)
    else:
        if len(feats) != num_pool + 1:
            raise ValueError(f"features={list(feats)!r} is invalid for {name}: num_pool={num_pool} "
                             f"needs num_pool+1={num_pool + 1} entries (one width per level "
                             f"0..{num_pool}), got {len(feats)}; closest valid: "
                             f"{list(nnunet_widths(feats[0], max(feats), num_pool))} (or omit "
                             "num_pool).")
        widths = tuple(check_int(name, f"features[{n}]", f) for n, f in enumerate(feats))
    ds = deep_supervision
    if not isinstance(ds, bool):
        raise ValueError(f"deep_supervision={ds!r} is invalid for {name}: it must be true or "
                         "false; closest valid: true.")
    prune = _check_prune_level(name, prune_level, num_pool, ds)
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is invalid for {name}: choose one of "
                         f"{', '.join(map(repr, NORMS))}." + did_you_mean(str(norm), NORMS))
    size = check_img_size(name, as_pair(img_size, "img_size"), 2 ** num_pool)
    model = UNetPlusPlus(num_classes=num_classes, in_channels=in_channels, img_size=size,
                         features=widths, deep_supervision=ds,
                         prune_level=None if prune == num_pool else prune, norm=norm)
    model.model_kwargs = {
        "num_classes": num_classes, "in_channels": in_channels, "img_size": size,
        "base_features": base, "max_features": cap, "num_pool": num_pool,
        "features": None if feats is None else widths,
        "deep_supervision": ds, "prune_level": prune_level, "norm": norm,
    }
    return model
