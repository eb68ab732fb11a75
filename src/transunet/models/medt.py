"""MedT: "Medical Transformer: Gated Axial-Attention for Medical Image Segmentation", Valanarasu et al. 2021.

Paper: https://arxiv.org/abs/2102.10662 (MICCAI 2021) — official code:
https://github.com/jeya-maria-jose/Medical-Transformer (``lib/models/axialnet.py``). No pretrained
weights were released.

Three registered models, all built from axial-attention residual blocks
(:class:`~transunet.layers.axial_attention.AxialAttention`, height then width attention inside a
1x1-conv bottleneck, expansion 2):

* ``MedT`` (official ``MedT`` = ``medt_net(AxialBlock_dynamic, AxialBlock_wopos, [1, 2, 4, 1],
  s=0.125)``): a **global branch** on the whole image (stem, ``layer1``-``layer2`` of gated axial
  blocks, ``decoder4``-``decoder5``) plus a **local branch** ("local-global training") that cuts
  the image into 32-px patches and runs each through its own shallow-wide network (stem
  ``*_p``, ``layer1_p``-``layer4_p`` of axial blocks *without* positional terms or gates,
  ``decoder1_p``-``decoder5_p``); the two full-resolution maps are added, then ``decoderf``
  (3x3 conv + ReLU) and ``adjust`` (1x1 conv to the classes) give raw logits;
* ``GatedAxialUNet`` (official ``gated`` = ``ResAxialAttentionUNet(AxialBlock_dynamic, [1, 2, 4,
  1], s=0.125)``, the paper's "gated axial U-Net" ablation): stem, ``layer1``-``layer4`` of gated
  axial blocks, decoder ``decoder1``-``decoder5`` (3x3 conv, bilinear x2, ReLU, add the skip;
  ``decoder1`` has stride 2), ``adjust``;
* ``AxialUNet`` (official ``axialunet``, the paper's "axial attention U-Net" baseline): the same
  U-Net with positional, ungated axial attention.

The stem is ``7x7/2 conv -> BN -> ReLU -> 3x3 conv to 128 (hard-coded) -> BN -> ReLU -> 3x3 conv ->
BN -> ReLU``; widths scale with ``s`` (0.125: stem 8, stages 32/64/128/256 channels); the local
stem is as wide as the global ``layer2`` output (official quirk: it reuses ``inplanes``). Module
names equal the official ones, so official state dicts load through
:func:`transunet.weights.load_pretrained`; the tiny official MedT fixture reproduces the official
logits exactly (max |diff| 0.0 in float32 and float64, ``tests/models/test_medt.py``).

Full size at 224x224, 1 -> 9 classes: ``GatedAxialUNet`` 1,334,697 parameters (= official
``gated(img_size=224, imgchan=1, num_classes=9)``), ``MedT`` 1,520,705 (official 1,556,394
including 35,689 parameters that never touch the output, see below). ``transunet profile`` counts
the convolutions (2D and the ``Conv1d`` qkv projections) but not the axial attention products
(MedT 6.28, GatedAxialUNet 1.72 GFLOPs); ``FlopCounterMode`` with the attention products too:
MedT 7.62 GFLOPs (49 patches; 4.15 with
``local_mode="official"``, 16 patches; official code 3.774), GatedAxialUNet 3.32 (official 2.867).
The difference is the positional logits, computed here as a ``(L, 2L - 1)`` product with every
relative offset followed by a gather (about twice the official ``(L, L)`` products, but no
``einsum`` batched over positions, which is erratically slow on CPU).

Attention maps (``capture_attention``, kind ``axial``): one softmax map per axial layer in call order
(height then width layer of every block; MedT: global branch first, then the local branch), each
``(B', G, M, L, L)``: ``L`` the attended length, ``M`` the other side, ``B' = B`` in the global
branch and ``B * rows * cols`` patches in the local one (image-major, patches row-major; one map per patch
call with ``patch_batch=False``).

Differences from the official code:

* **The local branch tiles the whole image.** The official loop cuts a fixed 4x4 grid of 32-px
  patches: that is the whole image only at 128x128; at 224 it covers the top-left 128x128 and the
  rest of the local map is a copy of the global one (so the fusion sees ``2 x global`` there).
  Here the grid is ``(H / 32) x (W / 32)`` patches (4x4 at 128 = official, 7x7 at 224), so any
  multiple of 32 works. ``local_mode="official"`` reproduces the official top-left 4x4 grid at
  any size (for comparisons with published MedT numbers); 32-px patches are what the local
  network can pass (its stem and three strided stages reduce by 16, ``decoder1_p`` by 2 more),
  so a 4x4 grid of 56-px patches at 224 is impossible. ``patch_size`` may be any multiple of 32.
* **Patches run as one batch** (``patch_batch=True``): identical in eval mode; in training the
  local BatchNorms then normalise over all patches of the batch at once and update their running
  statistics once per step, whereas the official loop passes the patches one by one (per-patch
  statistics, one running-statistics update per patch). ``patch_batch=False`` is the official
  loop.
* **Unused official modules are not built**: each local block's ``conv1`` (a 1x1 conv with bias
  that the forward never calls) and ``adjust_p`` (and the parameter-free ``soft``/``soft_p``/
  ``relu_p``). The converter drops them from official files. Trainable parameters that receive no
  gradient would break DistributedDataParallel.
* **Gates** (``f_qr``, ``f_kr``, ``f_sve``, ``f_sv`` of every gated layer) are trainable
  parameters in their own parameter group ``gates``; the official code creates them frozen and
  unfreezes them at the end of its (0-based) epoch 10. ``train.freeze_group: gates`` with
  ``train.freeze_epochs: 11`` is that schedule (``configs/synapse_medt_official.yaml``).
* Non-square inputs: height layers attend over ``H``, width layers over ``W`` (the official
  blocks pass one ``kernel_size`` to both, i.e. square inputs only).
* Any number of classes and input channels; a 3-channel model also takes grey input (repeated).
  The official training binarises masks; this package trains multi-class with its own losses.
* ``global_attention``/``local_attention`` select the axial layer of each MedT branch (``gated``,
  ``positional``, ``plain``): the official ``logo`` ablation is ``positional``/``positional``.
  Positional local layers use the patch's side as their length (the official ``logo`` uses
  ``img_size // 4``, which matches the patches at 128 only).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transunet.errors import CheckpointError
from transunet.layers.axial_attention import AXIAL_VARIANTS, GATE_INIT, AxialAttention
from transunet.models.base import FeatureInfo, SegmentationModel, check_args, check_img_size, check_int, check_option
from transunet.registry import register_model
from transunet.weights import ConvertedWeights, ForeignWeights, strip_prefixes

__all__ = [
    "AXIAL_UNET_ARGS",
    "LOCAL_MODES",
    "MEDT_ARGS",
    "AxialAttentionUNet",
    "AxialBlock",
    "MedT",
    "axial_unet",
    "gated_axial_unet",
    "medt",
]

log = logging.getLogger(__name__)

#: How MedT's local branch places its patches: ``tile`` (the whole image) or ``official`` (a 4x4
#: grid in the top-left corner, the official code at any size).
LOCAL_MODES = ("tile", "official")
#: Side length the official local branch cuts its patches to, and its fixed grid.
OFFICIAL_PATCH, OFFICIAL_GRID = 32, 4
#: Hard-coded width of the stem's middle convolution (official ``conv2``: 128 for every ``s``).
STEM_MID = 128
#: Input sides must be multiples of this (stem /2, three strided stages /8, ``decoder1`` /2).
SIZE_MULTIPLE = 32


# ----------------------------------------------------------------------------- blocks


class AxialBlock(nn.Module):
    """Axial-attention bottleneck (official ``AxialBlock``/``_dynamic``/``_wopos``; expansion 2).

    ``1x1 conv -> BN -> ReLU -> height attention -> width attention (stride) -> ReLU -> 1x1 conv
    to 2 * planes -> BN -> + shortcut -> ReLU``.

    Args:
        inplanes: Input channels.
        planes: Attention width; the block outputs ``2 * planes``.
        kernel_size: Attended lengths ``(H, W)`` of the block's input.
        stride: Downsampling after the width attention (average pooling) and in the shortcut.
        downsample: Shortcut projection (strided 1x1 conv + BN) or ``None`` (identity).
        groups: Attention heads.
        variant: Axial layer variant (:data:`~transunet.layers.axial_attention.AXIAL_VARIANTS`).
    """

    expansion = 2

    def __init__(
        self,
        inplanes: int,
        planes: int,
        kernel_size: tuple[int, int],
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 8,
        variant: str = "gated",
    ) -> None:
        super().__init__()
        self.conv_down = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.hight_block = AxialAttention(
            planes, planes, groups=groups, kernel_size=kernel_size[0], axis="height", variant=variant
        )  # official spelling
        self.width_block = AxialAttention(
            planes, planes, groups=groups, kernel_size=kernel_size[1], stride=stride, axis="width", variant=variant
        )
        self.conv_up = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, inplanes, H, W) -> (B, 2 * planes, H / stride, W / stride)``."""
        out = self.relu(self.bn1(self.conv_down(x)))
        out = self.relu(self.width_block(self.hight_block(out)))
        out = self.bn2(self.conv_up(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def make_layer(
    inplanes: int, planes: int, blocks: int, kernel_size: tuple[int, int], stride: int, groups: int, variant: str
) -> nn.Sequential:
    """A stage of ``blocks`` axial blocks (official ``_make_layer``).

    The first block takes the stage input (attended lengths ``kernel_size``, ``stride``, and a
    strided 1x1 conv + BN shortcut when the stride or width changes); the others work at the
    reduced size ``kernel_size // stride``.
    """
    out = planes * AxialBlock.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
    layers = [AxialBlock(inplanes, planes, kernel_size, stride, downsample, groups, variant)]
    inner = (kernel_size[0] // stride, kernel_size[1] // stride)
    layers += [AxialBlock(out, planes, inner, 1, None, groups, variant) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def up_block(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Official decoder step: ``ReLU(bilinear x2 (align_corners=False) of conv(x))``."""
    return F.relu(F.interpolate(conv(x), scale_factor=2.0, mode="bilinear", align_corners=False))


class _AxialNet(SegmentationModel):
    """Shared parts of the axial models: stems, stage construction, gate group, converter."""

    attention_kind = "axial"
    fixed_input_size = True

    def _add_stem(self, suffix: str, in_channels: int, width: int) -> None:
        """``conv1..3`` and ``bn1..3`` (+ ``suffix``), the official flat module names."""
        setattr(self, f"conv1{suffix}", nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False))
        setattr(self, f"conv2{suffix}", nn.Conv2d(width, STEM_MID, 3, padding=1, bias=False))
        setattr(self, f"conv3{suffix}", nn.Conv2d(STEM_MID, width, 3, padding=1, bias=False))
        setattr(self, f"bn1{suffix}", nn.BatchNorm2d(width))
        setattr(self, f"bn2{suffix}", nn.BatchNorm2d(STEM_MID))
        setattr(self, f"bn3{suffix}", nn.BatchNorm2d(width))

    def _stem(self, x: torch.Tensor, suffix: str = "") -> torch.Tensor:
        """``(B, C, H, W) -> (B, width, H/2, W/2)``."""
        for i in (1, 2, 3):
            x = F.relu(getattr(self, f"bn{i}{suffix}")(getattr(self, f"conv{i}{suffix}")(x)))
        return x

    def _add_stages(self, suffix: str, inplanes: int, size: tuple[int, int], count: int, variant: str) -> int:
        """``layer1..layer<count>`` (+ ``suffix``) for a branch whose stem output is ``size``.

        Returns:
            The output channels of the last stage.
        """
        H, W = size
        for i in range(count):
            planes = int(128 * self.s) * 2**i
            stride = 1 if i == 0 else 2
            kernel = (H >> max(i - 1, 0), W >> max(i - 1, 0))  # the stage's input side
            setattr(
                self,
                f"layer{i + 1}{suffix}",
                make_layer(inplanes, planes, self.layers[i], kernel, stride, self.groups, variant),
            )
            inplanes = planes * AxialBlock.expansion
        return inplanes

    def _gate_parts(self) -> list[tuple[str, str]]:
        return [("gates", n) for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in GATE_INIT]

    def explain_mismatch(self, key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str | None:
        """Relative-position tables of another size name the ``img_size``; other widths ``s``/``groups``."""
        if key.endswith((".relative", ".flatten_index")):

            def length(shape: tuple[int, ...]) -> int:
                return (shape[-1] + 1) // 2 if key.endswith(".relative") else round(shape[0] ** 0.5)

            return (
                f"the file attends over {length(file_shape)} positions there, this model over "
                f"{length(model_shape)}: the file was made for another img_size (or another "
                "s/groups); rebuild the model with the file's img_size"
            )
        return f"the file was made with other widths (s={self.s}, groups={self.groups} here)"

    def explain_keys(self, keys: Sequence[str]) -> str | None:
        """Gates present on one side only: gated vs ungated attention."""
        if keys and all(k.rsplit(".", 1)[-1] in GATE_INIT for k in keys):
            return "a model with the other attention variant (gated layers have f_qr/f_kr/f_sve/f_sv)"
        return None


# ----------------------------------------------------------------------------- models


class AxialAttentionUNet(_AxialNet):
    """The official ``ResAxialAttentionUNet``: ``gated`` (gated axial U-Net) or ``axialunet``.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels.
        img_size: ``H`` or ``(H, W)``, multiples of 32; the input must have this size.
        attention: ``gated`` (official ``gated``) or ``positional`` (official ``axialunet``);
            ``plain`` drops the positional terms too.
        s: Width scale (official ``s``; 0.125: stem 8, stages 32/64/128/256 channels).
        groups: Attention heads (divides ``64 * s``).
        layers: Blocks per stage (official ``[1, 2, 4, 1]``).
    """

    def __init__(
        self,
        num_classes: int = 9,
        in_channels: int = 1,
        img_size: int | Sequence[int] = 224,
        attention: str = "gated",
        s: float = 0.125,
        groups: int = 8,
        layers: Sequence[int] = (1, 2, 4, 1),
    ) -> None:
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, img_size=img_size, size_multiple=SIZE_MULTIPLE
        )
        self.s, self.groups, self.layers = s, groups, tuple(layers)
        H, W = self.img_size
        width = int(64 * s)
        self._add_stem("", in_channels, width)
        self._add_stages("", width, (H // 2, W // 2), 4, attention)
        c = [int(128 * s) * 2**i * 2 for i in range(4)]  # stage outputs 256s, 512s, 1024s, 2048s
        self.decoder1 = nn.Conv2d(c[3], c[3], 3, stride=2, padding=1)
        self.decoder2 = nn.Conv2d(c[3], c[2], 3, padding=1)
        self.decoder3 = nn.Conv2d(c[2], c[1], 3, padding=1)
        self.decoder4 = nn.Conv2d(c[1], c[0], 3, padding=1)
        self.decoder5 = nn.Conv2d(c[0], c[0] // 2, 3, padding=1)
        self.adjust = nn.Conv2d(c[0] // 2, num_classes, 1)

    def feature_info(self) -> list[FeatureInfo]:
        """Skips by stride: ``layer1`` (2), ``layer2`` (4), ``layer3`` (8), ``layer4`` (16)."""
        return [FeatureInfo(2 ** (i + 1), int(128 * self.s) * 2 ** (i + 1)) for i in range(4)]

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Encode with axial stages, decode with additive skips.

        Args:
            x: ``(B, in_channels, H, W)``.

        Returns:
            Logits ``(B, num_classes, H, W)``.
        """
        x1 = self.layer1(self._stem(x))  # (B, 256s, H/2, W/2)
        x2 = self.layer2(x1)  # (B, 512s, H/4, W/4)
        x3 = self.layer3(x2)  # (B, 1024s, H/8, W/8)
        x4 = self.layer4(x3)  # (B, 2048s, H/16, W/16)
        y = up_block(self.decoder1, x4) + x4  # stride-2 conv, then x2: (B, 2048s, H/16, W/16)
        y = up_block(self.decoder2, y) + x3
        y = up_block(self.decoder3, y) + x2
        y = up_block(self.decoder4, y) + x1
        y = up_block(self.decoder5, y)  # (B, 128s, H, W)
        return self.adjust(y)

    def profile_parts(self) -> list[tuple[str, str]]:
        """``gates`` (the scalar gates), ``encoder`` (stem, layers), ``decoder``, ``head``."""
        parts = self._gate_parts()
        parts += [("encoder", p) for p in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")]
        parts += [("encoder", f"layer{i}") for i in range(1, 5)]
        parts += [("decoder", f"decoder{i}") for i in range(1, 6)]
        return [*parts, ("head", "adjust")]


class MedT(_AxialNet):
    """MedT: gated-axial global branch + patch-wise local branch (see the module docstring).

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels.
        img_size: ``H`` or ``(H, W)``: multiples of ``patch_size`` (``tile``) or of 32 and at least
            ``4 * patch_size`` (``official``); the input must have this size.
        s: Width scale (official ``s``).
        groups: Attention heads.
        layers: Blocks per stage; the global branch uses the first two, the local branch all four.
        patch_size: Side of the local patches (multiple of 32; official 32).
        local_mode: ``tile`` (patches cover the image) or ``official`` (top-left 4x4 grid).
        patch_batch: Run the patches as one batch (``False``: the official patch-by-patch loop).
        global_attention: Axial variant of the global branch (official ``gated``).
        local_attention: Axial variant of the local branch (official ``plain``).
    """

    def __init__(
        self,
        num_classes: int = 9,
        in_channels: int = 1,
        img_size: int | Sequence[int] = 224,
        s: float = 0.125,
        groups: int = 8,
        layers: Sequence[int] = (1, 2, 4, 1),
        patch_size: int = 32,
        local_mode: str = "tile",
        patch_batch: bool = True,
        global_attention: str = "gated",
        local_attention: str = "plain",
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            img_size=img_size,
            size_multiple=patch_size if local_mode == "tile" else SIZE_MULTIPLE,
        )
        self.s, self.groups, self.layers = s, groups, tuple(layers)
        self.patch_size, self.local_mode, self.patch_batch = patch_size, local_mode, patch_batch
        H, W = self.img_size
        width = int(64 * s)
        c = [int(128 * s) * 2**i * 2 for i in range(4)]  # stage outputs 256s, 512s, 1024s, 2048s
        # global branch
        self._add_stem("", in_channels, width)
        local_width = self._add_stages("", width, (H // 2, W // 2), 2, global_attention)
        self.decoder4 = nn.Conv2d(c[1], c[0], 3, padding=1)
        self.decoder5 = nn.Conv2d(c[0], c[0] // 2, 3, padding=1)
        self.adjust = nn.Conv2d(c[0] // 2, num_classes, 1)
        # local branch: its stem is as wide as the global layer2 output (official inplanes reuse)
        self._add_stem("_p", in_channels, local_width)
        self._add_stages("_p", local_width, (patch_size // 2, patch_size // 2), 4, local_attention)
        self.decoder1_p = nn.Conv2d(c[3], c[3], 3, stride=2, padding=1)
        self.decoder2_p = nn.Conv2d(c[3], c[2], 3, padding=1)
        self.decoder3_p = nn.Conv2d(c[2], c[1], 3, padding=1)
        self.decoder4_p = nn.Conv2d(c[1], c[0], 3, padding=1)
        self.decoder5_p = nn.Conv2d(c[0], c[0] // 2, 3, padding=1)
        # fusion
        self.decoderf = nn.Conv2d(c[0] // 2, c[0] // 2, 3, padding=1)

    def patch_grid(self, size: tuple[int, int] | None = None) -> tuple[int, int]:
        """Rows and columns of local patches for an input ``size`` (default ``img_size``)."""
        H, W = size or self.img_size
        if self.local_mode == "official":
            return OFFICIAL_GRID, OFFICIAL_GRID
        return H // self.patch_size, W // self.patch_size

    def _local_net(self, p: torch.Tensor) -> torch.Tensor:
        """The local U-Net on patches ``(n, C, P, P) -> (n, 128s, P, P)``."""
        x1 = self.layer1_p(self._stem(p, "_p"))  # (n, 256s, P/2, P/2)
        x2 = self.layer2_p(x1)  # (n, 512s, P/4, P/4)
        x3 = self.layer3_p(x2)  # (n, 1024s, P/8, P/8)
        x4 = self.layer4_p(x3)  # (n, 2048s, P/16, P/16)
        y = up_block(self.decoder1_p, x4) + x4
        y = up_block(self.decoder2_p, y) + x3
        y = up_block(self.decoder3_p, y) + x2
        y = up_block(self.decoder4_p, y) + x1
        return up_block(self.decoder5_p, y)

    def local_branch(self, x: torch.Tensor, global_map: torch.Tensor) -> torch.Tensor:
        """The local map: patch outputs in place, the global map where no patch lies (official).

        Args:
            x: Input ``(B, C, H, W)``.
            global_map: Global branch output ``(B, 128s, H, W)``.

        Returns:
            ``(B, 128s, H, W)``.
        """
        B, C = x.shape[:2]
        P = self.patch_size
        rows, cols = self.patch_grid(tuple(x.shape[2:]))
        region = x[:, :, : rows * P, : cols * P]
        if self.patch_batch:
            patches = region.reshape(B, C, rows, P, cols, P).permute(0, 2, 4, 1, 3, 5)  # (B, r, c, C, P, P)
            out = self._local_net(patches.reshape(B * rows * cols, C, P, P))  # (B r c, D, P, P)
            out = out.view(B, rows, cols, -1, P, P)
        else:  # official order: patch (i, j) of the whole batch at a time
            out = torch.stack(
                [
                    torch.stack(
                        [self._local_net(region[:, :, i * P : (i + 1) * P, j * P : (j + 1) * P]) for j in range(cols)],
                        dim=1,
                    )
                    for i in range(rows)
                ],
                dim=1,
            )
        D = out.shape[3]
        tiled = out.permute(0, 3, 1, 4, 2, 5).reshape(B, D, rows * P, cols * P)  # (B, D, rP, cP)
        if tiled.shape[2:] == global_map.shape[2:]:
            return tiled
        local = global_map.clone()  # official: outside the grid the local map is the global one
        local[:, :, : rows * P, : cols * P] = tiled
        return local

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Global branch + local branch, added, then ``decoderf`` and ``adjust``.

        Args:
            x: ``(B, in_channels, H, W)``.

        Returns:
            Logits ``(B, num_classes, H, W)``.
        """
        x1 = self.layer1(self._stem(x))  # (B, 256s, H/2, W/2)
        x2 = self.layer2(x1)  # (B, 512s, H/4, W/4)
        g = up_block(self.decoder4, x2) + x1  # (B, 256s, H/2, W/2)
        g = up_block(self.decoder5, g)  # (B, 128s, H, W)
        y = g + self.local_branch(x, g)
        y = F.relu(self.decoderf(y))
        return self.adjust(y)

    def profile_parts(self) -> list[tuple[str, str]]:
        """``gates``, ``encoder``/``decoder`` (global), ``local_encoder``/``local_decoder``, ``fusion``, ``head``."""
        stem = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
        parts = self._gate_parts()
        parts += [("encoder", p) for p in (*stem, "layer1", "layer2")]
        parts += [("decoder", p) for p in ("decoder4", "decoder5")]
        parts += [("local_encoder", p + "_p") for p in (*stem, "layer1", "layer2", "layer3", "layer4")]
        parts += [("local_decoder", f"decoder{i}_p") for i in range(1, 6)]
        return [*parts, ("fusion", "decoderf"), ("head", "adjust")]

    def convert_state_dict(self, weights: ForeignWeights) -> ConvertedWeights:
        """Official ``medt_net`` state dicts (or ours): drops the unused local ``conv1``s and ``adjust_p``.

        Raises:
            CheckpointError: ``.npz`` files.
        """
        if weights.kind == "npz":
            raise CheckpointError(
                f"{weights.source} is a Google ViT .npz, which {self.model_name} cannot use; "
                "pass a Medical-Transformer state dict or a transunet checkpoint."
            )
        unused = re.compile(r"^(layer\d+_p\.\d+\.conv1\.|adjust_p\.)")
        sd = {k: v for k, v in strip_prefixes(weights.tensors).items() if not unused.match(k)}
        return ConvertedWeights(sd, [])


# ----------------------------------------------------------------------------- entry points

#: Architecture arguments of ``GatedAxialUNet`` and ``AxialUNet`` (``model.args``) with defaults.
AXIAL_UNET_ARGS: dict[str, Any] = {"s": 0.125, "groups": 8, "layers": (1, 2, 4, 1)}

#: Architecture arguments of ``MedT`` (``model.args``) with their defaults.
MEDT_ARGS: dict[str, Any] = {
    **AXIAL_UNET_ARGS,
    "patch_size": 32,
    "local_mode": "tile",
    "patch_batch": True,
    "global_attention": "gated",
    "local_attention": "plain",
}


def _check_widths(name: str, a: dict[str, Any]) -> tuple[float, int, tuple[int, ...]]:
    """Validate ``s``, ``groups`` and ``layers`` (one ``ValueError`` line each)."""
    s = a["s"]
    if isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0 or not float(64 * s).is_integer():
        closest = max(1, round(64 * s)) / 64 if isinstance(s, (int, float)) and not isinstance(s, bool) else 0.125
        raise ValueError(
            f"s={s!r} is invalid for {name}: 64 * s must be a positive integer (the stem width); "
            f"closest valid: {closest}."
        )
    groups = check_int(name, "groups", a["groups"])
    narrowest = int(128 * s)  # layer1's attention width; each head splits it into q/k/v
    if narrowest % (2 * groups) != 0:
        valid = [g for g in range(1, narrowest // 2 + 1) if narrowest % (2 * g) == 0] or [1]
        closest = min(valid, key=lambda g: abs(g - groups))
        raise ValueError(
            f"groups={groups} is invalid for {name} with s={s}: the narrowest attention width "
            f"128 * s = {narrowest} must be divisible by 2 * groups; closest valid: {closest}."
        )
    layers = a["layers"]
    if not isinstance(layers, (list, tuple)) or len(layers) != 4:
        raise ValueError(
            f"layers={layers!r} is invalid for {name}: give 4 block counts (one per stage), e.g. [1, 2, 4, 1]."
        )
    return float(s), groups, tuple(check_int(name, "layers", v) for v in layers)


def _build_unet(
    name: str, attention: str, num_classes: int, in_channels: int, img_size: int | Sequence[int], args: dict[str, Any]
) -> AxialAttentionUNet:
    check_args(name, args, list(AXIAL_UNET_ARGS))
    a = {**AXIAL_UNET_ARGS, **args}
    num_classes = check_int(name, "num_classes", num_classes)
    in_channels = check_int(name, "in_channels", in_channels)
    s, groups, layers = _check_widths(name, a)
    size = check_img_size(name, img_size, SIZE_MULTIPLE)
    model = AxialAttentionUNet(
        num_classes=num_classes,
        in_channels=in_channels,
        img_size=size,
        attention=attention,
        s=s,
        groups=groups,
        layers=layers,
    )
    model.model_kwargs = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "img_size": size,
        "s": s,
        "groups": groups,
        "layers": layers,
    }
    return model


@register_model(name="GatedAxialUNet")
def gated_axial_unet(
    num_classes: int = 9, in_channels: int = 1, img_size: int | Sequence[int] = 224, **args: Any
) -> AxialAttentionUNet:
    """Gated axial-attention U-Net (official ``gated``; MedT paper's ablation); 1.33 M params.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels.
        img_size: ``H`` or ``(H, W)``, multiples of 32 (the input must have this size).
        **args: ``model.args``, see :data:`AXIAL_UNET_ARGS` and :class:`AxialAttentionUNet`.

    Raises:
        ValueError: One line naming the argument, the rule and the closest valid value.
    """
    return _build_unet("GatedAxialUNet", "gated", num_classes, in_channels, img_size, args)


@register_model(name="AxialUNet")
def axial_unet(
    num_classes: int = 9, in_channels: int = 1, img_size: int | Sequence[int] = 224, **args: Any
) -> AxialAttentionUNet:
    """Axial-attention U-Net without gates (official ``axialunet``; MedT paper's baseline).

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels.
        img_size: ``H`` or ``(H, W)``, multiples of 32 (the input must have this size).
        **args: ``model.args``, see :data:`AXIAL_UNET_ARGS` and :class:`AxialAttentionUNet`.

    Raises:
        ValueError: One line naming the argument, the rule and the closest valid value.
    """
    return _build_unet("AxialUNet", "positional", num_classes, in_channels, img_size, args)


@register_model(name="MedT")
def medt(num_classes: int = 9, in_channels: int = 1, img_size: int | Sequence[int] = 224, **args: Any) -> MedT:
    """MedT (gated axial global branch + local patch branch); 1.52 M params at 224, 1 -> 9 classes.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels.
        img_size: ``H`` or ``(H, W)`` (see :class:`MedT`; the input must have this size).
        **args: ``model.args``, see :data:`MEDT_ARGS` and :class:`MedT`.

    Raises:
        ValueError: One line naming the argument, the rule and the closest valid value.
    """
    name = "MedT"
    check_args(name, args, list(MEDT_ARGS))
    a = {**MEDT_ARGS, **args}
    num_classes = check_int(name, "num_classes", num_classes)
    in_channels = check_int(name, "in_channels", in_channels)
    s, groups, layers = _check_widths(name, a)
    patch = check_int(name, "patch_size", a["patch_size"], minimum=OFFICIAL_PATCH)
    if patch % OFFICIAL_PATCH:
        raise ValueError(
            f"patch_size={patch} is invalid for {name}: the local network needs multiples of "
            f"{OFFICIAL_PATCH}; closest valid: {max(1, round(patch / OFFICIAL_PATCH)) * OFFICIAL_PATCH}."
        )
    mode = check_option(name, "local_mode", a["local_mode"], LOCAL_MODES)
    if not isinstance(a["patch_batch"], bool):
        raise ValueError(
            f"patch_batch={a['patch_batch']!r} is invalid for {name}: it must be true or false; closest valid: true."
        )
    glob = check_option(name, "global_attention", a["global_attention"], AXIAL_VARIANTS)
    loc = check_option(name, "local_attention", a["local_attention"], AXIAL_VARIANTS)
    if mode == "tile":
        size = check_img_size(name, img_size, patch)
    else:
        size = check_img_size(name, img_size, SIZE_MULTIPLE, minimum=OFFICIAL_GRID * patch)
    model = MedT(
        num_classes=num_classes,
        in_channels=in_channels,
        img_size=size,
        s=s,
        groups=groups,
        layers=layers,
        patch_size=patch,
        local_mode=mode,
        patch_batch=a["patch_batch"],
        global_attention=glob,
        local_attention=loc,
    )
    model.model_kwargs = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "img_size": size,
        "s": s,
        "groups": groups,
        "layers": layers,
        "patch_size": patch,
        "local_mode": mode,
        "patch_batch": a["patch_batch"],
        "global_attention": glob,
        "local_attention": loc,
    }
    return model
