"""Patch and hybrid (CNN feature map) embeddings of a ViT with learned position embeddings."""

from __future__ import annotations

import torch
from torch import nn

from transunet.layers.std_conv import FoldConv2d

__all__ = ["Embeddings"]


class Embeddings(nn.Module):
    """Turn an image (or a CNN feature map of it) into position-embedded tokens.

    Without a backbone the image is cut into ``patch_size`` patches by a strided convolution whose
    kernel keeps 3 input channels (the pretrained layout) for 1 or 3 input channels; a 1-channel
    model folds it, other counts store their own (see
    :meth:`~transunet.layers.std_conv.FoldConv2d.rgb_input`). With a backbone (``hybrid_model``) the
    convolution runs on the backbone's last feature map, whose skip features are returned too.

    Args:
        hidden_size: Token width ``D``.
        grid_size: Token grid ``(gh, gw)``; position embeddings hold ``gh * gw`` entries.
        patch_size: Patch size of the projection (1 on a hybrid feature map).
        in_channels: Channels of the input image (>= 1).
        dropout: Dropout on the embedded tokens.
        hybrid_model: Optional CNN backbone returning ``(features, skips)`` with an
            ``out_channels`` attribute.
    """

    def __init__(
        self,
        hidden_size: int,
        grid_size: tuple[int, int],
        patch_size: tuple[int, int],
        in_channels: int = 3,
        dropout: float = 0.0,
        hybrid_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.hybrid = hybrid_model is not None
        self.grid_size = tuple(grid_size)
        if hybrid_model is not None:
            self.hybrid_model = hybrid_model
            self.patch_embeddings: nn.Conv2d = nn.Conv2d(
                int(hybrid_model.out_channels), hidden_size, kernel_size=patch_size, stride=patch_size
            )
        else:
            self.patch_embeddings = FoldConv2d.rgb_input(
                in_channels, hidden_size, kernel_size=patch_size, stride=patch_size
            )
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid_size[0] * grid_size[1], hidden_size))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Embed.

        Args:
            x: Image ``(B, in_channels, H, W)``.

        Returns:
            ``(tokens (B, gh*gw, D), skips)``; ``skips`` are the backbone's skip features from the
            deepest (stride 8) to the shallowest (stride 2), empty without a backbone.
        """
        skips: list[torch.Tensor] = []
        if self.hybrid:
            x, skips = self.hybrid_model(x)  # (B, C, H/16, W/16)
        x = self.patch_embeddings(x)  # (B, D, gh, gw)
        if tuple(x.shape[-2:]) != self.grid_size:
            raise ValueError(
                f"input gives a {tuple(x.shape[-2:])} token grid but the model was built for "
                f"{self.grid_size}; feed images of the model's img_size."
            )
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        return self.dropout(x + self.position_embeddings), skips
