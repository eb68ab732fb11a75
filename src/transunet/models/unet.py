"""U-Net: "U-Net: Convolutional Networks for Biomedical Image Segmentation" (Ronneberger 2015).

Paper: https://arxiv.org/abs/1505.04597 — the official code is Caffe only; there is no official
PyTorch U-Net and no parity fixture. This is the standard modern 2D form:

* each level: two padded ``3x3 conv -> norm -> ReLU``
  (:class:`~transunet.layers.unet_blocks.DoubleConv`), widths ``features`` (default 64, 128,
  256, 512, 1024; depth = ``len(features)``), 2x2 max-pool between levels;
* dropout (``dropout``) at the end of the contracting path (on the bottleneck), as the paper;
* decoder: upsampling x2 halving the channels — a 2x2 stride-2 transposed conv
  (``upsample="deconv"``, the paper's "up-convolution") or bilinear x2 (``align_corners=False``)
  followed by a 1x1 conv (``upsample="bilinear"``) — ``cat([skip, up])``, two
  ``conv -> norm -> ReLU``;
* ``head``: 1x1 conv to ``num_classes``.

Parameters at 224x224, 1 -> 9 classes (parameter counts do not depend on the input size):

============================================  ============
Layout                                        Parameters
============================================  ============
paper layer list (no norm, conv bias)          31,031,113
this model, ``norm=None`` (paper layout)       31,031,113
this model, default (``norm="batch"``)         31,037,001
this model, ``upsample="bilinear"``, batch     28,948,041
============================================  ============

With a norm the 3x3 convolutions have no bias (it would be cancelled by the norm); BN's two affine
vectors replace it, +5,888 parameters over the paper (the same count as milesial/Pytorch-UNet).

Differences from the paper: padded convolutions (output size = input size, no crop), a norm
after each 3x3 convolution (``norm=None`` restores the paper's layout), no overlap-tile
strategy or weighted loss (the package's training recipe applies).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transunet.errors import did_you_mean
from transunet.layers.unet_blocks import NORMS, DoubleConv
from transunet.models.base import (
    FeatureInfo,
    SegmentationModel,
    check_args,
    check_img_size,
    check_int,
    check_rate,
)
from transunet.registry import register_model

__all__ = ["UNET_ARGS", "UPSAMPLE_MODES", "UNet", "UNetDecoderBlock", "UNetEncoder", "unet"]

#: Decoder upsampling options.
UPSAMPLE_MODES = ("deconv", "bilinear")


# ----------------------------------------------------------------------------- blocks


class UNetEncoder(nn.Module):
    """Contracting path: ``levels.0`` at stride 1, then max-pool + :class:`DoubleConv` per level.

    Args:
        in_channels: Input channels.
        features: Widths by level (stride ``2**i`` for level ``i``).
        norm: See :func:`~transunet.layers.unet_blocks.make_norm`.
        dropout: Dropout on the deepest level's output.
    """

    def __init__(
        self, in_channels: int, features: Sequence[int], norm: str | None, dropout: float
    ) -> None:
        super().__init__()
        chans = [in_channels, *features]
        self.levels = nn.ModuleList(
            DoubleConv(chans[i], chans[i + 1], norm=norm, bias=norm is None)
            for i in range(len(features))
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.feature_info = [FeatureInfo(2**i, c) for i, c in enumerate(features)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, C, H, W)`` -> one map per level, ``(B, features[i], H / 2**i, W / 2**i)``."""
        feats = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        feats[-1] = self.dropout(feats[-1])
        return feats


