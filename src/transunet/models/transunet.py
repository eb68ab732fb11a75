"""TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation.

Chen et al. 2021, arXiv 2102.04306 (https://arxiv.org/abs/2102.04306).

Read top to bottom: decoder blocks -> cascaded upsampler (CUP) -> segmentation head -> the model ->
registered entry points. The encoder is a ViT (:mod:`transunet.models.vit`), optionally fed by a
ResNetV2 (:mod:`transunet.models.resnetv2`, the "hybrid" R50-ViT models). Parameter and buffer
names equal the official implementation's (``transformer.*``, ``decoder.*``,
``segmentation_head.*``), so its state dicts load unchanged (see :mod:`transunet.models.weights`).

Differences from the official code, none of which change the computation:

* a 1-channel model folds the repeat-to-3-channels into its first convolution instead of
  repeating the input on every call (exact: see :mod:`transunet.layers.std_conv`);
* non-square inputs are supported (the official decoder assumes a square token grid);
* ViT-B_32 gets a x2 bilinear upsampling in the head so that logits match the input size;
* attention runs through ``F.scaled_dot_product_attention`` by default (``attn_impl="explicit"``
  reproduces the official softmax path); optional stochastic depth (off by default).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from transunet.errors import check_choice
from transunet.layers.attention import ATTN_IMPLS
from transunet.layers.conv_blocks import Conv2dReLU
from transunet.layers.embed import Embeddings
from transunet.models.resnetv2 import ResNetV2
from transunet.models.vit import Encoder, Transformer
from transunet.registry import register_model

__all__ = ["ARCHS", "DecoderBlock", "DecoderCup", "SegmentationHead", "TransUNet", "build_transunet"]


# ----------------------------------------------------------------------------- decoder


class DecoderBlock(nn.Module):
    """Bilinear x2 upsampling (``align_corners=True``), optional skip concat, two Conv-BN-ReLU.

    Args:
        in_channels: Channels of the incoming feature map.
        out_channels: Output channels.
        skip_channels: Channels of the concatenated skip (0: no skip).
    """

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0) -> None:
        super().__init__()
        self.conv1 = Conv2dReLU(in_channels + skip_channels, out_channels, kernel_size=3, padding=1)
        self.conv2 = Conv2dReLU(out_channels, out_channels, kernel_size=3, padding=1)
        self.up = nn.UpsamplingBilinear2d(scale_factor=2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Upsample, fuse and convolve.

        Args:
            x: ``(B, in_channels, h, w)``.
            skip: ``(B, skip_channels, 2h, 2w)`` or ``None``.

        Returns:
            ``(B, out_channels, 2h, 2w)``.
        """
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """Cascaded upsampler: ``conv_more`` (3x3 hidden -> head channels) then four DecoderBlocks.

    Args:
        hidden_size: Token width ``D`` of the encoder.
        decoder_channels: Output channels of the four blocks, e.g. ``(256, 128, 64, 16)``.
        skip_channels: Channels of the encoder skips by block (strides 8, 4, 2, 1); only the first
            ``n_skip`` are used, the rest are set to 0.
        n_skip: Number of skip connections used (0-3).
        head_channels: Output channels of ``conv_more`` (512 in the paper).
    """

    def __init__(self, hidden_size: int, decoder_channels: Sequence[int], skip_channels: Sequence[int],
                 n_skip: int, head_channels: int = 512) -> None:
        super().__init__()
        if len(decoder_channels) != 4:
            raise ValueError(f"decoder_channels={tuple(decoder_channels)} must list 4 widths, e.g. (256, 128, 64, 16).")
        self.n_skip = n_skip
        self.conv_more = Conv2dReLU(hidden_size, head_channels, kernel_size=3, padding=1)
        skips = [c if i < n_skip else 0 for i, c in enumerate(list(skip_channels) + [0] * 4)][:4]
        ins = [head_channels, *decoder_channels[:-1]]
        self.skip_channels = tuple(skips)
        self.blocks = nn.ModuleList(DecoderBlock(i, o, s) for i, o, s in zip(ins, decoder_channels, skips))

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """Decode.

        Args:
            x: Token grid ``(B, D, gh, gw)``.
            skips: Encoder skips deepest-first (strides 8, 4, 2).

        Returns:
            ``(B, decoder_channels[-1], 16 gh, 16 gw)``.
        """
        x = self.conv_more(x)
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < self.n_skip else None)
        return x


