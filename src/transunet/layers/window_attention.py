"""Shifted-window multi-head self-attention (Swin Transformer, Liu et al. 2021, arXiv 2103.14030).

Tokens of a ``(B, H, W, C)`` map attend only within non-overlapping ``w x w`` windows; a learned
relative position bias (a ``(2w - 1)^2 x heads`` table indexed by the offset between two tokens)
is added to the scores. Every other block rolls the map by ``-s`` before partitioning, so windows
straddle the previous block's borders, and masks the pairs of tokens that the roll brought together
from different image regions. As in the official Swin and Swin-Unet code the mask is additive with
**-100.0** (not ``-inf``) between regions, so a masked pair keeps a tiny weight (about e^-100).

The bias and the mask are summed into one additive float mask, so the default ``"fused"`` path runs
``F.scaled_dot_product_attention`` with it as ``attn_mask``; the ``"explicit"`` path computes the
softmax itself in the official order (``(q * scale) @ k^T + bias + mask``) and is used to record
attention maps. Both compute the same function (a test asserts it).

Helpers: :func:`window_partition` / :func:`window_reverse`, :func:`relative_position_index`,
:func:`shifted_window_mask` and :func:`stage_window` (the official clamp: a stage no larger than
the window uses one window of the stage's size and no shift).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transunet.errors import check_choice
from transunet.layers.attention import ATTN_IMPLS, RecordsAttention

__all__ = [
    "MASK_VALUE",
    "WindowAttention",
    "relative_position_index",
    "shifted_window_mask",
    "stage_window",
    "window_partition",
    "window_reverse",
]

#: Additive score of token pairs from different regions of a shifted window (official value).
MASK_VALUE = -100.0


def stage_window(resolution: tuple[int, int], window_size: int, shift_size: int) -> tuple[int, int]:
    """The window and shift a Swin block really uses at a stage of ``resolution`` (official clamp).

    If the stage is no larger than the window (``min(H, W) <= window_size``) the window shrinks to
    ``min(H, W)`` and the shift is 0.

    Args:
        resolution: Token grid ``(H, W)`` of the stage.
        window_size: Configured window size ``w``.
        shift_size: Configured shift ``s`` (``w // 2`` for odd blocks, 0 for even ones).

    Returns:
        ``(window, shift)``.
    """
    if min(resolution) <= window_size:
        return min(resolution), 0
    return window_size, shift_size


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """Cut a map into non-overlapping windows (row-major over windows, then over tokens).

    Args:
        x: ``(B, H, W, C)`` with ``H`` and ``W`` divisible by ``window``.
        window: Window size ``w``.

    Returns:
        ``(B * nW, w * w, C)`` with ``nW = (H / w) * (W / w)``.
    """
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)  # (B, H/w, w, W/w, w, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)  # (B * nW, w * w, C)


def window_reverse(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows: ``(B * nW, w * w, C)``.
        window: Window size ``w``.
        H: Map height.
        W: Map width.

    Returns:
        ``(B, H, W, C)``.
    """
    C = windows.shape[-1]
    B = windows.shape[0] // ((H // window) * (W // window))
    x = windows.view(B, H // window, W // window, window, window, C)  # (B, H/w, W/w, w, w, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)  # (B, H, W, C)


def relative_position_index(window: int) -> torch.Tensor:
    """Index into the ``(2w - 1)^2`` bias table for every pair of tokens of a window.

    Pair ``(i, j)`` with offset ``(dy, dx) = pos(i) - pos(j)`` gets
    ``(dy + w - 1) * (2w - 1) + (dx + w - 1)`` (the official layout, so official tables load).

    Args:
        window: Window size ``w``.

    Returns:
        ``(w * w, w * w)`` long tensor.
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, w*w)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, w*w, w*w), offsets from 0
    return rel[0] * (2 * window - 1) + rel[1]


def shifted_window_mask(resolution: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """Additive mask of shifted-window attention (0 within a region, -100 across regions).

    After rolling the map by ``(-shift, -shift)``, the last ``window`` rows/columns hold tokens from
    up to three regions per axis: slices ``[0, -w)``, ``[-w, -s)`` and ``[-s, end)``; the nine
    products of these slices are labelled and pairs with different labels are masked.

    Args:
        resolution: Token grid ``(H, W)``, divisible by ``window``.
        window: Window size ``w``.
        shift: Shift ``s`` with ``0 < s < w``.

    Returns:
        ``(nW, w * w, w * w)`` float mask, windows in :func:`window_partition` order.
    """
    H, W = resolution
    labels = torch.zeros(1, H, W, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    n = 0
    for hs in bounds:
        for ws in bounds:
            labels[:, hs, ws, :] = n
            n += 1
    win = window_partition(labels, window).squeeze(-1)  # (nW, w*w)
    diff = win[:, None, :] - win[:, :, None]  # (nW, w*w, w*w)
    return torch.zeros_like(diff).masked_fill(diff != 0, MASK_VALUE)


class WindowAttention(RecordsAttention):
    """Window multi-head self-attention with a relative position bias (W-MSA / SW-MSA).

    Parameter and buffer names follow the official Swin code (``qkv``, ``proj``,
    ``relative_position_bias_table``; ``relative_position_index`` is a non-persistent buffer).

    Args:
        dim: Token width ``C`` (divisible by ``num_heads``).
        window: Window size ``w`` actually used (after :func:`stage_window`).
        num_heads: Heads ``h``.
        qkv_bias: Bias on the ``qkv`` projection.
        attn_drop: Dropout on the attention weights.
        proj_drop: Dropout after the output projection.
        attn_impl: ``"fused"`` (``scaled_dot_product_attention`` with bias + mask as ``attn_mask``)
            or ``"explicit"`` (official softmax path).
    """

    def __init__(
        self,
        dim: int,
        window: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_impl: str = "fused",
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(
                f"dim={dim} is not divisible by num_heads={num_heads}; choose a head count "
                f"that divides it, e.g. {math.gcd(dim, num_heads)}."
            )
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_impl = check_choice("attn_impl", attn_impl, ATTN_IMPLS)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        self.register_buffer(
            "relative_position_index", relative_position_index(window), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """The bias added to the scores: ``(h, N, N)`` with ``N = w * w``."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, h)
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)  # (h, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend within each window.

        Args:
            x: Window tokens ``(B * nW, N, C)`` in :func:`window_partition` order.
            mask: Shift mask ``(nW, N, N)`` (:func:`shifted_window_mask`) or ``None``.

        Returns:
            ``(B * nW, N, C)``. While recording, the explicit path runs and the softmax weights
            ``(B * nW, h, N, N)`` (windows in partition order, before attention dropout) are recorded.
        """
        Bw, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        qkv = self.qkv(x).view(Bw, N, 3, h, d).permute(2, 0, 3, 1, 4)  # (3, B*nW, h, N, d)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias()  # (h, N, N)
        if self.recording or self.attn_impl == "explicit":
            scores = (q * self.scale) @ k.transpose(-2, -1) + bias.unsqueeze(0)  # (B*nW, h, N, N)
            if mask is not None:
                nW = mask.shape[0]
                scores = scores.view(Bw // nW, nW, h, N, N) + mask[None, :, None].to(scores.dtype)
                scores = scores.view(Bw, h, N, N)
            probs = scores.softmax(dim=-1)
            self.record(probs)
            out = self.attn_drop(probs) @ v  # (B*nW, h, N, d)
        else:
            p = self.attn_drop.p if self.training else 0.0
            if mask is None:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=bias.unsqueeze(0).to(q.dtype), dropout_p=p, scale=self.scale
                )  # (B*nW, h, N, d)
            else:
                # Fold the windows into the head axis so the (nW, h, N, N) mask broadcasts over the
                # batch without being copied per sample: (B*nW, h, N, d) -> (B, nW*h, N, d).
                nW = mask.shape[0]
                B = Bw // nW
                full = (bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)).to(
                    q.dtype
                )  # (nW, h, N, N)
                out = F.scaled_dot_product_attention(
                    q.reshape(B, nW * h, N, d),
                    k.reshape(B, nW * h, N, d),
                    v.reshape(B, nW * h, N, d),
                    attn_mask=full.reshape(1, nW * h, N, N),
                    dropout_p=p,
                    scale=self.scale,
                ).view(Bw, h, N, d)  # (B*nW, h, N, d)
        out = out.transpose(1, 2).reshape(Bw, N, C)  # (B*nW, N, C)
        return self.proj_drop(self.proj(out))

    def attention_flops(self, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> int:
        """FLOPs of the two attention matmuls of one call (used by ``transunet profile``).

        ``(q * scale) @ k^T`` and ``probs @ v`` each cost ``B*nW * h * N * N * d`` multiply-adds;
        2 FLOPs per multiply-add. The scale, bias, mask and softmax are not counted (as for the
        other layers of :func:`transunet.profile.count_flops`); the ``qkv``/``proj`` Linears are
        counted by their own hooks.

        Args:
            inp: The positional inputs of :meth:`forward`; ``inp[0]`` is ``(B * nW, N, C)``.
            out: The output (unused).
        """
        Bw, N, _ = inp[0].shape
        return 2 * 2 * Bw * self.num_heads * N * N * self.head_dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window={self.window}, num_heads={self.num_heads}, attn_impl={self.attn_impl!r}"
