"""Validation during training: whole-volume slice-wise inference and mean foreground Dice.

Each validation volume is predicted with a :class:`transunet.infer.Predictor` around the model
being trained (the same computation as ``transunet evaluate``). The score of a case is the Dice of
every foreground class ``1..K-1`` on the whole 3D volume, with one explicit rule for empty masks:

- class present in the ground truth: ``2|P∩G| / (|P| + |G|)`` (0 when the prediction misses it);
- class absent from the ground truth but predicted: 0 (a false positive is penalised);
- class absent from both: excluded (NaN) from that case's means.

Per class, the validation Dice is the mean over the cases where it is defined; the validation
score that selects ``best.pt`` is the mean of these per-class values (classes never defined are
skipped). Under ``torchrun`` the cases are shared round-robin between the processes and the
per-case results gathered, so every process computes the same score.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transunet.infer import Predictor
from transunet.metrics import foreground_dice
from transunet.train.distributed import DistInfo, all_gather_objects

log = logging.getLogger(__name__)


def summarize(per_case: dict[str, Sequence[float]], class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class means over cases (NaN-aware) and their mean.

    Args:
        per_case: Case id -> ``(K-1,)`` Dice values.
        class_names: Names of classes ``0..K-1``.

    Returns:
        ``{"mean_dice": float, "per_class": {name: float}, "per_case": {...}}`` (NaN when undefined).
    """
    names = list(class_names[1:])
    if not per_case:
        return {"mean_dice": math.nan, "per_class": {n: math.nan for n in names}, "per_case": {}}
    arr = np.asarray([per_case[c] for c in sorted(per_case)], dtype=np.float64)  # (cases, K-1)
    per_class = []
    for k in range(arr.shape[1]):
        col = arr[:, k][~np.isnan(arr[:, k])]
        per_class.append(float(col.mean()) if col.size else math.nan)
    defined = [v for v in per_class if not math.isnan(v)]
    return {
        "mean_dice": float(np.mean(defined)) if defined else math.nan,
        "per_class": dict(zip(names, per_class)),
        "per_case": {c: [float(x) for x in per_case[c]] for c in sorted(per_case)},
    }


def validate(
    model: nn.Module,
    root: str | Path,
    split: str,
    case_ids: Sequence[str],
    *,
    img_size: Sequence[int],
    num_classes: int,
    class_names: Sequence[str],
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    info: DistInfo,
) -> dict[str, Any]:
    """Predict every validation volume and score it (see the module docstring for the rules).

    Args:
        model: The plain (unwrapped) model; it is put in eval mode and restored afterwards.
        root: Prepared dataset folder.
        split: Validation split name.
        case_ids: Cases of the split.
        img_size: Network input ``(h, w)``.
        num_classes: Classes including background.
        class_names: Names of classes ``0..K-1``.
        batch_size: Slices per forward pass.
        device: Model device.
        amp_dtype: Autocast dtype or ``None``.
        info: Process placement; cases are shared between processes.

    Returns:
        :func:`summarize` output.
    """
    from transunet.data.datasets import load_volume, mask_ignored

    predictor = Predictor(model, img_size, device=device, batch_size=batch_size, amp_dtype=amp_dtype)
    mine = list(case_ids)[info.rank :: info.world_size]
    local: dict[str, list[float]] = {}
    for case_id in mine:
        vol = load_volume(root, split, case_id)
        if vol.label is None:
            raise ValueError(
                f"validation case {case_id!r} of split {split!r} in {root} has no label; "
                "validation needs labelled cases (or set data.val_split=null)."
            )
        pred, gt = mask_ignored(predictor.predict_volume(vol.image), vol.label, vol.ignore_label)
        local[case_id] = foreground_dice(pred, gt, num_classes).tolist()
    merged: dict[str, list[float]] = {}
    for part in all_gather_objects(local, info):
        merged.update(part)
    return summarize(merged, class_names)


__all__ = ["foreground_dice", "summarize", "validate"]