class SegmentationHead(nn.Sequential):
    """3x3 conv to class logits, then bilinear upsampling (``align_corners=True``) when > 1.

    Args:
        in_channels: Decoder output channels.
        num_classes: Output classes.
        upsampling: Scale factor after the conv (1: identity).
    """

    def __init__(self, in_channels: int, num_classes: int, upsampling: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=1),
            nn.UpsamplingBilinear2d(scale_factor=upsampling) if upsampling > 1 else nn.Identity(),
        )


# ----------------------------------------------------------------------------- model


class TransUNet(nn.Module):
    """TransUNet: (ResNetV2 ->) ViT encoder -> cascaded upsampler with CNN skips -> head.

    Build it through the registry (``create_model("R50-ViT-B_16", num_classes=9, ...)``), which
    validates the arguments and fills :attr:`model_name` / :attr:`model_kwargs`.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels, 1 (folded first conv) or 3.
        img_size: ``(H, W)`` input size, divisible by the encoder stride.
        n_skip: Skip connections used by the decoder (0-3; 0 for models without a CNN).
        dropout: Dropout on embeddings and MLPs.
        attn_dropout: Dropout on attention weights (and after the attention projection).
        drop_path: Stochastic-depth rate of the last transformer block (linear ramp from 0).
        attn_impl: ``"fused"`` or ``"explicit"``.
        hidden_size: Transformer width ``D``.
        mlp_dim: Transformer MLP width.
        num_heads: Attention heads.
        num_layers: Transformer blocks.
        patch_size: Encoder stride in pixels (16 for hybrids; the ViT patch size otherwise).
        resnet_units: Units per ResNetV2 stage, or ``None`` for a pure ViT encoder.
        resnet_width_factor: ResNetV2 width multiplier (base width 64).
        decoder_channels: Widths of the four decoder blocks.
        decoder_head_channels: Width of ``conv_more``.

    Attributes:
        model_name: Registered name (set by the entry point).
        model_kwargs: ``create_model`` kwargs that rebuild this model (set by the entry point).
        grid_size: Token grid ``(H / stride, W / stride)``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        img_size: tuple[int, int],
        n_skip: int,
        dropout: float,
        attn_dropout: float,
        drop_path: float,
        attn_impl: str,
        hidden_size: int,
        mlp_dim: int,
        num_heads: int,
        num_layers: int,
        patch_size: int,
        resnet_units: Sequence[int] | None,
        resnet_width_factor: float,
        decoder_channels: Sequence[int],
        decoder_head_channels: int,
    ) -> None:
        super().__init__()
        self.model_name = "TransUNet"
        self.model_kwargs: dict[str, Any] = {}
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.encoder_stride = int(patch_size)
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.hybrid = resnet_units is not None
        self.n_skip = int(n_skip)
        if resnet_units is not None:
            backbone = ResNetV2(resnet_units, resnet_width_factor, in_channels=in_channels)
            proj = patch_size // 16
            embeddings = Embeddings(hidden_size, self.grid_size, (proj, proj), in_channels, dropout, backbone)
            skip_channels: Sequence[int] = backbone.skip_channels
        else:
            embeddings = Embeddings(hidden_size, self.grid_size, (patch_size, patch_size), in_channels, dropout)
            skip_channels = ()
        encoder = Encoder(hidden_size, mlp_dim, num_heads, num_layers, dropout, attn_dropout, drop_path, attn_impl)
        self.transformer = Transformer(embeddings, encoder)
        self.decoder = DecoderCup(hidden_size, decoder_channels, skip_channels, n_skip, decoder_head_channels)
        self.segmentation_head = SegmentationHead(decoder_channels[-1], num_classes, upsampling=patch_size // 16)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Segment.

        Args:
            x: Images ``(B, in_channels, H, W)`` with ``(H, W) == img_size``.
            return_attention: Also return the attention weights of every transformer block
                (computed with the explicit path for this call).

        Returns:
            Logits ``(B, num_classes, H, W)``; with ``return_attention`` the tuple
            ``(logits, [weights (B, heads, N, N)] * num_layers)`` where ``N = gh * gw``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"{self.model_name} expects input (B, {self.in_channels}, {self.img_size[0]}, "
                f"{self.img_size[1]}), got {tuple(x.shape)}; resize the input or rebuild the model "
                "with matching in_channels/img_size."
            )
        encoded, maps, skips = self.transformer(x, return_attention=return_attention)  # (B, N, D)
        B, _, D = encoded.shape
        grid = encoded.transpose(1, 2).reshape(B, D, *self.grid_size)  # (B, D, gh, gw)
        logits = self.segmentation_head(self.decoder(grid, skips))  # (B, K, H, W)
        return (logits, maps) if return_attention else logits

    def transformer_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the ViT part: patch/hybrid projection, position embeddings, blocks, norm.

        Excludes the ResNet backbone, the decoder and the head (used to freeze the transformer).
        """
        for name, p in self.transformer.named_parameters():
            if not name.startswith("embeddings.hybrid_model."):
                yield p


