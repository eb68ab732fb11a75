"""Intensity-only classifiers: how far per-voxel HU values alone get on a dataset.

Used to show that the CT phantom cannot be segmented by thresholds (organ shape and position
carry the information, as in real CT). Two classifiers are fitted on training volumes:

* ``map``: the best multi-class rule on intensity alone: each HU bin is given the class most
  frequent in it (maximum a posteriori on the training histogram);
* ``interval``: for each organ separately, the HU interval ``[lo, hi]`` with the highest Dice on
  the training volumes (one organ versus the rest; the most favourable threshold rule per organ).

Both are scored by Dice per organ on the test volumes (mean over the cases where the organ is
present), then averaged over organs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from transunet.metrics import dice

_LO, _HI, _BIN = -1024.0, 1600.0, 5.0


def _bins(hu: np.ndarray) -> np.ndarray:
    return ((np.clip(hu, _LO, _HI - 1e-3) - _LO) // _BIN).astype(np.int64)


def _nbins() -> int:
    return int((_HI - _LO) // _BIN) + 1


def fit_intensity_classifiers(train: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int
                              ) -> dict[str, np.ndarray]:
    """Fit both intensity classifiers.

    Args:
        train: ``(hu, label)`` volumes (any shape, equal per pair); labels ``0..num_classes-1``.
        num_classes: Number of classes including background.

    Returns:
        ``{"map": class per HU bin (nbins,), "interval": [lo_bin, hi_bin] per class (C, 2)}``.
    """
    nb = _nbins()
    hist = np.zeros((num_classes, nb), np.float64)
    for hu, lab in train:
        b = _bins(hu).ravel()
        hist += np.bincount(lab.ravel().astype(np.int64) * nb + b, minlength=num_classes * nb).reshape(num_classes, nb)
    map_rule = hist.argmax(0)
    total = np.concatenate([[0.0], np.cumsum(hist.sum(0))])
    intervals = np.zeros((num_classes, 2), np.int64)
    for c in range(1, num_classes):
        cc = np.concatenate([[0.0], np.cumsum(hist[c])])
        g = cc[-1]
        if g == 0:
            continue
        tp = cc[None, 1:] - cc[:-1, None]  # [lo, hi] -> true positives, lo on rows
        p = total[None, 1:] - total[:-1, None]
        dice = np.where(np.triu(np.ones((nb, nb), bool)), 2 * tp / np.maximum(p + g, 1), -1)
        lo, hi = np.unravel_index(int(np.argmax(dice)), dice.shape)
        intervals[c] = (lo, hi)
    return {"map": map_rule, "interval": intervals}


def score_intensity_classifiers(model: dict[str, np.ndarray], test: Sequence[tuple[np.ndarray, np.ndarray]],
                                num_classes: int) -> dict[str, np.ndarray]:
    """Dice per organ of both classifiers on test volumes.

    Args:
        model: Output of :func:`fit_intensity_classifiers`.
        test: ``(hu, label)`` test volumes.
        num_classes: Number of classes including background.

    Returns:
        ``{"map": Dice per class 1..C-1, "interval": Dice per class 1..C-1}`` (mean over the
        cases where the class is present).
    """
    out = {}
    for name in ("map", "interval"):
        per_class = []
        for c in range(1, num_classes):
            scores = []
            for hu, lab in test:
                gt = lab == c
                if not gt.any():
                    continue
                b = _bins(hu)
                if name == "map":
                    pred = model["map"][b] == c
                else:
                    lo, hi = model["interval"][c]
                    pred = (b >= lo) & (b <= hi)
                scores.append(dice(pred, gt))
            per_class.append(float(np.mean(scores)) if scores else float("nan"))
        out[name] = np.asarray(per_class)
    return out


def interval_hu(model: dict[str, np.ndarray], c: int) -> tuple[float, float]:
    """HU bounds of the fitted interval of class ``c``."""
    lo, hi = model["interval"][c]
    return (_LO + lo * _BIN, _LO + (hi + 1) * _BIN)
