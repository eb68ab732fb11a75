"""Attention U-Net: "Attention U-Net: Learning Where to Look for the Pancreas", Oktay et al. 2018.

Paper: https://arxiv.org/abs/1804.03999 — official code: https://github.com/ozan-oktay/Attention-Gated-Networks
(``models/networks/unet_grid_attention_3D.py``, ``models/layers/grid_attention_layer.py``).

The repository has no 2D Attention U-Net network; its ``unet_grid_attention_3D`` with
``attention_dsample=(2, 2, 1)`` run on depth-1 volumes ``(B, C, H, W, 1)`` *is* a 2D network:
(3, 3, 1) kernels, (2, 2, 1) max-pooling and trilinear (2, 2, 1) upsampling act on H and W only
(trilinear on a depth of 1 is bilinear, ``align_corners=False``). This file is that network in
``Conv2d``; its official state dicts load unchanged through
:func:`transunet.weights.load_pretrained` (the converter drops the trailing depth axis of the 5-D
kernels) and reproduce the official logits (``tests/models/test_attention_unet.py``).

Network (widths ``w = [64, 128, 256, 512, 1024] / feature_scale``):

* ``conv1..conv4``: two ``3x3 conv (bias) -> BN -> ReLU`` then 2x2 max-pool; ``center``: the same
  block ``w3 -> w4`` at stride 16;
* ``gating``: ``1x1 conv -> BN -> ReLU`` ``w4 -> w3`` on ``center``: **one gating signal, from the
  bottleneck, for all three gates**;
* ``attentionblock2/3/4`` gate ``conv2/3/4`` with ``inter_channels = in_channels``
  (:class:`~transunet.layers.unet_blocks.GridAttentionGate`); ``conv1`` is not gated;
* ``up_concat4..1``: parameter-free bilinear x2 upsampling of the coarser map, ``cat([skip, up])``,
  two ``conv -> BN -> ReLU``; ``final``: 1x1 conv with bias. Kaiming (fan-in) init, BN weights
  ``N(1, 0.02)``.

Full size (``feature_scale=1``, 1 -> 9 classes): 34,099,468 parameters, 88.05 GFLOPs at 224x224
(FAMILY.md, measured on the official code; the test checks the count).

Differences from the official code:

* ``Conv2d``/``BatchNorm2d``/``MaxPool2d``/bilinear instead of their 3D forms on depth 1 (same
  function; official 5-D weights are converted by :meth:`AttentionUNet.convert_state_dict`).
* The input must be a multiple of 16 (the official decoder pads the skip by an offset that is 0
  exactly then, and pads the wrong axes otherwise).
* ``deep_supervision=True`` (off by default, absent from ``unet_grid_attention_3D``) adds 1x1
  heads ``dsv4/dsv3/dsv2`` on the decoder outputs upsampled bilinearly to the input size, as the
  repository's ``UnetDsv3`` in its CT networks; training mode then returns
  ``[final, dsv2, dsv3, dsv4]``.
* The gate coefficients are not returned by ``forward`` (the official network discards them too);
  :meth:`~transunet.models.base.SegmentationModel.capture_attention` records them (kind ``gate``).
* The paper's CT network gates each skip by the coarser *decoder* feature and adds deep
  supervision; the official ``unet_grid_attention_3D`` reproduced here gates by the bottleneck.
* ``is_deconv=True`` (the official constructor default, which FAMILY.md's measured network and the
  fixtures do not use) upsamples by a 4x4 stride-2 transposed conv ``w_{k+1} -> w_k`` and keeps the
  official ``UnetConv3(in, out)`` widths; the default here is ``False`` (parameter-free upsampling).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transunet.errors import CheckpointError, did_you_mean
from transunet.layers.unet_blocks import GATE_MODES, DoubleConv, GridAttentionGate
from transunet.models.base import (
    FeatureInfo,
    SegmentationModel,
    check_args,
    check_bool,
    check_img_size,
    check_int,
)
from transunet.registry import register_model
from transunet.utils import as_pair
from transunet.weights import ConvertedWeights, ForeignWeights, strip_prefixes

__all__ = ["ATTENTION_UNET_ARGS", "AttentionUNet", "GatingSignal", "UpConcat", "attention_unet"]

#: Widths of the official network before division by ``feature_scale``.
BASE_WIDTHS = (64, 128, 256, 512, 1024)


# ----------------------------------------------------------------------------- blocks


class UpConcat(nn.Module):
    """Decoder step ``up_concatK``: upsample x2, ``cat([skip, up])``, two conv-BN-ReLU.

    Args:
        in_channels: Channels of the coarser map.
        out_channels: Channels of the skip and of the output.
        is_deconv: ``False``: bilinear x2 (no parameters), the block sees ``in + out`` channels;
            ``True``: 4x4 stride-2 transposed conv ``in -> out``, the block sees ``2 * out``
            channels (the official ``UnetConv3(in, out)``, which assumes ``in == 2 * out``).
        is_batchnorm: BatchNorm after each convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        is_deconv: bool = False,
        is_batchnorm: bool = True,
    ) -> None:
        super().__init__()
        norm = "batch" if is_batchnorm else None
        if is_deconv:
            self.conv = DoubleConv(in_channels, out_channels, norm=norm)
            self.up: nn.Module | None = nn.ConvTranspose2d(
                in_channels, out_channels, 4, stride=2, padding=1
            )
        else:
            self.conv = DoubleConv(in_channels + out_channels, out_channels, norm=norm)
            self.up = None

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Fuse.

        Args:
            skip: ``(B, out_channels, 2h, 2w)``.
            x: ``(B, in_channels, h, w)``.

        Returns:
            ``(B, out_channels, 2h, 2w)``.
        """
        if self.up is not None:
            up = self.up(x)
        else:
            up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, up], dim=1))


class GatingSignal(nn.Module):
    """Gating signal: ``conv1`` = ``1x1 conv -> BN -> ReLU`` (official ``UnetGridGatingSignal3``).

    Args:
        in_channels: Channels of the bottleneck.
        out_channels: Channels of the signal.
        is_batchnorm: BatchNorm after the convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, is_batchnorm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1)]
        if is_batchnorm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        self.conv1 = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, h, w) -> (B, out_channels, h, w)``."""
        return self.conv1(x)


def init_agn_(module: nn.Module) -> None:
    """The official init: Kaiming normal (fan-in) conv weights, BN weights ``N(1, 0.02)``, bias 0.

    Convolution biases keep PyTorch's default, as in the official ``weights_init_kaiming``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- model


