"""ResNetV2 with weight-standardized convolutions and GroupNorm: the CNN of hybrid TransUNet.

Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", arXiv 1912.11370;
used as the hybrid ViT backbone in Dosovitskiy et al., arXiv 2010.11929 and as the encoder of
TransUNet (Chen et al., arXiv 2102.04306).

Reproduces the official TransUNet ``vit_seg_modeling_resnet_skip.py`` computation:

* root: StdConv 7x7/2 (3-channel kernel, folded for 1-channel input) + GroupNorm(32, eps 1e-6) +
  ReLU, then max-pool 3x3/2 *without* padding (224 -> 112 -> 55);
* bottleneck units conv -> GN -> ReLU (the stride sits on the 3x3 conv); the projection shortcut
  uses ``GroupNorm(cout, cout)`` with PyTorch's default eps 1e-5, as in the official code;
* skip features at strides 2, 4 and 8; a skip that the pooling left short (55 instead of 56) is
  zero-padded at the bottom/right for the decoder only; the trunk continues unpadded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from transunet.layers.std_conv import StdConv2d
from transunet.models.base import FeatureInfo
from transunet.weights import npz_conv, npz_vec

__all__ = ["PreActBottleneck", "ResNetV2", "google_resnet_key_map"]


class PreActBottleneck(nn.Module):
    """Bottleneck unit of the official hybrid ResNetV2 (names ``conv1..3``, ``gn1..3``).

    Args:
        cin: Input channels.
        cout: Output channels.
        cmid: Bottleneck channels.
        stride: Stride of the 3x3 convolution (and of the projection shortcut).
    """

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.gn1 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the unit.

        Args:
            x: ``(B, cin, H, W)``.

        Returns:
            ``(B, cout, H / stride, W / stride)`` (rounded up).
        """
        residual = x if self.downsample is None else self.gn_proj(self.downsample(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(residual + y)


class ResNetV2(nn.Module):
    """Three-stage ResNetV2 encoder (output stride 16) reporting skip features by stride.

    Args:
        block_units: Units per stage, e.g. ``(3, 4, 9)`` for R50.
        width_factor: Multiplier of the base width 64 (the width must stay a multiple of 32).
        in_channels: Channels of the input image (>= 1); 1 folds the 3-channel root kernel, other
            counts than 1 and 3 store an ``in_channels`` root kernel (RGB weights are adapted).

    Attributes:
        out_channels: Channels of the stride-16 output (``16 * width``).
        skip_strides: Strides of the returned skips, deepest first: ``(8, 4, 2)``.
        skip_channels: Channels of those skips: ``(8 * width, 4 * width, width)``.
        feature_info: The skips as :class:`~transunet.models.base.FeatureInfo` (stride, channels),
            deepest first.
    """

    def __init__(self, block_units: Sequence[int], width_factor: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        width = int(64 * width_factor)
        if width % 32 != 0:
            raise ValueError(
                f"ResNetV2 width {width} (64 x width_factor={width_factor}) must be a multiple of 32 "
                "for GroupNorm(32); use width_factor 0.5, 1, 1.5, ..."
            )
        if len(block_units) != 3 or min(block_units) < 1:
            raise ValueError(f"block_units={tuple(block_units)} must be three positive counts, e.g. (3, 4, 9).")
        self.width = width
        self.out_channels = width * 16
        self.skip_strides = (8, 4, 2)
        self.skip_channels = (width * 8, width * 4, width)
        self.feature_info = [FeatureInfo(s, c) for s, c in zip(self.skip_strides, self.skip_channels)]
        self.root = nn.Sequential(OrderedDict([
            ("conv", StdConv2d.rgb_input(in_channels, width, 7, stride=2, padding=3, bias=False)),
            ("gn", nn.GroupNorm(32, width, eps=1e-6)),
            ("relu", nn.ReLU(inplace=True)),
        ]))
        stages = []
        cin = width
        for i, (units, mult) in enumerate(zip(block_units, (4, 8, 16))):
            cout, cmid, stride = width * mult, width * mult // 4, 1 if i == 0 else 2
            blocks = [("unit1", PreActBottleneck(cin, cout, cmid, stride))]
            blocks += [(f"unit{j}", PreActBottleneck(cout, cout, cmid)) for j in range(2, units + 1)]
            stages.append((f"block{i + 1}", nn.Sequential(OrderedDict(blocks))))
            cin = cout
        self.body = nn.Sequential(OrderedDict(stages))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode.

        Args:
            x: ``(B, in_channels, H, W)`` with ``H``, ``W`` divisible by 16.

        Returns:
            ``(features (B, 16*width, H/16, W/16), skips)`` where ``skips`` are
            ``[(B, 8w, H/8, W/8), (B, 4w, H/4, W/4), (B, w, H/2, W/2)]``.
        """
        H, W = x.shape[-2:]
        x = self.root(x)  # (B, w, H/2, W/2)
        skips = [x]
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0)  # (B, w, H/4 - 1, W/4 - 1)
        for i, stage in enumerate(list(self.body)[:-1]):
            x = stage(x)
            th, tw = H // (4 * (i + 1)), W // (4 * (i + 1))
            ph, pw = th - x.shape[-2], tw - x.shape[-1]
            # zero-pad bottom/right (official quirk); the trunk itself continues unpadded
            skips.append(F.pad(x, (0, pw, 0, ph)) if (ph or pw) else x)
        x = self.body[-1](x)  # (B, 16w, H/16, W/16)
        return x, skips[::-1]


# ----------------------------------------------------------------------------- Google .npz


def google_resnet_key_map(prefix: str, resnet: ResNetV2) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """Map the keys of a :class:`ResNetV2` to the BiT/R50+ViT Google ``.npz`` keys.

    Args:
        prefix: Module path of the ResNet in the model with a trailing dot
            (``"transformer.embeddings.hybrid_model."`` in TransUNet).
        resnet: The ResNet (its units decide which projection shortcuts exist).

    Returns:
        ``{model key: (npz key, transform)}`` (``conv_root``, ``gn_root``, ``blockN/unitM/...``).
    """
    m: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
        prefix + "root.conv.weight": ("conv_root/kernel", npz_conv),
        prefix + "root.gn.weight": ("gn_root/scale", npz_vec),
        prefix + "root.gn.bias": ("gn_root/bias", npz_vec),
    }
    for bname, block in resnet.body.named_children():
        for uname, unit in block.named_children():
            ours, g = f"{prefix}body.{bname}.{uname}.", f"{bname}/{uname}/"
            for j in (1, 2, 3):
                m[f"{ours}conv{j}.weight"] = (f"{g}conv{j}/kernel", npz_conv)
                m[f"{ours}gn{j}.weight"] = (f"{g}gn{j}/scale", npz_vec)
                m[f"{ours}gn{j}.bias"] = (f"{g}gn{j}/bias", npz_vec)
            if unit.downsample is not None:
                m[f"{ours}downsample.weight"] = (f"{g}conv_proj/kernel", npz_conv)
                m[f"{ours}gn_proj.weight"] = (f"{g}gn_proj/scale", npz_vec)
                m[f"{ours}gn_proj.bias"] = (f"{g}gn_proj/bias", npz_vec)
    return m
