"""The execution fast paths keep the computation, for every registered model (``layers/fast.py``).

* ``for_inference()`` (frozen kernels, BatchNorm folding, oneDNN linear): float32 logits within
  1e-4 of the plain eval model, with non-trivial BatchNorm statistics;
* ``use_fast_kernels()`` (oneDNN linear in training): same loss and gradients as ``F.linear``;
  its counter-based dropout: the documented hash (against numpy's uint32 arithmetic), the keep
  rate (binomial test), independence within and across masks (chi-square tests), inverted
  scaling in both passes, reproducibility from the seed, replay under checkpointing;
* ``set_checkpointing()``: same gradients (dropout replayed) and BatchNorm running statistics
  updated once, not twice;
* bf16 inference: logits close, labels nearly all equal;
* the Predictor rebuilds its inference copy when the weights change (validation in training).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from tests.models.test_contract import NAMES, build, tiny
from transunet.layers.fast import (
    FastDropout,
    FastLinear,
    InferenceModel,
    dropout,
    dropout_keep_mask,
    eager_dropout,
    find_blocks,
    fold_batchnorm,
    freeze_kernels,
    linear,
    onednn_linear_available,
)
from transunet.layers.std_conv import FastStdConv2d, StdConv2d, standardize_kernel, standardize_kernel_fast


def _randomize_norm_stats(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (a fresh model has mean 0, var 1)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


@pytest.mark.parametrize("name", NAMES)  # the package's models
def test_for_inference_keeps_logits(name: str) -> None:
    size = tiny(name)[1][0]
    model = build(name, size).eval()
    _randomize_norm_stats(model)
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        ref = model(x)
    fast = model.for_inference()
    assert isinstance(fast, InferenceModel) and not fast.training
    out = fast(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # the original model is untouched (still its own classes, still BatchNorm)
    assert not any(isinstance(m, FastLinear) for m in model.modules())
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    n_bn_fast = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fast.modules())
    assert n_bn_fast <= n_bn


def test_fold_batchnorm_counts_and_refuses_training_mode() -> None:
    seq = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    _randomize_norm_stats(seq)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(seq)
    seq.eval()
    x = torch.randn(3, 2, 8, 8)
    ref = seq(x)
    assert fold_batchnorm(seq) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in seq.modules())
    torch.testing.assert_close(seq(x), ref, rtol=1e-5, atol=1e-5)


def test_freeze_kernels_is_bit_exact_for_std_conv() -> None:
    model = build("R50-ViT-B_16", (32, 32)).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        frozen = copy.deepcopy(model)
        n = freeze_kernels(frozen)
        assert n > 0
        assert torch.equal(frozen(x), ref)  # the same ops on the same weights


@pytest.mark.skipif(not onednn_linear_available(), reason="this PyTorch has no oneDNN linear kernel")
@pytest.mark.parametrize("shape,bias", [((7, 16), True), ((2, 5, 16), False), ((3, 1, 4, 16), True)])
def test_onednn_linear_forward_backward(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(12, 16, requires_grad=True)
    b = torch.randn(12, requires_grad=True) if bias else None
    g = torch.randn(*shape[:-1], 12)
    y = linear(x, w, b)
    grads = torch.autograd.grad(y, [x, w] + ([b] if bias else []), g)
    y_ref = F.linear(x, w, b)
    grads_ref = torch.autograd.grad(y_ref, [x, w] + ([b] if bias else []), g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_onednn_linear_leaves_autocast_and_other_dtypes_to_pytorch() -> None:
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w).dtype == torch.bfloat16  # autocast's bf16 GEMM, not the fp32 oneDNN path
    assert linear(x.double(), w.double()).dtype == torch.float64


def test_fast_kernels_training_step_matches_and_keeps_state_dict() -> None:
    torch.manual_seed(0)
    plain = build("R50-ViT-B_16", (32, 32)).train()
    fast = copy.deepcopy(plain)
    keys = list(fast.state_dict())
    n = fast.use_fast_kernels()
    n_linear = sum(type(m) is nn.Linear for m in plain.modules())
    n_std = sum(type(m) is StdConv2d for m in plain.modules())
    n_parts = len(plain.channels_last_parts())  # the decoder and the head
    assert n == n_linear + sum(type(m) is nn.Dropout for m in plain.modules()) + n_std + n_parts
    assert n_linear > 0 and n_std > 0 and n_parts == 2
    seen = []
    fast.decoder.register_forward_hook(lambda m, a, out: seen.append(
        (a[0].is_contiguous(memory_format=torch.channels_last), out.is_contiguous(memory_format=torch.channels_last))))
    assert list(fast.state_dict()) == keys
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32))
    losses, grads = [], []
    for m in (plain, fast):
        torch.manual_seed(1)
        with eager_dropout():  # PyTorch's masks in both, so only the linear kernels differ
            loss = F.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss.detach())
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    assert seen == [(True, True)]  # the decoder trained channels-last
    assert fast(x).is_contiguous()  # the model's output is back in the default layout
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-5, msg=k)
    assert fast.use_fast_kernels(False) == n
    assert not fast._forward_hooks and not fast.decoder._forward_pre_hooks
    assert not any(isinstance(m, (FastLinear, FastDropout, FastStdConv2d)) for m in fast.modules())


def test_fast_weight_standardization_matches_the_reference_in_both_passes() -> None:
    torch.manual_seed(0)
    for shape in [(64, 3, 7, 7), (256, 64, 1, 1), (128, 128, 3, 3)]:
        w = (torch.randn(*shape) * 0.05 + 0.01).requires_grad_()
        g = torch.randn(*shape)
        ref = standardize_kernel(w, 1e-5)
        fast = standardize_kernel_fast(w, 1e-5)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
        (g_ref,) = torch.autograd.grad(ref, w, g)
        (g_fast,) = torch.autograd.grad(fast, w, g)
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-4)
        assert float(fast.detach().mean(dim=(1, 2, 3)).abs().max()) < 1e-5


def _numpy_keep_mask(n: int, p: float, seed: int) -> np.ndarray:
    """The documented mask, in numpy's wrapping uint32 arithmetic."""
    g = torch.Generator().manual_seed(seed)
    k1, k2 = torch.randint(-2**31, 2**31, (2,), dtype=torch.int64, generator=g).tolist()
    h = np.arange(n, dtype=np.uint32) * np.uint32((k1 | 1) & 0xFFFFFFFF) + np.uint32(k2 & 0xFFFFFFFF)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h.view(np.int32) >= round(p * 2**32) - 2**31