class AttentionUNet(SegmentationModel):
    """The official grid-attention U-Net in 2D (see the module docstring).

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels.
        img_size: ``H`` or ``(H, W)``, multiples of 16.
        feature_scale: Divisor of the widths ``(64, 128, 256, 512, 1024)`` (official argument;
            1 = full size, 4 = the repository's configs).
        attention_dsample: Kernel/stride of each gate's ``theta`` (official ``(2, 2, 1)`` -> 2).
        nonlocal_mode: Gate variant, one of :data:`~transunet.layers.unet_blocks.GATE_MODES`.
        is_deconv: Transposed-conv upsampling instead of bilinear (see :class:`UpConcat`).
        is_batchnorm: BatchNorm in the conv blocks and the gating signal.
        deep_supervision: Add the auxiliary heads ``dsv4/dsv3/dsv2``.
    """

    attention_kind = "gate"
    fixed_input_size = False

    def __init__(
        self,
        num_classes: int = 9,
        in_channels: int = 1,
        img_size: int | Sequence[int] = 224,
        feature_scale: int = 1,
        attention_dsample: int | Sequence[int] = 2,
        nonlocal_mode: str = "concatenation",
        is_deconv: bool = False,
        is_batchnorm: bool = True,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, img_size=img_size, size_multiple=16
        )
        w = [c // feature_scale for c in BASE_WIDTHS]
        self.widths = tuple(w)
        norm = "batch" if is_batchnorm else None
        self.conv1 = DoubleConv(in_channels, w[0], norm=norm)
        self.conv2 = DoubleConv(w[0], w[1], norm=norm)
        self.conv3 = DoubleConv(w[1], w[2], norm=norm)
        self.conv4 = DoubleConv(w[2], w[3], norm=norm)
        self.center = DoubleConv(w[3], w[4], norm=norm)
        self.gating = GatingSignal(w[4], w[3], is_batchnorm)
        ds = as_pair(attention_dsample, "attention_dsample")
        self.attentionblock2 = GridAttentionGate(
            w[1], w[3], inter_channels=w[1], sub_sample=ds, mode=nonlocal_mode
        )
        self.attentionblock3 = GridAttentionGate(
            w[2], w[3], inter_channels=w[2], sub_sample=ds, mode=nonlocal_mode
        )
        self.attentionblock4 = GridAttentionGate(
            w[3], w[3], inter_channels=w[3], sub_sample=ds, mode=nonlocal_mode
        )
        self.up_concat4 = UpConcat(w[4], w[3], is_deconv, is_batchnorm)
        self.up_concat3 = UpConcat(w[3], w[2], is_deconv, is_batchnorm)
        self.up_concat2 = UpConcat(w[2], w[1], is_deconv, is_batchnorm)
        self.up_concat1 = UpConcat(w[1], w[0], is_deconv, is_batchnorm)
        self.final = nn.Conv2d(w[0], num_classes, 1)
        self.deep_supervision = bool(deep_supervision)
        if self.deep_supervision:
            self.dsv4 = nn.Conv2d(w[3], num_classes, 1)
            self.dsv3 = nn.Conv2d(w[2], num_classes, 1)
            self.dsv2 = nn.Conv2d(w[1], num_classes, 1)
        init_agn_(self)

    def feature_info(self) -> list[FeatureInfo]:
        """The encoder's outputs by stride: ``conv1..conv4`` (strides 1-8) and ``center`` (16)."""
        return [FeatureInfo(2**i, c) for i, c in enumerate(self.widths)]

    def segment(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Encode, gate the skips by the bottleneck, decode.

        Args:
            x: ``(B, in_channels, H, W)``, ``H`` and ``W`` multiples of 16.

        Returns:
            Logits ``(B, num_classes, H, W)``; with deep supervision in training mode
            ``[final, dsv2, dsv3, dsv4]``, all ``(B, num_classes, H, W)``.
        """
        c1 = self.conv1(x)  # (B, w0, H, W)
        c2 = self.conv2(F.max_pool2d(c1, 2))  # (B, w1, H/2, W/2)
        c3 = self.conv3(F.max_pool2d(c2, 2))  # (B, w2, H/4, W/4)
        c4 = self.conv4(F.max_pool2d(c3, 2))  # (B, w3, H/8, W/8)
        center = self.center(F.max_pool2d(c4, 2))  # (B, w4, H/16, W/16)
        g = self.gating(center)  # (B, w3, H/16, W/16)
        g4, _ = self.attentionblock4(c4, g)
        g3, _ = self.attentionblock3(c3, g)
        g2, _ = self.attentionblock2(c2, g)
        up4 = self.up_concat4(g4, center)  # (B, w3, H/8, W/8)
        up3 = self.up_concat3(g3, up4)  # (B, w2, H/4, W/4)
        up2 = self.up_concat2(g2, up3)  # (B, w1, H/2, W/2)
        up1 = self.up_concat1(c1, up2)  # (B, w0, H, W)
        out = self.final(up1)
        if not (self.deep_supervision and self.training):
            return out
        size = out.shape[2:]
        aux = [
            F.interpolate(head(feat), size=size, mode="bilinear", align_corners=False)
            for head, feat in ((self.dsv2, up2), (self.dsv3, up3), (self.dsv4, up4))
        ]
        return [out, *aux]

    def profile_parts(self) -> list[tuple[str, str]]:
        """``encoder`` (conv1-4, center), ``gates`` (gating, 3 gates), ``decoder``, ``head``."""
        parts = [("encoder", p) for p in ("conv1", "conv2", "conv3", "conv4", "center")]
        parts += [
            ("gates", p)
            for p in ("gating", "attentionblock2", "attentionblock3", "attentionblock4")
        ]
        parts += [("decoder", f"up_concat{k}") for k in (4, 3, 2, 1)]
        parts += [("head", p) for p in ("final", "dsv2", "dsv3", "dsv4")]
        return parts

    # ------------------------------------------------------------------ weights

    def convert_state_dict(self, weights: ForeignWeights) -> ConvertedWeights:
        """Official ``unet_grid_attention_3D`` state dicts (5-D kernels ``(..., k, k, 1)``) or ours.

        Drops the trailing depth axis of 5-D tensors; a 5-D kernel with depth > 1 is a genuinely
        3D network and is refused.

        Raises:
            CheckpointError: ``.npz`` files and 3D kernels.
        """
        if weights.kind == "npz":
            raise CheckpointError(
                f"{weights.source} is a Google ViT .npz, which {self.model_name} cannot use; "
                "pass an Attention-Gated-Networks state dict or a transunet checkpoint."
            )
        out: dict[str, torch.Tensor] = {}
        for key, t in strip_prefixes(weights.tensors).items():
            if isinstance(t, torch.Tensor) and t.ndim == 5:
                if t.shape[-1] != 1:
                    raise CheckpointError(
                        f"{weights.source}: '{key}' has shape {tuple(t.shape)}, a 3D kernel of "
                        f"depth "
                        f"{t.shape[-1]}; only 2D-equivalent networks (kernels (k, k, 1), "
                        "attention_dsample=(2, 2, 1)) convert to the 2D AttentionUNet."
                    )
                t = t[..., 0]
            out[key] = t
        return ConvertedWeights(out, [])

    def explain_mismatch(
        self, key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]
    ) -> str | None:
        """Name the width argument that differs."""
        if (
            file_shape
            and model_shape
            and file_shape[0] != model_shape[0]
            and not key.startswith(("final", "dsv"))
        ):
            ratio = model_shape[0] / file_shape[0]
            fs = self.model_kwargs.get("feature_scale", 1)
            guess = fs * ratio
            if guess >= 1 and float(guess).is_integer():
                return f"the file was made with feature_scale={int(guess)} (this model has {fs})"
        return None

    def explain_keys(self, keys: Sequence[str]) -> str | None:
        """Deep-supervision heads present on one side only."""
        if keys and all(k.startswith(("dsv2", "dsv3", "dsv4")) for k in keys):
            return "a model with the other deep_supervision setting (dsv2/dsv3/dsv4 heads)"
        return None


# ----------------------------------------------------------------------------- entry point

#: Architecture arguments of ``AttentionUNet`` (``model.args``) with their defaults.
ATTENTION_UNET_ARGS: dict[str, Any] = {
    "feature_scale": 1,
    "attention_dsample": 2,
    "nonlocal_mode": "concatenation",
    "is_deconv": False,
    "is_batchnorm": True,
    "deep_supervision": False,
}


@register_model(name="AttentionUNet")
def attention_unet(
    num_classes: int = 9, in_channels: int = 1, img_size: int | Sequence[int] = 224, **args: Any
) -> AttentionUNet:
    """Attention U-Net (official grid-attention network in 2D); ``feature_scale=1``: 34.10 M params.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels.
        img_size: ``H`` or ``(H, W)``, multiples of 16.
        **args: ``model.args``, see :data:`ATTENTION_UNET_ARGS` and :class:`AttentionUNet`.

    Raises:
        ValueError: One line naming the argument, the rule and the closest valid value.
    """
    name = "AttentionUNet"
    check_args(name, args, list(ATTENTION_UNET_ARGS))
    a = {**ATTENTION_UNET_ARGS, **args}
    num_classes = check_int(name, "num_classes", num_classes)
    in_channels = check_int(name, "in_channels", in_channels)
    fs = check_int(name, "feature_scale", a["feature_scale"])
    if 64 % fs != 0:
        closest = min((d for d in (1, 2, 4, 8, 16, 32, 64)), key=lambda d: abs(d - fs))
        raise ValueError(
            f"feature_scale={fs} is invalid for {name}: it must divide 64 (widths 64..1024 / "
            f"feature_scale); closest valid: {closest}."
        )
    try:
        ds = as_pair(a["attention_dsample"], "attention_dsample")
    except ValueError:
        raise ValueError(
            f"attention_dsample={a['attention_dsample']!r} is invalid for {name}: give an int or "
            "(h, w) of positive ints; closest valid: 2."
        ) from None
    for v in ds:
        check_int(name, "attention_dsample", v)
    mode = a["nonlocal_mode"]
    if mode not in GATE_MODES:
        raise ValueError(
            f"nonlocal_mode={mode!r} is invalid for {name}: choose one of "
            f"{', '.join(map(repr, GATE_MODES))}." + did_you_mean(str(mode), GATE_MODES)
        )
    flags = {
        k: check_bool(name, k, a[k]) for k in ("is_deconv", "is_batchnorm", "deep_supervision")
    }
    size = check_img_size(name, img_size, 16)
    model = AttentionUNet(
        num_classes=num_classes,
        in_channels=in_channels,
        img_size=size,
        feature_scale=fs,
        attention_dsample=ds,
        nonlocal_mode=mode,
        **flags,
    )
    model.model_kwargs = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "img_size": size,
        "feature_scale": fs,
        "attention_dsample": ds,
        "nonlocal_mode": mode,
        **flags,
    }
    return model
