"""Stochastic depth (drop path), Huang et al. 2016, arXiv 1603.09382."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DropPath", "drop_path"]


def drop_path(x: torch.Tensor, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero whole samples of a residual branch with probability ``p`` and rescale the rest.

    Args:
        x: Residual-branch output ``(B, ...)``.
        p: Drop probability in ``[0, 1)``.
        training: Only active in training mode.

    Returns:
        Tensor of the same shape.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (identity in eval mode or when ``p == 0``).

    Args:
        p: Drop probability in ``[0, 1)``.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path={p} is invalid: it must be in [0, 1), e.g. 0.1.")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply stochastic depth.

        Args:
            x: ``(B, ...)``.

        Returns:
            ``(B, ...)``.
        """
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
