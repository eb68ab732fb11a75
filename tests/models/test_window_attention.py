"""Shifted-window attention (``transunet.layers.window_attention``): fused == explicit, masks, index."""

from __future__ import annotations

import pytest
import torch

from transunet.layers.window_attention import (
    MASK_VALUE,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    stage_window,
    window_partition,
    window_reverse,
)

torch.manual_seed(0)


def test_partition_roundtrip_and_order() -> None:
    x = torch.arange(2 * 8 * 12 * 3, dtype=torch.float32).view(2, 8, 12, 3)
    win = window_partition(x, 4)
    assert win.shape == (2 * 2 * 3, 16, 3)
    # Windows are row-major: window 1 of sample 0 covers rows 0-3, columns 4-7.
    assert torch.equal(win[1].view(4, 4, 3), x[0, 0:4, 4:8])
    assert torch.equal(window_reverse(win, 4, 8, 12), x)


def test_relative_position_index_matches_offsets() -> None:
    w = 3
    idx = relative_position_index(w)
    assert idx.shape == (w * w, w * w) and idx.dtype == torch.long
    pos = [(i // w, i % w) for i in range(w * w)]
    for i, (yi, xi) in enumerate(pos):
        for j, (yj, xj) in enumerate(pos):
            assert idx[i, j] == (yi - yj + w - 1) * (2 * w - 1) + (xi - xj + w - 1)
    assert int(idx.max()) == (2 * w - 1) ** 2 - 1


def test_stage_window_clamp() -> None:
    assert stage_window((56, 56), 7, 3) == (7, 3)
    assert stage_window((7, 7), 7, 3) == (7, 0)  # no larger than the window: no shift
    assert stage_window((2, 4), 4, 2) == (2, 0)  # smaller side becomes the window


def test_shift_mask_regions() -> None:
    mask = shifted_window_mask((8, 8), 4, 2)
    assert mask.shape == (4, 16, 16)
    assert set(mask.unique().tolist()) <= {0.0, MASK_VALUE}
    assert torch.equal(mask, mask.transpose(1, 2))
    assert torch.all(mask[0] == 0)  # top-left window holds one region
    # Bottom-right window: 2 x 2 regions of 2 x 2 tokens; each token sees its 4 region mates.
    assert torch.all((mask[3] == 0).sum(-1) == 4)
    # Right window of the top row: 2 regions (columns) of 8 tokens.
    assert torch.all((mask[1] == 0).sum(-1) == 8)


@pytest.mark.parametrize("shift", [0, 2])
def test_fused_equals_explicit(shift: int) -> None:
    dim, heads, w, B = 16, 2, 4, 3
    fused = WindowAttention(dim, w, heads, attn_impl="fused")
    explicit = WindowAttention(dim, w, heads, attn_impl="explicit")
    explicit.load_state_dict(fused.state_dict())
    with torch.no_grad():
        fused.relative_position_bias_table.normal_()
        explicit.relative_position_bias_table.copy_(fused.relative_position_bias_table)
    mask = shifted_window_mask((8, 8), w, shift) if shift else None
    x = torch.randn(B * 4, w * w, dim)
    a, b = fused(x, mask), explicit(x, mask)
    assert a.shape == x.shape
    assert (a - b).abs().max().item() < 1e-5


def test_records_per_window_softmax() -> None:
    attn = WindowAttention(8, 4, 2)  # fused by default; recording switches to the explicit path
    store: list[torch.Tensor] = []
    attn.attention_store = store
    x = torch.randn(2 * 4, 16, 8)
    out = attn(x, shifted_window_mask((8, 8), 4, 2))
    attn.attention_store = None
    assert out.shape == x.shape
    assert len(store) == 1 and store[0].shape == (8, 2, 16, 16)
    assert torch.allclose(store[0].sum(-1), torch.ones(8, 2, 16))
    assert not store[0].requires_grad


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        WindowAttention(10, 4, 3)
    with pytest.raises(ValueError, match="attn_impl"):
        WindowAttention(8, 4, 2, attn_impl="flash")


def test_attention_flops_counts_both_matmuls() -> None:
    """``attention_flops``: 2 FLOPs x (QK^T + AV) = 2 * 2 * (B*nW) * h * N * N * d, as
    ``FlopCounterMode`` counts the explicit path's two ``bmm``s."""
    from torch.utils.flop_counter import FlopCounterMode

    dim, heads, w, Bw = 16, 2, 4, 6
    attn = WindowAttention(dim, w, heads, attn_impl="explicit")
    x = torch.randn(Bw, w * w, dim)
    out = attn(x)
    expected = 2 * 2 * Bw * heads * (w * w) ** 2 * (dim // heads)
    assert attn.attention_flops((x,), out) == expected
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        attn(x)
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert by_op["aten.bmm"] == expected


def test_count_flops_uses_attention_flops_of_any_layer() -> None:
    """``count_flops`` adds ``attention_flops`` of every layer that defines it (beside Linears)."""
    from transunet.profile import count_flops

    class Wrap(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = WindowAttention(16, 4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x)

    model = Wrap()
    x = torch.randn(3, 16, 16)
    total = sum(count_flops(model, x)["flops"].values())
    linears = 2 * 3 * 16 * (16 * 48 + 16 * 16)  # qkv + proj
    assert total == linears + model.attn.attention_flops((x,), None)
