"""Small shared helpers: atomic file writes, device selection, seeding."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from transunet.errors import ConfigError

log = logging.getLogger("transunet")


def as_pair(value: int | Sequence[int], name: str = "img_size") -> tuple[int, int]:
    """The one int-or-pair normaliser: ``224 -> (224, 224)``, ``[224, 192] -> (224, 192)``.

    Args:
        value: An int or a pair of ints.
        name: The argument's name for the error message.

    Raises:
        ValueError: For bools, non-integers and sequences that are not pairs.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid: give an int or (H, W), e.g. 224.")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, float) and value.is_integer():
        return (int(value), int(value))
    try:
        items = list(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}={value!r} is invalid: give an int or (H, W), e.g. 224.") from None
    if len(items) != 2 or any(isinstance(v, bool) or not float(v).is_integer() for v in items
                              if isinstance(v, (int, float))) or not all(isinstance(v, (int, float)) for v in items):
        raise ValueError(f"{name}={value!r} is invalid: give an int or (H, W), e.g. (224, 224).")
    return (int(items[0]), int(items[1]))


def as_size(value: int | Sequence[int], n: int, name: str = "img_size") -> tuple[int, ...]:
    """An int or an ``n``-sequence of ints as an ``n``-tuple (``as_pair`` for ``n = 2``).

    Args:
        value: An int (repeated) or ``n`` ints.
        n: Number of spatial dimensions (2 or 3).
        name: The argument's name for the error message.
    """
    if n == 2:
        return as_pair(value, name)
    shape = "(D, H, W)" if n == 3 else f"{n} values"
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is invalid: give an int or {shape}.")
    if isinstance(value, int):
        return (value,) * n
    try:
        items = list(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}={value!r} is invalid: give an int or {shape}.") from None
    if len(items) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                  and float(v).is_integer() for v in items):
        raise ValueError(f"{name}={value!r} is invalid: give an int or {shape}.")
    return tuple(int(v) for v in items)


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Write a file atomically: ``writer(tmp_path)`` then rename onto ``path``.

    An interruption leaves either the old file or no file, never a half-written one.

    Args:
        path: Final destination.
        writer: Function that writes the complete file to the temporary path it is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions of a normally created file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        writer(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text))


def resolve_device(device: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N|mps`` into a ``torch.device``, checking availability.

    Args:
        device: Requested device; ``auto`` picks CUDA, then MPS, then CPU.
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} requested but CUDA is not available; use --device cpu or auto.")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device='mps' requested but MPS is not available; use --device cpu or auto.")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ConfigError(f"device={device!r} is not valid; use auto, cpu, cuda, cuda:N or mps.")
    return torch.device(device)
