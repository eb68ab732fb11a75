"""Model complexity: parameters, FLOPs by part and attention-matrix memory (``transunet profile``).

FLOPs count 2 per multiply-add over convolutions, linear layers and the two attention matmuls
(``Q K^T`` and ``A V``); normalisation, activations, pooling, interpolation and bias additions are
not counted (the usual convention of fvcore/ptflops-style tables). Convolutions are counted as
the official model computes them: a 1-channel model is counted with the 3-channel first
convolution that the official code runs on the repeated input, and the folded convolution that
this package actually runs is listed separately.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from transunet.layers.attention import Attention

__all__ = ["PARTS", "count_flops", "profile_model"]

#: Parts of a TransUNet-family model, as ``(label, module-name prefix)``; first match wins.
PARTS: tuple[tuple[str, str], ...] = (
    ("CNN encoder", "transformer.embeddings.hybrid_model"),
    ("embedding", "transformer.embeddings"),
    ("transformer", "transformer.encoder"),
    ("decoder", "decoder"),
    ("head", "segmentation_head"),
)


def _part(name: str) -> str:
    for label, prefix in PARTS:
        if name == prefix or name.startswith(prefix + "."):
            return label
    return "other"


def count_flops(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Run one forward pass and count FLOPs per part.

    Args:
        model: A TransUNet-family model.
        x: Input ``(B, C, H, W)`` (may live on the ``meta`` device: only shapes are used).

    Returns:
        ``{"flops": {part: flops}, "folded_saving": flops saved by input-channel folding,
        "attention": [(layer name, (B, heads, N, N))]}``.
    """
    flops: dict[str, int] = OrderedDict((label, 0) for label, _ in PARTS)
    attn: list[tuple[str, tuple[int, int, int, int]]] = []
    saving = 0
    hooks = []

    def conv_hook(name: str):
        def hook(mod: nn.Conv2d, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            nonlocal saving
            kh, kw = mod.kernel_size
            macs = out.numel() * (mod.in_channels // mod.groups) * kh * kw
            flops[_part(name)] = flops.get(_part(name), 0) + 2 * macs
            used = inp[0].shape[1]
            if used != mod.in_channels:  # folded kernel: count the official 3-channel conv
                saving += 2 * out.numel() * (mod.in_channels - used) // mod.groups * kh * kw
        return hook

    def linear_hook(name: str):
        def hook(mod: nn.Linear, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            flops[_part(name)] = flops.get(_part(name), 0) + 2 * out.numel() * mod.in_features
        return hook

    def attn_hook(name: str):
        def hook(mod: Attention, inp: tuple[torch.Tensor, ...], out: Any) -> None:
            B, N, _ = inp[0].shape
            attn.append((name, (B, mod.num_heads, N, N)))
            # Q K^T and A V: each B * heads * N * N * head_dim multiply-adds
            flops[_part(name)] = flops.get(_part(name), 0) + 2 * 2 * B * mod.num_heads * N * N * mod.head_dim
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv_hook(name)))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook(name)))
        elif isinstance(mod, Attention):
            hooks.append(mod.register_forward_hook(attn_hook(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {"flops": flops, "folded_saving": saving, "attention": attn}


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.2f} MiB"


def profile_model(
    name: str,
    img_size: int | Sequence[int] = 224,
    num_classes: int = 9,
    in_channels: int = 1,
    batch_size: int = 1,
) -> str:
    """The complexity table printed by ``transunet profile``.

    The model is built on the ``meta`` device (no memory, no weights), so even ViT-L at large
    sizes profiles instantly.

    Args:
        name: Registered model name.
        img_size: ``H`` or ``(H, W)``.
        num_classes: Output classes.
        in_channels: Input channels (1 or 3).
        batch_size: Batch size used for FLOPs and attention memory.

    Returns:
        A plain-text table.
    """
    from transunet.registry import create_model

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is invalid: it must be >= 1.")
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(v) for v in img_size)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_channels=in_channels, img_size=size)
    model.eval()
    x = torch.empty(batch_size, in_channels, *size, device="meta")
    res = count_flops(model, x)

    params: dict[str, int] = OrderedDict((label, 0) for label, _ in PARTS)
    for pname, p in model.named_parameters():
        params[_part(pname.rsplit(".", 1)[0])] = params.get(_part(pname.rsplit(".", 1)[0]), 0) + p.numel()
    total_params = sum(params.values())
    total_flops = sum(res["flops"].values())

    lines = [
        (f"{name}  img_size={size[0]}x{size[1]}  num_classes={num_classes}  in_channels={in_channels}  "
        f"batch={batch_size}  tokens={model.grid_size[0]}x{model.grid_size[1]}"),
        "",
        f"{'part':<14}{'parameters':>16}{'GFLOP':>10}{'share':>8}",
        "-" * 48,
    ]
    for label, n_params in params.items():
        f = res["flops"].get(label, 0)
        if n_params == 0 and f == 0:
            continue
        lines.append(f"{label:<14}{n_params:>16,}{f / 1e9:>10.2f}{100 * f / max(total_flops, 1):>7.1f}%")
    lines += ["-" * 48, f"{'total':<14}{total_params:>16,}{total_flops / 1e9:>10.2f}{100.0:>7.1f}%", ""]
    lines.append("FLOPs = 2 x multiply-adds of conv, linear and attention matmuls.")
    if res["folded_saving"]:
        lines.append(
            f"Folded 1-channel first conv runs {(total_flops - res['folded_saving']) / 1e9:.2f} GFLOP "
            f"({res['folded_saving'] / 1e9:.2f} less than the official repeat-to-3-channels)."
        )
    if res["attention"]:
        B, h, N, _ = res["attention"][0][1]
        per = B * h * N * N * 4
        n_layers = len(res["attention"])
        lines += [
            "",
            f"attention matrix per layer: {B} x {h} heads x {N} x {N} tokens (fp32)",
            (f"  explicit path: {_mib(per)} per N x N matrix; at least 2 live per layer in the "
            f"forward (scores, softmax) = {_mib(2 * per)}; training keeps the softmax of every layer "
            f"for backward = {_mib(per * n_layers)} over {n_layers} layers"),
            ("  fused path (scaled_dot_product_attention, flash/memory-efficient kernels): no N x N "
            f"matrix stored; O(N) per head ({_mib(B * h * N * 4)} of log-sum-exp per layer)"),
        ]
    return "\n".join(lines)

