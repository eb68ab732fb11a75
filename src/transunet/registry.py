"""Model registry: ``register_model`` / ``create_model`` / ``list_models``.

Entry points are plain functions returning a
:class:`~transunet.models.base.SegmentationModel`; they are registered by decorating them with
:func:`register_model` (from inside or outside the package). :func:`create_model` records the
registered name and the keyword arguments on the model (``model_name``, ``model_kwargs``) unless the
entry point already recorded normalised ones, so a checkpoint can rebuild it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from transunet.errors import did_you_mean

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a model entry point under ``name`` (default: the function name).

    Args:
        fn: The entry point; ``fn(**kwargs) -> nn.Module``.
        name: Registered name, e.g. ``"R50-ViT-B_16"``.
    """

    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODELS and _MODELS[key] is not f:
            raise KeyError(f"model {key!r} is already registered")
        _MODELS[key] = f
        return f

    return deco(fn) if fn is not None else deco


def _ensure_loaded() -> None:
    # Importing the models package runs every @register_model decorator.
    import transunet.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models matching a shell-style ``pattern``, sorted."""
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def get_model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The entry point registered as ``name``; ``KeyError`` with the closest name otherwise."""
    _ensure_loaded()
    if name not in _MODELS:
        raise KeyError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}."
            + did_you_mean(name, _MODELS)
        )
    return _MODELS[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: Registered model name (see :func:`list_models`).
        **kwargs: ``num_classes``, ``in_channels``, ``img_size`` and the architecture's own
            arguments (``model.args`` of a config); the entry point validates them.
    """
    model = get_model_entrypoint(name)(**kwargs)
    model.model_name = name
    if not getattr(model, "model_kwargs", None):
        model.model_kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    return model
