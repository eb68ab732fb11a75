"""Random-number-generator state as plain types, so checkpoints load with ``weights_only=True``.

Python's ``random`` state becomes nested lists, NumPy's legacy global state a dict of ints and
lists, torch's CPU and CUDA states ``uint8`` tensors.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    Args:
        seed: Any non-negative integer (reduced modulo 2**32 for NumPy).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixing integers (e.g. ``(seed, epoch, rank)``) deterministically."""
    ss = np.random.SeedSequence([int(p) % 2**63 for p in parts])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1, 2**31], dtype=np.uint64)) % 2**63


def configure_determinism(deterministic: bool) -> None:
    """Deterministic kernels (warn-only where none exists), or cuDNN autotuning as the official code.

    Args:
        deterministic: ``True``: ``torch.use_deterministic_algorithms(True, warn_only=True)``,
            cuDNN deterministic, no benchmark mode. ``False``: ``cudnn.benchmark = True`` (faster
            convolutions on GPU, not bit-reproducible there; no effect on CPU).
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def get_rng_state() -> dict[str, Any]:
    """Current states of ``random``, NumPy (global) and torch (CPU, all CUDA devices)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [int(version), [int(x) for x in internal], None if gauss is None else float(gauss)],
        "numpy": {
            "name": str(name),
            "keys": [int(x) for x in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`get_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], np.asarray(n["keys"], dtype=np.uint32), int(n["pos"]), int(n["has_gauss"]),
         float(n["cached_gaussian"]))
    )
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda])


__all__ = ["configure_determinism", "derive_seed", "get_rng_state", "seed_everything", "set_rng_state"]
