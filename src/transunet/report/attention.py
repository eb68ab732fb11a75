"""Attention maps of the transformer encoder: per-head maps and attention rollout.

A model declares its attention capability (``model.attention_kind``); one with ``global``
attention records, inside ``with model.capture_attention() as cap: model(x)``, one
``(B, heads, N, N)`` softmax map per layer over the ``N = gh * gw`` tokens of ``cap.grid`` (no
class token). This module turns global maps into pictures (other kinds are skipped with a note by
the report):

* :func:`head_maps` – what each head of one layer attends to from one query token;
* :func:`attention_rollout` – Abnar & Zuidema 2020, *Quantifying Attention Flow in Transformers*
  (arXiv 2005.00928): average the heads of every layer, add the identity for the residual
  connection, renormalise the rows and multiply the layers, so the row of a token says how much
  each input token contributes to it at the last layer;
* :func:`query_point` – the query pixel: the interior point of an organ furthest from its border;
* :func:`upsample_map` – a ``(gh, gw)`` token map resized bilinearly over the image.

Functions are pure: inputs are never modified.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from transunet.errors import TransUNetError

log = logging.getLogger(__name__)


def attention_rollout(attentions: Sequence[torch.Tensor], *, add_identity: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) over all layers.

    For each layer ``l`` the heads are averaged, ``Â_l = A_l + I`` (residual connection, when
    ``add_identity``), rows are renormalised to sum to 1, and ``R = Â_L @ ... @ Â_1``.

    Args:
        attentions: One tensor per layer, each ``(B, heads, N, N)`` with rows summing to 1.
        add_identity: Account for the residual connection by adding the identity.

    Returns:
        Rollout ``(B, N, N)`` (float32); row ``q`` is the contribution of each input token to
        output token ``q``; rows sum to 1.
    """
    if len(attentions) == 0:
        raise ValueError("attention_rollout needs at least one layer of attention, got none.")
    first = attentions[0]
    if first.ndim != 4 or first.shape[-1] != first.shape[-2]:
        raise ValueError(f"attention must be shaped (B, heads, N, N), got {tuple(first.shape)}.")
    b, _, n, _ = first.shape
    eye = torch.eye(n, dtype=torch.float32, device=first.device)
    result = eye.expand(b, n, n).clone()  # (B, N, N)
    for i, attn in enumerate(attentions):
        if attn.shape[0] != b or attn.shape[-2:] != (n, n):
            raise ValueError(
                f"attention of layer {i} has shape {tuple(attn.shape)}, expected (B={b}, heads, {n}, {n})."
            )
        a = attn.detach().float().mean(dim=1)  # (B, N, N)
        if add_identity:
            a = a + eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = torch.bmm(a, result)
    return result


def head_maps(attention: torch.Tensor, query: int, grid: Sequence[int]) -> np.ndarray:
    """Per-head attention of one query token, as token-grid maps.

    Args:
        attention: One layer's attention ``(B, heads, N, N)``; batch element 0 is used.
        query: Index of the query token in ``[0, N)`` (row-major over the grid).
        grid: Token grid ``(gh, gw)`` with ``gh * gw == N``.

    Returns:
        ``(heads, gh, gw)`` float32 array; each map sums to 1.
    """
    gh, gw = int(grid[0]), int(grid[1])
    if attention.ndim != 4 or attention.shape[-1] != gh * gw:
        raise ValueError(
            f"attention shaped {tuple(attention.shape)} does not match the token grid {gh}x{gw} "
            f"(expected (B, heads, {gh * gw}, {gh * gw}))."
        )
    if not 0 <= query < gh * gw:
        raise ValueError(f"query token {query} is outside the {gh}x{gw} grid.")
    rows = attention[0, :, query, :].detach().float().cpu().numpy()  # (heads, N)
    return rows.reshape(-1, gh, gw)  # (heads, gh, gw)


def token_index(point: tuple[int, int], image_shape: Sequence[int], grid: Sequence[int]) -> int:
    """The token whose patch covers ``point`` once the image is resized to the network input.

    Args:
        point: ``(row, col)`` in image pixels.
        image_shape: ``(H, W)`` of the image.
        grid: Token grid ``(gh, gw)``.

    Returns:
        Row-major token index ``r * gw + c``.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    gh, gw = int(grid[0]), int(grid[1])
    r = min(gh - 1, max(0, int((point[0] + 0.5) * gh / h)))
    c = min(gw - 1, max(0, int((point[1] + 0.5) * gw / w)))
    return r * gw + c


def query_point(mask: np.ndarray) -> tuple[int, int]:
    """The organ centre used as query: the pixel of ``mask`` deepest inside it.

    Unlike the centroid it always lies inside the organ, also for curved shapes.

    Args:
        mask: Boolean ``(H, W)`` mask with at least one pixel set.

    Returns:
        ``(row, col)`` of the pixel with the largest distance to the mask border.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError("query_point needs a non-empty 2D mask.")
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(r), int(c)


