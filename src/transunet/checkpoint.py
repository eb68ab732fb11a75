"""Our checkpoint format: one ``torch.save`` dict that rebuilds its model on any device.

Lives at the package top level (not under ``train/``) because convert-weights, training,
evaluation and prediction all read and write it.

Layout (every value is a tensor, number, string, list, dict or None, so it loads with
``torch.load(..., weights_only=True)``)::

    {
      "format": "transunet-checkpoint", "version": 1,
      "model": {"name": "R50-ViT-B_16", "kwargs": {...create_model kwargs...}},
      "state_dict": {...},                 # no "module." / "_orig_mod." prefixes
      "config": {...} | None,              # ExperimentConfig as a dict (training runs)
      "preprocessing": {...} | None,       # dataset.json facts: normalization, class_names, ...
      "train_state": {...} | None,         # optimizer, scheduler, scaler, epoch, RNG (resume)
      "meta": {...},                       # version, time, source file, free-form extras
    }
"""

from __future__ import annotations

import datetime as _dt
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transunet.errors import CheckpointError
from transunet.utils import atomic_write

log = logging.getLogger(__name__)

FORMAT = "transunet-checkpoint"
VERSION = 1
_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove DataParallel/DDP ``module.`` and ``torch.compile`` ``_orig_mod.`` key prefixes."""
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k = k[len(p):]
                    changed = True
        out[k] = v
    return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP/DataParallel/``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


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
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} was refused by the safe loader (weights_only=True): {first}. "
            "It contains Python objects beyond tensors and plain containers; re-save it as a "
            "state_dict with torch.save(model.state_dict(), path) from a trusted source."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({first}); the file is truncated or not a PyTorch "
            "checkpoint: download or copy it again."
        ) from None


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    model_name: str,
    model_kwargs: dict[str, Any],
    *,
    config: dict[str, Any] | None = None,
    preprocessing: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Save a self-describing checkpoint atomically.

    Args:
        path: Destination ``.pt`` file.
        model: The model (wrappers are removed).
        model_name: Registered name used to rebuild it.
        model_kwargs: ``create_model`` keyword arguments.
        config: Experiment config as a plain dict.
        preprocessing: Intensity normalisation, class names, modality (from ``dataset.json``).
        train_state: Optimizer/scheduler/scaler/RNG state for exact resume.
        meta: Extra free-form information (plain types only).
    """
    from transunet import __version__

    state = {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model_kwargs.items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": model_name, "kwargs": kwargs},
        "state_dict": state,
        "config": config,
        "preprocessing": preprocessing,
        "train_state": train_state,
        "meta": {
            "transunet_version": __version__,
            "torch_version": str(torch.__version__),
            "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(meta or {}),
        },
    }
    return atomic_write(path, lambda p: torch.save(payload, p))


def is_transunet_checkpoint(obj: Any) -> bool:
    """True when ``obj`` is a dict in our checkpoint format."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read our checkpoint format safely; raise a one-line :class:`CheckpointError` otherwise."""
    obj = torch_load(path, map_location)
    if not is_transunet_checkpoint(obj):
        raise CheckpointError(
            f"{path} is not a transunet checkpoint (no 'format': '{FORMAT}' entry); if it is an "
            "official TransUNet state_dict or a Google .npz, convert it first with "
            "'transunet convert-weights'."
        )
    if int(obj.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {obj['version']}, newer than this package reads "
            f"({VERSION}); upgrade transunet."
        )
    return obj


def checkpoint_img_size(ckpt: dict[str, Any], path: str | Path) -> tuple[int, int]:
    """The network input ``(h, w)`` a checkpoint was made for.

    Read from the model arguments, else from the experiment config it carries.

    Args:
        ckpt: A checkpoint dict from :func:`load_checkpoint` / :func:`model_from_checkpoint`.
        path: Its file, named in the error message.
    """
    size = ckpt["model"]["kwargs"].get("img_size")
    if size is None:
        size = ((ckpt.get("config") or {}).get("model") or {}).get("img_size")
    if size is None:
        raise CheckpointError(f"checkpoint {path} records no img_size; re-save it with "
                              "'transunet convert-weights --img-size H W'.")
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in one of our checkpoints, in eval mode on ``device``.

    Args:
        path: Our checkpoint (``best.pt``, ``last.pt`` or a converted file).
        device: Target device.

    Returns:
        ``(model, checkpoint_dict)``.
    """
    from transunet.models.weights import load_state_dict_strict
    from transunet.registry import create_model

    ckpt = load_checkpoint(path, map_location="cpu")
    name, kwargs = ckpt["model"]["name"], dict(ckpt["model"]["kwargs"])
    if "img_size" in kwargs and isinstance(kwargs["img_size"], list):
        kwargs["img_size"] = tuple(kwargs["img_size"])
    model = create_model(name, **kwargs)
    load_state_dict_strict(model, strip_prefixes(ckpt["state_dict"]), source=str(path))
    return model.to(device).eval(), ckpt
