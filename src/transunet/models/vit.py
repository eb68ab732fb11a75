"""Vision Transformer encoder used by TransUNet.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
arXiv 2010.11929. Pre-norm blocks (LayerNorm eps 1e-6), exact GELU, learned position embeddings,
no class token (TransUNet's ``classifier="seg"``). Module names follow the official TransUNet
``vit_seg_modeling.py`` (``transformer.embeddings`` / ``transformer.encoder.layer.N.attn.query`` ...)
so its state dicts load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from transunet.layers.attention import Attention
from transunet.layers.drop_path import DropPath
from transunet.layers.embed import Embeddings
from transunet.layers.mlp import Mlp

__all__ = ["Block", "Encoder", "Transformer"]


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``.

    Args:
        hidden_size: Token width ``D``.
        mlp_dim: MLP inner width.
        num_heads: Attention heads.
        dropout: MLP dropout.
        attn_dropout: Attention dropout.
        drop_path: Stochastic-depth probability of both residual branches.
        attn_impl: ``"fused"`` or ``"explicit"``.
    """

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, dropout: float = 0.0,
                 attn_dropout: float = 0.0, drop_path: float = 0.0, attn_impl: str = "fused") -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.ffn = Mlp(hidden_size, mlp_dim, dropout)
        self.attn = Attention(hidden_size, num_heads, attn_dropout, attn_impl)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Apply the block.

        Args:
            x: ``(B, N, D)``.
            return_attention: Return this block's attention weights.

        Returns:
            ``(x (B, N, D), weights (B, h, N, N) or None)``.
        """
        h, weights = self.attn(self.attention_norm(x), return_attention=return_attention)
        x = x + self.drop_path(h)
        x = x + self.drop_path(self.ffn(self.ffn_norm(x)))
        return x, weights


class Encoder(nn.Module):
    """Stack of :class:`Block` followed by a final LayerNorm (``encoder_norm``).

    Args:
        hidden_size: Token width ``D``.
        mlp_dim: MLP inner width.
        num_heads: Attention heads.
        num_layers: Number of blocks.
        dropout: MLP dropout.
        attn_dropout: Attention dropout.
        drop_path: Maximum stochastic-depth rate; block ``i`` uses ``drop_path * i / (L - 1)``.
        attn_impl: ``"fused"`` or ``"explicit"``.
    """

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, num_layers: int,
                 dropout: float = 0.0, attn_dropout: float = 0.0, drop_path: float = 0.0,
                 attn_impl: str = "fused") -> None:
        super().__init__()
        rates = [drop_path * i / max(num_layers - 1, 1) for i in range(num_layers)]
        self.layer = nn.ModuleList(
            Block(hidden_size, mlp_dim, num_heads, dropout, attn_dropout, r, attn_impl) for r in rates
        )
        self.encoder_norm = nn.LayerNorm(hidden_size, eps=1e-6)

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encode tokens.

        Args:
            x: ``(B, N, D)``.
            return_attention: Collect every block's attention weights.

        Returns:
            ``(encoded (B, N, D), [weights (B, h, N, N)] * num_layers or [])``.
        """
        maps: list[torch.Tensor] = []
        for blk in self.layer:
            x, w = blk(x, return_attention=return_attention)
            if w is not None:
                maps.append(w)
        return self.encoder_norm(x), maps


class Transformer(nn.Module):
    """Embeddings (patch or hybrid) + :class:`Encoder`.

    Args:
        embeddings: The token embedding (with optional CNN backbone).
        encoder: The transformer encoder.
    """

    def __init__(self, embeddings: Embeddings, encoder: Encoder) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Embed and encode.

        Args:
            x: Image ``(B, C, H, W)``.
            return_attention: Collect attention weights.

        Returns:
            ``(encoded (B, N, D), attention maps, CNN skips deepest-first)``.
        """
        tokens, skips = self.embeddings(x)  # (B, N, D)
        encoded, maps = self.encoder(tokens, return_attention=return_attention)
        return encoded, maps, skips
