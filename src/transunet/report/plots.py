"""Matplotlib (Agg) figures of the report: training curves, overlays and attention maps.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot's global state (it
is drawn by the Agg canvas, never by an interactive backend), so it is safe in threads and headless
processes; :func:`save_png` writes it atomically.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from transunet.errors import DataError
from transunet.report.attention import AttentionResult, upsample_map
from transunet.utils import atomic_write

log = logging.getLogger(__name__)

# Distinct, colour-blind-friendly organ colours (label 1, 2, ...); cycled for more classes.
ORGAN_COLORS: tuple[str, ...] = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
    "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
)


def organ_color(label: int) -> str:
    """Colour of foreground label ``label`` (>= 1)."""
    return ORGAN_COLORS[(int(label) - 1) % len(ORGAN_COLORS)]


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG atomically and return the path.

    Args:
        fig: The figure.
        path: Destination ``.png``.
        dpi: Resolution.
    """
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))


# ----------------------------------------------------------------------------- training curves


@dataclass
class Curves:
    """Numeric columns of a training ``metrics.csv``.

    Args:
        x_name: Name of the x axis column (``epoch``, ``iteration`` or ``row``).
        x: Values of the x axis.
        columns: Column name -> values (NaN where a row has no value).
    """

    x_name: str
    x: np.ndarray
    columns: dict[str, np.ndarray]


def read_metrics_csv(path: str | Path) -> Curves:
    """Read every numeric column of a training ``metrics.csv``.

    Args:
        path: The CSV file (one row per epoch, header row first).
    """
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DataError(f"{path}: cannot read the training metrics ({e.strerror}).") from None
    if not rows:
        raise DataError(f"{path}: no rows; training wrote no epoch yet.")
    names = [n for n in rows[0] if n is not None]
    columns: dict[str, np.ndarray] = {}
    for name in names:
        values = []
        numeric = True
        for row in rows:
            raw = (row.get(name) or "").strip()
            if raw == "":
                values.append(math.nan)
                continue
            try:
                values.append(float(raw))
            except ValueError:
                numeric = False
                break
        if numeric and not all(math.isnan(v) for v in values):
            columns[name] = np.asarray(values, dtype=np.float64)
    for x_name in ("epoch", "iteration", "step"):
        if x_name in columns:
            return Curves(x_name, columns.pop(x_name), columns)
    return Curves("row", np.arange(1, len(rows) + 1, dtype=np.float64), columns)


def _panels(curves: Curves) -> list[tuple[str, list[str], bool]]:
    """Group columns into panels ``(title, columns, log_y)``.

    Training terms (``train_*`` or ``*loss*``) go to "Training loss", validation Dice columns to
    "Validation Dice", HD95 columns to "Validation HD95", the learning rate to its own panel;
    bookkeeping columns (time, flags such as ``best``) are not plotted.
    """
    skip = {"iteration", "step", "epoch", "best", "is_best"}
    cols = [c for c in curves.columns if c.lower() not in skip
            and not any(t in c.lower() for t in ("time", "second", "wall"))]
    lr = [c for c in cols if c.lower() == "lr" or c.lower().startswith("lr_") or "learning_rate" in c.lower()]
    loss = [c for c in cols if c not in lr and ("loss" in c.lower() or c.lower().startswith("train_"))]
    hd = [c for c in cols if c not in loss and ("hd95" in c.lower() or "hausdorff" in c.lower())]
    dice = [c for c in cols if c not in loss and c not in hd and "dice" in c.lower()]
    used = set(loss) | set(lr) | set(dice) | set(hd)
    other = [c for c in cols if c not in used]
    panels = []
    if loss:
        panels.append(("Training loss", loss, False))
    if dice:
        panels.append(("Validation Dice", dice, False))
    if hd:
        panels.append(("Validation HD95", hd, False))
    if lr:
        panels.append(("Learning rate", lr, False))
    if other:
        panels.append(("Other", other, False))
    return panels


