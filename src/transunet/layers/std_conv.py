"""Weight-standardized convolution and input-channel folding.

Big Transfer (BiT) ResNets, and therefore the hybrid encoder of TransUNet, standardize every
convolution kernel per output channel before use (Qiao et al., "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization", arXiv 1903.10520).

The first convolution of a model always keeps a 3-channel kernel (the layout of the pretrained
weights). A 1-channel model *folds* its input channels: it convolves the single input channel with
the sum of the (standardized) kernel over its input channels. That is exactly what the official
implementation computes when it repeats a grey image to three channels, without the repeat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FoldConv2d", "StdConv2d", "fold_kernel", "standardize_kernel"]


def standardize_kernel(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardize a conv kernel to zero mean, unit variance per output channel.

    Args:
        weight: Kernel ``(out, in, kh, kw)``.
        eps: Added to the (biased) variance before the square root.

    Returns:
        The standardized kernel, same shape.
    """
    var, mean = torch.var_mean(weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
    return (weight - mean) / torch.sqrt(var + eps)


def fold_kernel(weight: torch.Tensor, input_channels: int) -> torch.Tensor:
    """Sum a kernel over its input channels when the input has one channel.

    ``conv(x.repeat(1, C, 1, 1), w) == conv(x, w.sum(1, keepdim=True))`` for a 1-channel ``x``.

    Args:
        weight: Kernel ``(out, C, kh, kw)``.
        input_channels: Channels of the actual input (1 folds, ``C`` leaves the kernel unchanged).

    Returns:
        ``(out, input_channels, kh, kw)`` kernel.
    """
    if input_channels == weight.shape[1]:
        return weight
    if input_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ValueError(
        f"input_channels={input_channels} does not fit a kernel with {weight.shape[1]} input "
        "channels; use 1 (folded) or the kernel's channel count."
    )


class FoldConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose kernel keeps ``in_channels`` channels but may read a 1-channel input.

    Args:
        in_channels: Channels of the stored kernel (3 for pretrained RGB layouts).
        out_channels: Output channels.
        kernel_size: Kernel size.
        input_channels: Channels of the input actually fed (1 folds the kernel, default: no fold).
        **kwargs: Forwarded to ``nn.Conv2d`` (stride, padding, bias, ...).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        input_channels: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, **kwargs)  # type: ignore[arg-type]
        self.input_channels = int(input_channels if input_channels is not None else in_channels)
        if self.input_channels not in (1, in_channels):
            raise ValueError(
                f"input_channels={self.input_channels} is invalid for a {in_channels}-channel "
                f"kernel; it must be 1 or {in_channels}."
            )

    def effective_weight(self) -> torch.Tensor:
        """The kernel applied to the input: ``(out, input_channels, kh, kw)``."""
        return fold_kernel(self.weight, self.input_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve.

        Args:
            x: ``(B, input_channels, H, W)``.

        Returns:
            ``(B, out_channels, H', W')``.
        """
        return F.conv2d(x, self.effective_weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", input_channels={self.input_channels}" if self.input_channels != self.in_channels else "")


class StdConv2d(FoldConv2d):
    """Weight-standardized ``Conv2d`` (eps 1e-5 on the variance, as the official TransUNet code).

    The kernel is standardized with the statistics of the full stored kernel first and folded
    afterwards, so a 1-channel model matches the official model fed a repeated grey image exactly.

    Args:
        in_channels: Channels of the stored kernel.
        out_channels: Output channels.
        kernel_size: Kernel size.
        eps: Variance epsilon of the standardization.
        input_channels: Channels of the input actually fed (1 folds the kernel).
        **kwargs: Forwarded to ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        eps: float = 1e-5,
        input_channels: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, input_channels=input_channels, **kwargs)
        self.eps = eps

    def effective_weight(self) -> torch.Tensor:
        """Standardized (then folded) kernel ``(out, input_channels, kh, kw)``."""
        return fold_kernel(standardize_kernel(self.weight, self.eps), self.input_channels)
