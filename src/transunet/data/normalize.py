"""Intensity normalisation shared by dataset preparation and prediction.

A normalisation is described by a small JSON-able dict (stored in ``dataset.json`` and in every
checkpoint's ``preprocessing``), so ``transunet predict`` applies exactly what the model was
trained on:

* ``{"kind": "ct_window", "low": -125, "high": 275}``: clip to ``[low, high]`` (HU), then scale to
  ``[0, 1]`` with ``(x - low) / (high - low)`` (the official Synapse preprocessing).
* ``{"kind": "zscore"}``: per volume, ``(x - mean) / std`` over all voxels (MRI); a constant
  volume becomes all zeros.
* ``{"kind": "none"}``: the image is used as it is (already normalised; nnU-Net's ``noNorm``).
* ``{"kind": "rescale_to_0_1"}``: per volume, ``(x - min) / (max - min)`` (nnU-Net's
  ``rescale_to_0_1``); a constant volume becomes all zeros.
* ``{"kind": "rgb_to_0_1"}``: ``x / 255`` clipped to ``[0, 1]`` (nnU-Net's ``rgb_to_0_1``).

A multi-channel dataset records a list with one such dict per channel (each channel is normalised
on its own, as nnU-Net does): :func:`channel_normalizations` reads either form.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from transunet.errors import DataError

log = logging.getLogger(__name__)

#: The CT window of the official Synapse preprocessing (HU).
DEFAULT_CT_WINDOW = {"kind": "ct_window", "low": -125.0, "high": 275.0}
KINDS = ("ct_window", "zscore", "none", "rescale_to_0_1", "rgb_to_0_1")


def ct_window(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to ``[low, high]`` and scale to ``[0, 1]``.

    Args:
        image: Intensities in HU, any shape.
        low: Lower window bound.
        high: Upper window bound (``> low``).

    Returns:
        float32 array of the same shape.
    """
    low, high = float(low), float(high)
    if not high > low:
        raise ValueError(f"CT window ({low}, {high}) is empty; the upper bound must exceed the lower one.")
    x = np.clip(np.asarray(image, dtype=np.float64), low, high)
    return ((x - low) / (high - low)).astype(np.float32)


def zscore(image: np.ndarray) -> np.ndarray:
    """Per-volume z-score ``(x - mean) / std`` over all voxels (zeros for a constant volume).

    Args:
        image: Intensities, any shape.

    Returns:
        float32 array of the same shape.
    """
    x = np.asarray(image, dtype=np.float64)
    mean, std = float(x.mean()), float(x.std())
    if std == 0.0:
        return np.zeros(x.shape, dtype=np.float32)
    return ((x - mean) / std).astype(np.float32)


def check_normalization(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a normalisation dict; ``None`` means the official CT window (with a warning).

    Args:
        spec: ``{"kind": "ct_window", "low": ..., "high": ...}``, ``{"kind": "zscore"}``,
            ``{"kind": "none"}``, ``{"kind": "rescale_to_0_1"}`` or ``{"kind": "rgb_to_0_1"}``.

    Returns:
        A complete copy of the dict.
    """
    if spec is None:
        log.warning("no normalisation recorded; assuming the official Synapse CT window [-125, 275] HU")
        return dict(DEFAULT_CT_WINDOW)
    if not isinstance(spec, Mapping) or spec.get("kind") not in KINDS:
        kind = spec.get("kind") if isinstance(spec, Mapping) else spec
        raise DataError(f"unknown intensity normalisation {kind!r}; expected one of {', '.join(KINDS)} "
                        "(as written by 'transunet prepare' into dataset.json).")
    out = dict(spec)
    if out["kind"] == "ct_window":
        try:
            out["low"], out["high"] = float(out.get("low", -125.0)), float(out.get("high", 275.0))
        except (TypeError, ValueError):
            raise DataError(f"CT window {spec!r} needs numeric 'low' and 'high' bounds.") from None
        if not out["high"] > out["low"]:
            raise DataError(f"CT window ({out['low']}, {out['high']}) is empty; the upper bound must "
                            "exceed the lower one.")
    return out


def normalize(image: np.ndarray, spec: Mapping[str, Any] | None) -> np.ndarray:
    """Apply the normalisation ``spec`` to a raw volume.

    Args:
        image: Raw intensities, any shape (e.g. ``(S, H, W)``).
        spec: Normalisation dict (see the module docstring); ``None`` means the CT window.

    Returns:
        float32 array of the same shape.
    """
    spec = check_normalization(spec)
    if spec["kind"] == "ct_window":
        return ct_window(image, spec["low"], spec["high"])
    if spec["kind"] == "zscore":
        return zscore(image)
    if spec["kind"] == "rescale_to_0_1":
        x = np.asarray(image, dtype=np.float64)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        return np.zeros(x.shape, np.float32) if hi <= lo else ((x - lo) / (hi - lo)).astype(np.float32)
    if spec["kind"] == "rgb_to_0_1":
        return np.clip(np.asarray(image, dtype=np.float64) / 255.0, 0.0, 1.0).astype(np.float32)
    return np.asarray(image, dtype=np.float32)


def channel_normalizations(spec: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
                           channels: int = 1, where: Any = "normalization") -> list[dict[str, Any]]:
    """The checked normalisation of every input channel.

    Args:
        spec: One dict (one-channel data; ``None`` means the CT window) or a list of one dict per
            channel (as ``transunet prepare`` records for multi-channel data).
        channels: Number of input channels expected.
        where: What the record comes from (a checkpoint, a dataset.json), for messages.

    Returns:
        ``channels`` complete dicts.
    """
    if spec is None or isinstance(spec, Mapping):
        specs = [check_normalization(spec)]
    elif isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        specs = [check_normalization(s) for s in spec]
    else:
        raise DataError(f"{where}: normalisation {spec!r} must be a mapping or a list of mappings (one per channel); "
                        "prepare the dataset again.")
    if len(specs) != channels:
        raise DataError(f"{where}: {len(specs)} channel normalisation(s) recorded for {channels} input channel(s); "
                        "prepare the dataset again.")
    return specs


def normalize_channels(images: Sequence[np.ndarray], specs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Normalise each channel of a case with its own scheme and stack them slice-first.

    Args:
        images: One raw ``(S, H, W)`` volume per channel.
        specs: One normalisation dict per channel (:func:`channel_normalizations`).

    Returns:
        float32 ``(S, C, H, W)``.
    """
    if len(images) != len(specs):
        raise ValueError(f"{len(images)} channel volumes but {len(specs)} normalisations.")
    return np.stack([normalize(im, sp) for im, sp in zip(images, specs)], axis=1)


__all__ = ["DEFAULT_CT_WINDOW", "KINDS", "channel_normalizations", "check_normalization", "ct_window", "normalize",
           "normalize_channels", "zscore"]
