"""Blocks of the U-Net family: double 3x3 convolutions and the additive grid attention gate.

* :class:`DoubleConv` is the two ``3x3 conv (padded) -> norm -> ReLU`` layers of every U-Net level
  (Ronneberger et al. 2015, with normalisation as in all modern ports). Its children
  ``conv1``/``conv2`` are ``Sequential(conv, norm, ReLU)`` (``Sequential(conv, ReLU)`` without a
  norm), the layout of Attention-Gated-Networks' ``UnetConv3``/``unetConv2``, so official state
  dicts load by name.
* :class:`GridAttentionGate` is the additive attention gate of Attention U-Net (Oktay et al. 2018,
  https://arxiv.org/abs/1804.03999) as the official ``_GridAttentionBlockND`` computes it in 2D
  (``GridAttentionBlock2D``; the 3D block on depth-1 input is the same function). Shared by
  Attention U-Net and R50-AttnUNet.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transunet.layers.attention import RecordsAttention
from transunet.utils import as_pair

__all__ = ["GATE_MODES", "NORMS", "DoubleConv", "GridAttentionGate", "make_norm"]

#: Normalisations :func:`make_norm` builds (``None``: no normalisation, the 2015 paper's layout).
NORMS = ("batch", "instance", "group")
#: Gate variants of the official code: ``concatenation`` (the paper's sigmoid gate),
#: ``concatenation_debug`` (softplus instead of ReLU before ``psi``), ``concatenation_residual``
#: (softmax over positions instead of the sigmoid).
GATE_MODES = ("concatenation", "concatenation_debug", "concatenation_residual")


def make_norm(kind: str | None, channels: int) -> nn.Module | None:
    """A 2D normalisation layer with affine parameters, or ``None``.

    Args:
        kind: ``"batch"`` (``BatchNorm2d``), ``"instance"`` (``InstanceNorm2d``, affine, no running
            statistics), ``"group"`` (``GroupNorm`` with ``gcd(32, channels)`` groups) or ``None``.
        channels: Channels normalised.
    """
    if kind is None:
        return None
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(
        f"norm={kind!r} is not valid; choose one of {', '.join(map(repr, NORMS))} or None."
    )


def _conv_norm_relu(
    in_channels: int, out_channels: int, norm: str | None, bias: bool
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)]
    n = make_norm(norm, out_channels)
    if n is not None:
        layers.append(n)
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DoubleConv(nn.Module):
    """Two padded ``3x3 conv -> norm -> ReLU`` layers (``conv1``, ``conv2``).

    Args:
        in_channels: Input channels.
        out_channels: Output channels of both convolutions.
        norm: See :func:`make_norm` (``None``: convolution and ReLU only).
        bias: Convolution bias (redundant before a norm; the official Attention U-Net keeps it).
    """

    def __init__(
        self, in_channels: int, out_channels: int, norm: str | None = "batch", bias: bool = True
    ) -> None:
        super().__init__()
        self.conv1 = _conv_norm_relu(in_channels, out_channels, norm, bias)
        self.conv2 = _conv_norm_relu(out_channels, out_channels, norm, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W) -> (B, out_channels, H, W)``."""
        return self.conv2(self.conv1(x))


class GridAttentionGate(RecordsAttention):
    """Grid attention gate ``W(alpha * x)``, ``alpha = sigma(psi(ReLU(theta x + phi g)))``.

    As the official ``GridAttentionBlock2D``:

    * ``theta``: conv with kernel = stride = ``sub_sample`` and **no bias**, ``x`` -> inter channels
      at ``x``'s resolution divided by ``sub_sample``;
    * ``phi``: 1x1 conv (bias) on the gating signal, resized bilinearly (``align_corners=False``)
      to ``theta x``'s grid;
    * ``psi``: 1x1 conv (bias) to one channel; ``alpha`` (sigmoid; softmax over positions in mode
      ``concatenation_residual``) is resized bilinearly to ``x``'s grid;
    * ``W``: 1x1 conv (bias) + BatchNorm applied to ``alpha * x``.

    Module names equal the official ones (``W.0``, ``W.1``, ``theta``, ``phi``, ``psi``).
    While recording (:meth:`~transunet.models.base.SegmentationModel.capture_attention`) the gate
    appends ``alpha`` ``(B, 1, H, W)`` at ``x``'s resolution.

    Args:
        in_channels: Channels of the gated feature ``x``.
        gating_channels: Channels of the gating signal ``g``.
        inter_channels: Channels of ``theta x``/``phi g`` (default ``in_channels // 2``, min 1).
        sub_sample: Kernel and stride of ``theta`` (int or pair).
        mode: One of :data:`GATE_MODES`.
    """

    def __init__(
        self,
        in_channels: int,
        gating_channels: int,
        inter_channels: int | None = None,
        sub_sample: int | tuple[int, int] = 2,
        mode: str = "concatenation",
    ) -> None:
        super().__init__()
        if mode not in GATE_MODES:
            raise ValueError(
                f"mode={mode!r} is not valid; choose one of {', '.join(map(repr, GATE_MODES))}."
            )
        inter = inter_channels if inter_channels is not None else max(in_channels // 2, 1)
        factor = as_pair(sub_sample, "sub_sample")
        self.mode = mode
        self.W = nn.Sequential(nn.Conv2d(in_channels, in_channels, 1), nn.BatchNorm2d(in_channels))
        self.theta = nn.Conv2d(in_channels, inter, factor, stride=factor, bias=False)
        self.phi = nn.Conv2d(gating_channels, inter, 1)
        self.psi = nn.Conv2d(inter, 1, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate ``x`` by ``g``.

        Args:
            x: Skip feature ``(B, in_channels, H, W)``.
            g: Gating signal ``(B, gating_channels, h, w)`` (any grid; resized to ``theta x``).

        Returns:
            ``(W(alpha * x), alpha)``: ``(B, in_channels, H, W)`` and ``(B, 1, H, W)``.
        """
        theta_x = self.theta(x)  # (B, I, H/s, W/s)
        phi_g = F.interpolate(
            self.phi(g), size=theta_x.shape[2:], mode="bilinear", align_corners=False
        )
        if self.mode == "concatenation_debug":
            f = F.softplus(theta_x + phi_g)
        else:
            f = F.relu(theta_x + phi_g)
        score = self.psi(f)  # (B, 1, H/s, W/s)
        if self.mode == "concatenation_residual":
            b = score.shape[0]
            alpha = F.softmax(score.reshape(b, 1, -1), dim=2).reshape(score.shape)
        else:
            alpha = torch.sigmoid(score)
        alpha = F.interpolate(
            alpha, size=x.shape[2:], mode="bilinear", align_corners=False
        )  # (B, 1, H, W)
        if self.recording:
            self.record(alpha)
        return self.W(alpha * x), alpha