def plot_training_curves(curves: Curves, class_names: Sequence[str] = ()) -> Figure:
    """Training curves: losses, validation Dice (mean bold, per organ thin), HD95, learning rate.

    Args:
        curves: Output of :func:`read_metrics_csv`.
        class_names: Class names (index 0 background) used to colour per-organ columns.
    """
    panels = _panels(curves)
    if not panels:
        raise DataError("the training metrics have no numeric column to plot besides the x axis.")
    n = len(panels)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(6.0 * ncols, 3.6 * nrows), layout="constrained")
    norm = {_norm(name): i for i, name in enumerate(class_names)}
    for k, (title, cols, log_y) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        for c in cols:
            y = curves.columns[c]
            ok = ~np.isnan(y)
            suffix = _norm(c.split("dice_", 1)[1]) if "dice_" in c.lower() else None
            if suffix is not None and suffix in norm and norm[suffix] > 0:
                ax.plot(curves.x[ok], y[ok], lw=1.0, alpha=0.85, color=organ_color(norm[suffix]), label=c)
            else:
                marker = "o" if ok.sum() <= 30 else None
                ax.plot(curves.x[ok], y[ok], lw=2.0, marker=marker, ms=3, label=c)
        ax.set_title(title)
        ax.set_xlabel(curves.x_name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(cols) > 4 else 1)
    return fig


def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


# ----------------------------------------------------------------------------- overlays


