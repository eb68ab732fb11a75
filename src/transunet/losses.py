"""Segmentation losses as TransUNet trains: soft Dice and ``ce_weight * CE + dice_weight * Dice``.

The Dice loss reproduces the official implementation (``utils.DiceLoss`` of the TransUNet code,
called with ``softmax=True``) exactly:

- logits go through a softmax over the class dimension;
- labels are one-hot encoded over all ``K`` classes, background included;
- for every class ``k`` the sums run over the whole batch and all pixels at once::

      dice_k = 1 - (2 * sum(p_k * y_k) + 1e-5) / (sum(p_k ** 2) + sum(y_k ** 2) + 1e-5)

- the loss is the plain mean of ``dice_k`` over all ``K`` classes (background included).

The paper's total loss is ``0.5 * CrossEntropy + 0.5 * Dice`` (:class:`DiceCELoss` defaults).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SMOOTH = 1e-5


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> None:
    if logits.ndim < 3:
        raise ValueError(
            f"logits must be (B, K, H, W) (or (B, K, ...)), got shape {tuple(logits.shape)}."
        )
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} channels but the loss was built for {num_classes} "
            "classes; build it with num_classes equal to model.num_classes."
        )
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)}; expected (B, H, W) integer labels."
        )


class DiceLoss(nn.Module):
    """Soft multi-class Dice loss with squared denominators, averaged over all classes.

    Identical to the official TransUNet ``DiceLoss(n_classes)(logits, target, softmax=True)``.

    Args:
        num_classes: Number of classes ``K`` including background.
        weight: Optional per-class weights (length ``K``); the weighted sum is still divided by
            ``K`` as in the official code. ``None`` weighs every class 1.
        softmax: Apply a softmax to the inputs (``False`` when probabilities are passed).
        ignore_index: Label of voxels excluded from the loss (nnU-Net's ``ignore`` label, stored as
            255 by ``transunet prepare``); ``None`` uses every voxel.
    """

    def __init__(
        self, num_classes: int, weight: Sequence[float] | None = None, softmax: bool = True,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} is invalid: it must be >= 2.")
        if weight is not None and len(weight) != num_classes:
            raise ValueError(
                f"weight has {len(weight)} entries but num_classes={num_classes}; give one "
                "weight per class including background."
            )
        self.num_classes = int(num_classes)
        self.softmax = bool(softmax)
        self.weight = None if weight is None else [float(w) for w in weight]
        self.ignore_index = None if ignore_index is None else int(ignore_index)

    def per_class(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-class Dice losses ``1 - dice_k``.

        Args:
            logits: ``(B, K, H, W)`` logits (or probabilities when ``softmax=False``).
            target: ``(B, H, W)`` integer labels in ``[0, K)``.

        Returns:
            ``(K,)`` float32 tensor.
        """
        _check_inputs(logits, target, self.num_classes)
        probs = torch.softmax(logits.float(), dim=1) if self.softmax else logits.float()
        valid = None
        if self.ignore_index is not None:  # ignored voxels count neither in the prediction nor the target
            valid = target != self.ignore_index
            target = torch.where(valid, target, torch.zeros_like(target))
            probs = probs * valid.unsqueeze(1).to(probs.dtype)
        try:
            onehot = F.one_hot(target.long(), self.num_classes)  # (B, H, W, K)
        except RuntimeError:
            raise ValueError(
                f"target labels must lie in [0, {self.num_classes}), got values in "
                f"[{int(target.min())}, {int(target.max())}]; check model.num_classes against "
                "the dataset's class_names."
            ) from None
        onehot = onehot.movedim(-1, 1).to(probs.dtype)  # (B, K, H, W)
        if valid is not None:
            onehot = onehot * valid.unsqueeze(1).to(probs.dtype)
        dims = [0] + list(range(2, probs.ndim))
        intersect = (probs * onehot).sum(dim=dims)  # (K,)
        y_sum = (onehot * onehot).sum(dim=dims)
        z_sum = (probs * probs).sum(dim=dims)
        return 1.0 - (2.0 * intersect + SMOOTH) / (z_sum + y_sum + SMOOTH)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean Dice loss over all classes.

        Args:
            logits: ``(B, K, H, W)`` logits.
            target: ``(B, H, W)`` integer labels.

        Returns:
            Scalar loss.
        """
        losses = self.per_class(logits, target)
        if self.weight is not None:
            losses = losses * torch.tensor(self.weight, dtype=losses.dtype, device=losses.device)
        return losses.sum() / self.num_classes


class DiceCELoss(nn.Module):
    """``ce_weight * CrossEntropy + dice_weight * Dice``, the paper's training loss (0.5 / 0.5).

    Args:
        num_classes: Number of classes ``K`` including background.
        ce_weight: Weight of the cross-entropy term.
        dice_weight: Weight of the Dice term.
        ignore_index: Label of voxels excluded from both terms (nnU-Net's ``ignore`` label), or None.
    """

    def __init__(self, num_classes: int, ce_weight: float = 0.5, dice_weight: float = 0.5,
                 ignore_index: int | None = None) -> None:
        super().__init__()
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight <= 0:
            raise ValueError(
                f"loss weights ce_weight={ce_weight}, dice_weight={dice_weight} are invalid: both "
                "must be >= 0 and at least one > 0."
            )
        self.num_classes = int(num_classes)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.dice = DiceLoss(num_classes, ignore_index=self.ignore_index)

    def components(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Total loss and its two terms.

        Args:
            logits: ``(B, K, H, W)`` logits (computed in float32 whatever their dtype).
            target: ``(B, H, W)`` integer labels.

        Returns:
            ``(total, ce, dice)`` scalars.
        """
        _check_inputs(logits, target, self.num_classes)
        logits = logits.float()
        if self.ignore_index is not None and not bool((target != self.ignore_index).any()):
            ce = logits.sum() * 0.0  # every voxel ignored: no signal (cross_entropy would give NaN)
        else:
            ce = F.cross_entropy(logits, target.long(),
                                 ignore_index=-100 if self.ignore_index is None else self.ignore_index)
        dice = self.dice(logits, target)
        return self.ce_weight * ce + self.dice_weight * dice, ce, dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of cross-entropy and Dice.

        Args:
            logits: ``(B, K, H, W)`` logits.
            target: ``(B, H, W)`` integer labels.

        Returns:
            Scalar loss.
        """
        return self.components(logits, target)[0]


__all__ = ["SMOOTH", "DiceCELoss", "DiceLoss"]
