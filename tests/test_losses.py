"""DiceLoss / DiceCELoss against a literal re-implementation of the official formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transunet.losses import DiceCELoss, DiceLoss


def official_dice_loss(logits: torch.Tensor, target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The official TransUNet utils.DiceLoss(n_classes)(logits, target, softmax=True), spelled out."""
    inputs = torch.softmax(logits, dim=1)
    onehot = torch.cat([(target == i).unsqueeze(1) for i in range(n_classes)], dim=1).float()
    loss = 0.0
    for i in range(n_classes):
        score, tgt = inputs[:, i], onehot[:, i]
        intersect = torch.sum(score * tgt)
        y_sum = torch.sum(tgt * tgt)
        z_sum = torch.sum(score * score)
        loss += 1 - (2 * intersect + 1e-5) / (z_sum + y_sum + 1e-5)
    return loss / n_classes


@pytest.mark.parametrize("k,shape", [(2, (1, 8, 8)), (4, (3, 16, 12)), (9, (2, 32, 32))])
def test_dice_matches_official_formula(k: int, shape: tuple[int, int, int]) -> None:
    g = torch.Generator().manual_seed(k)
    logits = torch.randn(shape[0], k, *shape[1:], generator=g, dtype=torch.float64)
    target = torch.randint(0, k, shape, generator=g)
    ours = DiceLoss(k)(logits, target)
    ref = official_dice_loss(logits, target, k)
    assert torch.allclose(ours.double(), ref, atol=1e-6), (ours, ref)


def test_dice_averages_over_all_classes_including_absent_background() -> None:
    # A class absent from both the target and (almost) the prediction scores ~0 loss, so the mean
    # over K classes (not over present classes) is what makes this 1/3 of the present-class loss.
    target = torch.ones(1, 4, 4, dtype=torch.long)  # only class 1 present
    logits = torch.full((1, 3, 4, 4), -30.0)
    logits[:, 2] = 30.0  # predicts class 2 everywhere: class 1 and 2 both have loss ~1
    loss = DiceLoss(3)(logits, target)
    assert loss.item() == pytest.approx(2.0 / 3.0, abs=1e-4)


def test_dice_perfect_prediction_is_zero_and_gradients_flow() -> None:
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = F.one_hot(target, 3).movedim(-1, 1).float() * 50.0
    assert DiceLoss(3)(logits, target).item() == pytest.approx(0.0, abs=1e-5)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    DiceLoss(3)(x, torch.randint(0, 3, (2, 5, 5))).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_dice_ce_is_weighted_sum_of_ce_and_official_dice() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 16, 16, generator=g)
    target = torch.randint(0, 9, (4, 16, 16), generator=g)
    total, ce, dice = DiceCELoss(9).components(logits, target)
    assert ce.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    assert dice.item() == pytest.approx(official_dice_loss(logits, target, 9).item(), rel=1e-5)
    assert total.item() == pytest.approx(0.5 * ce.item() + 0.5 * dice.item(), rel=1e-6)
    other = DiceCELoss(9, ce_weight=0.2, dice_weight=0.8)(logits, target)
    assert other.item() == pytest.approx(0.2 * ce.item() + 0.8 * dice.item(), rel=1e-6)


def test_bf16_logits_are_scored_in_float32() -> None:
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    loss = DiceCELoss(4)(logits.bfloat16(), target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(DiceCELoss(4)(logits.bfloat16().float(), target).item())


def test_bad_inputs_raise_one_line_errors() -> None:
    with pytest.raises(ValueError, match="channels"):
        DiceLoss(3)(torch.randn(1, 4, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target shape"):
        DiceLoss(3)(torch.randn(1, 3, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        DiceLoss(3)(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="num_classes"):
        DiceLoss(1)
    with pytest.raises(ValueError, match="weight"):
        DiceCELoss(3, ce_weight=-1.0)
