"""Registered segmentation models (importing this package registers them).

Every model derives from :class:`~transunet.models.base.SegmentationModel` (the contract: forward
and deep supervision, size rule, parameter groups, profile parts, attention capability, weight
conversion); one file per architecture, read top to bottom.
"""

# Importing each architecture file registers its entry points.
from transunet.models import (  # noqa: F401
    attention_unet,
    cotr,
    medt,
    r50_unet,
    swin_unet,
    transunet,
    unet,
    unet_plusplus,
    unetr,
)
from transunet.models.base import AttentionCapture, FeatureInfo, SegmentationModel
from transunet.models.transunet import ARCHS, TransUNet, build_transunet

__all__ = ["ARCHS", "AttentionCapture", "FeatureInfo", "SegmentationModel", "TransUNet", "build_transunet"]
