"""Architecture-free weight I/O: safe reading, prefix stripping, strict loading, pretrained loading.

Nothing here knows an architecture. Each model converts foreign layouts itself, beside its
definition (:meth:`transunet.models.base.SegmentationModel.convert_state_dict`): official
state-dict names, Google ViT ``.npz`` (the ResNetV2 and ViT key maps live in
:mod:`transunet.models.resnetv2` and :mod:`transunet.models.vit`), later Microsoft Swin or MONAI
layouts. :func:`load_pretrained` reads any supported file, lets the model convert it and loads the
result with one-line messages for every mismatch.

Every file is read safely: ``.npz`` with ``allow_pickle=False``, PyTorch files with
``torch.load(weights_only=True)`` (a pickle that tries to run code is refused).
"""

from __future__ import annotations

import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from transunet.data.safe_io import read_npz, short_repr
from transunet.errors import CheckpointError, DataError

__all__ = [
    "CHECKPOINT_FORMAT",
    "ConvertedWeights",
    "ForeignWeights",
    "LoadReport",
    "convert_npz",
    "load_pretrained",
    "load_state_dict_strict",
    "npz_conv",
    "npz_dense",
    "npz_vec",
    "read_weights",
    "rgb_kernel_fits",
    "strip_prefixes",
    "torch_load",
]

log = logging.getLogger(__name__)

#: The ``format`` entry of this package's checkpoints (:mod:`transunet.checkpoint`).
CHECKPOINT_FORMAT = "transunet-checkpoint"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class ForeignWeights(NamedTuple):
    """A weight file as read by :func:`read_weights`.

    Attributes:
        kind: ``npz`` (Google ViT arrays), ``state_dict`` (a PyTorch state dict, wrapper prefixes
            removed) or ``checkpoint`` (this package's format; ``tensors`` is its state dict).
        tensors: Arrays (``npz``) or tensors by key.
        source: The file, for messages.
        meta: For ``checkpoint``: the whole checkpoint dict (its ``model.kwargs`` tell the
            ``img_size`` it was made for); otherwise empty.
    """

    kind: str
    tensors: Mapping[str, Any]
    source: str
    meta: Mapping[str, Any]


class ConvertedWeights(NamedTuple):
    """A model's conversion of a :class:`ForeignWeights`.

    Attributes:
        state_dict: Tensors by this model's keys (possibly a subset: pretrained encoders).
        unused: File keys the converter found no place for (reported as unexpected); entries that
            are never meant to load (an ImageNet classifier) are dropped by the converter instead.
    """

    state_dict: dict[str, torch.Tensor]
    unused: list[str]


class LoadReport(NamedTuple):
    """Keys left untouched (or changed) by a loader.

    Attributes:
        missing: Model keys not found in the file (they keep their initial values).
        unexpected: File keys not used by the model.
        adapted: Model keys loaded from a 3-channel (RGB) first-convolution kernel adapted to the
            model's input channels (``model.adapt_input_kernels``).
    """

    missing: list[str]
    unexpected: list[str]
    adapted: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- reading


def strip_prefixes(state_dict: Mapping[str, Any], extra: Sequence[str] = ()) -> dict[str, Any]:
    """Remove DataParallel/DDP ``module.``, ``torch.compile`` ``_orig_mod.`` and ``extra`` key prefixes.

    Args:
        state_dict: Tensors by key.
        extra: More prefixes to remove (e.g. ``("swin_unet.",)``), in any order and repetition.
    """
    prefixes = (*_WRAPPER_PREFIXES, *extra)
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k = k[len(p):]
                    changed = True
        out[k] = v
    return out


def torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and one-line errors for missing/corrupt/unsafe files.

    Args:
        path: File to read.
        map_location: Where tensors are placed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path.")
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol UserWarning: noise before our one line
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not _parses_as_pickle(path):
            raise CheckpointError(
                f"checkpoint {path} cannot be read (not a valid PyTorch file); the file is truncated or "
                "corrupt: download or copy it again."
            ) from None
        # Never repeat torch's advice to load with weights_only=False: that runs the file's code.
        m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", str(e), re.S)
        detail = " ".join(m.group(1).split()).split(". ")[0].rstrip(".") if m else \
            "objects other than tensors and plain containers"
        raise CheckpointError(
            f"checkpoint {path} was refused by the safe loader (weights_only=True): it holds Python objects "
            f"that loading would build or run ({detail}). Do not load it unless it comes from a trusted "
            "source; ask for a plain state_dict (torch.save(model.state_dict(), path)) instead."
        ) from None
    except MemoryError:
        raise CheckpointError(f"checkpoint {path}: not enough memory to read it; the file is corrupt or "
                              "too large for this machine.") from None
    except Exception as e:  # noqa: BLE001 - a damaged pickle/zip raises IndexError, struct.error, KeyError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        why = f"{type(e).__name__}: {short_repr(first)}" if first else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({why}); the file is truncated, corrupt or not a PyTorch "
            "checkpoint: download or copy it again."
        ) from None


def _parses_as_pickle(path: Path) -> bool:
    """True when the file's pickle stream is well formed (read without executing anything)."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return False
                data = z.read(name)
        else:
            data = path.read_bytes()
        for _ in pickletools.genops(data):
            pass
        return True
    except Exception:  # noqa: BLE001 - any parse failure means the file is not a pickle
        return False


def _is_npz(path: Path) -> bool:
    if path.suffix == ".npz":
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(".npy") for n in z.namelist())
    except Exception:  # noqa: BLE001 - unreadable as a zip (corrupt, unsupported version): not a .npz
        return False


def read_weights(path: str | Path) -> ForeignWeights:
    """Read a weight file safely and tell what it is.

    Args:
        path: ``.npz`` (Google ViT), ``.pth``/``.pt`` (a state dict, possibly under a
            ``state_dict``/``model`` entry, or one of our checkpoints).

    Raises:
        CheckpointError: Missing, corrupt or unsafe files, or content that is none of the above.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file {path} does not exist; check the path.")
    if _is_npz(path):
        try:  # headers checked before allocating; object (pickled), string and encrypted arrays refused
            return ForeignWeights("npz", read_npz(path, fix="download it again from the ViT authors' bucket "
                                                  "(gs://vit_models/imagenet21k)"), str(path), {})
        except DataError as e:
            detail = str(e)[len(f"{path}: "):] if str(e).startswith(f"{path}: ") else str(e)
            raise CheckpointError(f"{path} cannot be read as a .npz: {detail}") from None
    obj = torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        if not isinstance(obj.get("state_dict"), dict):
            raise CheckpointError(f"{path} is a transunet checkpoint without a state_dict; it is damaged.")
        return ForeignWeights("checkpoint", strip_prefixes(obj["state_dict"]), str(path), obj)
    for entry in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(entry), dict):
            obj = obj[entry]
            break
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return ForeignWeights("state_dict", strip_prefixes(obj), str(path), {})
    raise CheckpointError(
        f"{path} is neither a Google ViT .npz, a PyTorch state_dict nor a transunet checkpoint; "
        "save the weights with torch.save(model.state_dict(), path)."
    )


# ----------------------------------------------------------------------------- Google .npz helpers


def npz_conv(a: np.ndarray) -> np.ndarray:
    """Google conv kernel ``HWIO`` -> PyTorch ``OIHW``."""
    return a.transpose(3, 2, 0, 1)


def npz_vec(a: np.ndarray) -> np.ndarray:
    """Any array flattened (scales, biases)."""
    return a.reshape(-1)


def npz_dense(a: np.ndarray) -> np.ndarray:
    """Google dense kernel ``(in, out)`` -> PyTorch ``(out, in)``."""
    return a.T


NpzKeyMap = Mapping[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]


