"""Execution fast paths that keep the computation: oneDNN linear layers and Conv+BatchNorm folding.

Both are applied to any :class:`torch.nn.Module` by walking its submodules, so every architecture
gets them through the model contract (:meth:`transunet.models.base.SegmentationModel.accelerate`)
without code of its own.

* **oneDNN linear** (:class:`FastLinear`, :func:`use_onednn_linear`). On CPU, PyTorch runs a
  float32 ``nn.Linear`` through MKL's GEMM; oneDNN's matmul (the library that already runs the
  convolutions) reaches about twice MKL's rate on the transformer shapes of this family on AMD
  CPUs (measured by ``benchmarks/bench_speed.py --gemm``). :class:`FastLinear` sends float32 CPU
  inputs through ``torch.ops.mkldnn._linear_pointwise`` in the forward *and* in the backward pass
  (``grad_x = g @ W``, ``grad_W = g^T @ x``, ``grad_b = sum g``), and everything else (GPU
  tensors, autocast, other dtypes, a PyTorch without the op) through ``F.linear``. The module
  swap keeps the parameters, their names and the optimizer state: a checkpoint saved from a
  swapped model loads into a plain one and vice versa.
* **Conv+BatchNorm folding** (:func:`fold_batchnorm`, inference only). ``BatchNorm`` in eval mode
  is an affine map per channel, so ``bn(conv(x)) == conv'(x)`` with ``W' = W * g / s`` and
  ``b' = (b - mu) * g / s + beta`` (``s = sqrt(var + eps)``). The fold removes one full pass over
  every normalised activation. It is applied to a convolution directly followed by its
  ``BatchNorm`` inside an ``nn.Sequential`` (the ``Conv -> BN -> ReLU`` blocks of every model
  here); the ``BatchNorm`` becomes ``nn.Identity``.

Neither changes the result beyond float32 rounding (the tests assert ``<= 1e-4`` on logits).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from transunet.layers.std_conv import FastStdConv2d, FoldConv2d, StdConv2d

__all__ = ["FastDropout", "FastLinear", "InferenceModel", "channels_last_in_training", "checkpoint_blocks", "dropout",
           "dropout_keep_mask",
           "eager_dropout", "find_blocks", "fold_batchnorm", "freeze_kernels", "linear", "onednn_mm",
           "onednn_linear_available", "swap_class", "use_fast_dropout", "use_fast_std_conv", "use_onednn_linear"]

log = logging.getLogger(__name__)


def _probe_onednn_linear() -> tuple[bool, bool]:
    """(whether ``mkldnn._linear_pointwise`` runs here, whether it honours a transposed weight view)."""
    if not torch.backends.mkldnn.is_available():
        return False, False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        x, w, b = torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4)
        if not torch.equal(op(x, w, b, "none", [], ""), torch.full((2, 4), 3.0)):
            return False, False
        a = torch.arange(6.0).reshape(2, 3)
        w_t = torch.arange(12.0).reshape(3, 4).t()  # (4, 3) with strides (1, 4)
        return True, bool(torch.equal(op(a, w_t, None, "none", [], ""), a @ w_t.t()))
    except (AttributeError, RuntimeError, NotImplementedError):  # op missing, or no oneDNN kernel here
        return False, False


# probed once at import (two tiny products), constant for torch.compile
_ONEDNN_LINEAR, _ONEDNN_STRIDED_WEIGHT = _probe_onednn_linear()


def onednn_linear_available() -> bool:
    """Whether this PyTorch build runs ``mkldnn._linear_pointwise`` on this CPU."""
    return _ONEDNN_LINEAR


@torch.library.custom_op("transunet::onednn_mm", mutates_args=())
def onednn_mm(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``a @ b_t.T + bias`` through oneDNN (``a (M, K)``, ``b_t (N, K)``, ``bias (N,)`` or ``None``).

    A custom operator, so autograd uses the oneDNN backward below and ``torch.compile`` keeps it
    as one opaque call (Inductor would otherwise require a constant weight).
    """
    # oneDNN reads the weight operand through its strides, so the transposed views of the backward
    # pass (``W.t()``, ``x.t()``) are not copied; the row operand must be contiguous
    if not _ONEDNN_STRIDED_WEIGHT:
        b_t = b_t.contiguous()
    return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b_t, bias, "none", [], "")


