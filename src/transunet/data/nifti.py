"""NIfTI reading and writing with one fixed axis convention.

A NIfTI array ``data[i, j, k]`` (nibabel order) becomes our slice-first array
``vol[k, j, i] = data[i, j, k]`` (``np.transpose(data, (2, 1, 0))``), the same layout as the
official Synapse ``.npy.h5`` files: slices along the third NIfTI axis (axial for BTCV/ACDC), rows
along the second, columns along the first. Spacing is returned in the array order ``(k, j, i)``.
:func:`save_like` inverts this exactly, so a prediction written back keeps the input's shape,
affine and header.
"""

from __future__ import annotations

import base64
import gzip
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from transunet.errors import DataError
from transunet.utils import atomic_write

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: str | Path) -> bool:
    """True for ``.nii`` / ``.nii.gz`` file names."""
    return str(path).endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """``"img0001.nii.gz"`` -> ``"img0001"``."""
    for s in NIFTI_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def load_nifti(path: str | Path, *, dtype: type = np.float32, allow_4d_singleton: bool = True):
    """Read a 3D NIfTI as a slice-first array.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: Output dtype.
        allow_4d_singleton: Accept ``(X, Y, Z, 1)`` and drop the last axis.

    Returns:
        ``(array (S, H, W), spacing (s, h, w) in mm, affine 4x4, nibabel image)``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path.")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read NIfTI ({msg}); the file is truncated or corrupt, "
                        "copy it again.") from None
    if data.ndim == 4 and allow_4d_singleton and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(
            f"{path}: expected a 3D volume, got {data.ndim}D with shape {tuple(data.shape)}; "
            "split 4D series into 3D files (one per frame) first."
        )
    arr = np.ascontiguousarray(np.transpose(data, (2, 1, 0))).astype(dtype, copy=False)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    spacing = (zooms[2], zooms[1], zooms[0])
    return arr, spacing, np.asarray(img.affine, dtype=np.float64), img


def to_nifti_array(vol: np.ndarray) -> np.ndarray:
    """Inverse of the axis convention: slice-first ``(S, H, W)`` -> NIfTI ``(W, H, S)``."""
    return np.transpose(vol, (2, 1, 0))


def save_like(vol: np.ndarray, reference: nib.Nifti1Image | None, path: str | Path, *,
              affine: np.ndarray | None = None, dtype: type = np.uint8) -> Path:
    """Write a slice-first array as NIfTI with the reference's affine and header (atomically).

    Args:
        vol: ``(S, H, W)`` array (e.g. a predicted label map).
        reference: The image it was predicted from (its affine, header and shape are kept), or None.
        path: Output ``.nii.gz``.
        affine: Affine to use when ``reference`` is None.
        dtype: Stored dtype.
    """
    data = to_nifti_array(np.asarray(vol)).astype(dtype)
    if reference is not None:
        if tuple(reference.shape[:3]) != data.shape:
            raise DataError(
                f"{path}: array shape {data.shape} does not match the reference {tuple(reference.shape[:3])}."
            )
        header = reference.header.copy()
        header.set_data_dtype(dtype)
        out = nib.Nifti1Image(data, reference.affine, header)
        out.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
        out.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
        out.header["scl_slope"] = 1
        out.header["scl_inter"] = 0
    else:
        out = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    name = Path(path).name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    return atomic_write(path, lambda p: _save(out, p, suffix))


def geometry_of(img: nib.Nifti1Image) -> dict[str, Any]:
    """The source geometry of a scan, as JSON: what a prediction needs to overlay it in a viewer.

    Keeps the affine, the NIfTI-order shape and the whole 348-byte header (qform/sform and their
    codes, pixdim, units, dim_info, description), so :func:`reference_from_geometry` rebuilds a
    reference image that :func:`save_like` copies exactly as if it had the source file.

    Args:
        img: The source image (only its header is read).
    """
    header = nib.Nifti1Header.from_header(img.header)
    return {"shape": [int(v) for v in img.shape[:3]],
            "affine": np.asarray(img.affine, dtype=np.float64).tolist(),
            "header": base64.b64encode(header.binaryblock).decode("ascii")}


def reference_from_geometry(geometry: dict[str, Any], where: Any = "geometry") -> nib.Nifti1Image:
    """A data-less reference image (shape, affine, header) from :func:`geometry_of`'s record.

    Args:
        geometry: ``{"shape", "affine", "header"}`` as written by ``transunet prepare``.
        where: Named in the error message (e.g. the dataset.json of the record).
    """
    try:
        shape = tuple(int(v) for v in geometry["shape"])
        affine = np.asarray(geometry["affine"], dtype=np.float64).reshape(4, 4)
        header = nib.Nifti1Header(binaryblock=base64.b64decode(geometry["header"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: invalid source geometry record ({type(e).__name__}: {e}); "
                        "prepare the dataset again.") from None
    dataobj = np.broadcast_to(np.zeros((), np.uint8), shape)  # no memory: only shape, affine and header are used
    img = nib.Nifti1Image(dataobj, affine, header)
    img.set_qform(header.get_qform(), code=int(header["qform_code"]))
    img.set_sform(header.get_sform(), code=int(header["sform_code"]))
    return img


def _save(img: nib.Nifti1Image, tmp: Path, suffix: str) -> None:
    # nibabel decides compression from the file name, so write under the right suffix then move.
    target = tmp.with_name(tmp.name + suffix)
    nib.save(img, str(target))
    target.replace(tmp)
