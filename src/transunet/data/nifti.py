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
import contextlib
import logging
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from transunet.data.safe_io import check_claim, check_numeric, short_repr
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


def read_nifti_header(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file and check its header's claims before any voxel is read.

    Checks: a known numeric datatype (no RGB, complex or unknown codes), positive dims whose
    voxel count is under the cap (:func:`~transunet.data.safe_io.max_voxels`) and fits in the
    file (at most ~1100x expansion for ``.nii.gz``), finite scaling, and finite positive voxel
    sizes. Every failure is one :class:`DataError` naming the file.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.

    Returns:
        The nibabel image (data not loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path.")
    try:
        with _quiet_nibabel():  # our one line replaces nibabel's log of header problems
            img = nib.load(str(path))
        header = img.header
        shape = tuple(int(v) for v in img.shape)
        dtype = np.dtype(header.get_data_dtype())
        offset = int(header.get_data_offset()) if hasattr(header, "get_data_offset") else 0
        slope, inter = _raw_scaling(header)
        zooms = tuple(float(z) for z in header.get_zooms()[:3])
    except MemoryError:
        raise DataError(f"{path}: not enough memory to read the NIfTI header; the file is corrupt.") from None
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for damaged headers
        raise DataError(f"{path}: cannot read NIfTI header ({_why(e)}); the file is truncated or corrupt, "
                        "copy or export it again.") from None
    check_numeric(path, dtype, "NIfTI image")
    compressed = str(path).endswith(".gz")
    stored = max(path.stat().st_size - (0 if compressed else offset), 0)
    check_claim(path, shape, dtype.itemsize, stored, compressed, "NIfTI image")
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise DataError(f"{path}: the header's intensity scaling (scl_slope {slope}, scl_inter {inter}) is not "
                        "finite; fix the header (scl_slope 1, scl_inter 0) or export the image again.")
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"{path}: the header's voxel sizes (pixdim {zooms}) must be finite and positive; fix the "
                        "header or export the image again.")
    return img


@contextlib.contextmanager
def _quiet_nibabel():
    logger = nib.imageglobals.logger
    old = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(old)


def _raw_scaling(header: Any) -> tuple[float, float]:
    """``(scl_slope, scl_inter)`` as nibabel applies them (slope 0 or NaN: no scaling)."""
    try:
        slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    except (KeyError, ValueError, TypeError):  # Analyze headers have no scaling fields
        return 1.0, 0.0
    if slope == 0 or np.isnan(slope):
        return 1.0, 0.0
    return slope, inter


def _why(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {short_repr(msg)}" if msg else type(e).__name__


_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@contextlib.contextmanager
def _reading_voxels(path: Path, shape: tuple[int, ...]):
    """Turn failures while reading a NIfTI's voxels into one :class:`DataError` naming the file."""
    try:
        yield
    except MemoryError:
        raise DataError(f"{path}: not enough memory to read {shape} voxels; use a machine with more memory "
                        "or crop the scan.") from None
    except Exception as e:  # noqa: BLE001 - nibabel/gzip/zlib raise many types for damaged data
        raise DataError(f"{path}: cannot read NIfTI ({_why(e)}); the file is truncated or corrupt, "
                        "copy it again.") from None


def case_stem(name: str) -> str:
    """The case name of a scan file: NIfTI suffix and nnU-Net's channel suffix ``_0000`` removed.

    ``"la_003_0000.nii.gz"`` -> ``"la_003"`` (nnU-Net names predictions ``CASE.nii.gz``), ``"img0001.nii"``
    -> ``"img0001"``.
    """
    stem = strip_nifti_suffix(name)
    m = _CHANNEL_RE.match(stem)
    return m.group("case") if m and m.group("channel") == "0000" else stem


def channel_of(name: str) -> int | None:
    """nnU-Net channel index of a file name (``CASE_0001.nii.gz`` -> 1), or None without a suffix."""
    m = _CHANNEL_RE.match(strip_nifti_suffix(name))
    return int(m.group("channel")) if m else None


def load_nifti(path: str | Path, *, dtype: type = np.float32, allow_4d_singleton: bool = True):
    """Read a 3D NIfTI as a slice-first array.

    The header is checked first (:func:`read_nifti_header`), so a damaged or hostile file ends in
    one :class:`DataError` naming it, never in a traceback or a huge allocation.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: Output dtype.
        allow_4d_singleton: Accept ``(X, Y, Z, 1)`` and drop the last axis.

    Returns:
        ``(array (S, H, W), spacing (s, h, w) in mm, affine 4x4, nibabel image)``.
    """
    path = Path(path)
    img = read_nifti_header(path)
    shape = tuple(int(v) for v in img.shape)
    if len(shape) == 4 and allow_4d_singleton and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(
            f"{path}: expected a 3D volume, got {len(shape)}D with shape {shape}; "
            "split 4D series into 3D files (one per frame) first."
        )
    with _reading_voxels(path, shape):
        data = np.asanyarray(img.dataobj)
        if data.ndim == 4:
            data = data[..., 0]
        arr = np.ascontiguousarray(np.transpose(data, (2, 1, 0))).astype(dtype, copy=False)
        affine = np.asarray(img.affine, dtype=np.float64)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    spacing = (zooms[2], zooms[1], zooms[0])
    return arr, spacing, affine, img


def channel_path(path: str | Path, channel: int) -> Path:
    """The file of another channel of the same case: ``CASE_0000.nii.gz`` -> ``CASE_0001.nii.gz``.

    Args:
        path: A file named with nnU-Net's channel suffix (``_0000``...).
        channel: The wanted channel index.
    """
    path = Path(path)
    name = path.name
    suffix = next((s for s in NIFTI_SUFFIXES if name.endswith(s)), "")
    m = _CHANNEL_RE.match(strip_nifti_suffix(name))
    if m is None:
        raise ValueError(f"{path}: no nnU-Net channel suffix (_0000) in the file name.")
    return path.with_name(f"{m.group('case')}_{channel:04d}{suffix}")


def case_inputs(files: list[Path], channels: int, expected: str = "") -> list[Path]:
    """The scans of a multi-channel prediction: one file per case, every channel file checked present.

    nnU-Net-named files (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``...) are grouped by case and
    represented by their channel-0 file; any other file is taken as one 4D image (checked when read,
    :func:`load_nifti_channels`). A missing channel, or a channel index beyond ``channels``, is one
    :class:`DataError` naming the file and the case.

    Args:
        files: Input NIfTI files (a folder's listing, or one file).
        channels: Input channels of the model (> 1).
        expected: The expected channels in words (``"2 channels (T2, ADC)"``), for messages.
    """
    expected = expected or f"{channels} channels"
    out: list[Path] = []
    for f in files:
        k = channel_of(f.name)
        if k is None:
            out.append(f)
            continue
        case = case_stem(channel_path(f, 0).name)
        if k >= channels:
            raise DataError(f"{f}: channel {k} of case {case}, but {expected} are expected (_0000 ... "
                            f"_{channels - 1:04d}); remove the file or use the checkpoint it belongs to.")
        for j in range(channels):
            other = channel_path(f, j)
            if not other.is_file():
                raise DataError(f"{other}: channel {j} of case {case} is missing; {expected} are expected, one file "
                                f"per channel ({case}_0000 ... {case}_{channels - 1:04d}).")
        first = channel_path(f, 0)
        if first not in out:
            out.append(first)
    return out


def check_same_grid(path: str | Path, img: nib.Nifti1Image, ref_path: str | Path, ref: nib.Nifti1Image,
                    what: str = "channel") -> None:
    """One :class:`DataError` naming ``path`` unless it lies on the grid of ``ref`` (channel 0).

    Shapes (the first three axes) must be equal; affines and voxel sizes equal within
    ``rtol=1e-4, atol=1e-3`` (the tolerance of the image/label check of ``transunet prepare``).

    Args:
        path: File of ``img``, named in the message.
        img: Its header (data not read).
        ref_path: File of the reference, named in the message.
        ref: The reference header (the case's first channel).
        what: What ``path`` is (``"channel 1 (ADC)"``), for the message.
    """
    shape, rshape = tuple(int(v) for v in img.shape[:3]), tuple(int(v) for v in ref.shape[:3])
    if shape != rshape:
        raise DataError(f"{path}: {what} has shape {shape} but the first channel {ref_path} has {rshape}; every "
                        "channel of a case must be on the same voxel grid (resample it onto the first channel).")
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    rzooms = np.asarray(ref.header.get_zooms()[:3], dtype=np.float64)
    if not (np.allclose(np.asarray(img.affine, np.float64), np.asarray(ref.affine, np.float64), rtol=1e-4, atol=1e-3)
            and np.allclose(zooms, rzooms, rtol=1e-4, atol=1e-3)):
        raise DataError(f"{path}: {what} has a different affine or voxel spacing than the first channel {ref_path}; "
                        "every channel of a case must be on the same voxel grid (resample it or copy the header).")


def load_nifti_channels(path: str | Path, channels: int, *, dtype: type = np.float32,
                        expected: str = "", fix: str = ""):
    """Read the channels of one case: nnU-Net files ``CASE_0000..`` or one 4D NIfTI (channels last).

    ``path`` named ``CASE_0000.nii.gz`` (nnU-Net): the files ``CASE_0001.nii.gz``... beside it are the
    other channels; each must exist and lie on channel 0's grid (:func:`check_same_grid`). Any other
    name: a 4D NIfTI ``(X, Y, Z, channels)`` as the Medical Segmentation Decathlon stores them. Every
    problem is one :class:`DataError` naming the file.

    Args:
        path: Channel-0 file or 4D file.
        channels: Number of channels expected (> 1).
        dtype: Output dtype.
        expected: The expected channels in words (``"2 channels (T2, ADC)"``), for messages.
        fix: The end of the message for a file with the wrong number of channels.

    Returns:
        ``(arrays: one (S, H, W) per channel, spacing (s, h, w), affine, nibabel image of channel 0 or
        of the 4D file)``.
    """
    path = Path(path)
    expected = expected or f"{channels} channels"
    if channel_of(path.name) == 0:
        first, spacing, affine, ref = load_nifti(path, dtype=dtype)
        out = [first]
        for k in range(1, channels):
            other = channel_path(path, k)
            if not other.is_file():
                case = case_stem(path.name)
                raise DataError(f"{other}: channel {k} of case {case} is missing; {expected} are expected, one "
                                f"file per channel ({case}_0000 ... {case}_{channels - 1:04d}).")
            check_same_grid(other, read_nifti_header(other), path, ref, f"channel {k}")
            out.append(load_nifti(other, dtype=dtype)[0])
        return out, spacing, affine, ref
    img = read_nifti_header(path)
    shape = tuple(int(v) for v in img.shape)
    if len(shape) != 4 or shape[3] != channels:
        got = (f"one channel ({len(shape)}D, shape {shape})" if len(shape) < 4 or shape[3] == 1
               else f"{shape[3]} channels on the last axis (shape {shape})")
        fix = fix or ("give one 4D NIfTI with the channels on the last axis, or one file per channel named "
                      "CASE_0000.nii.gz, CASE_0001.nii.gz, ...")
        raise DataError(f"{path}: {got}, but {expected} are expected; {fix}.")
    with _reading_voxels(path, shape):
        data = np.asanyarray(img.dataobj)
        out = [np.ascontiguousarray(np.transpose(data[..., k], (2, 1, 0))).astype(dtype, copy=False)
               for k in range(channels)]
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return out, (zooms[2], zooms[1], zooms[0]), np.asarray(img.affine, dtype=np.float64), img


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
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape {short_repr(shape)} is not 3 positive sizes")
        affine = np.asarray(geometry["affine"], dtype=np.float64).reshape(4, 4)
        with _quiet_nibabel():
            header = nib.Nifti1Header(binaryblock=base64.b64decode(geometry["header"]), check=True)
            dataobj = np.broadcast_to(np.zeros((), np.uint8), shape)  # no memory: only shape, affine, header used
            img = nib.Nifti1Image(dataobj, affine, header)
            img.set_qform(header.get_qform(), code=int(header["qform_code"]))
            img.set_sform(header.get_sform(), code=int(header["sform_code"]))
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for a damaged header record
        raise DataError(f"{where}: invalid source geometry record ({_why(e)}); prepare the dataset again.") from None
    return img


def _save(img: nib.Nifti1Image, tmp: Path, suffix: str) -> None:
    # nibabel decides compression from the file name, so write under the right suffix then move.
    target = tmp.with_name(tmp.name + suffix)
    nib.save(img, str(target))
    target.replace(tmp)
