"""Transformer MLP block (ViT): Linear -> exact GELU -> Dropout -> Linear -> Dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Two-layer MLP of a ViT encoder block; module names ``fc1``/``fc2`` as the official code.

    Args:
        hidden_size: Token width ``D``.
        mlp_dim: Inner width.
        dropout: Dropout after the activation and after ``fc2``.
    """

    def __init__(self, hidden_size: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden_size)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.xavier_uniform_(self.fc2.weight)
        nn.init.normal_(self.fc1.bias, std=1e-6)
        nn.init.normal_(self.fc2.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP.

        Args:
            x: ``(B, N, D)``.

        Returns:
            ``(B, N, D)``.
        """
        x = self.dropout(F.gelu(self.fc1(x)))
        return self.dropout(self.fc2(x))
