"""Multi-head self-attention with a fused and an explicit path.

The fused path calls ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels; never
materialises the ``N x N`` matrix where a fused kernel exists). The explicit path computes
``softmax(Q K^T / sqrt(d))`` itself and can return the attention weights, e.g. for attention maps.
Both compute the same function; the tests assert they agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transunet.errors import check_choice

__all__ = ["ATTN_IMPLS", "Attention", "RecordsAttention"]

#: The attention implementations every attention layer of the package offers.
ATTN_IMPLS = ("fused", "explicit")


class RecordsAttention(nn.Module):
    """Mixin of layers whose attention can be recorded for maps.

    :meth:`transunet.models.base.SegmentationModel.capture_attention` sets
    :attr:`attention_store` to a list on every such layer for the duration of a ``with`` block; a
    layer then computes its attention explicitly and appends its weights to the list (detached).
    Outside the block :attr:`attention_store` is ``None`` and the fast path runs.

    Optional: a layer may define ``attention_flops(inp, out) -> int``, the FLOPs of its attention
    matmuls in one call (2 per multiply-add; ``inp`` the positional inputs of ``forward``), which
    :func:`transunet.profile.count_flops` adds for every layer that defines it (the projections
    are ``Linear`` layers counted on their own).
    """

    attention_store: list[torch.Tensor] | None = None

    @property
    def recording(self) -> bool:
        """``True`` inside :meth:`~transunet.models.base.SegmentationModel.capture_attention`."""
        return self.attention_store is not None

    def record(self, weights: torch.Tensor) -> None:
        """Append ``weights`` (detached) to the store when recording."""
        if self.attention_store is not None:
            self.attention_store.append(weights.detach())


class Attention(RecordsAttention):
    """Multi-head self-attention with separate ``query``/``key``/``value``/``out`` projections.

    Module names follow the official TransUNet code so its state dicts load unchanged. As there,
    the dropout after the output projection uses the attention-dropout rate.

    Args:
        hidden_size: Token width ``D`` (divisible by ``num_heads``).
        num_heads: Number of heads ``h``.
        attn_dropout: Dropout on the attention weights and after the output projection.
        attn_impl: ``"fused"`` (``scaled_dot_product_attention``) or ``"explicit"``.
    """

    def __init__(self, hidden_size: int, num_heads: int, attn_dropout: float = 0.0,
                 attn_impl: str = "fused") -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}; choose a "
                f"head count that divides it, e.g. {math.gcd(hidden_size, num_heads)}."
            )
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.attn_impl = check_choice("attn_impl", attn_impl, ATTN_IMPLS)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.proj_dropout = nn.Dropout(attn_dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend.

        Args:
            x: Tokens ``(B, N, D)``.

        Returns:
            ``(B, N, D)``. While recording (:class:`RecordsAttention`) the explicit path runs and
            the softmax weights ``(B, h, N, N)`` (before attention dropout) are recorded.
        """
        B, N, D = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        if self.recording or self.attn_impl == "explicit":
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, h, N, N)
            probs = torch.softmax(scores, dim=-1)
            self.record(probs)
            ctx = torch.matmul(self.attn_dropout(probs), v)  # (B, h, N, d)
        else:
            p = self.attn_dropout.p if self.training else 0.0
            ctx = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, N, d)
        ctx = ctx.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj_dropout(self.out(ctx))