@pytest.mark.parametrize("p,n", [(0.1, 400_000), (0.5, 400_000), (0.9, 400_000), (0.1, (1 << 21) + 12_345)])
def test_dropout_mask_is_the_documented_hash_with_the_right_rate(p: float, n: int) -> None:  # n > 2^20: chunks
    mask = dropout_keep_mask((n,), p, generator=torch.Generator().manual_seed(7))
    assert mask.dtype == torch.bool
    np.testing.assert_array_equal(mask.numpy(), _numpy_keep_mask(n, p, 7))
    kept = int(mask.sum())
    assert stats.binomtest(kept, n, 1 - p).pvalue > 1e-4, kept / n


def test_dropout_masks_are_independent_within_and_across_calls() -> None:
    g = torch.Generator().manual_seed(11)
    a = dropout_keep_mask((200_000,), 0.3, generator=g).numpy()
    b = dropout_keep_mask((200_000,), 0.3, generator=g).numpy()
    assert not np.array_equal(a, b)
    for u, v in [(a[:-1], a[1:]), (a[::2], a[1::2]), (a[:-64], a[64:]), (a, b)]:  # neighbours, strides, calls
        table = np.array([[np.sum(u & v), np.sum(u & ~v)], [np.sum(~u & v), np.sum(~u & ~v)]])
        assert stats.chi2_contingency(table).pvalue > 1e-4, table


def test_dropout_reproducible_from_the_seed_and_the_thread_count() -> None:
    masks = []
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            torch.manual_seed(5)
            masks.append(dropout_keep_mask((3, 1000, 77), 0.1))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(masks[0], masks[1])


