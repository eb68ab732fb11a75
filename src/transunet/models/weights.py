"""Weight loading and conversion: Google ViT ``.npz``, official TransUNet ``.pth``, our checkpoints.

Three sources are understood:

* **Google ViT / BiT-hybrid ``.npz``** (``R50+ViT-B_16.npz``, ``ViT-B_16.npz``, ``ViT-B_32.npz``,
  ``ViT-L_16.npz``, ... from the ViT authors' public bucket ``gs://vit_models/imagenet21k``): keys
  like ``Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel``. Converted by
  :func:`google_npz_to_state_dict`; the class-token position is dropped and the position grid is
  resized with ``scipy.ndimage.zoom(order=1)`` when it differs (as the official ``load_from``);
  the decoder and the segmentation head stay randomly initialised, as in the official code.
* **Official TransUNet state dicts** (``torch.save(model.state_dict())``, with or without
  DataParallel's ``module.`` prefix): our module names equal the official ones, so they load as is.
* **Our checkpoint format** (:mod:`transunet.checkpoint`), which carries the model's config.

All files are read safely: ``.npz`` with ``allow_pickle=False``, PyTorch files with
``torch.load(weights_only=True)`` (a pickle that tries to run code is refused). Every loader
reports missing and unexpected keys and refuses shape mismatches with a one-line message naming the
key, both shapes and the likely cause.
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from transunet.checkpoint import (
    is_transunet_checkpoint,
    save_checkpoint,
    strip_prefixes,
    torch_load,
)
from transunet.errors import CheckpointError
from transunet.layers.pos_embed import resize_pos_embed

__all__ = [
    "LoadReport",
    "convert_weights",
    "google_npz_to_state_dict",
    "load_pretrained",
    "load_state_dict_strict",
    "read_weights",
]

log = logging.getLogger(__name__)

POS_KEY = "transformer.embeddings.position_embeddings"
NPZ_POS_KEY = "Transformer/posembed_input/pos_embedding"
#: Google ``.npz`` entries that belong to the ImageNet classifier and are never used.
NPZ_IGNORED_PREFIXES = ("cls", "head/", "pre_logits/")


class LoadReport(NamedTuple):
    """Keys left untouched by a loader.

    Attributes:
        missing: Model keys not found in the file (they keep their initial values).
        unexpected: File keys not used by the model.
    """

    missing: list[str]
    unexpected: list[str]


# ----------------------------------------------------------------------------- strict loading


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(getattr(t, "shape", ()))


def _mismatch_cause(key: str, file_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> str:
    if key.startswith("segmentation_head.") and file_shape[:1] != model_shape[:1]:
        return (f"the file was made for num_classes={file_shape[0]} (this model has {model_shape[0]}); "
                f"pass num_classes={file_shape[0]}")
    if key.endswith("position_embeddings"):
        n_file = file_shape[1] if len(file_shape) > 1 else "?"
        n_model = model_shape[1] if len(model_shape) > 1 else "?"
        return (f"the file was made for another img_size ({n_file} token positions, this model has "
                f"{n_model}); pass the img_size it was trained with")
    if key.startswith("decoder.blocks.") and ".conv1." in key and file_shape[:1] == model_shape[:1]:
        return "the file was made with another n_skip (the decoder's skip inputs differ)"
    return "the file was made for another model name or architecture (different layer widths)"


def _key_cause(keys: list[str], model: nn.Module) -> str:
    hybrid = bool(getattr(model, "hybrid", False))
    if any(".hybrid_model." in k for k in keys):
        return ("a hybrid R50-ViT model vs a pure ViT model: check the model name"
                if not hybrid or any(k.endswith("root.conv.weight") for k in keys)
                else "a ResNet with another number of units per stage: check the model name")
    if any(".encoder.layer." in k for k in keys):
        return "another number of transformer layers: check the model name"
    return "another model name"


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Load ``state_dict`` into ``model`` requiring every key and shape to match.

    Args:
        model: Target model.
        state_dict: Weights with prefixes already stripped (``module.``/``_orig_mod.``).
        source: File the weights come from, used in error messages.

    Raises:
        CheckpointError: On missing/unexpected keys or a shape mismatch, naming the key, both
            shapes, ``source`` and the likely cause (num_classes, img_size, n_skip, model name).
    """
    own = model.state_dict()
    name = getattr(model, "model_name", type(model).__name__)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (first: '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (first: '{unexpected[0]}')")
        raise CheckpointError(
            f"{source} does not fit {name}: {' and '.join(parts)}; the file is probably from "
            f"{_key_cause(missing + unexpected, model)}."
        )
    for key, value in state_dict.items():
        if _shape(value) != _shape(own[key]):
            fs, ms = _shape(value), _shape(own[key])
            raise CheckpointError(
                f"{source}: '{key}' has shape {fs} in the file but {ms} in {name}; "
                f"{_mismatch_cause(key, fs, ms)}."
            )
    model.load_state_dict(dict(state_dict), strict=True)


# ----------------------------------------------------------------------------- Google .npz


def _conv(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1)  # HWIO -> OIHW


def _vec(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1)


def _dense(a: np.ndarray) -> np.ndarray:
    return a.T  # (in, out) -> (out, in)


def _qkv(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1).T  # (D, h, d) -> (h*d, D)


def _attn_out(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1]).T  # (h, d, D) -> (D, h*d)


