"""Learning-rate schedule: the paper's poly decay per iteration, with the two-stage rule.

The learning rate of iteration ``it`` (0-based, counted over the whole run) is::

    lr(it) = base_lr * scale(it) * (1 - it / total_iterations) ** power
    scale(it) = 1                       while the transformer is frozen (stage 1)
              = stage2_lr_scale         afterwards (stage 2), only when two-stage training is on

The poly factor continues across the stage boundary (it does not restart). Without two-stage
training (``freeze_epochs == 0``) ``scale`` is always 1 and this is the official schedule.

The official code sets the learning rate *after* each step from the iteration count before the
increment, so its step ``it >= 1`` uses ``(1 - (it - 1) / max_it) ** 0.9``; here step ``it`` uses
``(1 - it / max_it) ** 0.9``, i.e. the same curve without the one-step lag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PolySchedule:
    """Poly learning-rate decay over iterations with an optional second-stage scale.

    Args:
        base_lr: Learning rate at iteration 0.
        total_iterations: Iterations of the whole run (the decay reaches 0 there).
        power: Poly exponent (0.9 in the paper).
        freeze_epochs: Epochs of stage 1 (one parameter group frozen); 0 disables two-stage training.
        stage2_lr_scale: Factor applied to the learning rate from the first stage-2 iteration.
        iterations_per_epoch: Iterations per epoch, to locate the stage boundary.
    """

    base_lr: float
    total_iterations: int
    power: float = 0.9
    freeze_epochs: int = 0
    stage2_lr_scale: float = 1.0
    iterations_per_epoch: int = 1

    def __post_init__(self) -> None:
        if self.total_iterations < 1:
            raise ValueError(f"total_iterations={self.total_iterations} must be >= 1.")
        if self.iterations_per_epoch < 1:
            raise ValueError(f"iterations_per_epoch={self.iterations_per_epoch} must be >= 1.")

    @property
    def stage2_start(self) -> int | None:
        """First iteration of stage 2, or ``None`` without two-stage training."""
        if self.freeze_epochs <= 0:
            return None
        return self.freeze_epochs * self.iterations_per_epoch

    def stage(self, iteration: int) -> int:
        """1 while the transformer is frozen, else 2 (always 1 without two-stage training)."""
        start = self.stage2_start
        return 2 if start is not None and iteration >= start else 1

    def lr(self, iteration: int) -> float:
        """Learning rate of (0-based) ``iteration``."""
        frac = min(max(iteration, 0), self.total_iterations) / self.total_iterations
        scale = self.stage2_lr_scale if self.stage(iteration) == 2 else 1.0
        return self.base_lr * scale * (1.0 - frac) ** self.power

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set the learning rate of every parameter group for ``iteration``; return the base rate.

        A group's ``lr_scale`` entry (``train.lr_scales``) multiplies its rate.
        """
        lr = self.lr(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr * float(group.get("lr_scale", 1.0))
        return lr

    def state_dict(self) -> dict[str, Any]:
        """Plain-type description (stored in checkpoints; the position is the iteration count)."""
        return {
            "name": "poly",
            "base_lr": self.base_lr,
            "total_iterations": self.total_iterations,
            "power": self.power,
            "freeze_epochs": self.freeze_epochs,
            "stage2_lr_scale": self.stage2_lr_scale,
            "iterations_per_epoch": self.iterations_per_epoch,
        }


__all__ = ["PolySchedule"]
