"""Layers: weight-standardized conv with input folding, attention paths, drop path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from transunet.layers import Attention, DropPath, FoldConv2d, StdConv2d, standardize_kernel


def test_standardized_kernel_statistics() -> None:
    w = standardize_kernel(torch.randn(8, 3, 7, 7) * 3 + 1)
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.zeros(8), atol=1e-5)
    assert torch.allclose(w.var(dim=(1, 2, 3), unbiased=False), torch.ones(8), atol=1e-3)


@pytest.mark.parametrize("cls", [StdConv2d, FoldConv2d])
def test_one_channel_fold_equals_repeated_input(cls: type) -> None:
    """Folding after standardization equals the official repeat of a grey image to 3 channels."""
    torch.manual_seed(0)
    three = cls(3, 16, 7, stride=2, padding=3, bias=False)
    one = cls(3, 16, 7, stride=2, padding=3, bias=False, input_channels=1)
    one.load_state_dict(three.state_dict())
    x = torch.rand(2, 1, 32, 48)  # image-like input in [0, 1)
    assert one.weight.shape == (16, 3, 7, 7)
    ref = three(x.repeat(1, 3, 1, 1))
    assert (one(x) - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    if cls is StdConv2d:
        # summing raw kernels first and standardizing afterwards would NOT be equivalent
        naive = F.conv2d(x, standardize_kernel(three.weight.sum(1, keepdim=True)), stride=2, padding=3)
        assert (naive - three(x.repeat(1, 3, 1, 1))).abs().max().item() > 1e-2


def test_fold_rejects_other_channel_counts() -> None:
    with pytest.raises(ValueError, match="input_channels=2"):
        FoldConv2d(3, 4, 3, input_channels=2)


@pytest.mark.parametrize("n", [7, 64])
def test_attention_fused_equals_explicit(n: int) -> None:
    torch.manual_seed(0)
    fused = Attention(32, 4, attn_impl="fused").eval()
    explicit = Attention(32, 4, attn_impl="explicit").eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(3, n, 32)
    a = fused(x)
    b = explicit(x)
    store: list[torch.Tensor] = []
    fused.attention_store = store  # what SegmentationModel.capture_attention does
    c = fused(x)
    fused.attention_store = None
    assert len(store) == 1 and not explicit.recording
    wc = store[0]
    assert (a - b).abs().max().item() <= 1e-5 and (a - c).abs().max().item() <= 1e-5
    assert wc.shape == (3, 4, n, n)
    q = fused.query(x).view(3, n, 4, 8).transpose(1, 2)
    k = fused.key(x).view(3, n, 4, 8).transpose(1, 2)
    assert torch.allclose(wc, torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1), atol=1e-6)


def test_attention_rejects_bad_head_count_and_impl() -> None:
    with pytest.raises(ValueError, match="not divisible by num_heads=5"):
        Attention(32, 5)
    with pytest.raises(ValueError, match="Did you mean 'explicit'"):
        Attention(32, 4, attn_impl="explicitt")


def test_drop_path_scales_kept_samples() -> None:
    torch.manual_seed(0)
    dp = DropPath(0.5).train()
    y = dp(torch.ones(1000, 3))
    kept = y[:, 0] != 0
    assert torch.all(y[kept] == 2.0) and 350 < int(kept.sum()) < 650
    assert torch.equal(dp.eval()(torch.ones(4, 3)), torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"drop_path=1.0"):
        DropPath(1.0)