@onednn_mm.register_fake
def _onednn_mm_fake(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return a.new_empty((a.shape[0], b_t.shape[0]))


def _onednn_mm_setup(ctx, inputs: tuple, output: torch.Tensor) -> None:
    a, b_t, bias = inputs
    ctx.save_for_backward(a, b_t)
    ctx.has_bias = bias is not None


def _onednn_mm_backward(ctx, grad: torch.Tensor):
    a, b_t = ctx.saved_tensors
    ga = gb = gbias = None
    if ctx.needs_input_grad[0]:
        ga = onednn_mm(grad, b_t.t(), None)  # (M, K) = g @ W
    if ctx.needs_input_grad[1]:
        gb = onednn_mm(grad.t(), a.t(), None)  # (N, K) = g^T @ x (g^T copied, x^T read strided)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gbias = grad.sum(0)
    return ga, gb, gbias


onednn_mm.register_autograd(_onednn_mm_backward, setup_context=_onednn_mm_setup)


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() >= 2 and x.numel() > 0 and not torch.is_autocast_enabled("cpu")
            and _ONEDNN_LINEAR)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through oneDNN for float32 CPU tensors outside autocast (see the module docstring).

    Args:
        x: ``(..., in_features)``.
        weight: ``(out_features, in_features)``.
        bias: ``(out_features,)`` or ``None``.

    Returns:
        ``(..., out_features)``.
    """
    if _use_onednn(x, weight):
        y = onednn_mm(x.reshape(-1, x.shape[-1]), weight, bias)  # (M, N)
        return y.reshape(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class FastLinear(nn.Linear):
    """``nn.Linear`` computed by :func:`linear`; same parameters and state-dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``(..., in_features)``."""
        return linear(x, self.weight, self.bias)


def swap_class(module: nn.Module, plain: type[nn.Module], fast: type[nn.Module], enable: bool = True) -> int:
    """Change the class of every submodule of exactly type ``plain`` to ``fast`` (or back).

    ``fast`` must be a subclass of ``plain`` that only overrides methods: parameters, buffers,
    hooks and state-dict keys stay, so a checkpoint saved from either loads into the other.

    Args:
        module: Any module (changed in place).
        plain: The class to replace.
        fast: Its drop-in subclass.
        enable: ``True`` for ``plain -> fast``, ``False`` for ``fast -> plain``.

    Returns:
        The number of modules changed.
    """
    src, dst = (plain, fast) if enable else (fast, plain)
    n = 0
    for m in module.modules():
        if type(m) is src:
            m.__class__ = dst
            n += 1
    return n


def use_onednn_linear(module: nn.Module, enable: bool = True) -> int:
    """Make every ``nn.Linear`` in ``module`` a :class:`FastLinear` (or back, ``enable=False``).

    Returns:
        The number of layers changed.
    """
    return swap_class(module, nn.Linear, FastLinear, enable)


def use_fast_std_conv(module: nn.Module, enable: bool = True) -> int:
    """Make every :class:`~transunet.layers.std_conv.StdConv2d` in ``module`` a
    :class:`~transunet.layers.std_conv.FastStdConv2d` (or back, ``enable=False``).

    Returns:
        The number of layers changed.
    """
    return swap_class(module, StdConv2d, FastStdConv2d, enable)


# ----------------------------------------------------------------------------------------------
# Counter-based dropout (CPU training)
# ----------------------------------------------------------------------------------------------
# MurmurHash3's 32-bit finalizer constants 0x85EBCA6B and 0xC2B2AE35, written as int32
_FMIX_1, _FMIX_2 = -2048144789, -1028477387
_EAGER_DROPOUT = [False]
_MASK_CHUNK = 1 << 20


class eager_dropout:
    """Context manager: :class:`FastDropout` layers draw PyTorch's own masks (``F.dropout``) inside it.

    Used to compare a fast training path with the reference one on identical masks (the
    benchmark's gradient check); training itself never needs it.
    """

    def __enter__(self) -> None:
        self._prev = _EAGER_DROPOUT[0]
        _EAGER_DROPOUT[0] = True

    def __exit__(self, *exc: object) -> None:
        _EAGER_DROPOUT[0] = self._prev


def dropout_keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu",
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """A Bernoulli(1 - p) keep-mask from a counter-based hash, in a few vectorised passes.

    Two 32-bit keys are drawn from ``generator`` (PyTorch's default CPU generator when ``None``,
    so ``torch.manual_seed``, saved RNG states and activation checkpointing's RNG replay all
    govern the masks); element ``i`` is kept when ``h = fmix32(i * k1 + k2)`` (MurmurHash3's
    finalizer, ``k1`` odd, arithmetic mod 2^32), read as a signed 32-bit integer, is at least
    ``round(p * 2^32) - 2^31``. ``h`` is uniform over the 2^32 values, so the keep probability is
    ``1 - p`` to within 2^-32; masks do not depend on the thread count.

    Args:
        shape: Mask shape (fewer than 2^31 elements).
        p: Drop probability, ``0 < p < 1``.
        device: Where to build the mask.
        generator: Source of the two keys.

    Returns:
        A bool tensor of ``shape``, ``True`` where the element is kept.
    """
    n = math.prod(int(d) for d in shape)
    if not 0.0 < p < 1.0 or n >= 2**31:
        raise ValueError(f"dropout_keep_mask needs 0 < p < 1 and fewer than 2^31 elements, got p={p}, {n} elements")
    k1, k2 = torch.randint(-2**31, 2**31, (2,), dtype=torch.int64, generator=generator).tolist()
    thr = round(p * 2**32) - 2**31
    keep = torch.empty(n, dtype=torch.bool, device=device)
    # in chunks of 2^20 elements: the two int32 scratch buffers (8 MiB) stay in cache through the
    # dozen passes of the hash, 2.5x faster than whole-tensor passes, and the transient memory is
    # bounded whatever the mask's size
    h = torch.empty(min(n, _MASK_CHUNK), dtype=torch.int32, device=device)
    t = torch.empty_like(h)
    for start in range(0, n, _MASK_CHUNK):
        stop = min(n, start + _MASK_CHUNK)
        hc, tc = h[: stop - start], t[: stop - start]
        torch.arange(start, stop, dtype=torch.int32, out=hc)
        hc.mul_(k1 | 1).add_(k2)  # int32 arithmetic wraps mod 2^32 (checked against numpy uint32 in the tests)
        # fmix32 with logical right shifts (``>>`` on int32 is arithmetic: mask off the sign copies)
        for shift, mult in ((16, _FMIX_1), (13, _FMIX_2), (16, None)):
            torch.bitwise_right_shift(hc, shift, out=tc).bitwise_and_((1 << (32 - shift)) - 1)
            hc.bitwise_xor_(tc)
            if mult is not None:
                hc.mul_(mult)
        torch.ge(hc, thr, out=keep[start:stop])
    return keep.view(tuple(shape))


class _MaskScale(torch.autograd.Function):
    """``x * keep * scale`` with the bool mask saved for the backward pass (1 byte per element)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout with :func:`dropout_keep_mask` masks for CPU tensors, ``F.dropout`` otherwise.

    Same distribution and scaling (``1 / (1 - p)``) as ``F.dropout``, other random numbers: on CPU
    PyTorch draws its Bernoulli masks serially: 156 ms of a float32 R50-ViT-B_16 training step at
    224 on 2 cores, 26 ms with these masks (``benchmarks/bench_speed.py --profile``). GPU
    tensors, ``p`` of 0 or 1, tensors of 2^31 elements or more, code inside :class:`eager_dropout`
    and code traced by ``torch.compile`` (whose C++ code generation fails on the int32 shifts in
    PyTorch 2.14) use ``F.dropout``.
    """
    if not training or p == 0.0:
        return x
    if (_EAGER_DROPOUT[0] or x.device.type != "cpu" or p >= 1.0 or x.numel() >= 2**31 or x.numel() == 0
            or torch.compiler.is_compiling()):  # Inductor fails to generate the int32 shifts (torch 2.14)
        return F.dropout(x, p, training)
    return _MaskScale.apply(x, dropout_keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class FastDropout(nn.Dropout):
    """``nn.Dropout`` drawing its CPU masks with :func:`dropout` (no parameters; ``inplace`` is ignored)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply dropout (training mode) or return ``x`` (eval mode)."""
        return dropout(x, self.p, self.training)


def use_fast_dropout(module: nn.Module, enable: bool = True) -> int:
    """Make every ``nn.Dropout`` in ``module`` a :class:`FastDropout` (or back, ``enable=False``).

    Returns:
        The number of layers changed.
    """
    return swap_class(module, nn.Dropout, FastDropout, enable)


# ----------------------------------------------------------------------------------------------
# Channels-last parts of a model in training
# ----------------------------------------------------------------------------------------------
def _map_4d(x: object, fn) -> object:
    """``fn`` applied to every 4D tensor in ``x`` (a tensor, or lists/tuples of them)."""
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return fn(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_map_4d(v, fn) for v in x)
    return x


def _to_channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _cl_inputs_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    if not module.training:
        return None
    return _map_4d(args, _to_channels_last), {k: _map_4d(v, _to_channels_last) for k, v in kwargs.items()}


def _contiguous_output_hook(module: nn.Module, args: tuple, output: object) -> object:
    return _map_4d(output, torch.Tensor.contiguous) if module.training else None


def channels_last_in_training(model: nn.Module, parts: list[nn.Module], enable: bool = True) -> int:
    """Store the 4D inputs of ``parts`` channels-last while ``model`` trains (in place, by hooks).

    The parts then compute in oneDNN's native layout; ``model``'s 4D outputs are returned in the
    default layout, so losses and callers see no difference. Evaluation mode is untouched. Meant
    for parts without GroupNorm, whose channels-last backward is slow on CPU (the R50 backbone),
    e.g. a convolutional decoder: its low-channel, full-resolution convolutions and bilinear
    upsampling are 2-3x faster channels-last (``benchmarks/bench_speed.py``).

    Args:
        model: The whole model.
        parts: Its submodules to run channels-last.
        enable: ``False`` removes the hooks installed before.

    Returns:
        The number of parts changed.
    """
    removed = 0  # hooks found by their function, so a deep copy of the model can be switched too
    for m in model.modules():
        for key, fn in list(m._forward_pre_hooks.items()):
            if fn is _cl_inputs_hook:
                del m._forward_pre_hooks[key]
                m._forward_pre_hooks_with_kwargs.pop(key, None)
                removed += 1
        for key, fn in list(m._forward_hooks.items()):
            if fn is _contiguous_output_hook:
                del m._forward_hooks[key]
    if not enable or not parts:
        return removed
    for m in parts:
        m.register_forward_pre_hook(_cl_inputs_hook, with_kwargs=True)
    model.register_forward_hook(_contiguous_output_hook)
    return len(parts)


def _foldable_conv(m: nn.Module) -> bool:
    """A convolution whose output scales with its kernel per output channel (not StdConv2d, which
    re-standardizes its kernel on every call; :func:`freeze_kernels` turns it into a plain one)."""
    if isinstance(m, StdConv2d):
        return False
    return type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) or isinstance(m, FoldConv2d)


@torch.no_grad()
def freeze_kernels(module: nn.Module) -> int:
    """Replace each :class:`~transunet.layers.std_conv.FoldConv2d` (and so ``StdConv2d``) by a plain
    ``nn.Conv2d`` holding its effective kernel, computed once (inference only, in place).

    Weight standardization and channel folding recompute the kernel from the stored weight on
    every call; the result is the same tensor each time in inference, so computing it once gives
    bit-identical outputs (the same ops on the same weight) without the per-call work.

    Args:
        module: A module; its kernels must not change afterwards (use a copy for inference).

    Returns:
        The number of convolutions frozen.
    """
    n = 0
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, FoldConv2d):
                w = child.effective_weight().detach().clone()
                conv = nn.Conv2d(w.shape[1] * child.groups, child.out_channels, child.kernel_size,
                                 stride=child.stride, padding=child.padding, dilation=child.dilation,
                                 groups=child.groups, bias=child.bias is not None, padding_mode=child.padding_mode,
                                 device=w.device, dtype=w.dtype)
                conv.weight.copy_(w)
                if child.bias is not None:
                    conv.bias.copy_(child.bias)
                conv.requires_grad_(False)
                conv.train(child.training)
                parent._modules[name] = conv
                n += 1
    return n


_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def _fold_pair(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    w = conv.weight
    conv.weight.copy_(w * scale.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype))
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_b = ((b - bn.running_mean) * scale + shift).to(w.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_b, requires_grad=False)
    else:
        conv.bias.copy_(new_b)


def fold_batchnorm(module: nn.Module) -> int:
    """Fold each ``BatchNorm`` that directly follows a convolution in an ``nn.Sequential`` (in place).

    For inference only: the model must be in eval mode (running statistics), and training the
    folded model is not the same as training the original. Call it on a copy
    (:meth:`~transunet.models.base.SegmentationModel.accelerate` does).

    Args:
        module: A module in eval mode.

    Returns:
        The number of BatchNorm layers folded.

    Raises:
        ValueError: If ``module`` is in training mode.
    """
    if module.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BatchNorm running statistics); call .eval().")
    n = 0
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if (_foldable_conv(conv) and isinstance(bn, _BNS) and bn.track_running_stats
                    and bn.running_mean is not None and conv.out_channels == bn.num_features
                    and not conv._forward_hooks and not bn._forward_pre_hooks):
                _fold_pair(conv, bn)
                seq._modules[b] = nn.Identity()
                n += 1
    return n


# --------------------------------------------------------------------------- activation checkpointing


def _n_param_layers(m: nn.Module) -> int:
    return sum(1 for c in m.modules() if not c._modules and any(True for _ in c.parameters(recurse=False)))


def find_blocks(module: nn.Module, min_layers: int = 2) -> list[nn.Module]:
    """The repeated blocks of a network: the elements of its innermost block lists.

    A *block list* is an ``nn.ModuleList`` or ``nn.Sequential`` with an element holding at least
    ``min_layers`` parametrised layers (a transformer layer, a residual unit, a decoder block; not
    a ``Conv -> BN -> ReLU`` triple of single layers). Where a block list holds block lists (a
    ResNet stage of units, a Swin stage of blocks), the inner elements are taken, so each block
    recomputed in the backward pass is as small as the architecture's own unit.

    Args:
        module: The network.
        min_layers: Parametrised layers an element needs to count as a block.

    Returns:
        The blocks, in module order.
    """
    def is_block_list(m: nn.Module) -> bool:
        return isinstance(m, (nn.ModuleList, nn.Sequential)) and any(
            _n_param_layers(c) >= min_layers for c in m.children())

    blocks: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        if is_block_list(m):
            for c in m.children():
                inner = [d for d in c.modules() if is_block_list(d)]
                if _n_param_layers(c) >= min_layers and not inner:
                    blocks.append(c)
                else:
                    visit(c)
        else:
            for c in m.children():
                visit(c)

    visit(module)
    return blocks


class _NoStatUpdates:
    """During the recomputation of a checkpointed block, BatchNorm layers in training mode compute
    exactly as before (same ops, so the same saved tensors) but their running statistics are put
    back afterwards: they are updated once per step, as without checkpointing."""

    def __init__(self, block: nn.Module) -> None:
        self.bns = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                    and m.training and m.track_running_stats]
        self.saved: list[list[torch.Tensor]] = []

    def __enter__(self) -> None:
        self.saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                      for m in self.bns]

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for m, saved in zip(self.bns, self.saved):
                live = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                for b, v in zip(live, saved):
                    b.copy_(v)


def _checkpointed_forward(self: nn.Module, *args: object, **kwargs: object) -> object:
    base = type(self).__mro__[1]
    if not (self.training and torch.is_grad_enabled()):
        return base.forward(self, *args, **kwargs)
    calls = [0]

    def run(*a: object, **k: object) -> object:
        calls[0] += 1
        if calls[0] == 1:
            return base.forward(self, *a, **k)
        with _NoStatUpdates(self):  # the recomputation in the backward pass
            return base.forward(self, *a, **k)

    from torch.utils.checkpoint import checkpoint

    return checkpoint(run, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)


_CKPT_CLASSES: dict[type, type] = {}


def checkpoint_blocks(module: nn.Module, enable: bool = True, blocks: list[nn.Module] | None = None) -> int:
    """Activation checkpointing: recompute each block's activations in the backward pass (in place).

    Only the block inputs are kept during the forward pass; the gradients are the same (dropout
    masks are replayed from the saved RNG state, BatchNorm running statistics are updated once).
    The swap changes classes only, so state-dict keys stay.

    Args:
        module: The network.
        enable: ``True`` to checkpoint, ``False`` to undo.
        blocks: The blocks (default :func:`find_blocks`).

    Returns:
        The number of blocks changed.
    """
    n = 0
    if not enable:
        for m in module.modules():
            if type(m) in _CKPT_CLASSES.values():
                m.__class__ = type(m).__mro__[1]
                n += 1
        return n
    for m in (blocks if blocks is not None else find_blocks(module)):
        cls = type(m)
        if cls in _CKPT_CLASSES.values():
            continue
        if cls not in _CKPT_CLASSES:
            _CKPT_CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": _checkpointed_forward})
        m.__class__ = _CKPT_CLASSES[cls]
        n += 1
    return n


# --------------------------------------------------------------------------- inference wrapper


class InferenceModel(nn.Module):
    """A model prepared for inference: casts the input, optionally compiled, float32 logits out.

    Built by :meth:`transunet.models.base.SegmentationModel.for_inference`; callable like the model.

    Args:
        model: The prepared model (eval mode, already converted to ``dtype``).
        dtype: Compute dtype of the model (``None``: float32).
        channels_last: Feed the input channels-last.
        compile: Compile with ``torch.compile`` (Inductor, weight freezing) on the first call.

    Attributes:
        model: The prepared model (its attributes, e.g. ``num_classes``, are reachable here too).
    """

    def __init__(self, model: nn.Module, *, dtype: torch.dtype | None = None, channels_last: bool = False,
                 compile: bool = False) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.channels_last = channels_last
        self.compiled = torch.compile(model, dynamic=False) if compile else None
        self._batch: int | None = None

    def __getattr__(self, name: str) -> object:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, H, W)`` float32 for ``x (B, C, H, W)``."""
        if self.dtype is not None:
            x = x.to(self.dtype)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compiled is None:
            return self.model(x).float()
        n = x.shape[0]
        if self._batch is None:
            self._batch = n
        if n < self._batch:  # pad, so the compiled graph of the first batch size is reused
            x = torch.cat([x, x.new_zeros((self._batch - n, *x.shape[1:]))])
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            out = self.compiled(x) if n <= self._batch else self.model(x)
        return out[:n].float()
