"""Convolution blocks of the cascaded upsampler (CUP)."""

from __future__ import annotations

from torch import nn

__all__ = ["Conv2dReLU"]


class Conv2dReLU(nn.Sequential):
    """``Conv2d (no bias) -> BatchNorm2d -> ReLU``; children ``0``/``1``/``2`` as the official code.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel size.
        padding: Zero padding.
        stride: Stride.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