def rgb_kernel_fits(model: nn.Module, key: str, file_shape: Sequence[int]) -> bool:
    """True when a file's 3-channel kernel will be adapted to ``key``'s stored input channels.

    ``key`` must be a first convolution with an RGB-pretrained layout (``model.rgb_input_convs()``)
    whose kernel differs from ``file_shape`` only in its input channels, the file's being 3;
    converters accept such a kernel and :func:`load_pretrained` adapts it.

    Args:
        model: Target model.
        key: Model state-dict key.
        file_shape: Shape of the converted file tensor.
    """
    convs = getattr(model, "rgb_input_convs", None)
    shape = convs().get(key) if callable(convs) else None
    fs = tuple(file_shape)
    return (shape is not None and len(fs) == 4 and len(shape) == 4 and fs[1] == 3 and shape[1] != 3
            and (fs[0], *fs[2:]) == (shape[0], *shape[2:]))


def convert_npz(npz: Mapping[str, np.ndarray], key_map: NpzKeyMap, model: nn.Module,
                source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply a ``{model key: (npz key, transform)}`` map, checking every converted shape.

    Args:
        npz: Arrays by file key.
        key_map: What each model key is made from (built by the architecture's converter).
        model: Target model (its state dict gives the expected shapes).
        source: File name for messages.

    Returns:
        ``(state_dict, used npz keys)``; entries whose npz key is absent are skipped.

    Raises:
        CheckpointError: When a converted array's shape does not match the model (a 3-channel first
            kernel for a model of other ``in_channels`` passes: :func:`load_pretrained` adapts it).
    """
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: list[str] = []
    for key, (npz_key, fn) in key_map.items():
        if npz_key not in npz:
            continue
        try:
            arr = np.asarray(fn(np.asarray(npz[npz_key])), dtype=np.float32)
        except (ValueError, TypeError, IndexError) as e:
            raise CheckpointError(
                f"{source}: '{npz_key}' has shape {short_repr(tuple(np.shape(npz[npz_key])))} and cannot be "
                f"converted for '{key}' ({type(e).__name__}); the file is not a ViT checkpoint of this layout."
            ) from None
        if tuple(arr.shape) != _shape(own[key]) and not rgb_kernel_fits(model, key, arr.shape):
            raise CheckpointError(
                f"{source}: '{npz_key}' converts to shape {tuple(arr.shape)} but '{key}' of "
                f"{_name(model)} has shape {_shape(own[key])}; "
                f"{_cause(model, key, tuple(arr.shape), _shape(own[key]))}."
            )
        out[key] = torch.from_numpy(np.ascontiguousarray(arr))
        used.append(npz_key)
    return out, used


# ----------------------------------------------------------------------------- loading


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(getattr(t, "shape", ()))


def _name(model: nn.Module) -> str:
    return str(getattr(model, "model_name", type(model).__name__))


def _head_keys(model: nn.Module) -> set[str]:
    """Keys of the model's ``head`` part (class-dependent output layers), if it declares one."""
    part_of = getattr(model, "part_of", None)
    if not callable(part_of):
        return set()
    return {k for k in model.state_dict() if part_of(k) == "head"}


def _cause(model: nn.Module, key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str:
    convs = getattr(model, "rgb_input_convs", None)
    if (callable(convs) and key in convs() and len(file_shape) == 4 and len(model_shape) == 4
            and file_shape[1] != model_shape[1]
            and (file_shape[0], *file_shape[2:]) == (model_shape[0], *model_shape[2:])):
        fc = file_shape[1]
        fix = f"pass in_channels={fc}" if fc != 3 else (
            "pass in_channels=1 or 3, or load it as pretrained weights (model.pretrained), which adapts a "
            "3-channel kernel to any in_channels")
        return f"the file's first convolution takes {fc} input channels, this model's {model_shape[1]}; {fix}"
    explain = getattr(model, "explain_mismatch", None)
    msg = explain(key, file_shape, model_shape) if callable(explain) else None
    if msg:
        return msg
    if key in _head_keys(model) and file_shape[:1] != model_shape[:1]:
        return (f"the file was made for num_classes={file_shape[0]} (this model has {model_shape[0]}); "
                f"pass num_classes={file_shape[0]}")
    return "the file was made for another model name or architecture arguments (different layer widths)"


def _key_cause(model: nn.Module, keys: list[str]) -> str:
    explain = getattr(model, "explain_keys", None)
    msg = explain(keys) if callable(explain) else None
    return msg or "another model name or other architecture arguments"


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Load ``state_dict`` into ``model`` requiring every key and shape to match.

    Args:
        model: Target model.
        state_dict: Weights with prefixes already stripped (``module.``/``_orig_mod.``).
        source: File the weights come from, used in error messages.

    Raises:
        CheckpointError: On missing/unexpected keys or a shape mismatch, naming the key, both
            shapes, ``source`` and the likely cause (from the model's ``explain_*`` hooks).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (first: '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (first: '{unexpected[0]}')")
        raise CheckpointError(
            f"{source} does not fit {_name(model)}: {' and '.join(parts)}; the file is probably from "
            f"{_key_cause(model, missing + unexpected)}."
        )
    for key, value in state_dict.items():
        if _shape(value) != _shape(own[key]):
            fs, ms = _shape(value), _shape(own[key])
            raise CheckpointError(
                f"{source}: '{key}' has shape {fs} in the file but {ms} in {_name(model)}; "
                f"{_cause(model, key, fs, ms)}."
            )
    model.load_state_dict(dict(state_dict), strict=True)


def load_pretrained(model: nn.Module, path: str | Path) -> LoadReport:
    """Initialise ``model`` from a weight file, reporting what was not loaded.

    The file is read safely (:func:`read_weights`), converted by the model
    (``model.convert_state_dict``: official layouts, Google ``.npz``, our checkpoints), adapted to
    its configuration (``model.adapt_state_dict``, e.g. resized position embeddings;
    ``model.adapt_input_kernels``: a 3-channel RGB first kernel adapted to a model of other
    ``in_channels``, with a warning) and loaded.
    A ``head`` part of another ``num_classes`` is skipped (kept random, with a warning) so a model
    can be fine-tuned on a new label set; any other shape mismatch raises.

    Args:
        model: A :class:`~transunet.models.base.SegmentationModel` (a plain ``nn.Module`` loads
            state dicts with matching keys).
        path: Weight file.

    Returns:
        :class:`LoadReport` with the missing model keys, the unused file keys and the adapted ones.

    Raises:
        CheckpointError: Unreadable/unsafe files and shape mismatches (key, shapes, cause).
    """
    weights = read_weights(path)
    convert = getattr(model, "convert_state_dict", None)
    if callable(convert):
        converted = convert(weights)
    elif weights.kind == "npz":
        raise CheckpointError(f"{path} is a .npz, which {_name(model)} cannot convert.")
    else:
        converted = ConvertedWeights(dict(weights.tensors), [])
    sd = dict(converted.state_dict)
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        sd = dict(adapt(sd, weights))
    adapted: list[str] = []
    adapt_kernels = getattr(model, "adapt_input_kernels", None)
    if callable(adapt_kernels):
        sd, adapted = adapt_kernels(sd, str(path))
    own = model.state_dict()
    heads = _head_keys(model)
    skipped = []
    for key in list(sd):
        if key in own and _shape(sd[key]) != _shape(own[key]):
            if key in heads:
                skipped.append(key)
                del sd[key]
                continue
            raise CheckpointError(
                f"{path}: '{key}' has shape {_shape(sd[key])} in the file but {_shape(own[key])} "
                f"in {_name(model)}; {_cause(model, key, _shape(sd[key]), _shape(own[key]))}."
            )
    if skipped:
        log.warning("%s: segmentation head of another num_classes skipped (kept random): %s", path, ", ".join(skipped))
    result = model.load_state_dict(sd, strict=False)
    report = LoadReport(list(result.missing_keys), list(result.unexpected_keys) + list(converted.unused),
                        tuple(adapted))
    log.info("loaded %d tensors from %s", len(sd) - len(result.unexpected_keys), path)
    if report.missing:
        log.info("%d model keys not in %s (kept their initialisation), e.g. %s",
                 len(report.missing), path, ", ".join(report.missing[:3]))
    if report.unexpected:
        log.warning("%d keys of %s not used by the model, e.g. %s",
                    len(report.unexpected), path, ", ".join(report.unexpected[:3]))
    return report