def test_dropout_scales_both_passes_and_is_identity_when_off() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 257, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.25)
    keep = y != 0
    torch.testing.assert_close(y[keep], x[keep] / 0.75)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, torch.where(keep, g / 0.75, 0.0))
    torch.manual_seed(3)  # the mask comes from the default generator: the same seed, the same mask
    assert torch.equal(dropout(x, 0.25) != 0, keep)
    assert dropout(x, 0.25, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dropout(x.bfloat16(), 0.25).dtype == torch.bfloat16
    layer = nn.Dropout(0.25)
    layer.__class__ = FastDropout
    assert layer.eval()(x) is x


@pytest.mark.parametrize("name", ["R50-UNet", "R50-AttnUNet"])
def test_channels_last_decoder_blocks_keep_the_training_step(name: str) -> None:
    plain = build(name, (32, 32)).train()
    fast = copy.deepcopy(plain)
    fast.use_fast_kernels()
    layouts = []
    fast.decoder.blocks[-1].register_forward_hook(
        lambda m, a, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)))
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32))
    results = []
    for m in (plain, fast):
        out = m(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}, out.is_contiguous()))
    assert layouts == [True] and results[1][2]  # blocks channels-last inside, the logits contiguous outside
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for k, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][k], g, rtol=1e-4, atol=1e-5, msg=k)


def test_find_blocks_takes_the_architectures_units() -> None:
    model = build("R50-ViT-B_16", (32, 32))
    kinds = {type(b).__name__ for b in find_blocks(model)}
    assert kinds == {"PreActBottleneck", "Block", "DecoderBlock"}


@pytest.mark.parametrize("name", ["R50-ViT-B_16", "UNet", "Swin-Unet"])
def test_checkpointing_same_gradients_and_batchnorm_statistics(name: str) -> None:
    size = tiny(name)[1][0]
    args = {"dropout": 0.2} if name == "R50-ViT-B_16" else {}
    torch.manual_seed(0)
    from transunet import create_model

    plain = create_model(name, num_classes=3, img_size=size, **{**tiny(name)[0], **args}).train()
    ckpt = copy.deepcopy(plain)
    assert ckpt.set_checkpointing() > 0
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    x, y = torch.randn(2, 1, *size), torch.randint(0, 3, (2, *size))
    results = []
    for m in (plain, ckpt):
        torch.manual_seed(3)  # same dropout masks in both models; checkpointing must replay them
        out = m(x)
        loss = F.cross_entropy(out[0] if isinstance(out, list) else out, y)
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None},
                        {k: b.clone() for k, b in m.named_buffers()}))
    torch.testing.assert_close(results[1][0], results[0][0])
    for k, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][k], g, rtol=1e-5, atol=1e-6, msg=k)
    for k, b in results[0][2].items():  # running statistics updated exactly once
        torch.testing.assert_close(results[1][2][k], b, rtol=0, atol=0, msg=k)
    assert ckpt.set_checkpointing(False) > 0


def test_checkpointing_replays_the_fast_dropout_masks() -> None:
    from transunet import create_model

    torch.manual_seed(0)
    fast = create_model("R50-ViT-B_16", num_classes=3, img_size=(32, 32),
                        **{**tiny("R50-ViT-B_16")[0], "dropout": 0.3}).train()
    assert fast.use_fast_kernels() > 0
    ckpt = copy.deepcopy(fast)
    assert ckpt.set_checkpointing() > 0
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32))
    grads = []
    for m in (fast, ckpt):
        torch.manual_seed(3)
        F.cross_entropy(m(x), y).backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    for k, g in grads[0].items():  # a mask drawn anew in the recomputation would change these
        torch.testing.assert_close(grads[1][k], g, rtol=1e-5, atol=1e-6, msg=k)


def test_bf16_inference_close_to_fp32() -> None:
    model = build("R50-ViT-B_16", (32, 32)).eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
    out = model.for_inference(dtype=torch.bfloat16)(x)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.9


def test_predictor_rebuilds_its_inference_copy_when_weights_change() -> None:
    import numpy as np

    from transunet.infer import Predictor

    model = build("UNet", (16, 16))
    pred = Predictor(model, (16, 16), batch_size=2)
    first = pred.runner
    assert pred.runner is first  # cached while the weights stay
    vol = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    a = pred.predict_volume(vol)
    assert np.array_equal(a, Predictor(model, (16, 16), batch_size=2, fast=False).predict_volume(vol))
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # an optimizer step
    assert pred.runner is not first