def _google_key_map(model: nn.Module) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """Map every model key that has a Google ``.npz`` counterpart to ``(npz_key, transform)``."""
    m: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
        "transformer.embeddings.patch_embeddings.weight": ("embedding/kernel", _conv),
        "transformer.embeddings.patch_embeddings.bias": ("embedding/bias", _vec),
        "transformer.encoder.encoder_norm.weight": ("Transformer/encoder_norm/scale", _vec),
        "transformer.encoder.encoder_norm.bias": ("Transformer/encoder_norm/bias", _vec),
    }
    for i in range(len(model.transformer.encoder.layer)):  # type: ignore[union-attr]
        ours, g = f"transformer.encoder.layer.{i}.", f"Transformer/encoderblock_{i}/"
        for name in ("query", "key", "value", "out"):
            npz = f"{g}MultiHeadDotProductAttention_1/{name}/"
            m[f"{ours}attn.{name}.weight"] = (npz + "kernel", _attn_out if name == "out" else _qkv)
            m[f"{ours}attn.{name}.bias"] = (npz + "bias", _vec)
        for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            m[f"{ours}ffn.{fc}.weight"] = (f"{g}MlpBlock_3/{dense}/kernel", _dense)
            m[f"{ours}ffn.{fc}.bias"] = (f"{g}MlpBlock_3/{dense}/bias", _vec)
        for norm, ln in (("attention_norm", "LayerNorm_0"), ("ffn_norm", "LayerNorm_2")):
            m[f"{ours}{norm}.weight"] = (f"{g}{ln}/scale", _vec)
            m[f"{ours}{norm}.bias"] = (f"{g}{ln}/bias", _vec)
    emb = model.transformer.embeddings  # type: ignore[union-attr]
    if getattr(emb, "hybrid", False):
        r = "transformer.embeddings.hybrid_model."
        m[r + "root.conv.weight"] = ("conv_root/kernel", _conv)
        m[r + "root.gn.weight"] = ("gn_root/scale", _vec)
        m[r + "root.gn.bias"] = ("gn_root/bias", _vec)
        for bname, block in emb.hybrid_model.body.named_children():
            for uname, unit in block.named_children():
                ours, g = f"{r}body.{bname}.{uname}.", f"{bname}/{uname}/"
                for j in (1, 2, 3):
                    m[f"{ours}conv{j}.weight"] = (f"{g}conv{j}/kernel", _conv)
                    m[f"{ours}gn{j}.weight"] = (f"{g}gn{j}/scale", _vec)
                    m[f"{ours}gn{j}.bias"] = (f"{g}gn{j}/bias", _vec)
                if unit.downsample is not None:
                    m[f"{ours}downsample.weight"] = (f"{g}conv_proj/kernel", _conv)
                    m[f"{ours}gn_proj.weight"] = (f"{g}gn_proj/scale", _vec)
                    m[f"{ours}gn_proj.bias"] = (f"{g}gn_proj/bias", _vec)
    return m


def _square_grid(n: int) -> int | None:
    g = math.isqrt(n)
    return g if g * g == n else None


def _npz_pos_embed(posemb: np.ndarray, grid: tuple[int, int], source: str) -> torch.Tensor:
    """Google position embeddings (with class token) -> ``(1, gh*gw, D)`` for ``grid``."""
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise CheckpointError(f"{source}: '{NPZ_POS_KEY}' has shape {posemb.shape}, expected (1, N, D).")
    n = posemb.shape[1]
    if _square_grid(n - 1) is not None:  # class token first (all Google ViT checkpoints)
        posemb, n = posemb[:, 1:], n - 1
    g = _square_grid(n)
    if g is None:
        raise CheckpointError(
            f"{source}: '{NPZ_POS_KEY}' holds {posemb.shape[1]} positions, not a square grid "
            "(with or without a class token); the file is not a ViT checkpoint."
        )
    return resize_pos_embed(posemb, (g, g), grid)


