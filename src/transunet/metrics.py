"""Segmentation metrics: Dice, HD95, ASSD and normalised surface Dice, in two protocols.

Every function here is pure: inputs are never modified, results are plain floats. Masks are
boolean (anything non-zero counts as foreground), ``spacing`` is the voxel size per array axis
(millimetres), ``None`` meaning unit spacing (distances in voxels).

Surface distances follow medpy's ``__surface_distances`` exactly: the surface ("border") of a mask
is ``mask ^ binary_erosion(mask, generate_binary_structure(ndim, connectivity))`` with the
erosion's ``border_value=0`` (mask voxels on the volume edge are surface voxels), and the distance
of each surface voxel of one mask to the other mask's surface comes from
``distance_transform_edt(~other_border, sampling=spacing)``. HD95 is
``numpy.percentile(numpy.hstack((d(pred->gt), d(gt->pred))), 95)``, as medpy's ``hd95``.

Why this is fast and still identical. medpy erodes each organ mask and runs a Euclidean distance
transform (EDT) over the whole volume, for every organ and direction. Here:

* Surfaces of all labels come from one pass over the label map: a voxel of label ``c`` survives the
  erosion of ``label == c`` exactly when every footprint neighbour exists and has label ``c``, so it
  is a surface voxel when it lies on the volume edge (``border_value=0``) or a neighbour's label
  differs. That is medpy's surface, voxel for voxel, for every class at once.
* The nearest surface voxel of the other mask is found with a k-d tree over the surface voxels
  (scaled by the spacing) instead of an EDT over the volume; the distance is then recomputed from
  the integer offset as the EDT does (``((f - i) * spacing) ** 2`` summed over axes, square root),
  so two equally near candidates can differ only in the last bits (|Δ| ~ 1e-15). Cropping to the
  masks' bounding box is not enough: a few scattered false-positive voxels stretch the box over the whole volume.
* Surface voxels are kept in C order, as medpy's boolean indexing returns them, and HD95 is
  ``numpy.percentile(numpy.hstack((d1, d2)), 95)`` with numpy's default (linear) interpolation.

The two protocols (see :func:`official_metric` and :func:`corrected_metric`):

* ``official``: the official TransUNet ``calculate_metric_percase``: Dice and HD95 in voxels when
  both masks are non-empty; a prediction on an absent organ scores Dice 1 / HD95 0; an empty
  prediction scores Dice 0 / HD95 0 (also when the organ is absent from the ground truth).
* ``corrected``: HD95 (and ASSD) in millimetres; a missed organ scores Dice 0 and its HD95 is
  undefined (``None``, status ``"missed"``, counted separately); a prediction on an absent organ
  scores Dice 0 with undefined HD95 (status ``"false_positive"``); absent in both is excluded
  (status ``"absent"``, Dice ``None``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Union

import numpy as np
from scipy.ndimage import generate_binary_structure
from scipy.spatial import cKDTree

PROTOCOLS = ("official", "corrected")
STATUSES = ("ok", "missed", "false_positive", "absent")
#: Default tolerance of the normalised surface Dice, in the unit of the spacing (mm).
NSD_TOLERANCE_MM = 2.0

Spacing = Union[Sequence[float], None]

_CHUNK = 1 << 22  # voxels per chunk when counting labels (bounds temporary memory)


# ----------------------------------------------------------------------------- surfaces


def _as_bool(mask: np.ndarray) -> np.ndarray:
    """``mask != 0`` as a boolean array (a new array unless ``mask`` is boolean already)."""
    mask = np.asarray(mask)
    return np.atleast_1d(mask if mask.dtype == np.bool_ else mask.astype(np.bool_))


def _sampling(shape: tuple[int, ...], spacing: Spacing) -> np.ndarray | None:
    """Validated spacing as a float64 array (``None`` stays ``None``)."""
    if spacing is None:
        return None
    try:
        sp = np.asarray([float(s) for s in spacing], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"spacing {spacing!r} must be a sequence of {len(shape)} numbers.") from None
    if sp.size != len(shape) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing {tuple(spacing)} must be {len(shape)} positive finite numbers "
                         f"(one per axis of the {len(shape)}D volume).")
    return sp


def _check_shapes(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} differs from ground-truth shape {b.shape}; "
                         "resample the prediction to the label grid first.")


def surface_map(label: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Surface voxels of every non-zero label of a label map, as medpy defines them.

    For each label ``c``, ``surface_map(label) & (label == c)`` equals medpy's
    ``m ^ binary_erosion(m, generate_binary_structure(ndim, connectivity))`` with ``m = label == c``:
    a voxel of ``c`` survives the erosion exactly when every footprint neighbour exists (the
    erosion pads with 0) and also has label ``c``.

    Args:
        label: Integer or boolean label map of any rank.
        connectivity: Footprint connectivity (1: face neighbours).

    Returns:
        Boolean array of ``label``'s shape.
    """
    lab = np.atleast_1d(np.asarray(label))
    if lab.dtype == np.bool_:
        lab = lab.view(np.uint8)
    nd, shape = lab.ndim, lab.shape
    border = np.zeros(shape, dtype=bool)
    for ax in range(nd):  # voxels on the volume edge have a missing (zero) neighbour
        edge: list[Any] = [slice(None)] * nd
        edge[ax] = 0
        border[tuple(edge)] = True
        edge[ax] = -1
        border[tuple(edge)] = True
    footprint = generate_binary_structure(nd, connectivity)
    for off in np.argwhere(footprint) - 1:
        nz = np.flatnonzero(off)
        if nz.size == 0 or off[nz[0]] < 0:  # centre, or the mirror of an offset already handled
            continue
        src = tuple(slice(0, n - k) if k > 0 else slice(-k, n) if k < 0 else slice(None) for n, k in zip(shape, off))
        dst = tuple(slice(k, n) if k > 0 else slice(0, n + k) if k < 0 else slice(None) for n, k in zip(shape, off))
        diff = lab[src] != lab[dst]
        border[src] |= diff
        border[dst] |= diff
    border &= lab != 0
    return border