# ----------------------------------------------------------------------------- registry

#: Architecture arguments of every registered model (literal, read by the entry points below).
ARCHS: dict[str, dict[str, Any]] = {
    "R50-ViT-B_16": {
        "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12, "num_layers": 12, "patch_size": 16,
        "resnet_units": (3, 4, 9), "resnet_width_factor": 1.0,
        "decoder_channels": (256, 128, 64, 16), "decoder_head_channels": 512,
    },
    "R50-ViT-L_16": {
        "hidden_size": 1024, "mlp_dim": 4096, "num_heads": 16, "num_layers": 24, "patch_size": 16,
        "resnet_units": (3, 4, 9), "resnet_width_factor": 1.0,
        "decoder_channels": (256, 128, 64, 16), "decoder_head_channels": 512,
    },
    "ViT-B_16": {
        "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12, "num_layers": 12, "patch_size": 16,
        "resnet_units": None, "resnet_width_factor": 1.0,
        "decoder_channels": (256, 128, 64, 16), "decoder_head_channels": 512,
    },
    "ViT-B_32": {
        "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12, "num_layers": 12, "patch_size": 32,
        "resnet_units": None, "resnet_width_factor": 1.0,
        "decoder_channels": (256, 128, 64, 16), "decoder_head_channels": 512,
    },
    "ViT-L_16": {
        "hidden_size": 1024, "mlp_dim": 4096, "num_heads": 16, "num_layers": 24, "patch_size": 16,
        "resnet_units": None, "resnet_width_factor": 1.0,
        "decoder_channels": (256, 128, 64, 16), "decoder_head_channels": 512,
    },
    # A real TransUNet (CNN skips + transformer + CUP) sized to train on a 2-core CPU in minutes.
    "TransUNet-Tiny": {
        "hidden_size": 128, "mlp_dim": 256, "num_heads": 4, "num_layers": 4, "patch_size": 16,
        "resnet_units": (1, 1, 1), "resnet_width_factor": 0.5,
        "decoder_channels": (64, 32, 16, 16), "decoder_head_channels": 128,
    },
}


