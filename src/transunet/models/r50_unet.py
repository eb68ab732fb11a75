"""R50-UNet and R50-AttnUNet: the CNN baselines of the TransUNet paper (Table 1).

Chen et al. 2021, "TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation",
arXiv 2102.04306 (https://arxiv.org/abs/2102.04306). The paper reports "R50 U-Net" (74.68 DSC on
Synapse) and "R50 Att-UNet" (75.57) but publishes **no code** for them; this file is this
package's construction, the proposal recorded in ``FAMILY.md`` §5.4, built entirely from the
TransUNet modules (nothing copied):

* **encoder**: the TransUNet hybrid's ResNetV2 (:class:`~transunet.models.resnetv2.ResNetV2`,
  weight-standardised convolutions, GroupNorm, units ``(3, 4, 9)``, width 64) *without* the
  transformer. Its stride-16 output (``16 * width = 1024`` channels) goes **directly** into the
  decoder: nothing replaces the ViT, no 1x1 patch projection, no position embedding;
* **decoder**: TransUNet's cascaded upsampler (:class:`~transunet.models.transunet.DecoderCup`)
  with ``hidden_size = 1024`` (its first 3x3 ``conv_more`` maps 1024 -> 512), four
  bilinear-x2 + two conv-BN-ReLU blocks of widths ``(256, 128, 64, 16)`` and the three ResNet
  skips at strides 8, 4, 2 (512, 256, 64 channels);
* **head**: TransUNet's :class:`~transunet.models.transunet.SegmentationHead`, a 3x3 conv to the
  classes (the decoder already ends at full resolution);
* **R50-AttnUNet** additionally gates each used skip with the additive grid attention gate of
  Attention U-Net (:class:`~transunet.layers.unet_blocks.GridAttentionGate`, mode
  ``concatenation``, ``theta`` kernel = stride = 2, ``inter_channels = skip channels`` as the
  official ``unet_grid_attention_3D``). The gating signal is the decoder feature that the block is
  about to upsample and concatenate with the skip (the coarser decoder output, as in the
  Attention U-Net paper's CT network); ``theta`` brings the skip to that feature's grid, so ``phi``
  needs no resizing. The gated skip ``W(alpha * skip)`` replaces the skip in the concatenation.

Full size at 224x224, 1 -> 9 classes: **R50-UNet 20,463,001 parameters** (23.90 GFLOPs, as
FAMILY.md measured on the official TransUNet modules), **R50-AttnUNet 22,461,916 parameters**
(26.00 GFLOPs; the three gates add 1,998,915). ``transunet profile`` reproduces both GFLOPs
figures (2 FLOPs per multiply-add); the tests check both parameter counts.

Pretrained weights: ``pretrained`` takes Google's ``R50+ViT-B_16.npz`` (what the TransUNet paper
used for its R50 baselines); :meth:`R50UNet.convert_state_dict` loads its ResNet part through
:func:`~transunet.models.resnetv2.google_resnet_key_map`, drops the ImageNet classifier entries and
reports the ViT entries as unused; decoder, gates and head stay random. State dicts and
checkpoints of this model load by name.

Differences from the TransUNet code the modules come from: none in the modules themselves (the
1-channel root folding and the zero-padding of short skips are ResNetV2's, see its docstring); the
input may be any multiple of 16 (fully convolutional, non-square allowed). PyTorch's default
initialisation everywhere, as TransUNet's decoder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from transunet.errors import CheckpointError, did_you_mean
from transunet.layers.unet_blocks import GATE_MODES, GridAttentionGate
from transunet.models.base import (
    FeatureInfo,
    SegmentationModel,
    check_args,
    check_img_size,
    check_int,
)
from transunet.models.resnetv2 import ResNetV2, google_resnet_key_map
from transunet.models.transunet import NPZ_IGNORED_PREFIXES, DecoderCup, SegmentationHead
from transunet.registry import register_model
from transunet.weights import ConvertedWeights, ForeignWeights, convert_npz, strip_prefixes

log = logging.getLogger(__name__)

__all__ = ["R50_ATTN_UNET_ARGS", "R50_UNET_ARGS", "R50AttnUNet", "R50UNet", "r50_attn_unet", "r50_unet"]

#: Output stride of the encoder: inputs must be multiples of it.
ENCODER_STRIDE = 16


# ----------------------------------------------------------------------------- model


class R50UNet(SegmentationModel):
    """R50-UNet: ResNetV2 encoder -> cascaded upsampler with skips -> 3x3 head.

    Build it through the registry (``create_model("R50-UNet")``), which validates the arguments.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels (>= 1; 1 folds the 3-channel root convolution).
        img_size: ``(H, W)``, multiples of 16.
        n_skip: Skips used by the decoder, deepest first (0-3: strides 8, 4, 2).
        resnet_units: Units of the three ResNetV2 stages.
        resnet_width_factor: ResNetV2 width multiplier (base 64; width a multiple of 32).
        decoder_channels: Widths of the four decoder blocks.
        decoder_head_channels: Output width of the decoder's first 3x3 conv (``conv_more``).

    Attributes:
        feature_info: The encoder's skips as ``FeatureInfo(stride, channels)``, deepest first.
        gates: The skip gates (``None`` here; :class:`R50AttnUNet` sets them).
    """

    fixed_input_size = False

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        img_size: tuple[int, int],
        n_skip: int = 3,
        resnet_units: Sequence[int] = (3, 4, 9),
        resnet_width_factor: float = 1.0,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        decoder_head_channels: int = 512,
    ) -> None:
        super().__init__(
            num_classes=num_classes, in_channels=in_channels, img_size=img_size, size_multiple=ENCODER_STRIDE
        )
        self.model_name = "R50-UNet"
        self.n_skip = int(n_skip)
        self.encoder = ResNetV2(resnet_units, resnet_width_factor, in_channels=in_channels)
        self.feature_info: list[FeatureInfo] = list(self.encoder.feature_info)
        self.decoder = DecoderCup(
            self.encoder.out_channels,
            decoder_channels,
            [f.channels for f in self.feature_info],
            n_skip,
            decoder_head_channels,
        )
        self.gates: nn.ModuleList | None = None
        self.segmentation_head = SegmentationHead(decoder_channels[-1], num_classes)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segment.

        Args:
            x: ``(B, in_channels, H, W)``, ``H`` and ``W`` multiples of 16.

        Returns:
            Logits ``(B, num_classes, H, W)``.
        """
        feats, skips = self.encoder(x)  # (B, 16w, H/16, W/16); skips at strides 8, 4, 2
        if self.gates is None:
            return self.segmentation_head(self.decoder(feats, skips))
        dec = self.decoder
        y = dec.conv_more(feats)  # (B, head, H/16, W/16)
        for i, block in enumerate(dec.blocks):
            skip = None
            if i < dec.n_skip:
                # gate the skip (2h, 2w) by the decoder feature (h, w) about to be upsampled
                skip, _alpha = self.gates[i](skips[i], y)
            y = block(y, skip)  # (B, decoder_channels[i], 2h, 2w)
        return self.segmentation_head(y)

    # ------------------------------------------------------------------ contract

    def channels_last_parts(self) -> list[nn.Module]:
        """The decoder blocks and the head train channels-last with the fast kernels (measured at
        224, batch 4, 2 CPU cores: R50-UNet 7% less time per float32 step and 10% in bf16,
        R50-AttnUNet 7% and 7%; ``benchmarks/bench_fast_choices.py cl-parts``). The blocks, not the
        decoder: R50-AttnUNet calls them one by one."""
        return [*self.decoder.blocks, self.segmentation_head]

    def profile_parts(self) -> list[tuple[str, str]]:
        """``encoder`` (ResNetV2), ``attention_gates`` (R50-AttnUNet), ``decoder``, ``head``."""
        parts = [("encoder", "encoder")]
        if self.gates is not None:
            parts.append(("attention_gates", "gates"))
        return [*parts, ("decoder", "decoder"), ("head", "segmentation_head")]

    # ------------------------------------------------------------------ weights

    def convert_state_dict(self, weights: ForeignWeights) -> ConvertedWeights:
        """Google ``R50+ViT-B_16.npz`` (ResNet part) or state dicts/checkpoints of this model.

        ``.npz``: the ResNet entries (``conv_root``, ``gn_root``, ``blockN/unitM/...``) convert
        through :func:`~transunet.models.resnetv2.google_resnet_key_map`; the ImageNet classifier
        entries (``cls``, ``head/``, ``pre_logits/``) are dropped; every other entry (the ViT:
        ``Transformer/...``, ``embedding/...``) is returned as unused. Decoder, gates and head are
        not in the file and keep their initialisation.
        """
        if weights.kind != "npz":
            return ConvertedWeights(strip_prefixes(weights.tensors), [])
        npz = weights.tensors
        sd, used_keys = convert_npz(npz, google_resnet_key_map("encoder.", self.encoder), self, weights.source)
        if not sd:
            raise CheckpointError(
                f"{weights.source} holds no ResNet entries (conv_root, blockN/unitM/...); "
                f"{self.model_name} needs the hybrid R50+ViT-B_16.npz, not a pure ViT file."
            )
        used = set(used_keys)
        ignored = [k for k in npz if k not in used and k.startswith(NPZ_IGNORED_PREFIXES)]
        unused = [k for k in npz if k not in used and not k.startswith(NPZ_IGNORED_PREFIXES)]
        log.info(
            "%s: %d ResNet tensors converted, %d ImageNet classifier entries dropped, %d ViT entries unused",
            weights.source,
            len(sd),
            len(ignored),
            len(unused),
        )
        return ConvertedWeights(sd, unused)

    def explain_mismatch(self, key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str | None:
        """Encoder width, decoder skip inputs and gate widths get their own causes."""
        if key.startswith("encoder."):
            return "the file was made with another resnet_width_factor (or in_channels): check model.args"
        if key.startswith("decoder.blocks.") and ".conv1." in key and file_shape[:1] == model_shape[:1]:
            return "the file was made with another n_skip (the decoder's skip inputs differ)"
        if key.startswith(("decoder.", "gates.")):
            return "the file was made with other decoder_channels/gate arguments: check model.args"
        return None

    def explain_keys(self, keys: Sequence[str]) -> str | None:
        """R50-UNet vs R50-AttnUNet, ResNet units and n_skip."""
        if any(k.startswith("gates.") for k in keys):
            return "R50-UNet vs R50-AttnUNet (attention gates), or another n_skip: check the model name"
        if any(k.startswith("encoder.body.") for k in keys):
            return "a ResNet with another number of units per stage: check resnet_units"
        return None


class R50AttnUNet(R50UNet):
    """R50-AttnUNet: R50-UNet with an additive grid attention gate on each used skip.

    Gate ``i`` (:class:`~transunet.layers.unet_blocks.GridAttentionGate`) gates the skip of decoder
    block ``i`` by the feature entering that block (before its upsampling); its coefficients
    ``(B, 1, h, w)`` are recorded by :meth:`~transunet.models.base.SegmentationModel.capture_attention`.

    Args:
        gate_mode: :data:`~transunet.layers.unet_blocks.GATE_MODES` entry.
        gate_sub_sample: ``theta`` kernel and stride (2: the skip's grid onto the gating grid).
        gate_inter_channels: Inner width of each gate, deepest first (``None``: the skip's width).
        **kwargs: As :class:`R50UNet`.
    """

    attention_kind = "gate"

    def __init__(
        self,
        *,
        gate_mode: str = "concatenation",
        gate_sub_sample: int = 2,
        gate_inter_channels: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = "R50-AttnUNet"
        skip_channels = [f.channels for f in self.feature_info]
        gating = [
            self.decoder.conv_more[0].out_channels,
            *(b.conv2[0].out_channels for b in self.decoder.blocks),
        ]  # input width of each block
        inter = gate_inter_channels if gate_inter_channels is not None else skip_channels[: self.n_skip]
        self.gates = nn.ModuleList(
            GridAttentionGate(skip_channels[i], gating[i], int(inter[i]), gate_sub_sample, gate_mode)
            for i in range(self.n_skip)
        )


# ----------------------------------------------------------------------------- registry

#: ``model.args`` of R50-UNet and their defaults (FAMILY.md §5.4).
R50_UNET_ARGS: dict[str, Any] = {
    "n_skip": 3,
    "resnet_units": (3, 4, 9),
    "resnet_width_factor": 1.0,
    "decoder_channels": (256, 128, 64, 16),
    "decoder_head_channels": 512,
}
#: ``model.args`` of R50-AttnUNet: R50-UNet's plus the gate options.
R50_ATTN_UNET_ARGS: dict[str, Any] = {
    **R50_UNET_ARGS,
    "gate_mode": "concatenation",
    "gate_sub_sample": 2,
    "gate_inter_channels": None,
}


def _int_tuple(model: str, name: str, value: Any, length: int, example: Sequence[int]) -> tuple[int, ...]:
    """A list/tuple of ``length`` positive integers (one ValueError line otherwise)."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(  # noqa: TRY004  (the contract: one ValueError per bad argument)
            f"{name}={value!r} is invalid for {model}: it must be a list of {length} positive "
            f"integers; closest valid: {list(example)}."
        )
    if len(value) != length:
        closest = (list(value) + list(example[len(value) :]))[:length]
        raise ValueError(
            f"{name}={list(value)!r} is invalid for {model}: it must list exactly {length} "
            f"integers (got {len(value)}); closest valid: {closest}."
        )
    for v in value:
        check_int(model, name, v)
    return tuple(int(v) for v in value)


def _build(
    name: str,
    defaults: dict[str, Any],
    gates: bool,
    num_classes: Any,
    in_channels: Any,
    img_size: Any,
    args: dict[str, Any],
) -> R50UNet:
    """Validate ``args`` against ``defaults`` and build the model (``gates``: R50-AttnUNet)."""
    check_args(name, args, list(defaults))
    a = {**defaults, **args}
    num_classes = check_int(name, "num_classes", num_classes)
    in_channels = check_int(name, "in_channels", in_channels)
    size = check_img_size(name, img_size, ENCODER_STRIDE)
    n_skip = check_int(name, "n_skip", a["n_skip"], minimum=0)
    if n_skip > 3:
        raise ValueError(
            f"n_skip={n_skip} is invalid for {name}: it must be between 0 and 3 (the ResNet "
            "offers skips at strides 8, 4, 2); closest valid: 3."
        )
    units = _int_tuple(name, "resnet_units", a["resnet_units"], 3, R50_UNET_ARGS["resnet_units"])
    wf = a["resnet_width_factor"]
    if isinstance(wf, bool) or not isinstance(wf, (int, float)) or wf <= 0 or (64 * wf) % 32 != 0:
        closest = (
            max(0.5, round(float(wf) * 2) / 2) if isinstance(wf, (int, float)) and not isinstance(wf, bool) else 1.0
        )
        raise ValueError(
            f"resnet_width_factor={wf!r} is invalid for {name}: 64 x factor must be a positive "
            f"multiple of 32 (GroupNorm(32)), i.e. 0.5, 1, 1.5, ...; closest valid: {closest}."
        )
    dec = _int_tuple(name, "decoder_channels", a["decoder_channels"], 4, R50_UNET_ARGS["decoder_channels"])
    head = check_int(name, "decoder_head_channels", a["decoder_head_channels"])
    gate_kwargs: dict[str, Any] = {}
    if gates:
        mode = a["gate_mode"]
        if mode not in GATE_MODES:
            raise ValueError(
                f"gate_mode={mode!r} is invalid for {name}: choose one of "
                f"{', '.join(map(repr, GATE_MODES))}." + did_you_mean(str(mode), GATE_MODES)
            )
        sub = check_int(name, "gate_sub_sample", a["gate_sub_sample"])
        inter = a["gate_inter_channels"]
        if inter is not None:
            width = int(64 * wf)
            inter = _int_tuple(name, "gate_inter_channels", inter, n_skip, (8 * width, 4 * width, width))
        gate_kwargs = {"gate_mode": mode, "gate_sub_sample": sub, "gate_inter_channels": inter}
    arch = {
        "n_skip": n_skip,
        "resnet_units": units,
        "resnet_width_factor": float(wf),
        "decoder_channels": dec,
        "decoder_head_channels": head,
        **gate_kwargs,
    }
    cls = R50AttnUNet if gates else R50UNet
    model = cls(num_classes=num_classes, in_channels=in_channels, img_size=size, **arch)
    model.model_kwargs = {"num_classes": num_classes, "in_channels": in_channels, "img_size": size, **arch}
    return model


@register_model(name="R50-UNet")
def r50_unet(num_classes: int = 9, in_channels: int = 1, img_size: int | Sequence[int] = 224, **args: Any) -> R50UNet:
    """R50-UNet (TransUNet paper baseline, this package's construction): 20,463,001 params at 224, 1 -> 9.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels (>= 1).
        img_size: ``H`` or ``(H, W)``, multiples of 16 (any such input size works).
        **args: ``model.args``, see :data:`R50_UNET_ARGS` and :class:`R50UNet`.

    Raises:
        ValueError: One line naming the argument, the rule and the closest valid value.
    """
    return _build("R50-UNet", R50_UNET_ARGS, False, num_classes, in_channels, img_size, args)


@register_model(name="R50-AttnUNet")
def r50_attn_unet(
    num_classes: int = 9, in_channels: int = 1, img_size: int | Sequence[int] = 224, **args: Any
) -> R50AttnUNet:
    """R50-AttnUNet: R50-UNet with an additive attention gate on each skip; 22,461,916 params at 224, 1 -> 9.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels (>= 1).
        img_size: ``H`` or ``(H, W)``, multiples of 16 (any such input size works).
        **args: ``model.args``, see :data:`R50_ATTN_UNET_ARGS` and :class:`R50UNet`.

    Raises:
        ValueError: One line naming the argument, the rule and the closest valid value.
    """
    return cast(R50AttnUNet, _build("R50-AttnUNet", R50_ATTN_UNET_ARGS, True, num_classes, in_channels, img_size, args))