class LabelSurfaces:
    """Surface voxel coordinates of every label of a label map, in C order per label.

    Args:
        label: Integer (or boolean) label map, values ``>= 0``.
        connectivity: Footprint connectivity (medpy's default 1).
    """

    def __init__(self, label: np.ndarray, connectivity: int = 1) -> None:
        lab = np.atleast_1d(np.asarray(label))
        self.shape = lab.shape
        flat = np.flatnonzero(surface_map(lab, connectivity))  # C order
        labs = lab.reshape(-1)[flat]
        order = np.argsort(labs, kind="stable")  # grouped by label, C order kept inside a label
        self._flat = flat[order]
        values, starts, counts = np.unique(labs[order], return_index=True, return_counts=True)
        self._where = {int(v): (int(s), int(n)) for v, s, n in zip(values, starts, counts)}

    def points(self, value: int) -> np.ndarray:
        """``(n, ndim)`` int64 coordinates of the surface voxels of label ``value`` (C order)."""
        s, n = self._where.get(int(value), (0, 0))
        return np.stack(np.unravel_index(self._flat[s:s + n], self.shape), axis=1).astype(np.int64)


def _nearest_distances(src: np.ndarray, dst: np.ndarray, sampling: np.ndarray | None) -> np.ndarray:
    """Distance of every ``src`` point to the nearest ``dst`` point, computed as the EDT does.

    Args:
        src: ``(n, ndim)`` integer coordinates.
        dst: ``(m, ndim)`` integer coordinates, ``m >= 1``.
        sampling: Spacing per axis or ``None`` (unit).

    Returns:
        ``(n,)`` float64 distances.
    """
    scale = np.ones(src.shape[1]) if sampling is None else sampling
    _, idx = cKDTree(dst * scale).query(src * scale, k=1)
    # distance_transform_edt: (feature - index) as float64, times sampling, squared, summed, sqrt
    d = (dst[idx] - src).T.astype(np.float64)  # (ndim, n)
    if sampling is not None:
        for i in range(len(sampling)):
            d[i, ...] *= sampling[i]
    np.multiply(d, d, d)
    return np.sqrt(np.add.reduce(d, axis=0))