def google_npz_to_state_dict(
    npz: Mapping[str, np.ndarray], model: nn.Module, source: str = "<npz>"
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Convert Google ViT ``.npz`` arrays into a (partial) state dict for ``model``.

    Args:
        npz: Arrays by Google key (e.g. ``np.load(path)``).
        model: A TransUNet-family model (defines which keys and shapes are needed).
        source: File name for messages.

    Returns:
        ``(state_dict, missing, unused)``: converted tensors, model keys without a counterpart
        in the file, and file keys that were not used (the classifier ``head``, ``pre_logits``
        and ``cls`` entries are always unused).

    Raises:
        CheckpointError: When a converted array's shape does not match the model.
    """
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, (npz_key, fn) in _google_key_map(model).items():
        if npz_key not in npz:
            continue
        arr = np.asarray(fn(np.asarray(npz[npz_key])), dtype=np.float32)
        if tuple(arr.shape) != _shape(own[key]):
            raise CheckpointError(
                f"{source}: '{npz_key}' converts to shape {tuple(arr.shape)} but '{key}' of "
                f"{getattr(model, 'model_name', type(model).__name__)} has shape {_shape(own[key])}; "
                f"{_mismatch_cause(key, tuple(arr.shape), _shape(own[key]))}."
            )
        out[key] = torch.from_numpy(np.ascontiguousarray(arr))
        used.add(npz_key)
    if NPZ_POS_KEY in npz:
        grid = tuple(model.grid_size)  # type: ignore[arg-type]
        pos = _npz_pos_embed(np.asarray(npz[NPZ_POS_KEY]), grid, source)  # type: ignore[arg-type]
        if _shape(pos) != _shape(own[POS_KEY]):
            raise CheckpointError(
                f"{source}: '{NPZ_POS_KEY}' gives shape {_shape(pos)} but '{POS_KEY}' has shape "
                f"{_shape(own[POS_KEY])}; the hidden size differs: check the model name."
            )
        out[POS_KEY] = pos
        used.add(NPZ_POS_KEY)
    missing = [k for k in own if k not in out]
    unused = [k for k in npz if k not in used]
    return out, missing, unused


# ----------------------------------------------------------------------------- files


def _is_npz(path: Path) -> bool:
    if path.suffix == ".npz":
        return True
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith(".npy") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_weights(path: str | Path) -> tuple[str, Any]:
    """Read a weight file safely and tell what it is.

    Args:
        path: ``.npz`` (Google ViT), ``.pth``/``.pt`` (official state dict or our checkpoint).

    Returns:
        ``("npz", dict of arrays)``, ``("transunet", checkpoint dict)`` or
        ``("state_dict", state dict with prefixes stripped)``.

    Raises:
        CheckpointError: Missing, corrupt or unsafe files, or content that is none of the above.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weight file {path} does not exist; check the path.")
    if _is_npz(path):
        try:
            with np.load(path, allow_pickle=False) as z:
                return "npz", {k: z[k] for k in z.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"{path} cannot be read as a .npz ({first}); download it again from the ViT "
                "authors' bucket (gs://vit_models/imagenet21k)."
            ) from None
    obj = torch_load(path)
    if is_transunet_checkpoint(obj):
        return "transunet", obj
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "state_dict", strip_prefixes(obj)
    raise CheckpointError(
        f"{path} is neither a Google ViT .npz, an official TransUNet state_dict nor a transunet "
        "checkpoint; save the weights with torch.save(model.state_dict(), path)."
    )


def _checkpoint_grid(ckpt: Mapping[str, Any], n_tokens: int) -> tuple[int, int] | None:
    kwargs = ckpt.get("model", {}).get("kwargs", {}) if isinstance(ckpt, Mapping) else {}
    size = kwargs.get("img_size")
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    for stride in (16, 32, 8):
        if (h // stride) * (w // stride) == n_tokens:
            return (h // stride, w // stride)
    return None


def load_pretrained(model: nn.Module, path: str | Path) -> LoadReport:
    """Initialise ``model`` from pretrained weights, reporting what was not loaded.

    Accepts a Google ViT ``.npz`` (position embeddings resized when the grid differs, classifier
    entries ignored, decoder/head left random as in the official code), an official TransUNet
    state dict (``module.`` prefixes stripped) or one of our checkpoints. Position embeddings of
    another grid are resized. A segmentation head of another ``num_classes`` is skipped (kept
    random, with a warning) so a model can be fine-tuned on a new label set; any other shape
    mismatch raises.

    Args:
        model: A TransUNet-family model.
        path: Weight file.

    Returns:
        :class:`LoadReport` with the missing model keys and the unused file keys.

    Raises:
        CheckpointError: Unreadable/unsafe files and shape mismatches (key, shapes, cause).
    """
    path = Path(path)
    kind, obj = read_weights(path)
    if kind == "npz":
        sd, missing, unused = google_npz_to_state_dict(obj, model, source=str(path))
        model.load_state_dict(sd, strict=False)
        ignored = [k for k in unused if k.startswith(NPZ_IGNORED_PREFIXES)]
        unexpected = [k for k in unused if k not in ignored]
        report = LoadReport(missing, unexpected)
        log.info("loaded %d tensors from %s; %d ImageNet classifier entries ignored", len(sd), path, len(ignored))
    else:
        sd = strip_prefixes(obj["state_dict"]) if kind == "transunet" else dict(obj)
        own = model.state_dict()
        if POS_KEY in sd and POS_KEY in own and _shape(sd[POS_KEY]) != _shape(own[POS_KEY]):
            pos = sd[POS_KEY]
            old = _checkpoint_grid(obj, pos.shape[1]) if kind == "transunet" else None
            if old is None:
                g = _square_grid(int(pos.shape[1]))
                if g is None:
                    raise CheckpointError(
                        f"{path}: '{POS_KEY}' has {pos.shape[1]} positions, not a square grid; "
                        "load it into a model of the img_size it was trained with."
                    )
                old = (g, g)
            if pos.ndim == 3 and pos.shape[2] == own[POS_KEY].shape[2]:
                sd[POS_KEY] = resize_pos_embed(pos, old, tuple(model.grid_size))  # type: ignore[arg-type]
        skipped = []
        for key in list(sd):
            if key in own and _shape(sd[key]) != _shape(own[key]):
                if key.startswith("segmentation_head."):
                    skipped.append(key)
                    del sd[key]
                    continue
                raise CheckpointError(
                    f"{path}: '{key}' has shape {_shape(sd[key])} in the file but {_shape(own[key])} "
                    f"in {getattr(model, 'model_name', type(model).__name__)}; "
                    f"{_mismatch_cause(key, _shape(sd[key]), _shape(own[key]))}."
                )
        if skipped:
            log.warning("%s: segmentation head of another num_classes skipped (kept random): %s",
                        path, ", ".join(skipped))
        result = model.load_state_dict(sd, strict=False)
        report = LoadReport(list(result.missing_keys), list(result.unexpected_keys))
        log.info("loaded %d tensors from %s", len(sd) - len(report.unexpected), path)
    if report.missing:
        log.info("%d model keys not in %s (kept their initialisation), e.g. %s",
                 len(report.missing), path, ", ".join(report.missing[:3]))
    if report.unexpected:
        log.warning("%d keys of %s not used by the model, e.g. %s",
                    len(report.unexpected), path, ", ".join(report.unexpected[:3]))
    return report


def convert_weights(
    input: str | Path,
    output: str | Path,
    *,
    model: str = "R50-ViT-B_16",
    num_classes: int = 9,
    img_size: int | tuple[int, int] = 224,
    in_channels: int = 1,
    n_skip: int | None = 3,
    overwrite: bool = False,
) -> Path:
    """Convert foreign weights into our checkpoint format (``transunet convert-weights``).

    A Google ``.npz`` initialises the encoder (decoder and head random, as the official code);
    an official TransUNet ``.pth`` or one of our checkpoints must fit the model exactly (every key
    and shape), so a mistyped ``num_classes``/``img_size``/``n_skip``/model name is reported
    instead of silently producing a broken model.

    Args:
        input: ``.npz`` or ``.pth``/``.pt`` file.
        output: Destination checkpoint (``.pt``).
        model: Registered model name.
        num_classes: Output classes of the model.
        img_size: Input size ``H`` or ``(H, W)``.
        in_channels: 1 or 3.
        n_skip: Skip connections (0-3; must be 0 for pure ViT models; ``None``: model default).
        overwrite: Replace an existing ``output``.

    Returns:
        The written path.
    """
    from transunet.registry import create_model

    src, dst = Path(input), Path(output)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"output {dst} is the input file; choose another output path.")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"output {dst} already exists; pass --overwrite to replace it.")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "img_size": img_size, "in_channels": in_channels}
    if n_skip is not None:
        kwargs["n_skip"] = n_skip
    net = create_model(model, **kwargs)
    kind, obj = read_weights(src)
    if kind == "npz":
        report = load_pretrained(net, src)
        missing, unexpected = report.missing, report.unexpected
    else:
        sd = strip_prefixes(obj["state_dict"]) if kind == "transunet" else obj
        load_state_dict_strict(net, sd, source=str(src))
        missing, unexpected = [], []
    meta = {"converted_from": str(src), "source_format": {"npz": "google-vit-npz", "transunet": "transunet",
                                                            "state_dict": "official-state-dict"}[kind],
            "missing_keys": missing, "unexpected_keys": unexpected}
    out = save_checkpoint(dst, net, net.model_name, net.model_kwargs, meta=meta)  # type: ignore[arg-type]
    log.info("wrote %s (%s, %d random-initialised tensors)", out, net.model_name, len(missing))
    return out
