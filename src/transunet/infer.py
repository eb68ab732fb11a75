"""Slice-wise volume inference (the official ``test_single_volume``, batched) and NIfTI prediction.

:func:`predict_volume` is shared by validation during training, ``transunet evaluate`` and
``transunet predict`` so all three score exactly the same computation: each slice is resized to
the network input with a cubic spline (``scipy.ndimage.zoom(order=3)``), the argmax of the
softmax is taken, and the label map is resized back with nearest-neighbour interpolation
(``order=0``), as the official implementation does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import zoom
from torch import nn

log = logging.getLogger(__name__)


def _resize_slice(sl: np.ndarray, size: Sequence[int], order: int) -> np.ndarray:
    h, w = sl.shape
    if (h, w) == tuple(size):
        return sl
    return zoom(sl, (size[0] / h, size[1] / w), order=order)


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    img_size: Sequence[int],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    tta: bool = False,
    return_probabilities: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predict a label volume slice by slice.

    Args:
        model: Segmentation model in eval mode, ``(B, C, h, w) -> (B, K, h, w)``.
        image: Normalised image ``(S, H, W)`` (float).
        img_size: Network input ``(h, w)``.
        batch_size: Slices per forward pass.
        device: Device of the model.
        tta: Average softmax over the identity and horizontal/vertical flips.
        return_probabilities: Also return class probabilities resized back (linear) to ``(K, S, H, W)``.
        amp_dtype: Autocast dtype (e.g. ``torch.bfloat16``), ``None`` for fp32.

    Returns:
        ``label (S, H, W) uint8`` or ``(label, probabilities (K, S, H, W) float32)``.
    """
    if image.ndim != 3:
        raise ValueError(f"predict_volume expects an (S, H, W) volume, got shape {image.shape}.")
    device = torch.device(device)
    in_ch = int(getattr(model, "in_channels", 1))
    S, H, W = image.shape
    h, w = int(img_size[0]), int(img_size[1])
    label = np.zeros((S, H, W), dtype=np.uint8)
    probs_out: np.ndarray | None = None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, S, batch_size):
            idx = range(start, min(S, start + batch_size))
            batch = np.stack([_resize_slice(image[i].astype(np.float32), (h, w), 3) for i in idx])
            x = torch.from_numpy(batch).float().unsqueeze(1).to(device)  # (B, 1, h, w)
            if in_ch == 3:
                x = x.repeat(1, 3, 1, 1)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                prob = torch.softmax(model(x).float(), dim=1)
                if tta:
                    for dims in ((3,), (2,)):
                        prob += torch.softmax(model(torch.flip(x, dims)).float(), dim=1).flip(dims)
                    prob /= 3.0
            pred = torch.argmax(prob, dim=1).cpu().numpy().astype(np.uint8)  # (B, h, w)
            for j, i in enumerate(idx):
                label[i] = _resize_slice(pred[j], (H, W), 0)
            if return_probabilities:
                p = prob.cpu().numpy()
                if probs_out is None:
                    probs_out = np.zeros((p.shape[1], S, H, W), dtype=np.float32)
                for j, i in enumerate(idx):
                    for k in range(p.shape[1]):
                        probs_out[k, i] = _resize_slice(p[j, k], (H, W), 1)
    finally:
        model.train(was_training)
    if return_probabilities:
        assert probs_out is not None
        return label, probs_out
    return label