class SurfaceDistances:
    """Surface distances between two non-empty masks, in both directions.

    Args:
        pred_points: ``(n, ndim)`` surface voxels of the prediction (C order).
        gt_points: ``(m, ndim)`` surface voxels of the reference (C order).
    """

    def __init__(self, pred_points: np.ndarray, gt_points: np.ndarray) -> None:
        if len(pred_points) == 0 or len(gt_points) == 0:
            raise ValueError("surface distances need two non-empty masks; "
                             "use official_metric / corrected_metric for the empty-mask rules.")
        self.pred_points = pred_points
        self.gt_points = gt_points

    @classmethod
    def from_masks(cls, pred: np.ndarray, gt: np.ndarray, connectivity: int = 1) -> SurfaceDistances:
        """Surfaces of two masks (non-zero is foreground) of the same shape.

        Args:
            pred: Predicted mask.
            gt: Reference mask.
            connectivity: Footprint connectivity.
        """
        p, g = _as_bool(pred), _as_bool(gt)
        _check_shapes(p, g)
        return cls(LabelSurfaces(p, connectivity).points(1), LabelSurfaces(g, connectivity).points(1))

    def directed(self, sampling: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(d(pred surface -> gt surface), d(gt surface -> pred surface))``, each in C order.

        Args:
            sampling: Spacing per axis (float64 array) or ``None`` for voxels.
        """
        return (_nearest_distances(self.pred_points, self.gt_points, sampling),
                _nearest_distances(self.gt_points, self.pred_points, sampling))


def surface_distances(result: np.ndarray, reference: np.ndarray, spacing: Spacing = None,
                      connectivity: int = 1) -> np.ndarray:
    """Distances of the surface voxels of ``result`` to the surface of ``reference`` (medpy's order).

    Args:
        result: Mask whose surface voxels are measured (non-empty).
        reference: Mask whose surface they are measured to (non-empty, same shape).
        spacing: Voxel size per axis, ``None`` for voxels.
        connectivity: Surface connectivity (1 = faces, as medpy's default).

    Returns:
        1D float64 array, one distance per surface voxel of ``result`` in C order.
    """
    sd = SurfaceDistances.from_masks(result, reference, connectivity)
    return _nearest_distances(sd.pred_points, sd.gt_points, _sampling(np.shape(result), spacing))


# ----------------------------------------------------------------------------- plain metrics


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient ``2|A∩B| / (|A|+|B|)``, as medpy's ``dc`` (1.0 when both are empty).

    Args:
        pred: Predicted mask (non-zero is foreground).
        gt: Reference mask of the same shape.
    """
    p, g = _as_bool(pred), _as_bool(gt)
    _check_shapes(p, g)
    return _dice(np.count_nonzero(p & g), np.count_nonzero(p), np.count_nonzero(g))


def _dice(inter: int, n_pred: int, n_gt: int) -> float:
    total = int(n_pred) + int(n_gt)
    return 1.0 if total == 0 else 2.0 * int(inter) / float(total)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None, connectivity: int = 1) -> float:
    """95th percentile Hausdorff distance, value-identical to medpy's ``hd95``.

    Args:
        pred: Predicted mask (non-empty).
        gt: Reference mask (non-empty, same shape).
        spacing: Voxel size per axis (e.g. mm); ``None`` gives voxels.
        connectivity: Surface connectivity.

    Raises:
        ValueError: When a mask is empty (HD95 is undefined).
    """
    d1, d2 = SurfaceDistances.from_masks(pred, gt, connectivity).directed(_sampling(np.shape(pred), spacing))
    return float(np.percentile(np.hstack((d1, d2)), 95))


def assd(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None, connectivity: int = 1) -> float:
    """Average symmetric surface distance, value-identical to medpy's ``assd``.

    Args:
        pred: Predicted mask (non-empty).
        gt: Reference mask (non-empty, same shape).
        spacing: Voxel size per axis; ``None`` gives voxels.
        connectivity: Surface connectivity.
    """
    d1, d2 = SurfaceDistances.from_masks(pred, gt, connectivity).directed(_sampling(np.shape(pred), spacing))
    return float(np.concatenate([d1, d2]).mean())


def _nsd(d1: np.ndarray, d2: np.ndarray, tolerance: float) -> float:
    return float((np.count_nonzero(d1 <= tolerance) + np.count_nonzero(d2 <= tolerance)) / (d1.size + d2.size))


def _check_tolerance(tolerance: float) -> None:
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"NSD tolerance {tolerance!r} must be a non-negative distance (e.g. 2.0 mm).")


def nsd(pred: np.ndarray, gt: np.ndarray, tolerance: float = NSD_TOLERANCE_MM, spacing: Spacing = None,
        connectivity: int = 1) -> float:
    """Normalised surface Dice: the share of surface voxels within ``tolerance`` of the other surface.

    ``(#{p in S_pred: d(p, S_gt) <= tol} + #{g in S_gt: d(g, S_pred) <= tol}) / (|S_pred| + |S_gt|)``
    with surfaces as voxel sets (medpy's surface definition), like MONAI's ``compute_surface_dice``
    without sub-voxel surfels. 1.0 when both masks are empty, 0.0 when exactly one is.

    Args:
        pred: Predicted mask.
        gt: Reference mask of the same shape.
        tolerance: Distance (in the unit of ``spacing``) within which a surface voxel counts.
        spacing: Voxel size per axis; ``None`` gives voxels.
        connectivity: Surface connectivity.
    """
    _check_tolerance(tolerance)
    p, g = _as_bool(pred), _as_bool(gt)
    _check_shapes(p, g)
    sampling = _sampling(p.shape, spacing)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 1.0
    if not has_p or not has_g:
        return 0.0
    return _nsd(*SurfaceDistances.from_masks(p, g, connectivity).directed(sampling), tolerance)


# ----------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class in one case under one protocol.

    Args:
        dice: Dice coefficient; ``None`` when the case is excluded (corrected protocol, ``absent``).
        hd95: 95th percentile Hausdorff distance; ``None`` when undefined (corrected protocol).
        status: ``ok`` (both non-empty), ``missed`` (organ present, prediction empty),
            ``false_positive`` (organ absent, prediction non-empty) or ``absent`` (both empty).
        assd: Average symmetric surface distance (corrected protocol only; ``None`` if undefined).
        nsd: Normalised surface Dice (corrected protocol only; ``None`` when excluded).
    """

    dice: float | None
    hd95: float | None
    status: str
    assd: float | None = None
    nsd: float | None = None

    def to_dict(self, extras: bool = True) -> dict[str, Any]:
        """Plain dict for JSON (``None`` stays ``None``); ``extras=False`` keeps dice/hd95/status."""
        d = asdict(self)
        if not extras:
            d.pop("assd")
            d.pop("nsd")
        return d


def case_status(has_pred: bool, has_gt: bool) -> str:
    """The empty-mask category of a (prediction, ground truth) pair.

    Args:
        has_pred: Whether the prediction has any foreground voxel.
        has_gt: Whether the ground truth has any foreground voxel.
    """
    if has_pred and has_gt:
        return "ok"
    if has_gt:
        return "missed"
    if has_pred:
        return "false_positive"
    return "absent"


def _official(inter: int, n_pred: int, n_gt: int, sd: SurfaceDistances | None) -> ClassMetrics:
    status = case_status(n_pred > 0, n_gt > 0)
    if status == "ok":
        assert sd is not None
        d1, d2 = sd.directed(None)
        return ClassMetrics(_dice(inter, n_pred, n_gt), float(np.percentile(np.hstack((d1, d2)), 95)), status)
    if status == "false_positive":
        return ClassMetrics(1.0, 0.0, status)
    return ClassMetrics(0.0, 0.0, status)


def _corrected(inter: int, n_pred: int, n_gt: int, sd: SurfaceDistances | None,
               sampling: np.ndarray | None, nsd_tolerance: float) -> ClassMetrics:
    status = case_status(n_pred > 0, n_gt > 0)
    if status == "ok":
        assert sd is not None
        d1, d2 = sd.directed(sampling)
        both = np.hstack((d1, d2))
        return ClassMetrics(dice=_dice(inter, n_pred, n_gt), hd95=float(np.percentile(both, 95)),
                            status=status, assd=float(both.mean()), nsd=_nsd(d1, d2, nsd_tolerance))
    if status == "absent":
        return ClassMetrics(None, None, status)
    return ClassMetrics(0.0, None, status, assd=None, nsd=0.0)


def official_metric(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """The official TransUNet ``calculate_metric_percase(pred, gt)``, value for value.

    Unlike the original it does not binarise its arguments in place. Rules: both non-empty ->
    (medpy ``dc``, medpy ``hd95`` without spacing, i.e. in voxels); prediction non-empty and ground
    truth empty -> (1, 0); prediction empty -> (0, 0), even when the ground truth is empty too.

    Args:
        pred: Predicted mask (non-zero is foreground).
        gt: Reference mask.

    Returns:
        ``(dice, hd95_in_voxels)``.
    """
    m = official_class_metrics(pred, gt)
    return float(m.dice), float(m.hd95)  # type: ignore[arg-type]


def official_class_metrics(pred: np.ndarray, gt: np.ndarray) -> ClassMetrics:
    """:func:`official_metric` with its empty-mask status, as a :class:`ClassMetrics`.

    Args:
        pred: Predicted mask (non-zero is foreground).
        gt: Reference mask.
    """
    p, g = _as_bool(pred), _as_bool(gt)
    _check_shapes(p, g)
    n_p, n_g = np.count_nonzero(p), np.count_nonzero(g)
    sd = SurfaceDistances.from_masks(p, g) if n_p and n_g else None
    return _official(np.count_nonzero(p & g), n_p, n_g, sd)


def corrected_metric(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None, *,
                     nsd_tolerance: float = NSD_TOLERANCE_MM) -> ClassMetrics:
    """The corrected protocol for one class: distances in the unit of ``spacing``, honest empty rules.

    Rules: both non-empty -> Dice, HD95, ASSD, NSD; organ present but prediction empty ->
    ``missed``: Dice 0, NSD 0, HD95/ASSD ``None``; organ absent but predicted -> ``false_positive``:
    Dice 0, NSD 0, HD95/ASSD ``None``; both empty -> ``absent``: everything ``None`` (excluded).

    Args:
        pred: Predicted mask.
        gt: Reference mask of the same shape.
        spacing: Voxel size per axis in mm; ``None`` gives voxels.
        nsd_tolerance: NSD tolerance in the unit of ``spacing``.
    """
    _check_tolerance(nsd_tolerance)
    p, g = _as_bool(pred), _as_bool(gt)
    _check_shapes(p, g)
    sampling = _sampling(p.shape, spacing)
    n_p, n_g = np.count_nonzero(p), np.count_nonzero(g)
    sd = SurfaceDistances.from_masks(p, g) if n_p and n_g else None
    return _corrected(np.count_nonzero(p & g), n_p, n_g, sd, sampling, nsd_tolerance)


def _label_counts(pred: np.ndarray, gt: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label ``(|pred ∩ gt|, |pred|, |gt|)`` for labels ``0..top``, counted in chunks."""
    inter = np.zeros(top + 1, dtype=np.int64)
    n_p = np.zeros(top + 1, dtype=np.int64)
    n_g = np.zeros(top + 1, dtype=np.int64)
    p_flat, g_flat = pred.reshape(-1), gt.reshape(-1)
    for s in range(0, p_flat.size, _CHUNK):
        p, g = p_flat[s:s + _CHUNK], g_flat[s:s + _CHUNK]
        inter += np.bincount(p[(p == g) & (p <= top)], minlength=top + 1)
        n_p += np.bincount(p[p <= top], minlength=top + 1)  # labels beyond the scored ones are not counted
        n_g += np.bincount(g[g <= top], minlength=top + 1)
    return inter, n_p, n_g


def foreground_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of classes ``1..K-1`` on whole label maps with the corrected protocol's Dice rules.

    A class missed by the prediction or predicted where absent scores 0; a class absent from both
    is NaN (excluded). Labels ``>= K`` are not counted. No surfaces are computed, so this is cheap
    enough for validation during training.

    Args:
        pred: Predicted labels, any shape.
        gt: Ground-truth labels, same shape.
        num_classes: ``K``, classes including background.

    Returns:
        ``(K-1,)`` float64 array.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}.")
    inter, n_p, n_g = _label_counts(_check_labels(pred, "predicted"), _check_labels(gt, "reference"),
                                    num_classes - 1)
    inter, denom = inter[1:].astype(np.float64), (n_p[1:] + n_g[1:]).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / denom, np.nan)


