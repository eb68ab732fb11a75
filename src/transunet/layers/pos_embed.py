"""Resizing learned position embeddings to a new token grid."""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy import ndimage

__all__ = ["resize_pos_embed"]

log = logging.getLogger(__name__)


def resize_pos_embed(
    posemb: torch.Tensor | np.ndarray,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
) -> torch.Tensor:
    """Resize ``(1, gh*gw, D)`` position embeddings to another grid.

    Uses ``scipy.ndimage.zoom(order=1)`` on the ``(gh, gw, D)`` grid, exactly as the official
    TransUNet ``load_from`` does, generalised to non-square grids. Any class-token entry must be
    removed before calling.

    Args:
        posemb: Embeddings ``(1, old_h * old_w, D)``.
        old_grid: ``(old_h, old_w)`` token grid of ``posemb``.
        new_grid: ``(new_h, new_w)`` target token grid.

    Returns:
        ``(1, new_h * new_w, D)`` float32 tensor.
    """
    arr = posemb.detach().cpu().numpy() if isinstance(posemb, torch.Tensor) else np.asarray(posemb)
    oh, ow = old_grid
    nh, nw = new_grid
    if arr.ndim != 3 or arr.shape[0] != 1 or arr.shape[1] != oh * ow:
        raise ValueError(
            f"position embeddings of shape {tuple(arr.shape)} do not fit a {oh}x{ow} grid; "
            f"expected (1, {oh * ow}, D)."
        )
    if (oh, ow) == (nh, nw):
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    dim = arr.shape[2]
    grid = arr[0].reshape(oh, ow, dim)
    grid = ndimage.zoom(grid, (nh / oh, nw / ow, 1), order=1)
    if grid.shape[:2] != (nh, nw):  # zoom rounds output sizes; guard against surprises
        raise ValueError(f"resizing position embeddings gave grid {grid.shape[:2]}, expected {(nh, nw)}.")
    log.info("resized position embeddings from grid %dx%d to %dx%d", oh, ow, nh, nw)
    return torch.from_numpy(np.ascontiguousarray(grid.reshape(1, nh * nw, dim), dtype=np.float32))
