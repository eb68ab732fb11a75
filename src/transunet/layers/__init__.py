"""Reusable building blocks with no dataset knowledge."""

from transunet.layers.attention import ATTN_IMPLS, Attention
from transunet.layers.conv_blocks import Conv2dReLU
from transunet.layers.drop_path import DropPath, drop_path
from transunet.layers.embed import Embeddings
from transunet.layers.mlp import Mlp
from transunet.layers.pos_embed import resize_pos_embed
from transunet.layers.std_conv import FoldConv2d, StdConv2d, fold_kernel, standardize_kernel

__all__ = [
    "ATTN_IMPLS",
    "Attention",
    "Conv2dReLU",
    "DropPath",
    "Embeddings",
    "FoldConv2d",
    "Mlp",
    "StdConv2d",
    "drop_path",
    "fold_kernel",
    "resize_pos_embed",
    "standardize_kernel",
]