def _pair(img_size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(img_size, bool):
        raise ValueError(f"img_size={img_size!r} is invalid for {name}: give an int or (H, W), e.g. 224.")  # noqa: TRY004
    if isinstance(img_size, int):
        return (img_size, img_size)
    try:
        h, w = (int(v) for v in img_size)
    except (TypeError, ValueError):
        raise ValueError(
            f"img_size={img_size!r} is invalid for {name}: give an int or (H, W), e.g. (224, 224)."
        ) from None
    return (h, w)


def build_transunet(name: str, arch: dict[str, Any], *, num_classes: int = 9, in_channels: int = 1,
                    img_size: int | Sequence[int] = 224, n_skip: int | None = None,
                    dropout: float = 0.1, attn_dropout: float = 0.0, drop_path: float = 0.0,
                    attn_impl: str = "fused", **arch_overrides: Any) -> TransUNet:
    """Validate arguments and build a :class:`TransUNet` of architecture ``arch``.

    Args:
        name: Registered name, stored as ``model.model_name``.
        arch: Default architecture arguments (a value of :data:`ARCHS`).
        num_classes: Output classes including background (>= 1).
        in_channels: 1 or 3.
        img_size: ``H`` or ``(H, W)``, each divisible by the encoder stride.
        n_skip: Skip connections used (0-3); default 3 with a CNN encoder, 0 without.
        dropout: Embedding/MLP dropout in ``[0, 1)``.
        attn_dropout: Attention dropout in ``[0, 1)``.
        drop_path: Stochastic-depth rate in ``[0, 1)`` (0 disables).
        attn_impl: ``"fused"`` or ``"explicit"``.
        **arch_overrides: Replace architecture arguments (e.g. ``num_layers=2`` for tests).
    """
    unknown = sorted(set(arch_overrides) - set(arch))
    if unknown:
        from transunet.errors import did_you_mean

        valid = ["num_classes", "in_channels", "img_size", "n_skip", "dropout", "attn_dropout",
                 "drop_path", "attn_impl", *arch]
        raise ValueError(
            f"{name} got unknown argument {unknown[0]!r}; valid arguments: {', '.join(valid)}."
            + did_you_mean(unknown[0], valid)
        )
    a = {**arch, **arch_overrides}
    stride = int(a["patch_size"])
    hybrid = a["resnet_units"] is not None
    if stride % 16 != 0 or stride < 16:
        raise ValueError(f"patch_size={stride} is invalid for {name}: it must be a multiple of 16, e.g. 16.")
    if hybrid and stride != 16:
        raise ValueError(f"patch_size={stride} is invalid for hybrid {name}: the ResNet encoder has stride 16; use 16.")
    h, w = _pair(img_size, name)
    if h < stride or w < stride or h % stride or w % stride:
        closest = (max(stride, round(h / stride) * stride), max(stride, round(w / stride) * stride))
        raise ValueError(
            f"img_size=({h}, {w}) is invalid for {name}: height and width must be positive multiples "
            f"of the encoder stride {stride}; the closest valid size is {closest}."
        )
    if in_channels not in (1, 3):
        closest_c = 1 if in_channels < 2 else 3
        raise ValueError(f"in_channels={in_channels!r} is invalid for {name}: it must be 1 or 3; closest valid: {closest_c}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is invalid for {name}: it must be an integer >= 1 (e.g. 9 for Synapse).")
    max_skip = 3 if hybrid else 0
    if n_skip is None:
        n_skip = max_skip
    if isinstance(n_skip, bool) or not isinstance(n_skip, int) or not 0 <= n_skip <= max_skip:
        closest_s = min(max(int(n_skip), 0), max_skip) if isinstance(n_skip, (int, float)) else max_skip
        rule = ("between 0 and 3" if hybrid else
                "0, because this model has no CNN encoder and hence no skip features")
        raise ValueError(f"n_skip={n_skip!r} is invalid for {name}: it must be {rule}; closest valid: {closest_s}.")
    for key, val in (("dropout", dropout), ("attn_dropout", attn_dropout), ("drop_path", drop_path)):
        if not 0.0 <= float(val) < 1.0:
            raise ValueError(f"{key}={val!r} is invalid for {name}: it must be in [0, 1), e.g. 0.1.")
    check_choice("attn_impl", attn_impl, ATTN_IMPLS)
    if a["hidden_size"] % a["num_heads"]:
        raise ValueError(f"hidden_size={a['hidden_size']} is not divisible by num_heads={a['num_heads']} for {name}.")

    model = TransUNet(
        num_classes=num_classes, in_channels=in_channels, img_size=(h, w), n_skip=n_skip,
        dropout=float(dropout), attn_dropout=float(attn_dropout), drop_path=float(drop_path),
        attn_impl=attn_impl, hidden_size=int(a["hidden_size"]), mlp_dim=int(a["mlp_dim"]),
        num_heads=int(a["num_heads"]), num_layers=int(a["num_layers"]), patch_size=stride,
        resnet_units=tuple(a["resnet_units"]) if hybrid else None,
        resnet_width_factor=float(a["resnet_width_factor"]),
        decoder_channels=tuple(a["decoder_channels"]), decoder_head_channels=int(a["decoder_head_channels"]),
    )
    model.model_name = name
    model.model_kwargs = {
        "num_classes": num_classes, "in_channels": in_channels, "img_size": (h, w), "n_skip": n_skip,
        "dropout": dropout, "attn_dropout": attn_dropout, "drop_path": drop_path, "attn_impl": attn_impl,
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in arch_overrides.items()},
    }
    return model


