"""TransUNet: Transformers Make Strong Encoders for Medical Image Segmentation.

Chen et al. 2021, arXiv 2102.04306 (https://arxiv.org/abs/2102.04306).

Read top to bottom: decoder blocks -> cascaded upsampler (CUP) -> segmentation head -> the model ->
registered entry points. The encoder is a ViT (:mod:`transunet.models.vit`), optionally fed by a
ResNetV2 (:mod:`transunet.models.resnetv2`, the "hybrid" R50-ViT models). Parameter and buffer
names equal the official implementation's (``transformer.*``, ``decoder.*``,
``segmentation_head.*``), so its state dicts load unchanged (see :mod:`transunet.models.weights`).

Differences from the official code, none of which change the computation:

* a 1-channel model folds the repeat-to-3-channels into its first convolution instead of
  repeating the input on every call (exact: see :mod:`transunet.layers.std_conv`); other channel
  counts than 1 and 3 (the official code takes 3) store their own first kernel, to which 3-channel
  pretrained kernels are adapted on loading;
* non-square inputs are supported (the official decoder assumes a square token grid);
* ViT-B_32 gets a x2 bilinear upsampling in the head so that logits match the input size;
* attention runs through ``F.scaled_dot_product_attention`` by default (``attn_impl="explicit"``
  reproduces the official softmax path); optional stochastic depth (off by default).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from transunet.errors import CheckpointError, check_choice
from transunet.layers.attention import ATTN_IMPLS
from transunet.layers.conv_blocks import Conv2dReLU
from transunet.layers.embed import Embeddings
from transunet.layers.pos_embed import resize_pos_embed
from transunet.models.base import SegmentationModel, check_args, check_img_size, check_int
from transunet.models.resnetv2 import ResNetV2, google_resnet_key_map
from transunet.models.vit import Encoder, Transformer, google_vit_key_map
from transunet.registry import register_model
from transunet.utils import as_pair
from transunet.weights import ConvertedWeights, ForeignWeights, convert_npz, strip_prefixes

log = logging.getLogger(__name__)

__all__ = ["ARCHS", "DecoderBlock", "DecoderCup", "SegmentationHead", "TransUNet", "build_transunet",
           "google_npz_to_state_dict"]


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


class TransUNet(SegmentationModel):
    """TransUNet: (ResNetV2 ->) ViT encoder -> cascaded upsampler with CNN skips -> head.

    Build it through the registry (``create_model("R50-ViT-B_16", num_classes=9, ...)``), which
    validates the arguments and fills :attr:`model_name` / :attr:`model_kwargs`.

    Args:
        num_classes: Output classes including background.
        in_channels: Input channels (>= 1; 1 folds the 3-channel first convolution).
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
        grid_size: Token grid ``(H / stride, W / stride)``.
    """

    attention_kind = "global"
    fixed_input_size = True

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
        super().__init__(num_classes=num_classes, in_channels=in_channels, img_size=img_size,
                         size_multiple=patch_size)
        self.model_name = "TransUNet"
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

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segment.

        Args:
            x: Images ``(B, in_channels, H, W)`` with ``(H, W) == img_size``.

        Returns:
            Logits ``(B, num_classes, H, W)``.
        """
        encoded, skips = self.transformer(x)  # (B, N, D)
        B, _, D = encoded.shape
        grid = encoded.transpose(1, 2).reshape(B, D, *self.grid_size)  # (B, D, gh, gw)
        return self.segmentation_head(self.decoder(grid, skips))  # (B, K, H, W)

    # ------------------------------------------------------------------ contract

    def channels_last_parts(self) -> list[nn.Module]:
        """The decoder and the head train channels-last with the fast kernels: their bilinear
        upsampling and full-resolution, few-channel convolutions run 2-3x faster so (the step at
        224, batch 4, on 2 CPU cores: 2% less time in float32, 3% in bf16;
        ``benchmarks/bench_fast_choices.py cl-parts``). The GroupNorm backbone stays in the
        default layout."""
        return [self.decoder, self.segmentation_head]

    def profile_parts(self) -> list[tuple[str, str]]:
        """``cnn_encoder`` (ResNetV2), ``embedding``, ``transformer``, ``decoder``, ``head``."""
        return [
            ("cnn_encoder", "transformer.embeddings.hybrid_model"),
            ("embedding", "transformer.embeddings"),
            ("transformer", "transformer.encoder"),
            ("decoder", "decoder"),
            ("head", "segmentation_head"),
        ]

    def param_groups(self) -> OrderedDict[str, list[nn.Parameter]]:
        """``cnn_encoder``, ``transformer`` (patch/hybrid projection, position embeddings, blocks,
        norm), ``decoder`` and ``head``: freezing ``transformer`` is the paper's two-stage setup."""
        groups = super().param_groups()
        vit = groups.pop("embedding", []) + groups.pop("transformer", [])
        out: OrderedDict[str, list[nn.Parameter]] = OrderedDict()
        if "cnn_encoder" in groups:
            out["cnn_encoder"] = groups.pop("cnn_encoder")
        out["transformer"] = vit
        out.update(groups)
        return out

    def attention_grid(self) -> tuple[int, int]:
        """The token grid ``(H / stride, W / stride)`` of the global attention maps."""
        return self.grid_size

    # ------------------------------------------------------------------ weights

    def convert_state_dict(self, weights: ForeignWeights) -> ConvertedWeights:
        """Google ViT / R50+ViT ``.npz``, official TransUNet state dicts and our checkpoints.

        ``.npz``: the encoder is converted (:func:`google_vit_key_map`,
        :func:`google_resnet_key_map`), the class-token position dropped and the position grid
        resized (``scipy.ndimage.zoom(order=1)``, as the official ``load_from``); the ImageNet
        classifier entries are dropped; decoder and head stay random, as in the official code.
        State dicts: the official module names equal ours (position embeddings of another grid are
        resized by :meth:`adapt_state_dict` when loading as pretrained weights).
        """
        if weights.kind == "npz":
            return _convert_google_npz(self, weights.tensors, weights.source)
        return ConvertedWeights(strip_prefixes(weights.tensors), [])

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor], weights: ForeignWeights) -> dict[str, torch.Tensor]:
        """Resize position embeddings made for another token grid (bilinear, as the official code)."""
        sd = dict(state_dict)
        own = self.state_dict()
        if POS_KEY in sd and POS_KEY in own and tuple(sd[POS_KEY].shape) != tuple(own[POS_KEY].shape):
            pos = sd[POS_KEY]
            old = _checkpoint_grid(weights.meta, int(pos.shape[1])) if weights.kind == "checkpoint" else None
            if old is None:
                g = _square_grid(int(pos.shape[1]))
                if g is None:
                    raise CheckpointError(
                        f"{weights.source}: '{POS_KEY}' has {pos.shape[1]} positions, not a square grid; "
                        "load it into a model of the img_size it was trained with."
                    )
                old = (g, g)
            if pos.ndim == 3 and pos.shape[2] == own[POS_KEY].shape[2]:
                sd[POS_KEY] = resize_pos_embed(pos, old, self.grid_size)
        return sd

    def explain_mismatch(self, key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str | None:
        """Position embeddings (img_size) and decoder inputs (n_skip) get their own causes."""
        if key.endswith("position_embeddings"):
            n_file = file_shape[1] if len(file_shape) > 1 else "?"
            n_model = model_shape[1] if len(model_shape) > 1 else "?"
            if len(file_shape) > 2 and len(model_shape) > 2 and file_shape[2] != model_shape[2]:
                return "the hidden size differs: check the model name"
            return (f"the file was made for another img_size ({n_file} token positions, this model has "
                    f"{n_model}); pass the img_size it was trained with")
        if key.startswith("decoder.blocks.") and ".conv1." in key and file_shape[:1] == model_shape[:1]:
            return "the file was made with another n_skip (the decoder's skip inputs differ)"
        return None

    def explain_keys(self, keys: Sequence[str]) -> str | None:
        """Hybrid vs pure ViT, ResNet units and transformer depth."""
        if any(".hybrid_model." in k for k in keys):
            return ("a hybrid R50-ViT model vs a pure ViT model: check the model name"
                    if not self.hybrid or any(k.endswith("root.conv.weight") for k in keys)
                    else "a ResNet with another number of units per stage: check the model name")
        if any(".encoder.layer." in k for k in keys):
            return "another number of transformer layers: check the model name"
        return None


# ----------------------------------------------------------------------------- weight converters

POS_KEY = "transformer.embeddings.position_embeddings"
NPZ_POS_KEY = "Transformer/posembed_input/pos_embedding"
#: Google ``.npz`` entries that belong to the ImageNet classifier and are never used.
NPZ_IGNORED_PREFIXES = ("cls", "head/", "pre_logits/")


def _square_grid(n: int) -> int | None:
    g = math.isqrt(n)
    return g if g * g == n else None


def _checkpoint_grid(ckpt: Mapping[str, Any], n_tokens: int) -> tuple[int, int] | None:
    """The token grid a checkpoint of ours was trained with (from its recorded arguments)."""
    kwargs = (ckpt.get("model") or {}).get("kwargs") or {}
    size, stride = kwargs.get("img_size"), kwargs.get("patch_size")
    if size is None:
        return None
    h, w = as_pair(size)
    name = (ckpt.get("model") or {}).get("name")
    if stride is None:
        stride = ARCHS.get(str(name), {}).get("patch_size", 16)
    return (h // stride, w // stride) if (h // stride) * (w // stride) == n_tokens else None


def _npz_pos_embed(posemb: np.ndarray, grid: tuple[int, int], source: str) -> torch.Tensor:
    """Google position embeddings (with class token) -> ``(1, gh*gw, D)`` for ``grid``."""
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise CheckpointError(f"{source}: '{NPZ_POS_KEY}' has shape {posemb.shape}, expected (1, N, D).")
    n = posemb.shape[1]
    if n < 2 or posemb.shape[2] < 1:  # a class token alone (or nothing) is no position grid
        raise CheckpointError(f"{source}: '{NPZ_POS_KEY}' has shape {posemb.shape}, no grid of positions; the "
                              "file is not a ViT checkpoint.")
    if _square_grid(n - 1) is not None:  # class token first (all Google ViT checkpoints)
        posemb, n = posemb[:, 1:], n - 1
    g = _square_grid(n)
    if not g:
        raise CheckpointError(
            f"{source}: '{NPZ_POS_KEY}' holds {posemb.shape[1]} positions, not a square grid "
            "(with or without a class token); the file is not a ViT checkpoint."
        )
    return resize_pos_embed(posemb, (g, g), grid)


def google_npz_to_state_dict(npz: Mapping[str, np.ndarray], model: TransUNet, source: str = "<npz>"
                             ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Convert Google ViT ``.npz`` arrays into a (partial) state dict for a TransUNet model.

    Args:
        npz: Arrays by Google key (e.g. ``np.load(path)``).
        model: The target model (defines which keys and shapes are needed).
        source: File name for messages.

    Returns:
        ``(state_dict, missing, unused)``: converted tensors, model keys without a counterpart in
        the file, and file keys that were not used (the classifier ``head``, ``pre_logits`` and
        ``cls`` entries included).

    Raises:
        CheckpointError: When a converted array's shape does not match the model.
    """
    key_map = google_vit_key_map("transformer.", len(model.transformer.encoder.layer))
    if model.hybrid:
        key_map.update(google_resnet_key_map("transformer.embeddings.hybrid_model.",
                                             model.transformer.embeddings.hybrid_model))
    out, used_list = convert_npz(npz, key_map, model, source)
    used = set(used_list)
    own = model.state_dict()
    if NPZ_POS_KEY in npz:
        pos = _npz_pos_embed(np.asarray(npz[NPZ_POS_KEY]), model.grid_size, source)
        if tuple(pos.shape) != tuple(own[POS_KEY].shape):
            raise CheckpointError(
                f"{source}: '{NPZ_POS_KEY}' gives shape {tuple(pos.shape)} but '{POS_KEY}' has shape "
                f"{tuple(own[POS_KEY].shape)}; the hidden size differs: check the model name."
            )
        out[POS_KEY] = pos
        used.add(NPZ_POS_KEY)
    missing = [k for k in own if k not in out]
    unused = [k for k in npz if k not in used]
    return out, missing, unused


def _convert_google_npz(model: TransUNet, npz: Mapping[str, np.ndarray], source: str) -> ConvertedWeights:
    sd, _missing, unused = google_npz_to_state_dict(npz, model, source)
    ignored = [k for k in unused if k.startswith(NPZ_IGNORED_PREFIXES)]
    if ignored:
        log.info("%s: %d ImageNet classifier entries ignored", source, len(ignored))
    return ConvertedWeights(sd, [k for k in unused if k not in ignored])


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


def build_transunet(name: str, arch: dict[str, Any], *, num_classes: int = 9, in_channels: int = 1,
                    img_size: int | Sequence[int] = 224, n_skip: int | None = None,
                    dropout: float = 0.1, attn_dropout: float = 0.0, drop_path: float = 0.0,
                    attn_impl: str = "fused", **arch_overrides: Any) -> TransUNet:
    """Validate arguments and build a :class:`TransUNet` of architecture ``arch``.

    Args:
        name: Registered name, stored as ``model.model_name``.
        arch: Default architecture arguments (a value of :data:`ARCHS`).
        num_classes: Output classes including background (>= 1).
        in_channels: Input channels (>= 1).
        img_size: ``H`` or ``(H, W)``, each divisible by the encoder stride.
        n_skip: Skip connections used (0-3); default 3 with a CNN encoder, 0 without.
        dropout: Embedding/MLP dropout in ``[0, 1)``.
        attn_dropout: Attention dropout in ``[0, 1)``.
        drop_path: Stochastic-depth rate in ``[0, 1)`` (0 disables).
        attn_impl: ``"fused"`` or ``"explicit"``.
        **arch_overrides: Replace architecture arguments (e.g. ``num_layers=2`` for tests).
    """
    check_args(name, arch_overrides, ["num_classes", "in_channels", "img_size", "n_skip", "dropout",
                                      "attn_dropout", "drop_path", "attn_impl", *arch])
    a = {**arch, **arch_overrides}
    stride = int(a["patch_size"])
    hybrid = a["resnet_units"] is not None
    if stride % 16 != 0 or stride < 16:
        raise ValueError(f"patch_size={stride} is invalid for {name}: it must be a multiple of 16, e.g. 16.")
    if hybrid and stride != 16:
        raise ValueError(f"patch_size={stride} is invalid for hybrid {name}: the ResNet encoder has stride 16; use 16.")
    try:
        size = as_pair(img_size, "img_size")
    except ValueError as e:
        raise ValueError(f"{e} ({name})") from None
    h, w = check_img_size(name, size, stride)
    in_channels = check_int(name, "in_channels", in_channels)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is invalid for {name}: it must be an integer >= 1 "
                         "(e.g. 9 for Synapse).")
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