def upsample_map(token_map: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize of a ``(gh, gw)`` token map to ``(H, W)`` pixels.

    Args:
        token_map: ``(gh, gw)`` values.
        shape: Target ``(H, W)``.
    """
    t = torch.as_tensor(np.asarray(token_map, dtype=np.float32))[None, None]  # (1, 1, gh, gw)
    up = F.interpolate(t, size=(int(shape[0]), int(shape[1])), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


@dataclass
class AttentionResult:
    """Attention of one slice for one query token.

    Args:
        heads: Last-layer attention of the query per head, ``(heads, gh, gw)``.
        rollout: Rollout row of the query, ``(gh, gw)``.
        grid: Token grid ``(gh, gw)``.
        query: Query token index.
        point: Query pixel ``(row, col)`` in the slice.
        n_layers: Number of transformer layers.
    """

    heads: np.ndarray
    rollout: np.ndarray
    grid: tuple[int, int]
    query: int
    point: tuple[int, int]
    n_layers: int


def attention_kind(model: nn.Module) -> str | None:
    """The attention a model can expose (``global``, ``window``, ...), ``None`` when it has none."""
    kind = getattr(model, "attention_kind", None)
    return str(kind) if kind is not None and callable(getattr(model, "capture_attention", None)) else None


def supports_attention(model: nn.Module) -> bool:
    """True when ``model`` exposes global token attention that :func:`slice_attention` can map."""
    return attention_kind(model) == "global"


@torch.no_grad()
def slice_attention(
    model: nn.Module,
    image: np.ndarray,
    point: tuple[int, int],
    img_size: Sequence[int],
    device: str | torch.device = "cpu",
) -> AttentionResult:
    """Run one slice through ``model`` and collect the attention of the token at ``point``.

    The slice is prepared exactly as for prediction (cubic resize to the network input; the
    model brings the channel to its own).

    Args:
        model: A model with ``attention_kind == "global"`` (see
            :meth:`~transunet.models.base.SegmentationModel.capture_attention`).
        image: Normalised slice ``(H, W)``, or ``(C, H, W)`` for a multi-channel model.
        point: Query pixel ``(row, col)`` in the slice.
        img_size: Network input ``(h, w)``.
        device: Device of the model.

    Returns:
        The per-head maps of the last layer and the rollout for the query token.

    Raises:
        TransUNetError: The model has no global attention or recorded none.
    """
    from transunet.infer import _resize_slice

    if image.ndim not in (2, 3):
        raise ValueError(f"slice_attention expects an (H, W) or (C, H, W) slice, got shape {image.shape}.")
    name = getattr(model, "model_name", type(model).__name__)
    if not supports_attention(model):
        raise TransUNetError(f"{name} has no global token attention (attention_kind="
                             f"{getattr(model, 'attention_kind', None)!r}); attention maps need a transformer encoder.")
    x = _resize_slice(np.asarray(image, dtype=np.float32), img_size, 3)
    xt = torch.from_numpy(np.ascontiguousarray(x)).float()
    xt = (xt[None, None] if x.ndim == 2 else xt[None]).to(device)  # (1, C, h, w)
    was_training = model.training
    model.eval()
    try:
        with model.capture_attention() as cap:
            model(xt)
    finally:
        model.train(was_training)
    attentions = [a.detach().float().cpu() for a in cap.maps]
    if not attentions or cap.grid is None:
        raise TransUNetError(f"{name} recorded no global attention maps.")
    grid = (int(cap.grid[0]), int(cap.grid[1]))
    query = token_index(point, image.shape[-2:], grid)
    heads = head_maps(attentions[-1], query, grid)
    roll = attention_rollout(attentions)[0, query].numpy().reshape(grid)  # (gh, gw)
    return AttentionResult(heads=heads, rollout=roll, grid=grid, query=query,
                           point=point, n_layers=len(attentions))


__all__ = [
    "AttentionResult", "attention_kind", "attention_rollout", "head_maps", "query_point", "slice_attention",
    "supports_attention", "token_index", "upsample_map",
]