@register_model(name="R50-ViT-B_16")
def transunet_r50_vit_b16(**kwargs: Any) -> TransUNet:
    """TransUNet as in the paper: R50 (3, 4, 9) + ViT-B/16 (12 x 768) + CUP with 3 skips.

    Args:
        **kwargs: ``num_classes``, ``in_channels``, ``img_size``, ``n_skip``, ``dropout``,
            ``attn_dropout``, ``drop_path``, ``attn_impl`` and architecture overrides
            (see :func:`build_transunet`).
    """
    return build_transunet("R50-ViT-B_16", ARCHS["R50-ViT-B_16"], **kwargs)


@register_model(name="R50-ViT-L_16")
def transunet_r50_vit_l16(**kwargs: Any) -> TransUNet:
    """R50 (3, 4, 9) + ViT-L/16 (24 x 1024) + CUP.

    Args:
        **kwargs: As :func:`transunet_r50_vit_b16`.
    """
    return build_transunet("R50-ViT-L_16", ARCHS["R50-ViT-L_16"], **kwargs)


@register_model(name="ViT-B_16")
def transunet_vit_b16(**kwargs: Any) -> TransUNet:
    """ViT-B/16 encoder + CUP without skips (the paper's "ViT-CUP" ablation).

    Args:
        **kwargs: As :func:`transunet_r50_vit_b16`; ``n_skip`` must be 0.
    """
    return build_transunet("ViT-B_16", ARCHS["ViT-B_16"], **kwargs)


@register_model(name="ViT-B_32")
def transunet_vit_b32(**kwargs: Any) -> TransUNet:
    """ViT-B/32 encoder + CUP without skips; the head upsamples x2 to the input size.

    Args:
        **kwargs: As :func:`transunet_r50_vit_b16`; ``n_skip`` must be 0, ``img_size`` a multiple of 32.
    """
    return build_transunet("ViT-B_32", ARCHS["ViT-B_32"], **kwargs)


@register_model(name="ViT-L_16")
def transunet_vit_l16(**kwargs: Any) -> TransUNet:
    """ViT-L/16 encoder + CUP without skips.

    Args:
        **kwargs: As :func:`transunet_r50_vit_b16`; ``n_skip`` must be 0.
    """
    return build_transunet("ViT-L_16", ARCHS["ViT-L_16"], **kwargs)


@register_model(name="TransUNet-Tiny")
def transunet_tiny(**kwargs: Any) -> TransUNet:
    """Small hybrid TransUNet for CPU: ResNetV2 width 32 (1, 1, 1) + 4 x 128 ViT + CUP (64..16).

    Defaults to ``img_size=128``.

    Args:
        **kwargs: As :func:`transunet_r50_vit_b16`.
    """
    kwargs.setdefault("img_size", 128)
    return build_transunet("TransUNet-Tiny", ARCHS["TransUNet-Tiny"], **kwargs)

