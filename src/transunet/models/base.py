"""The contract every segmentation model of the package implements: :class:`SegmentationModel`.

Trainer, validation, evaluation, prediction, report and profile talk to a model only through this
class, so none of them branches on the architecture. An architecture

* derives from :class:`SegmentationModel` and calls its ``__init__`` with ``num_classes``,
  ``in_channels``, ``img_size`` and the multiple its input size must be (``size_multiple``);
* implements :meth:`~SegmentationModel.segment` (``(B, in_channels, H, W) -> (B, K, H, W)``; with
  deep supervision it may return a list in training mode, full-resolution logits first);
* declares its parts with :meth:`~SegmentationModel.profile_parts` (module-name prefixes), which
  also define the parameter groups used for freezing and per-group learning rates;
* declares its attention capability (:attr:`~SegmentationModel.attention_kind`); layers that can
  record attention derive from :class:`transunet.layers.attention.RecordsAttention`, and
  :meth:`~SegmentationModel.capture_attention` collects their maps during one forward pass;
* converts foreign weight layouts in :meth:`~SegmentationModel.convert_state_dict` (official
  state-dict names, Google ``.npz``, ...) so :func:`transunet.load_pretrained` finds them.

An entry point registered with :func:`transunet.register_model` validates its arguments (use
:func:`check_args` and :func:`check_img_size` for the one-line messages) and returns the model; the
registry fills :attr:`model_name` and :attr:`model_kwargs`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from transunet.errors import CheckpointError, did_you_mean
from transunet.layers.fast import (
    InferenceModel,
    channels_last_in_training,
    checkpoint_blocks,
    find_blocks,
    fold_batchnorm,
    freeze_kernels,
    use_fast_dropout,
    use_fast_std_conv,
    use_onednn_linear,
)
from transunet.layers.std_conv import FoldConv2d, adapt_rgb_kernel
from transunet.utils import as_size
from transunet.weights import ConvertedWeights, ForeignWeights, strip_prefixes

__all__ = [
    "ATTENTION_KINDS",
    "AttentionCapture",
    "FeatureInfo",
    "SegmentationModel",
    "check_args",
    "check_bool",
    "check_img_size",
    "check_int",
    "check_option",
    "check_rate",
]

log = logging.getLogger(__name__)

#: Kinds of attention a model may expose: ``global`` (every token attends to every token, maps
#: ``(B, heads, N, N)`` over a ``grid``), ``window`` (shifted windows), ``axial`` (rows/columns),
#: ``deformable`` (learned sampling points), ``gate`` (additive attention gates on skips: one
#: ``(B, 1, h, w)`` coefficient map per gate).
ATTENTION_KINDS = ("global", "window", "axial", "deformable", "gate")


class FeatureInfo(NamedTuple):
    """One encoder feature map offered to a decoder as a skip, named by its stride.

    Attributes:
        stride: Downsampling factor relative to the input (1, 2, 4, 8, 16, ...).
        channels: Channels of the feature map.
    """

    stride: int
    channels: int


@dataclass
class AttentionCapture:
    """Attention maps recorded by :meth:`SegmentationModel.capture_attention` during one forward.

    Attributes:
        kind: One of :data:`ATTENTION_KINDS`.
        grid: Token grid ``(gh, gw)`` of ``global`` maps (``N = gh * gw``), else ``None``.
        maps: One tensor per recording layer, in call order; ``global``: ``(B, heads, N, N)``
            softmax weights (rows sum to 1); other kinds: the layer's own layout (see its docstring).
    """

    kind: str
    grid: tuple[int, int] | None
    maps: list[torch.Tensor] = field(default_factory=list)


class SegmentationModel(nn.Module):
    """Base class of every registered model (see the module docstring for the contract).

    Args:
        num_classes: Output classes including background (>= 1).
        in_channels: Channels the model computes on (1 for CT/MRI slices, ``N`` for ``N``-channel
            data; a 3-channel model also accepts 1-channel input, see :meth:`prepare_input`).
        img_size: ``H`` or ``(H, W)`` the model is built for (``(D, H, W)`` for a 3D model).
        size_multiple: The input height/width must be a multiple of this (``int`` or pair).
        spatial_dims: 2 (slices, what the pipeline trains) or 3 (volumes: available from Python
            for 3D weights; ``transunet train`` refuses it until a 3D pipeline exists).

    Attributes:
        model_name: Registered name (filled by :func:`transunet.create_model`).
        model_kwargs: ``create_model`` keyword arguments that rebuild this model.
        deep_supervision: ``True`` when :meth:`segment` returns a list in training mode.
    """

    #: Attention the model can expose through :meth:`capture_attention` (``None``: none).
    attention_kind: ClassVar[str | None] = None
    #: ``True`` when the input must equal ``img_size`` exactly (position embeddings, windows);
    #: ``False`` when any multiple of ``size_multiple`` works (fully convolutional models).
    fixed_input_size: ClassVar[bool] = True
    #: Key prefixes of foreign state dicts stripped by the default :meth:`convert_state_dict`.
    foreign_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, num_classes: int, in_channels: int, img_size: int | Sequence[int],
                 size_multiple: int | Sequence[int] = 1, spatial_dims: int = 2) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={spatial_dims!r} is invalid: it must be 2 or 3.")
        self.spatial_dims = int(spatial_dims)
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.img_size = as_size(img_size, spatial_dims, "img_size")
        self.size_multiple = as_size(size_multiple, spatial_dims, "size_multiple")
        self.model_name: str = type(self).__name__
        self.model_kwargs: dict[str, Any] = {}
        self.deep_supervision = False

    # ------------------------------------------------------------------ forward

    def segment(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The architecture's computation (implemented by every subclass).

        Args:
            x: ``(B, in_channels, H, W)``, already checked by :meth:`prepare_input`.

        Returns:
            Logits ``(B, num_classes, H, W)``; with deep supervision in training mode a list of
            logits, full resolution first (lower-resolution outputs allowed).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement segment(x).")

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment a batch.

        Args:
            x: ``(B, C, H, W)`` with ``C == in_channels`` (or 1 for a 3-channel model) and an
                ``(H, W)`` that :meth:`check_input_size` accepts.

        Returns:
            Logits ``(B, num_classes, H, W)`` in eval mode; in training mode a model with deep
            supervision returns the list of its outputs (full resolution first).
        """
        out = self.segment(self.prepare_input(x))
        if isinstance(out, (list, tuple)) and not (self.training and self.deep_supervision):
            return out[0]
        return out

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """Check a batch and bring it to ``in_channels``: the one place of the channel policy.

        A 1-channel batch given to a 3-channel model is repeated to three channels (grey input to a
        model pretrained on RGB); a 1-channel model computes on one channel (architectures with
        an RGB-pretrained first convolution fold it exactly instead of repeating the input).

        Args:
            x: ``(B, C, H, W)``.

        Raises:
            ValueError: Wrong rank, channel count or spatial size, naming the fix.
        """
        if x.ndim != self.spatial_dims + 2:
            axes = "H, W" if self.spatial_dims == 2 else "D, H, W"
            raise ValueError(f"{self.model_name} expects a batch (B, {self.in_channels}, {axes}), got shape "
                             f"{tuple(x.shape)}; add the batch/channel axes (x[None, None] for one "
                             f"{'slice' if self.spatial_dims == 2 else 'volume'}).")
        if x.shape[1] != self.in_channels:
            if x.shape[1] == 1 and self.in_channels == 3:
                x = x.repeat(1, 3, *([1] * self.spatial_dims))
            else:
                raise ValueError(f"{self.model_name} was built for in_channels={self.in_channels} but got "
                                 f"{x.shape[1]} channels; rebuild it with in_channels={x.shape[1]}.")
        self.check_input_size(tuple(x.shape[2:]), batch_shape=tuple(x.shape))
        return x

    def check_input_size(self, size: int | Sequence[int], batch_shape: tuple[int, ...] | None = None
                         ) -> tuple[int, ...]:
        """Validate an input ``(H, W)`` against the size rule; return it as a pair.

        Args:
            size: ``H`` or ``(H, W)``.
            batch_shape: The whole batch shape, named in the message when given.

        Raises:
            ValueError: Naming the rule and the closest valid size.
        """
        dims = as_size(size, self.spatial_dims, "input size")
        if self.fixed_input_size and dims != self.img_size:
            raise ValueError(
                f"{self.model_name} expects input (B, {self.in_channels}, "
                f"{', '.join(map(str, self.img_size))}), got {batch_shape or dims}; resize the input or "
                "rebuild the model with a matching img_size.")
        return check_img_size(self.model_name, dims, self.size_multiple, what="input size")

    # ------------------------------------------------------------------ parts and groups

    def profile_parts(self) -> list[tuple[str, str]]:
        """The model's parts as ``(label, module-name prefix)``; the first matching prefix wins.

        Used by ``transunet profile`` (parameters and FLOPs per part) and by :meth:`param_groups`.
        The default is one part per top-level child module; models name theirs (e.g.
        ``encoder``, ``transformer``, ``decoder``, ``head``). A part labelled ``head`` holds the
        class-dependent output layers (skipped with a warning when pretrained weights were made
        for another ``num_classes``).
        """
        return [(name, name) for name, _ in self.named_children()]

    def part_of(self, name: str) -> str:
        """The label of the part a parameter or module ``name`` belongs to (``other`` if none)."""
        for label, prefix in self.profile_parts():
            if prefix == "" or name == prefix or name.startswith(prefix + "."):
                return label
        return "other"

    def param_groups(self) -> OrderedDict[str, list[nn.Parameter]]:
        """Named parameter groups covering every parameter exactly once (by :meth:`profile_parts`).

        Two-stage training freezes one group (``train.freeze_group``), per-group learning rates
        scale them (``train.lr_scales``).
        """
        groups: OrderedDict[str, list[nn.Parameter]] = OrderedDict((label, []) for label, _ in self.profile_parts())
        for pname, p in self.named_parameters():
            groups.setdefault(self.part_of(pname), []).append(p)
        return OrderedDict((k, v) for k, v in groups.items() if v)

    # ------------------------------------------------------------------ execution fast paths

    def checkpoint_blocks(self) -> list[nn.Module]:
        """The blocks recomputed in the backward pass under activation checkpointing.

        Default: :func:`transunet.layers.fast.find_blocks` (transformer layers, residual units,
        decoder blocks: the elements of the innermost block lists). A model whose blocks are not in
        lists overrides this.
        """
        return find_blocks(self)

    def set_checkpointing(self, enable: bool = True) -> int:
        """Turn activation checkpointing of :meth:`checkpoint_blocks` on or off (in place).

        Training keeps only each block's input and recomputes the rest in the backward pass: less
        memory, about one more forward pass of time, the same gradients. State-dict keys stay.

        Returns:
            The number of blocks changed.
        """
        return checkpoint_blocks(self, enable, self.checkpoint_blocks() if enable else None)

    def channels_last_parts(self) -> list[nn.Module]:
        """Submodules whose activations are stored channels-last in training with the fast kernels
        (:meth:`use_fast_kernels`, see :func:`transunet.layers.fast.channels_last_in_training`).

        Default: none. A model names parts where it was measured to pay: convolutional parts
        without GroupNorm (whose channels-last backward is slow on CPU).
        """
        return []

    def use_fast_kernels(self, enable: bool = True) -> int:
        """The training fast paths, in place (see :mod:`transunet.layers.fast`): float32 CPU linear
        layers through oneDNN in both passes, CPU dropout masks from a counter-based hash
        (:class:`~transunet.layers.fast.FastDropout`: same distribution, other random numbers than
        PyTorch's serial generator), weight standardization through the fused layer-norm kernels
        (:class:`~transunet.layers.std_conv.FastStdConv2d`: float32 rounding), and channels-last
        activations in :meth:`channels_last_parts` during training (float32 rounding).
        Parameters and state-dict keys stay.

        Returns:
            The number of layers and parts changed.
        """
        return (use_onednn_linear(self, enable) + use_fast_dropout(self, enable) + use_fast_std_conv(self, enable)
                + channels_last_in_training(self, self.channels_last_parts(), enable))

    @property
    def prefers_channels_last(self) -> bool:
        """Whether inference should store activations channels-last (:meth:`for_inference`'s default).

        Default: for 2D models with at least 8 convolutions. Measured with
        ``benchmarks/bench_speed.py`` on 2 CPU cores (224, batch 8, float32 fast path without -> with):
        UNet 1.15x -> 1.55x, AttentionUNet 1.10x -> 1.39x, R50-ViT-B_16 1.36x -> 1.61x, but
        Swin-Unet (two convolutions) 1.44x -> 1.26x. A model overrides it where it knows better.
        """
        n_conv = sum(isinstance(m, nn.Conv2d) for m in self.modules())
        return self.spatial_dims == 2 and n_conv >= 8

    def for_inference(self, *, dtype: torch.dtype | None = None, channels_last: bool | None = None,
                      compile: bool = False, fast: bool = True) -> InferenceModel:
        """A copy of the model prepared for inference only (this model is left unchanged).

        Args:
            dtype: ``torch.bfloat16`` / ``torch.float16`` to compute in that precision (weights
                converted once, input cast, logits returned as float32); ``None``: float32.
            channels_last: Store 4D activations channels-last; ``None``: :attr:`prefers_channels_last`.
            compile: ``torch.compile`` (Inductor, with weight freezing) on the first call; later
                calls with a smaller batch are padded to the first batch's size so nothing recompiles.
            fast: The exact fast paths: kernels of weight-standardized / folded convolutions
                computed once, BatchNorm folded into the preceding convolution, oneDNN linear
                layers (float32 CPU). Float32 logits stay within 1e-4 of this model's.

        Returns:
            An :class:`InferenceModel` in eval mode, ``(B, C, H, W) -> (B, K, H, W)`` float32 logits.
        """
        if channels_last is None:
            channels_last = self.prefers_channels_last
        model = copy.deepcopy(self).eval()
        model.requires_grad_(False)
        if fast:
            freeze_kernels(model)
            fold_batchnorm(model)
            use_onednn_linear(model)
        if dtype is not None:
            model = model.to(dtype)
        if channels_last and self.spatial_dims == 2:
            model = model.to(memory_format=torch.channels_last)
        return InferenceModel(model, dtype=dtype, channels_last=channels_last and self.spatial_dims == 2,
                              compile=compile).eval()

    # ------------------------------------------------------------------ attention

    def attention_grid(self) -> tuple[int, int] | None:
        """Token grid ``(gh, gw)`` of ``global`` attention maps (``None`` for other kinds)."""
        return None

    @contextlib.contextmanager
    def capture_attention(self) -> Iterator[AttentionCapture]:
        """Record the attention of every recording layer during the forward passes in the block.

        Example::

            with model.capture_attention() as cap:
                model(x)
            cap.maps  # one (B, heads, N, N) tensor per layer for kind "global"

        Raises:
            NotImplementedError: The model declares no attention (``attention_kind is None``) or
                has no recording layer; consumers skip the maps with a note.
        """
        from transunet.layers.attention import RecordsAttention

        if self.attention_kind is None:
            raise NotImplementedError(f"{self.model_name} exposes no attention maps (attention_kind is None).")
        layers = [m for m in self.modules() if isinstance(m, RecordsAttention)]
        if not layers:
            raise NotImplementedError(f"{self.model_name} declares {self.attention_kind} attention but has "
                                      "no layer that records it.")
        cap = AttentionCapture(kind=self.attention_kind, grid=self.attention_grid())
        for m in layers:
            m.attention_store = cap.maps
        try:
            yield cap
        finally:
            for m in layers:
                m.attention_store = None

    # ------------------------------------------------------------------ foreign weights

    def convert_state_dict(self, weights: ForeignWeights) -> ConvertedWeights:
        """Map a foreign weight file onto this model's keys (overridden beside each architecture).

        The default accepts state dicts whose keys equal this model's after removing
        ``module.``/``_orig_mod.`` and :attr:`foreign_prefixes`, and refuses ``.npz`` files.

        Args:
            weights: The file's tensors and what kind of file it is.

        Returns:
            The converted state dict (possibly partial) and the file keys it did not use.
        """
        if weights.kind == "npz":
            raise CheckpointError(f"{weights.source} is a Google ViT .npz, which {self.model_name} cannot "
                                  "use; pass a PyTorch state dict or a transunet checkpoint of this model.")
        sd = strip_prefixes(weights.tensors, extra=self.foreign_prefixes)
        return ConvertedWeights(sd, [])

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor], weights: ForeignWeights) -> dict[str, torch.Tensor]:
        """Adapt converted weights made for another configuration of this model (pretrained use only).

        Called by :func:`transunet.load_pretrained` after :meth:`convert_state_dict`, never by
        strict loading; e.g. TransUNet resizes position embeddings of another token grid. The
        default returns ``state_dict`` unchanged.

        Args:
            state_dict: Output of :meth:`convert_state_dict`.
            weights: The file it came from (``meta`` holds a checkpoint's recorded arguments).
        """
        return state_dict

    def rgb_input_convs(self) -> dict[str, tuple[int, ...]]:
        """First convolutions with the layout of RGB-pretrained kernels: ``{weight key: its shape}``.

        These are the :class:`~transunet.layers.std_conv.FoldConv2d` built with
        :meth:`~transunet.layers.std_conv.FoldConv2d.rgb_input` (3 stored channels for 1 or 3 input
        channels, ``in_channels`` otherwise).
        """
        return {f"{name}.weight": tuple(m.weight.shape) for name, m in self.named_modules()
                if isinstance(m, FoldConv2d) and m.rgb_layout}

    def adapt_input_kernels(self, state_dict: dict[str, torch.Tensor], source: str = "<weights>"
                            ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Adapt 3-channel (RGB) first-convolution kernels to this model's stored input channels.

        Called by :func:`transunet.load_pretrained` (pretrained use only, never by strict loading)
        after :meth:`adapt_state_dict`: a kernel ``(out, 3, kh, kw)`` in ``state_dict`` at a key of
        :meth:`rgb_input_convs` whose stored kernel has ``N != 3`` channels becomes
        :func:`~transunet.layers.std_conv.adapt_rgb_kernel` ``(W, N)`` (the RGB sum split evenly over
        the ``N`` channels), with a warning naming the key.

        Args:
            state_dict: Converted (and adapted) weights.
            source: The file, for the log line.

        Returns:
            ``(state_dict, adapted keys)``.
        """
        sd = dict(state_dict)
        adapted = []
        for key, shape in self.rgb_input_convs().items():
            w = sd.get(key)
            if w is None or w.ndim != 4 or len(shape) != 4 or w.shape[1] != 3 or shape[1] == 3:
                continue
            if (w.shape[0], *w.shape[2:]) != (shape[0], *shape[2:]):
                continue  # another width or kernel size: reported as a mismatch by the loader
            sd[key] = adapt_rgb_kernel(w, shape[1])
            adapted.append(key)
        if adapted:
            log.warning("%s: 3-channel (RGB) first-convolution kernel adapted to in_channels=%d (RGB kernel "
                        "averaged over its channels, repeated, scaled by 3/%d): %s", source, self.in_channels,
                        self.in_channels, ", ".join(adapted))
        return sd, adapted

    def explain_mismatch(self, key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str | None:
        """The likely cause of a shape mismatch at ``key`` (``None``: the generic message)."""
        return None

    def explain_keys(self, keys: Sequence[str]) -> str | None:
        """The likely cause of missing/unexpected ``keys`` (``None``: the generic message)."""
        return None


# ----------------------------------------------------------------------------- argument checks


def check_args(model: str, given: Mapping[str, Any], accepted: Sequence[str]) -> None:
    """Refuse arguments an entry point does not know, naming the accepted ones and the closest.

    Args:
        model: Registered model name (for the message).
        given: The arguments passed (e.g. ``model.args``).
        accepted: The argument names the model accepts.

    Raises:
        ValueError: ``"<model> got unknown argument 'x'; accepted: ...; did you mean 'y'?"``.
    """
    unknown = [k for k in given if k not in accepted]
    if unknown:
        raise ValueError(f"{model} got unknown argument {unknown[0]!r}; accepted arguments: "
                         f"{', '.join(accepted)}." + did_you_mean(unknown[0], accepted))


def accepted_args(fn: Any) -> list[str]:
    """Keyword parameter names of ``fn`` (used by entry points that validate with :func:`check_args`)."""
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_img_size(model: str, img_size: int | Sequence[int], multiple: int | Sequence[int],
                   minimum: int | Sequence[int] | None = None, what: str = "img_size",
                   spatial_dims: int | None = None) -> tuple[int, ...]:
    """Validate ``img_size`` against "positive multiple of ``multiple``, at least ``minimum``".

    Args:
        model: Registered model name (for the message).
        img_size: ``H`` or ``(H, W)`` (``(D, H, W)`` in 3D).
        multiple: Required divisor of each side (``int`` or one per side).
        minimum: Smallest side (default: ``multiple``).
        what: The argument's name in the message.
        spatial_dims: 2 or 3; default: the length of ``img_size`` when it is a sequence, else 2.

    Returns:
        ``(H, W)`` (or ``(D, H, W)``).

    Raises:
        ValueError: Naming the model, the rule and the closest valid size.
    """
    n = spatial_dims or (len(img_size) if isinstance(img_size, (list, tuple)) else 2)
    dims = as_size(img_size, n, what)
    mult = as_size(multiple, n, "multiple")
    lo = as_size(minimum if minimum is not None else mult, n, "minimum")
    if all(d >= low and d % m == 0 for d, m, low in zip(dims, mult, lo)):
        return dims

    def near(v: int, m: int, low: int) -> int:
        return max(low + (-low) % m, round(v / m) * m)

    rule = f"multiples of {mult[0]}" if len(set(mult)) == 1 else f"multiples of {mult}"
    closest = tuple(near(d, m, low) for d, m, low in zip(dims, mult, lo))
    sides = "height and width" if n == 2 else "all sides"
    raise ValueError(f"{what}={dims} is invalid for {model}: {sides} must be positive {rule} "
                     f"(at least {'x'.join(map(str, lo))}); the closest valid size is {closest}.")


def check_int(model: str, name: str, value: Any, minimum: int = 1) -> int:
    """An integer argument ``>= minimum`` (bools refused); ``ValueError`` naming model and argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        closest = max(minimum, int(value)) if numeric else minimum
        raise ValueError(f"{name}={value!r} is invalid for {model}: it must be an integer >= {minimum}; "
                         f"closest valid: {closest}.")
    return int(value)


def check_bool(model: str, name: str, value: Any) -> bool:
    """A true/false argument (``1``/``"yes"`` refused); ``ValueError`` naming model and argument."""
    if not isinstance(value, bool):
        closest = bool(value) if isinstance(value, (int, float)) else False
        raise ValueError(f"{name}={value!r} is invalid for {model}: it must be true or false; "  # noqa: TRY004
                         f"closest valid: {closest}.")
    return value


def check_option(model: str, name: str, value: Any, choices: Sequence[str]) -> str:
    """One of ``choices``; ``ValueError`` naming model, argument, the choices and the closest one."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is invalid for {model}: choose one of "
                         f"{', '.join(map(repr, choices))}." + did_you_mean(str(value), choices))
    return str(value)


def check_rate(model: str, name: str, value: Any) -> float:
    """A probability-like argument in ``[0, 1)``; ``ValueError`` naming model and argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}={value!r} is invalid for {model}: it must be a number in [0, 1), e.g. 0.1.")
    return float(value)
