"""The one volume interface every reader returns.

Arrays are stored slice-first, ``(S, H, W)``: ``S`` indexes the slices the 2D network sees (axial
for CT), exactly as in the official ``test_vol_h5`` files. Multi-channel images are ``(S, C, H, W)``
(one ``(C, H, W)`` network input per slice). ``spacing`` follows the spatial axes ``(s, h, w)`` in
millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    """One 3D case.

    Args:
        case_id: Case name, e.g. ``"case0001"``.
        image: Normalised image, float32, ``(S, H, W)``, or ``(S, C, H, W)`` with several channels.
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
        """The spatial shape ``(S, H, W)`` (the label's), whatever the number of channels."""
        return (int(self.image.shape[0]), int(self.image.shape[-2]), int(self.image.shape[-1]))

    @property
    def channels(self) -> int:
        """Input channels (1 for an ``(S, H, W)`` image)."""
        return 1 if self.image.ndim == 3 else int(self.image.shape[1])

    def display_slice(self, index: int) -> np.ndarray:
        """Slice ``index`` of the first channel, ``(H, W)``: what figures draw."""
        return self.image[index] if self.image.ndim == 3 else self.image[index, 0]