class UNetDecoderBlock(nn.Module):
    """Upsample x2 to ``skip_channels``, ``cat([skip, up])``, two ``conv -> norm -> ReLU``.

    Args:
        in_channels: Channels of the coarser map.
        skip_channels: Channels of the skip (also the upsampled and the output channels).
        norm: See :func:`~transunet.layers.unet_blocks.make_norm`.
        upsample: ``"deconv"`` (2x2 stride-2 transposed conv) or ``"bilinear"`` (+ 1x1 conv).
    """

    def __init__(
        self, in_channels: int, skip_channels: int, norm: str | None, upsample: str
    ) -> None:
        super().__init__()
        if upsample == "deconv":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, skip_channels, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, skip_channels, 1),
            )
        self.conv = DoubleConv(2 * skip_channels, skip_channels, norm=norm, bias=norm is None)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``(B, in, h, w)``, ``(B, skip, 2h, 2w)`` -> ``(B, skip, 2h, 2w)``."""
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


# ----------------------------------------------------------------------------- model


class UNet(SegmentationModel):
    """U-Net (see the module docstring).

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels.
        img_size: ``H`` or ``(H, W)``, multiples of ``2 ** (len(features) - 1)``.
        features: Widths by level, at least two.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``None`` (paper: no norm, conv bias).
        dropout: Dropout at the end of the contracting path.
        upsample: ``"deconv"`` or ``"bilinear"``.
    """

    fixed_input_size = False

    def __init__(
        self,
        num_classes: int = 9,
        in_channels: int = 1,
        img_size: int | Sequence[int] = 224,
        features: Sequence[int] = (64, 128, 256, 512, 1024),
        norm: str | None = "batch",
        dropout: float = 0.0,
        upsample: str = "deconv",
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            img_size=img_size,
            size_multiple=2 ** (len(features) - 1),
        )
        self.encoder = UNetEncoder(in_channels, features, norm, dropout)
        info = self.encoder.feature_info
        self.decoder = nn.ModuleList(
            UNetDecoderBlock(info[i + 1].channels, info[i].channels, norm, upsample)
            for i in reversed(range(len(info) - 1))
        )
        self.head = nn.Conv2d(info[0].channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Encode and decode.

        Args:
            x: ``(B, in_channels, H, W)``, ``H`` and ``W`` multiples of ``2 ** (depth - 1)``.

        Returns:
            Logits ``(B, num_classes, H, W)``.
        """
        *skips, y = self.encoder(x)  # skips by stride 1, 2, ...; y at the deepest stride
        for block, skip in zip(self.decoder, reversed(skips)):
            y = block(y, skip)  # (B, C_skip, H_skip, W_skip)
        return self.head(y)

    def profile_parts(self) -> list[tuple[str, str]]:
        """``encoder``, ``decoder``, ``head``."""
        return [("encoder", "encoder"), ("decoder", "decoder"), ("head", "head")]


# ----------------------------------------------------------------------------- entry point

#: Architecture arguments of ``UNet`` (``model.args``) with their defaults.
UNET_ARGS: dict[str, Any] = {
    "features": (64, 128, 256, 512, 1024),
    "norm": "batch",
    "dropout": 0.0,
    "upsample": "deconv",
}


@register_model(name="UNet")
def unet(
    num_classes: int = 9, in_channels: int = 1, img_size: int | Sequence[int] = 224, **args: Any
) -> UNet:
    """U-Net, 64..1024, BatchNorm, transposed-conv upsampling: 31.04 M parameters (1 -> 9 classes).

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels.
        img_size: ``H`` or ``(H, W)``, multiples of ``2 ** (len(features) - 1)``.
        **args: ``model.args``, see :data:`UNET_ARGS` and :class:`UNet`.

    Raises:
        ValueError: One line naming the argument, the rule and the closest valid value.
    """
    name = "UNet"
    check_args(name, args, list(UNET_ARGS))
    a = {**UNET_ARGS, **args}
    num_classes = check_int(name, "num_classes", num_classes)
    in_channels = check_int(name, "in_channels", in_channels)
    feats = a["features"]
    if isinstance(feats, (str, bytes)) or not isinstance(feats, Sequence) or len(feats) < 2:
        raise ValueError(
            f"features={feats!r} is invalid for {name}: give a list of at least 2 widths "
            "(one per level); closest valid: [64, 128, 256, 512, 1024]."
        )
    feats = tuple(check_int(name, "features", f) for f in feats)
    norm = a["norm"]
    if norm == "none":
        norm = None
    if norm is not None and norm not in NORMS:
        raise ValueError(
            f"norm={norm!r} is invalid for {name}: choose one of {', '.join(map(repr, NORMS))} "
            "or null." + did_you_mean(str(norm), NORMS)
        )
    dropout = check_rate(name, "dropout", a["dropout"])
    up = a["upsample"]
    if up not in UPSAMPLE_MODES:
        raise ValueError(
            f"upsample={up!r} is invalid for {name}: choose one of "
            f"{', '.join(map(repr, UPSAMPLE_MODES))}." + did_you_mean(str(up), UPSAMPLE_MODES)
        )
    size = check_img_size(name, img_size, 2 ** (len(feats) - 1))
    model = UNet(
        num_classes=num_classes,
        in_channels=in_channels,
        img_size=size,
        features=feats,
        norm=norm,
        dropout=dropout,
        upsample=up,
    )
    model.model_kwargs = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "img_size": size,
        "features": feats,
        "norm": norm,
        "dropout": dropout,
        "upsample": up,
    }
    return model
