"""Resource guards shared by every reader of files that may be hostile or damaged.

A header is a claim, not a fact: before allocating what a file's header says, the readers check
the claim against the file's size (a compressed stream cannot expand more than deflate's
~1032:1) and against a voxel cap. The cap is :data:`DEFAULT_MAX_VOXELS` (2**29 voxels, 2 GiB as
float32: a 512×512×2048 CT) and can be raised with the environment variable
``TRANSUNET_MAX_VOXELS`` for larger scans. Error messages never quote unbounded values: use
:func:`short_repr`.
"""

from __future__ import annotations

import os
import reprlib
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from transunet.errors import DataError

#: Default upper bound on the voxels of one array read from a file (override: TRANSUNET_MAX_VOXELS).
DEFAULT_MAX_VOXELS = 2**29
#: deflate cannot expand more than ~1032:1; anything beyond (plus slack) is a false header.
MAX_COMPRESSION_RATIO = 1100
#: Numeric dtype kinds a reader accepts (bool, signed, unsigned, float).
NUMERIC_KINDS = "biuf"

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr(value)`` bounded in length and depth (safe for any value in an error message)."""
    try:
        return _repr.repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not break the error path
        return f"<{type(value).__name__}>"


def max_voxels() -> int:
    """The voxel cap: ``TRANSUNET_MAX_VOXELS`` if set (a positive integer), else the default."""
    raw = os.environ.get("TRANSUNET_MAX_VOXELS")
    if raw:
        try:
            v = int(float(raw))
        except ValueError:
            raise DataError(f"TRANSUNET_MAX_VOXELS={short_repr(raw)} is not a number; set a positive "
                            "integer (e.g. 1073741824) or unset it.") from None
        if v > 0:
            return v
    return DEFAULT_MAX_VOXELS


def check_claim(path: Any, shape: Iterable[int], itemsize: int, stored_bytes: int | None,
                compressed: bool, what: str = "array") -> int:
    """Check a header's claimed shape before allocating it; return the number of elements.

    Args:
        path: The file, for the message.
        shape: Claimed shape.
        itemsize: Bytes per element.
        stored_bytes: Bytes the file actually holds for this data (None: unknown).
        compressed: Whether ``stored_bytes`` are compressed (then at most ~1100x expansion).
        what: What the array is, for the message.
    """
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise DataError(f"{path}: the header claims a negative size {short_repr(tuple(dims))} for the {what}; "
                        "the file is corrupt, copy or export it again.")
    if any(d == 0 for d in dims):
        raise DataError(f"{path}: the {what} is empty (shape {short_repr(tuple(dims))}); export it again "
                        "with its data.")
    n = 1
    for d in dims:
        n *= d
    cap = max_voxels()
    if n > cap:
        raise DataError(f"{path}: the header claims {n} voxels for the {what} (shape {short_repr(tuple(dims))}), "
                        f"more than the limit of {cap}; the file is corrupt, or set TRANSUNET_MAX_VOXELS "
                        "to a larger number for a very large scan.")
    if stored_bytes is not None:
        limit = stored_bytes * (MAX_COMPRESSION_RATIO if compressed else 1) + (4096 if compressed else 0)
        if n * max(int(itemsize), 1) > limit:
            raise DataError(f"{path}: the header claims {n * itemsize} bytes for the {what} (shape "
                            f"{short_repr(tuple(dims))}) but the file holds only {stored_bytes}; the file is "
                            "truncated or corrupt, copy or export it again.")
    return n


def check_numeric(path: Any, dtype: np.dtype, what: str) -> None:
    """Refuse structured, string, object and complex dtypes with one line."""
    if np.dtype(dtype).kind == "O":
        raise DataError(f"{path}: the {what} holds pickled Python objects, refused without loading them (loading "
                        "could run code); write plain numeric arrays.")
    if np.dtype(dtype).kind not in NUMERIC_KINDS:
        raise DataError(f"{path}: the {what} has data type {short_repr(str(dtype))}, not a number type; "
                        "export it as integer or float data.")


def _read_npy_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    what = f"array '{info.filename[:-4] if info.filename.endswith('.npy') else info.filename}'"
    if info.flag_bits & 0x1:
        raise DataError(f"{path}: {what} is encrypted; write the file again with numpy.savez.")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(f"{path}: {what} uses zip compression method {info.compress_type}, which numpy files "
                        "never use; write the file again with numpy.savez or numpy.savez_compressed.")
    compressed = info.compress_type == zipfile.ZIP_DEFLATED
    limit = info.compress_size * (MAX_COMPRESSION_RATIO if compressed else 1) + (4096 if compressed else 0)
    if info.file_size > limit:
        raise DataError(f"{path}: {what} claims {info.file_size} bytes from {info.compress_size} stored; "
                        "the file is corrupt, copy or write it again.")
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=10000)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=10000)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        check_numeric(path, dtype, what)
        header_len = f.tell()
        check_claim(path, shape if shape else (1,), dtype.itemsize, max(info.file_size - header_len, 0), False, what)
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        data = bytearray(n * dtype.itemsize)  # writable, allocated once (the claim is checked above)
        view, got = memoryview(data), 0
        while got < len(data):
            k = f.readinto(view[got:])
            if not k:
                raise DataError(f"{path}: {what} is truncated ({got} of {len(data)} bytes); copy or write the "
                                "file again.")
            got += k
    arr = np.frombuffer(data, dtype=dtype)
    order = "F" if fortran else "C"
    return arr.reshape(shape, order=order) if shape else arr.reshape(())


def read_npz(path: str | Path, names: Iterable[str] | None = None, fix: str = "copy or write it again"
             ) -> dict[str, np.ndarray]:
    """Read numeric arrays from an ``.npz`` without trusting its headers.

    Each member's claimed size is checked against what the zip stores and the voxel cap before
    anything is allocated; pickled (object) arrays, strings, encrypted or unusually compressed
    members are refused. Every failure is a :class:`~transunet.errors.DataError` naming the file.

    Args:
        path: The ``.npz`` file.
        names: Arrays to read (all when None); a missing one is an error.
        fix: What the user should do, appended to "cannot read" messages.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
            wanted = list(members) if names is None else list(names)
            missing = [n for n in wanted if n not in members]
            if missing:
                raise DataError(f"{path}: needs arrays {short_repr(wanted)}, found {short_repr(sorted(members))}; "
                                f"{fix}.")
            return {n: _read_npy_member(z, members[n], path) for n in wanted}
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: not enough memory to read it; the file is corrupt or too large.") from None
    except Exception as e:  # noqa: BLE001 - zipfile/numpy raise many kinds for damaged files
        raise DataError(f"{path}: cannot read npz ({type(e).__name__}: {short_repr(str(e))}); the file is "
                        f"truncated or corrupt, {fix}.") from None


__all__ = ["DEFAULT_MAX_VOXELS", "check_claim", "check_numeric", "max_voxels", "read_npz", "short_repr"]