def _check_labels(a: np.ndarray, name: str) -> np.ndarray:
    if a.dtype == np.bool_:
        return a.view(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} label map must be integer, got dtype {a.dtype}; cast it with .astype(np.uint8).")
    if np.issubdtype(a.dtype, np.signedinteger) and a.size and a.min() < 0:
        raise ValueError(f"{name} label map has negative labels (min {a.min()}); labels must be >= 0.")
    return a


def label_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    classes: Sequence[int],
    spacing: Spacing = None,
    *,
    protocols: Sequence[str] = PROTOCOLS,
    nsd_tolerance: float = NSD_TOLERANCE_MM,
    connectivity: int = 1,
) -> dict[str, dict[int, ClassMetrics]]:
    """Per-class metrics of two label volumes in both protocols, from one pass over each volume.

    The surfaces of all labels are extracted once per volume (:class:`LabelSurfaces`), the voxel
    counts with one chunked ``bincount``; every class then costs only k-d tree queries over its
    surface voxels, shared by both protocols.

    Args:
        pred: Predicted label map, integer ``(S, H, W)`` (or any rank).
        gt: Ground-truth label map of the same shape.
        classes: Labels to score (e.g. ``range(1, num_classes)``).
        spacing: Voxel size per axis in mm for the corrected protocol (``None``: voxels).
        protocols: Any of ``"official"`` and ``"corrected"``.
        nsd_tolerance: NSD tolerance in the unit of ``spacing``.
        connectivity: Surface connectivity (medpy's default 1).

    Returns:
        ``{protocol: {class_index: ClassMetrics}}``.
    """
    pred = _check_labels(np.atleast_1d(np.asarray(pred)), "prediction")
    gt = _check_labels(np.atleast_1d(np.asarray(gt)), "ground truth")
    _check_shapes(pred, gt)
    sampling = _sampling(pred.shape, spacing)
    _check_tolerance(nsd_tolerance)
    for name in protocols:
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}.")
    classes = [int(c) for c in classes]
    if not classes or min(classes) <= 0:
        raise ValueError(f"classes {classes} must be positive labels (background 0 is not scored).")
    inter, n_p, n_g = _label_counts(pred, gt, max(classes))
    surf_p = LabelSurfaces(pred, connectivity)
    surf_g = LabelSurfaces(gt, connectivity)
    out: dict[str, dict[int, ClassMetrics]] = {name: {} for name in protocols}
    for c in classes:
        sd = SurfaceDistances(surf_p.points(c), surf_g.points(c)) if n_p[c] and n_g[c] else None
        if "official" in out:
            out["official"][c] = _official(inter[c], n_p[c], n_g[c], sd)
        if "corrected" in out:
            out["corrected"][c] = _corrected(inter[c], n_p[c], n_g[c], sd, sampling, nsd_tolerance)
    return out


def nan_to_none(x: float | None) -> float | None:
    """``None`` for ``None``/NaN/inf (JSON has no NaN), else a Python float."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


__all__ = [
    "NSD_TOLERANCE_MM",
    "PROTOCOLS",
    "STATUSES",
    "ClassMetrics",
    "LabelSurfaces",
    "SurfaceDistances",
    "assd",
    "case_status",
    "corrected_metric",
    "dice",
    "foreground_dice",
    "hd95",
    "label_metrics",
    "nan_to_none",
    "nsd",
    "official_class_metrics",
    "official_metric",
    "surface_distances",
    "surface_map",
]
