"""transunet: TransUNet (Chen et al. 2021, arXiv 2102.04306) and its family for medical image segmentation."""

__version__ = "0.1.0"

from transunet.errors import TransUNetError  # noqa: E402
from transunet.models.base import SegmentationModel  # noqa: E402
from transunet.registry import create_model, list_models, register_model  # noqa: E402
from transunet.weights import load_pretrained  # noqa: E402

__all__ = ["__version__", "SegmentationModel", "TransUNetError", "create_model", "list_models",
           "load_pretrained", "register_model"]
