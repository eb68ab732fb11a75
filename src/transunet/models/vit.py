"""Vision Transformer encoder used by TransUNet.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
arXiv 2010.11929. Pre-norm blocks (LayerNorm eps 1e-6), exact GELU, learned position embeddings,
no class token (TransUNet's ``classifier="seg"``). Module names follow the official TransUNet
``vit_seg_modeling.py`` (``transformer.embeddings`` / ``transformer.encoder.layer.N.attn.query`` ...)
so its state dicts load without renaming. Attention maps are recorded by the attention layers
themselves (:meth:`transunet.models.base.SegmentationModel.capture_attention`).

The Google ViT ``.npz`` key map (:func:`google_vit_key_map`) lives here, beside the modules it
fills; architectures that embed this encoder compose it with their own maps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from transunet.layers.attention import Attention
from transunet.layers.drop_path import DropPath
from transunet.layers.embed import Embeddings
from transunet.layers.mlp import Mlp
from transunet.weights import npz_conv, npz_dense, npz_vec

__all__ = ["Block", "Encoder", "Transformer", "google_vit_key_map"]


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: ``(B, N, D)``.

        Returns:
            ``(B, N, D)``.
        """
        x = x + self.drop_path(self.attn(self.attention_norm(x)))
        x = x + self.drop_path(self.ffn(self.ffn_norm(x)))
        return x


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode tokens.

        Args:
            x: ``(B, N, D)``.

        Returns:
            Encoded tokens ``(B, N, D)``.
        """
        for blk in self.layer:
            x = blk(x)
        return self.encoder_norm(x)


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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Embed and encode.

        Args:
            x: Image ``(B, C, H, W)``.

        Returns:
            ``(encoded (B, N, D), CNN skips deepest-first)``.
        """
        tokens, skips = self.embeddings(x)  # (B, N, D)
        return self.encoder(tokens), skips


# ----------------------------------------------------------------------------- Google .npz


def _qkv(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1).T  # (D, h, d) -> (h*d, D)


def _attn_out(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1]).T  # (h, d, D) -> (D, h*d)


def google_vit_key_map(prefix: str, num_layers: int, *, patch_embedding: str | None = "patch_embeddings"
                       ) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """Map the keys of an :class:`Encoder` (and its patch embedding) to Google ViT ``.npz`` keys.

    Args:
        prefix: Module path of the :class:`Transformer` in the model, with a trailing dot
            (``"transformer."``): the encoder is ``prefix + "encoder."``, the embedding
            ``prefix + "embeddings."``.
        num_layers: Transformer blocks of the model.
        patch_embedding: Name of the patch-embedding conv under ``embeddings`` (``None``: skip).

    Returns:
        ``{model key: (npz key, transform)}``; the position embeddings are not included (they
        need the grid resize of :func:`transunet.layers.pos_embed.resize_pos_embed`).
    """
    m: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {}
    if patch_embedding is not None:
        m[f"{prefix}embeddings.{patch_embedding}.weight"] = ("embedding/kernel", npz_conv)
        m[f"{prefix}embeddings.{patch_embedding}.bias"] = ("embedding/bias", npz_vec)
    m[f"{prefix}encoder.encoder_norm.weight"] = ("Transformer/encoder_norm/scale", npz_vec)
    m[f"{prefix}encoder.encoder_norm.bias"] = ("Transformer/encoder_norm/bias", npz_vec)
    for i in range(num_layers):
        ours, g = f"{prefix}encoder.layer.{i}.", f"Transformer/encoderblock_{i}/"
        for name in ("query", "key", "value", "out"):
            npz = f"{g}MultiHeadDotProductAttention_1/{name}/"
            m[f"{ours}attn.{name}.weight"] = (npz + "kernel", _attn_out if name == "out" else _qkv)
            m[f"{ours}attn.{name}.bias"] = (npz + "bias", npz_vec)
        for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            m[f"{ours}ffn.{fc}.weight"] = (f"{g}MlpBlock_3/{dense}/kernel", npz_dense)
            m[f"{ours}ffn.{fc}.bias"] = (f"{g}MlpBlock_3/{dense}/bias", npz_vec)
        for norm, ln in (("attention_norm", "LayerNorm_0"), ("ffn_norm", "LayerNorm_2")):
            m[f"{ours}{norm}.weight"] = (f"{g}{ln}/scale", npz_vec)
            m[f"{ours}{norm}.bias"] = (f"{g}{ln}/bias", npz_vec)
    return m
