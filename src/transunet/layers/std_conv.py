"""Weight-standardized convolution and input-channel folding.

Big Transfer (BiT) ResNets, and therefore the hybrid encoder of TransUNet, standardize every
convolution kernel per output channel before use (Qiao et al., "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization", arXiv 1903.10520).

A first convolution with the layout of RGB-pretrained weights (:meth:`FoldConv2d.rgb_input`) keeps
a 3-channel kernel for 1- and 3-channel models. A 1-channel model *folds* its input channels: it
convolves the single input channel with the sum of the (standardized) kernel over its input
channels. That is exactly what the official implementation computes when it repeats a grey image to
three channels, without the repeat. Any other channel count ``N`` stores an ``N``-channel kernel;
3-channel pretrained kernels are adapted to it on loading by :func:`adapt_rgb_kernel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FastStdConv2d", "FoldConv2d", "StdConv2d", "adapt_rgb_kernel", "fold_kernel", "rgb_kernel_channels",
           "standardize_kernel", "standardize_kernel_fast"]


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


def standardize_kernel_fast(weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """:func:`standardize_kernel` through ``F.layer_norm`` over each output channel's flattened kernel.

    The same formula (biased variance, ``eps`` inside the square root), computed by the fused
    layer-norm kernels instead of ``var_mean`` and elementwise ops: on R50-ViT-B_16's 52 kernels
    (11.9 M weights, 2 CPU cores) forward + backward take 12 ms instead of 64 ms. The result
    differs from :func:`standardize_kernel` by float32 rounding (4.8e-7 at most there), so the
    reference model keeps :func:`standardize_kernel` (the official code's ops) and training's
    fast kernels (:class:`FastStdConv2d`) use this one.
    """
    flat = weight.reshape(weight.shape[0], -1)
    return F.layer_norm(flat, flat.shape[1:], eps=eps).view_as(weight)


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


def rgb_kernel_channels(in_channels: int) -> int:
    """Input channels stored by a first convolution with an RGB-pretrained layout.

    Args:
        in_channels: Channels of the model's input.

    Returns:
        3 for 1 (folded) or 3 input channels (the pretrained layout, loaded unchanged), else
        ``in_channels`` (a 3-channel pretrained kernel is adapted with :func:`adapt_rgb_kernel`).
    """
    return 3 if in_channels in (1, 3) else int(in_channels)


def adapt_rgb_kernel(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt an RGB kernel ``(out, 3, kh, kw)`` to ``in_channels`` input channels (timm's idea).

    Every new channel gets the RGB kernel averaged over its input channels, scaled by
    ``3 / in_channels``, i.e. ``sum_c W[:, c] / in_channels``: the new channels sum to the RGB
    channels' sum, so the same image on all ``in_channels`` channels gives the response of the RGB
    kernel to that image repeated on R, G and B (timm's ``adapt_input_conv`` repeats R, G, B cyclically
    with the same ``3 / in_channels`` scale, which keeps this only when ``in_channels`` is a multiple of
    3). A weight-standardized convolution standardizes the adapted kernel again, see
    :class:`StdConv2d`. 1 and 3 channels return the sum over channels and the kernel unchanged.

    Args:
        weight: Kernel ``(out, 3, kh, kw)``.
        in_channels: Channels of the new kernel (>= 1).

    Returns:
        ``(out, in_channels, kh, kw)`` kernel, same dtype.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"adapt_rgb_kernel expects an RGB kernel (out, 3, kh, kw), got {tuple(weight.shape)}.")
    if in_channels == 3:
        return weight
    total = weight.float().sum(dim=1, keepdim=True)  # (out, 1, kh, kw)
    return (total / in_channels).repeat(1, in_channels, 1, 1).to(weight.dtype)


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

    #: ``True`` for a first convolution built by :meth:`rgb_input`: 3-channel pretrained kernels
    #: are adapted to its stored channels on loading (:func:`adapt_rgb_kernel`).
    rgb_layout: bool = False

    @classmethod
    def rgb_input(cls, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                  **kwargs: object) -> FoldConv2d:
        """A model's first convolution with the layout of RGB-pretrained kernels.

        1 input channel: a 3-channel kernel, folded; 3: a 3-channel kernel; any other ``N``: an
        ``N``-channel kernel (:func:`rgb_kernel_channels`), to which
        :func:`transunet.load_pretrained` adapts 3-channel pretrained kernels.

        Args:
            in_channels: Channels of the model's input (>= 1).
            out_channels: Output channels.
            kernel_size: Kernel size.
            **kwargs: Forwarded to the constructor (stride, padding, bias, eps, ...).
        """
        conv = cls(rgb_kernel_channels(in_channels), out_channels, kernel_size,  # type: ignore[arg-type]
                   input_channels=in_channels, **kwargs)
        conv.rgb_layout = True
        return conv

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

    An ``N``-channel kernel adapted from RGB (:func:`adapt_rgb_kernel`: every channel
    ``m = sum_c W[:, c] / N``) is standardized with its own statistics, which are not the RGB
    kernel's: fed the same image on all ``N`` channels it gives the 1-channel (folded) response
    times a positive factor per output channel ``o``,
    ``(N / 3) * sqrt(var_o(W) + eps) / sqrt(var_o(W_mean) + eps * N^2 / 9)`` with ``W_mean`` the RGB
    kernel averaged over its channels (``N / 3`` when the R, G and B kernels are equal: the
    standardization undoes the ``3 / N`` scale). A following GroupNorm cancels the part of the factor
    that is constant within each group (all of it with one channel per group, the common ``N / 3``
    always), not the rest.

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

    #: The standardization (the official code's ops; :class:`FastStdConv2d` swaps in the fused one).
    standardize = staticmethod(standardize_kernel)

    def effective_weight(self) -> torch.Tensor:
        """Standardized (then folded) kernel ``(out, input_channels, kh, kw)``."""
        return fold_kernel(self.standardize(self.weight, self.eps), self.input_channels)


class FastStdConv2d(StdConv2d):
    """:class:`StdConv2d` standardizing with :func:`standardize_kernel_fast` (same parameters and
    state-dict keys; swapped in by :func:`transunet.layers.fast.use_fast_std_conv`)."""

    standardize = staticmethod(standardize_kernel_fast)

