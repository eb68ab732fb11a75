"""The one volume interface every reader returns.

Arrays are stored slice-first, ``(S, H, W)``: ``S`` indexes the slices the 2D network sees (axial
for CT), exactly as in the official ``test_vol_h5`` files. ``spacing`` follows the array axes
``(s, h, w)`` in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    """One 3D case.

    Args:
        case_id: Case name, e.g. ``"case0001"``.
        image: Normalised image, float32, ``(S, H, W)``.
        label: Integer labels ``(S, H, W)`` (uint8) or ``None`` when unlabelled.
        spacing: Voxel size in mm along ``(S, H, W)``; ``None`` when unknown (official files).
        affine: 4x4 NIfTI affine of the original file (voxel (i, j, k) of the NIfTI array), if known.
        class_names: Names of labels ``0..C-1`` (``class_names[0]`` is background).
        ignore_label: Label value of voxels excluded from training and scoring (nnU-Net's
            ``ignore`` label, stored as 255), or ``None``.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None = None
    spacing: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    ignore_label: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]
