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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transunet.data.safe_io import short_repr
from transunet.errors import CheckpointError, TransUNetError
from transunet.registry import create_model
from transunet.utils import as_pair, atomic_write
from transunet.weights import (
    CHECKPOINT_FORMAT,
    load_pretrained,
    load_state_dict_strict,
    read_weights,
    strip_prefixes,
    torch_load,
)

log = logging.getLogger(__name__)

FORMAT = CHECKPOINT_FORMAT
VERSION = 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP/DataParallel/``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


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
    version = obj.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise _damaged(path, "'version' must be an integer", version)
    if version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {version}, newer than this package reads "
            f"({VERSION}); upgrade transunet."
        )
    _check_structure(obj, path)
    return obj


def _damaged(path: Any, rule: str, value: Any) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is damaged: {rule}, got {short_repr(value)}; use another copy or "
                           "save the checkpoint again.")


#: Entries of ``train_state`` that resuming reads, with their types.
_TRAIN_STATE_KEYS = {"epoch": int, "iteration": int, "best_score": (int, float), "best_epoch": int}


def _check_structure(obj: dict[str, Any], path: Any) -> None:
    """Types of the entries every reader of a checkpoint uses (one CheckpointError naming the file)."""
    model = obj.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) \
            or not isinstance(model.get("kwargs", {}), dict):
        raise _damaged(path, "'model' must be {'name': str, 'kwargs': dict}", model)
    model.setdefault("kwargs", {})
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise _damaged(path, "'state_dict' must map names to tensors", type(sd).__name__)
    for key in ("config", "preprocessing", "meta"):
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise _damaged(path, f"'{key}' must be a mapping or null", obj[key])
    ts = obj.get("train_state")
    if ts is not None:
        if not isinstance(ts, dict):
            raise _damaged(path, "'train_state' must be a mapping or null", ts)
        if ts:  # resumable: every entry resuming reads must be there with its type
            for key, tp in _TRAIN_STATE_KEYS.items():
                if isinstance(ts.get(key), bool) or not isinstance(ts.get(key), tp):
                    raise _damaged(path, f"'train_state.{key}' is missing or of the wrong type", ts.get(key))
            for key in ("optimizer", "scaler", "schedule"):
                if ts.get(key) is not None and not isinstance(ts[key], dict):
                    raise _damaged(path, f"'train_state.{key}' must be a mapping", ts[key])


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
    return as_pair(size)


def resolve_checkpoint(run: str | Path) -> tuple[Path, Path]:
    """The checkpoint a run folder or checkpoint path stands for, and the run folder it belongs to.

    Every command that takes a checkpoint also takes a run folder; the file used is logged.

    Args:
        run: A run folder (``checkpoints/best.pt``, else ``checkpoints/last.pt`` with a warning) or
            a checkpoint file (its run folder is ``RUN`` for ``RUN/checkpoints/x.pt``, otherwise the
            folder holding the file).

    Returns:
        ``(checkpoint_path, run_folder)``.
    """
    from transunet.paths import RunPaths, run_folder_of

    run = Path(run)
    if run.is_dir():
        paths = RunPaths(run)
        if paths.best.is_file():
            log.info("run folder %s: using checkpoint %s", run, paths.best)
            return paths.best, run
        if paths.last.is_file():
            log.warning("%s has no best.pt (no validation split?); using checkpoint %s", paths.checkpoints,
                        paths.last)
            return paths.last, run
        raise CheckpointError(f"run folder {run} has no checkpoints/best.pt or checkpoints/last.pt; "
                              "train it first ('transunet train') or pass a checkpoint file.")
    if run.is_file():
        return run, run_folder_of(run)
    raise CheckpointError(f"{run} does not exist; pass a run folder (from 'transunet train') or a "
                          "checkpoint file.")


def model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in one of our checkpoints, in eval mode on ``device``.

    Args:
        path: Our checkpoint (``best.pt``, ``last.pt`` or a converted file), or a run folder (its
            ``checkpoints/best.pt``, else ``last.pt``; see :func:`resolve_checkpoint`).
        device: Target device.

    Returns:
        ``(model, checkpoint_dict)``: a tuple, unpack it (``model, ckpt = model_from_checkpoint(p)``).
    """
    if Path(path).is_dir():
        path = resolve_checkpoint(path)[0]
    ckpt = load_checkpoint(path, map_location="cpu")
    name, kwargs = ckpt["model"]["name"], dict(ckpt["model"]["kwargs"])
    if "img_size" in kwargs and isinstance(kwargs["img_size"], list):
        kwargs["img_size"] = tuple(kwargs["img_size"])
    try:
        model = create_model(name, **kwargs)
    except MemoryError:
        raise CheckpointError(f"checkpoint {path}: the model it describes ({short_repr(name)}, "
                              f"{short_repr(kwargs)}) does not fit in memory; the file is damaged.") from None
    except (TransUNetError, TypeError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path}: cannot rebuild its model {short_repr(name)} from the recorded "
                              f"arguments ({type(e).__name__}: {short_repr(str(e))}); the file is damaged or from "
                              "another version of transunet.") from None
    load_state_dict_strict(model, strip_prefixes(ckpt["state_dict"]), source=str(path))
    return model.to(device).eval(), ckpt


def convert_weights(
    input: str | Path,
    output: str | Path,
    *,
    model: str = "R50-ViT-B_16",
    num_classes: int = 9,
    img_size: int | tuple[int, int] = 224,
    in_channels: int = 1,
    args: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert foreign weights into our checkpoint format (``transunet convert-weights``).

    A Google ``.npz`` initialises what the model's converter maps (for TransUNet the encoder;
    decoder and head random, as the official code); a ``.pth`` state dict or one of our
    checkpoints must fit the model exactly after conversion (every key and shape), so a mistyped
    ``num_classes``/``img_size``/argument/model name is reported instead of silently producing a
    broken model.

    Args:
        input: ``.npz`` or ``.pth``/``.pt`` file.
        output: Destination checkpoint (``.pt``).
        model: Registered model name.
        num_classes: Output classes of the model.
        img_size: Input size ``H`` or ``(H, W)``.
        in_channels: Input channels.
        args: The architecture's own arguments (``model.args``, e.g. ``{"n_skip": 3}``); the
            model's defaults otherwise.
        overwrite: Replace an existing ``output``.

    Returns:
        The written path.
    """
    src, dst = Path(input), Path(output)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"output {dst} is the input file; choose another output path.")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"output {dst} already exists; pass --overwrite to replace it.")
    net = create_model(model, num_classes=num_classes, img_size=img_size, in_channels=in_channels,
                       **(args or {}))
    weights = read_weights(src)
    if weights.kind == "npz":
        report = load_pretrained(net, src)
        missing, unexpected = report.missing, report.unexpected
    else:
        converted = net.convert_state_dict(weights) if hasattr(net, "convert_state_dict") else None
        sd = converted.state_dict if converted is not None else dict(weights.tensors)
        load_state_dict_strict(net, sd, source=str(src))
        missing, unexpected = [], []
    fmt = {"npz": "google-vit-npz", "checkpoint": "transunet", "state_dict": "official-state-dict"}[weights.kind]
    meta = {"converted_from": str(src), "source_format": fmt, "missing_keys": missing,
            "unexpected_keys": unexpected}
    out = save_checkpoint(dst, net, net.model_name, net.model_kwargs, meta=meta)  # type: ignore[arg-type]
    log.info("wrote %s (%s, %d random-initialised tensors)", out, net.model_name, len(missing))
    return out
