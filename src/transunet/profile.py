"""Model complexity: parameters, FLOPs by part and attention-matrix memory (``transunet profile``).

FLOPs count 2 per multiply-add over convolutions (transposed ones too), linear layers and the two attention matmuls
(``Q K^T`` and ``A V``); normalisation, activations, pooling, interpolation and bias additions are
not counted (the usual convention of fvcore/ptflops-style tables). Convolutions are counted as
the official model computes them: a 1-channel model is counted with the 3-channel first
convolution that the official code runs on the repeated input, and the folded convolution that
this package actually runs is listed separately.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from transunet.layers.attention import Attention

__all__ = ["count_flops", "profile_model", "profile_numbers", "profile_table"]


def _parts(model: nn.Module) -> list[tuple[str, str]]:
    """The model's declared parts (``profile_parts()``), or one part per top-level child."""
    fn = getattr(model, "profile_parts", None)
    return list(fn()) if callable(fn) else [(n, n) for n, _ in model.named_children()]


def _part_fn(parts: list[tuple[str, str]]):
    def part(name: str) -> str:
        for label, prefix in parts:
            if prefix == "" or name == prefix or name.startswith(prefix + "."):
                return label
        return "other"
    return part


def count_flops(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Run one forward pass and count FLOPs per part.

    Args:
        model: A model (its ``profile_parts()`` name the parts).
        x: Input ``(B, C, H, W)`` (may live on the ``meta`` device: only shapes are used).

    Counted: ``Conv2d``, ``ConvTranspose2d``, ``Linear``, the global :class:`Attention` (its two
    matmuls, and its ``(B, heads, N, N)`` shape for the memory estimate) and any other layer that
    defines ``attention_flops(inp, out) -> int`` (FLOPs of its attention matmuls, 2 per
    multiply-add; e.g. :class:`transunet.layers.window_attention.WindowAttention`).

    Returns:
        ``{"flops": {part: flops}, "folded_saving": flops saved by input-channel folding,
        "attention": [(layer name, (B, heads, N, N))]}``.
    """
    parts = _parts(model)
    _part = _part_fn(parts)
    flops: dict[str, int] = OrderedDict((label, 0) for label, _ in parts)
    attn: list[tuple[str, tuple[int, int, int, int]]] = []
    saving = 0
    hooks = []

    def conv_hook(name: str):
        def hook(mod: nn.Conv1d | nn.Conv2d | nn.Conv3d, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            nonlocal saving
            k = math.prod(mod.kernel_size)
            macs = out.numel() * (mod.in_channels // mod.groups) * k
            flops[_part(name)] = flops.get(_part(name), 0) + 2 * macs
            used = inp[0].shape[1]
            if used != mod.in_channels:  # folded kernel: count the official 3-channel conv
                saving += 2 * out.numel() * (mod.in_channels - used) // mod.groups * k
        return hook

    def deconv_hook(name: str):
        def hook(mod: nn.ConvTranspose2d | nn.ConvTranspose3d, inp: tuple[torch.Tensor, ...],
                 out: torch.Tensor) -> None:
            macs = inp[0].numel() * (mod.out_channels // mod.groups) * math.prod(mod.kernel_size)
            flops[_part(name)] = flops.get(_part(name), 0) + 2 * macs
        return hook

    def linear_hook(name: str):
        def hook(mod: nn.Linear, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            flops[_part(name)] = flops.get(_part(name), 0) + 2 * out.numel() * mod.in_features
        return hook

    def layer_flops_hook(name: str):
        def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: Any) -> None:
            flops[_part(name)] = flops.get(_part(name), 0) + int(mod.attention_flops(inp, out))
        return hook

    def attn_hook(name: str):
        def hook(mod: Attention, inp: tuple[torch.Tensor, ...], out: Any) -> None:
            B, N, _ = inp[0].shape
            attn.append((name, (B, mod.num_heads, N, N)))
            # Q K^T and A V: each B * heads * N * N * head_dim multiply-adds
            flops[_part(name)] = flops.get(_part(name), 0) + 2 * 2 * B * mod.num_heads * N * N * mod.head_dim
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            hooks.append(mod.register_forward_hook(conv_hook(name)))
        elif isinstance(mod, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            hooks.append(mod.register_forward_hook(deconv_hook(name)))
        elif isinstance(mod, nn.Linear):
            hooks.append(mod.register_forward_hook(linear_hook(name)))
        elif isinstance(mod, Attention):
            hooks.append(mod.register_forward_hook(attn_hook(name)))
        elif callable(getattr(mod, "attention_flops", None)):  # e.g. window attention
            hooks.append(mod.register_forward_hook(layer_flops_hook(name)))
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
    args: dict[str, Any] | None = None,
) -> str:
    """The complexity table printed by ``transunet profile``.

    The model is built on the ``meta`` device (no memory, no weights), so even ViT-L at large
    sizes profiles instantly.

    Args:
        name: Registered model name.
        img_size: ``H`` or ``(H, W)``.
        num_classes: Output classes.
        in_channels: Input channels (>= 1).
        batch_size: Batch size used for FLOPs and attention memory.
        args: The architecture's own arguments (``model.args``).

    Returns:
        A plain-text table.
    """
    model, size, res, params = _measure(name, img_size, num_classes, in_channels, batch_size, args)
    total_params = sum(params.values())
    total_flops = sum(res["flops"].values())
    grid_fn = getattr(model, "attention_grid", None)
    grid = grid_fn() if callable(grid_fn) else None
    tokens = f"  tokens={grid[0]}x{grid[1]}" if grid else ""

    lines = [
        (f"{name}  img_size={size[0]}x{size[1]}  num_classes={num_classes}  in_channels={in_channels}  "
        f"batch={batch_size}{tokens}"),
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



def _measure(name: str, img_size: int | Sequence[int], num_classes: int, in_channels: int,
             batch_size: int, args: dict[str, Any] | None
             ) -> tuple[nn.Module, tuple[int, int], dict[str, Any], dict[str, int]]:
    """Build ``name`` on the meta device, count FLOPs and parameters per part."""
    from transunet.registry import create_model
    from transunet.utils import as_pair

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is invalid: it must be >= 1.")
    size = as_pair(img_size)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_channels=in_channels, img_size=size,
                             **(args or {}))
    model.eval()
    x = torch.empty(batch_size, in_channels, *size, device="meta")
    res = count_flops(model, x)
    parts = _parts(model)
    _part = _part_fn(parts)
    params: dict[str, int] = OrderedDict((label, 0) for label, _ in parts)
    for pname, p in model.named_parameters():
        label = _part(pname)
        params[label] = params.get(label, 0) + p.numel()
    return model, size, res, params


def profile_numbers(name: str, img_size: int | Sequence[int] = 224, num_classes: int = 9,
                    in_channels: int = 1, args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parameters and GFLOPs (batch 1) of one model as numbers.

    Args:
        name: Registered model name.
        img_size: ``H`` or ``(H, W)``.
        num_classes: Output classes.
        in_channels: Input channels.
        args: The architecture's own arguments.

    Returns:
        ``{"model", "img_size", "parameters", "gflops", "attention"}``.
    """
    model, size, res, params = _measure(name, img_size, num_classes, in_channels, 1, args)
    return {"model": name, "img_size": size, "parameters": int(sum(params.values())),
            "gflops": sum(res["flops"].values()) / 1e9, "attention": getattr(model, "attention_kind", None)}


def profile_table(img_size: int | Sequence[int] = 224, num_classes: int = 9, in_channels: int = 1,
                  markdown: bool = False) -> str:
    """One line per registered model: parameters and GFLOPs at one size (``transunet profile --all``).

    Args:
        img_size: ``H`` or ``(H, W)``.
        num_classes: Output classes.
        in_channels: Input channels.
        markdown: A Markdown table instead of aligned text.
    """
    from transunet.registry import list_models

    rows = []
    for name in list_models():
        try:
            n = profile_numbers(name, img_size, num_classes, in_channels)
        except ValueError as e:  # e.g. a size the architecture cannot take
            rows.append((name, "–", "–", " ".join(str(e).split())))
            continue
        rows.append((name, f"{n['parameters']:,}", f"{n['gflops']:.2f}", str(n["attention"] or "none")))
    size = as_pair_text(img_size)
    if markdown:
        out = [f"| model | parameters | GFLOPs ({size}, {in_channels}->{num_classes}) | attention |",
               "|---|---:|---:|---|"]
        out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        return "\n".join(out)
    out = [f"{'model':<18}{'parameters':>16}{'GFLOP':>10}  attention   ({size}, {in_channels}->{num_classes} classes)"]
    out += [f"{a:<18}{b:>16}{c:>10}  {d}" for a, b, c, d in rows]
    return "\n".join(out)


def as_pair_text(img_size: int | Sequence[int]) -> str:
    """``224`` or ``(224, 224)`` -> ``"224x224"``."""
    from transunet.utils import as_pair

    h, w = as_pair(img_size)
    return f"{h}x{w}"
