"""Registered segmentation models (importing this package registers them).

Every model follows one contract: ``forward(x: (B, in_channels, H, W)) -> logits
(B, num_classes, H, W)``; ``forward(x, return_attention=True)`` also returns the per-layer attention
weights; attributes ``model_name``, ``model_kwargs``, ``num_classes``, ``in_channels``, ``img_size``
and ``grid_size``; ``transformer_parameters()`` yields the ViT parameters.
"""

from transunet.models import transunet  # noqa: F401  (registers the TransUNet family)
from transunet.models.transunet import ARCHS, TransUNet, build_transunet

__all__ = ["ARCHS", "TransUNet", "build_transunet"]