def display_image(image: np.ndarray) -> np.ndarray:
    """Scale a normalised slice to [0, 1] for display (1st-99th percentile window).

    Args:
        image: ``(H, W)`` slice (CT in [0, 1] or z-scored MRI).
    """
    img = np.asarray(image, dtype=np.float32)
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros_like(img)
    lo, hi = np.percentile(finite, [1, 99])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros_like(img)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def label_rgba(label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGBA image of a label map in the organ colours (background transparent).

    Args:
        label: Integer ``(H, W)`` labels.
        alpha: Opacity of the organ colours.
    """
    label = np.asarray(label)
    rgba = np.zeros(label.shape + (4,), dtype=np.float32)
    for value in np.unique(label):
        if value <= 0:
            continue
        rgba[label == value, :3] = to_rgb(organ_color(int(value)))
        rgba[label == value, 3] = alpha
    return rgba


def crop_box(image: np.ndarray, *labels: np.ndarray, margin: float = 0.06) -> tuple[slice, slice]:
    """Bounding box of the body (image above its background level) and all labels, with a margin.

    Medical slices often show a small body inside a large field of view; cropping to it makes
    organs readable in the figures.

    Args:
        image: ``(H, W)`` slice.
        *labels: Label maps ``(H, W)`` that must stay inside the box.
        margin: Margin as a fraction of the image size.

    Returns:
        ``(rows, cols)`` slices of the box (the whole image when nothing stands out).
    """
    img = display_image(image)
    mask = img > 0.05
    for lab in labels:
        mask |= np.asarray(lab) > 0
    h, w = img.shape
    if not mask.any():
        return slice(0, h), slice(0, w)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    mr, mc = round(margin * h), round(margin * w)
    return (slice(max(0, rows[0] - mr), min(h, rows[-1] + 1 + mr)),
            slice(max(0, cols[0] - mc), min(w, cols[-1] + 1 + mc)))


@dataclass
class OverlayRow:
    """One slice of the overlay figure.

    Args:
        title: Row title (case and slice).
        image: Normalised slice ``(H, W)``.
        label: Ground truth ``(H, W)``.
        prediction: Prediction ``(H, W)``.
    """

    title: str
    image: np.ndarray
    label: np.ndarray
    prediction: np.ndarray


def plot_overlays(rows: Sequence[OverlayRow], class_names: Sequence[str], title: str = "") -> Figure:
    """Image, ground truth, prediction and disagreement for each slice, with an organ legend.

    Args:
        rows: Slices to show (one figure row each).
        class_names: Names of labels ``0..C-1``.
        title: Figure title.
    """
    if not rows:
        raise ValueError("plot_overlays needs at least one slice.")
    boxes = [crop_box(r.image, r.label, r.prediction) for r in rows]
    rows = [OverlayRow(r.title, r.image[b], r.label[b], r.prediction[b]) for r, b in zip(rows, boxes)]
    h = max(r.image.shape[0] for r in rows)
    w = max(r.image.shape[1] for r in rows)
    panel = 3.2
    fig = Figure(figsize=(4 * panel * max(w / h, 0.6), panel * len(rows) + 1.0), layout="constrained")
    axes = fig.subplots(len(rows), 4, squeeze=False)
    present: set[int] = set()
    for r, row in enumerate(rows):
        img = display_image(row.image)
        wrong = (row.label != row.prediction) & ((row.label > 0) | (row.prediction > 0))
        err = np.zeros(img.shape + (4,), dtype=np.float32)
        err[wrong] = (1.0, 0.1, 0.1, 0.8)
        panels = [("image", None), ("ground truth", label_rgba(row.label)),
                  ("prediction", label_rgba(row.prediction)), ("disagreement", err)]
        for c, (name, over) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if over is not None:
                ax.imshow(over, interpolation="nearest")
            if name == "disagreement" and row.label.any():
                ax.contour(row.label > 0, levels=[0.5], colors="yellow", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
            if c == 0:
                ax.set_ylabel(row.title, fontsize=9)
        present |= {int(v) for v in np.unique(row.label) if v > 0}
        present |= {int(v) for v in np.unique(row.prediction) if v > 0}
    handles = [Patch(color=organ_color(i), label=_class_name(class_names, i)) for i in sorted(present)]
    handles.append(Patch(color=(1.0, 0.1, 0.1), label="prediction ≠ ground truth"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def _class_name(class_names: Sequence[str], i: int) -> str:
    return class_names[i] if 0 <= i < len(class_names) else f"class {i}"


# ----------------------------------------------------------------------------- attention


def _heat(ax, image: np.ndarray, token_map: np.ndarray, point: tuple[int, int], title: str,
          box: tuple[slice, slice]) -> None:
    img = display_image(image)
    heat = upsample_map(token_map, img.shape)[box]
    img = img[box]
    point = (point[0] - box[0].start, point[1] - box[1].start)
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.imshow(heat, cmap="inferno", alpha=0.55, interpolation="nearest",
              vmin=float(heat.min()), vmax=float(heat.max()) if heat.max() > heat.min() else float(heat.min()) + 1)
    ax.plot(point[1], point[0], marker="x", color="cyan", ms=9, mew=2.5)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_attention_heads(image: np.ndarray, result: AttentionResult, title: str = "") -> Figure:
    """Last-layer attention of the query token, one panel per head, over the slice.

    Args:
        image: Normalised slice ``(H, W)``.
        result: Output of :func:`transunet.report.attention.slice_attention`.
        title: Figure title.
    """
    n = result.heads.shape[0]
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    box = crop_box(image)
    h, w = image[box].shape
    fig = Figure(figsize=(3.0 * ncols * max(w / h, 0.6), 3.0 * nrows + 0.6), layout="constrained")
    for k in range(n):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        _heat(ax, image, result.heads[k], result.point, f"layer {result.n_layers}, head {k + 1}", box)
    if title:
        fig.suptitle(title)
    return fig


def plot_attention_rollout(image: np.ndarray, result: AttentionResult, label: np.ndarray | None = None,
                           class_names: Sequence[str] = (), title: str = "") -> Figure:
    """Slice with the query, mean of the last layer's heads, and attention rollout over all layers.

    Args:
        image: Normalised slice ``(H, W)``.
        result: Output of :func:`transunet.report.attention.slice_attention`.
        label: Ground truth ``(H, W)`` shown in the first panel, if given.
        class_names: Names of labels ``0..C-1``.
        title: Figure title.
    """
    box = crop_box(image) if label is None else crop_box(image, label)
    h, w = image[box].shape
    fig = Figure(figsize=(3 * 3.4 * max(w / h, 0.6), 3.9), layout="constrained")
    axes = fig.subplots(1, 3)
    ax = axes[0]
    ax.imshow(display_image(image)[box], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if label is not None:
        ax.imshow(label_rgba(label[box], alpha=0.35), interpolation="nearest")
    ax.plot(result.point[1] - box[1].start, result.point[0] - box[0].start, marker="x", color="cyan",
            ms=9, mew=2.5)
    gh, gw = result.grid
    ax.set_title(f"query token {result.query} (row {result.query // gw}, col {result.query % gw} "
                 f"of {gh}×{gw})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    _heat(axes[1], image, result.heads.mean(axis=0), result.point, f"layer {result.n_layers}, mean of heads",
          box)
    _heat(axes[2], image, result.rollout, result.point, f"attention rollout, {result.n_layers} layers", box)
    if title:
        fig.suptitle(title)
    return fig


__all__ = [
    "ORGAN_COLORS",
    "Curves",
    "OverlayRow",
    "crop_box",
    "display_image",
    "label_rgba",
    "organ_color",
    "plot_attention_heads",
    "plot_attention_rollout",
    "plot_overlays",
    "plot_training_curves",
    "read_metrics_csv",
    "save_png",
]
