"""Metrics: parity with medpy (the official implementation's library) and the protocol rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from transunet import metrics as M

medpy_binary = pytest.importorskip("medpy.metric.binary")

TOL = 1e-9


def _medpy_official(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """The official ``calculate_metric_percase``, verbatim apart from working on copies."""
    pred, gt = pred.copy(), gt.copy()
    pred[pred > 0] = 1
    gt[gt > 0] = 1
    if pred.sum() > 0 and gt.sum() > 0:
        return medpy_binary.dc(pred, gt), medpy_binary.hd95(pred, gt)
    if pred.sum() > 0 and gt.sum() == 0:
        return 1, 0
    return 0, 0


def _random_pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = tuple(int(s) for s in rng.integers(2, 14, size=3))
        a = rng.random(shape) < rng.uniform(0.02, 0.6)
        b = rng.random(shape) < rng.uniform(0.02, 0.6)
        if i % 4 == 0:  # single-voxel object
            a[:] = False
            a[tuple(int(rng.integers(0, s)) for s in shape)] = True
        if a.any() and b.any():
            yield a, b, tuple(float(x) for x in rng.uniform(0.3, 4.0, size=3))


def _structured_pairs():
    """Balls and boxes: touching every face of the volume, nested, disjoint, far apart."""
    S, H, W = 20, 31, 27
    zz, yy, xx = np.ogrid[:S, :H, :W]
    ball = (zz - 10) ** 2 / 64 + (yy - 15) ** 2 / 100 + (xx - 13) ** 2 / 81 <= 1
    full = np.ones((S, H, W), bool)  # touches every face; its surface is the volume edge
    slab = np.zeros((S, H, W), bool)
    slab[:, :5, :] = True  # touches 5 faces
    corner = np.zeros((S, H, W), bool)
    corner[0, 0, 0] = True
    far = np.zeros((S, H, W), bool)
    far[-1, -1, -1] = True
    shifted = np.roll(ball, (2, -3, 1), axis=(0, 1, 2))
    grown = binary_dilation(ball, iterations=2)
    line = np.zeros((S, H, W), bool)
    line[:, 15, 13] = True  # a one-voxel-thick object along the slice axis
    return [
        ("ball/shifted", ball, shifted), ("ball/grown", ball, grown), ("ball/full", ball, full),
        ("full/slab", full, slab), ("slab/ball", slab, ball), ("corner/far", corner, far),
        ("corner/ball", corner, ball), ("line/ball", line, ball), ("ball/ball", ball, ball.copy()),
        ("grown+far/ball", grown | far, ball),
    ]


@pytest.mark.parametrize("spacing", [None, (3.0, 0.7, 0.7), (0.5, 1.3, 2.1)])
def test_surface_metrics_match_medpy_on_structured_volumes(spacing):
    for name, a, b in _structured_pairs():
        for p, g in ((a, b), (b, a)):
            assert abs(M.hd95(p, g, spacing) - medpy_binary.hd95(p, g, voxelspacing=spacing)) <= TOL, name
            assert abs(M.assd(p, g, spacing) - medpy_binary.assd(p, g, voxelspacing=spacing)) <= TOL, name
            assert abs(M.dice(p, g) - medpy_binary.dc(p, g)) <= TOL, name


def test_surface_metrics_match_medpy_on_random_volumes():
    n = 0
    for a, b, spacing in _random_pairs(40):
        for sp in (None, spacing):
            assert abs(M.hd95(a, b, sp) - medpy_binary.hd95(a, b, voxelspacing=sp)) <= TOL
            assert abs(M.assd(a, b, sp) - medpy_binary.assd(a, b, voxelspacing=sp)) <= TOL
        # directed distances: same values in the same (C) order as medpy's boolean indexing
        ref = getattr(medpy_binary, "__surface_distances")(a, b, spacing, 1)
        ours = M.surface_distances(a, b, spacing)
        assert ours.shape == ref.shape and np.max(np.abs(ours - ref)) <= TOL
        n += 1
    assert n >= 25


@pytest.mark.parametrize("connectivity", [2, 3])
def test_higher_connectivity_matches_medpy(connectivity):
    for a, b, spacing in list(_random_pairs(12, seed=3)):
        ref = medpy_binary.hd95(a, b, voxelspacing=spacing, connectivity=connectivity)
        assert abs(M.hd95(a, b, spacing, connectivity=connectivity) - ref) <= TOL


def test_2d_and_anisotropic_2d():
    rng = np.random.default_rng(5)
    a, b = rng.random((17, 23)) < 0.2, rng.random((17, 23)) < 0.1
    for sp in (None, (0.4, 2.0)):
        assert abs(M.hd95(a, b, sp) - medpy_binary.hd95(a, b, voxelspacing=sp)) <= TOL


def test_official_protocol_matches_calculate_metric_percase_on_every_empty_case():
    rng = np.random.default_rng(1)
    some = rng.random((6, 9, 8)) < 0.3
    other = rng.random((6, 9, 8)) < 0.3
    empty = np.zeros_like(some)
    cases = {"ok": (some, other), "false_positive": (some, empty), "missed": (empty, other),
             "absent": (empty, empty)}
    expected = {"false_positive": (1, 0), "missed": (0, 0), "absent": (0, 0)}
    for status, (p, g) in cases.items():
        ref = _medpy_official(p.astype(np.uint8), g.astype(np.uint8))
        got = M.official_metric(p, g)
        assert abs(got[0] - ref[0]) <= TOL and abs(got[1] - ref[1]) <= TOL, status
        if status in expected:
            assert got == expected[status]
        assert M.official_class_metrics(p, g).status == status


def test_corrected_protocol_rules():
    rng = np.random.default_rng(2)
    some = rng.random((6, 9, 8)) < 0.3
    other = rng.random((6, 9, 8)) < 0.3
    empty = np.zeros_like(some)
    sp = (2.0, 0.5, 0.5)
    ok = M.corrected_metric(some, other, sp)
    assert ok.status == "ok"
    assert abs(ok.hd95 - medpy_binary.hd95(some, other, voxelspacing=sp)) <= TOL
    assert abs(ok.assd - medpy_binary.assd(some, other, voxelspacing=sp)) <= TOL
    assert abs(ok.dice - medpy_binary.dc(some, other)) <= TOL
    assert 0.0 <= ok.nsd <= 1.0
    assert M.corrected_metric(empty, other, sp) == M.ClassMetrics(0.0, None, "missed", None, 0.0)
    assert M.corrected_metric(some, empty, sp) == M.ClassMetrics(0.0, None, "false_positive", None, 0.0)
    assert M.corrected_metric(empty, empty, sp) == M.ClassMetrics(None, None, "absent", None, None)


def test_nsd_definition():
    gt = np.zeros((1, 12, 12), bool)
    gt[0, 2:10, 2:10] = True
    pred = np.roll(gt, 1, axis=2)
    d1 = M.surface_distances(pred, gt, (1.0, 1.0, 1.0))
    d2 = M.surface_distances(gt, pred, (1.0, 1.0, 1.0))
    for tol in (0.0, 0.5, 1.0, 10.0):
        expected = (np.sum(d1 <= tol) + np.sum(d2 <= tol)) / (d1.size + d2.size)
        assert M.nsd(pred, gt, tol, (1.0, 1.0, 1.0)) == pytest.approx(expected)
    assert M.nsd(pred, gt, 10.0) == 1.0
    assert M.nsd(gt, gt, 0.0) == 1.0
    assert M.nsd(np.zeros_like(gt), gt, 1.0) == 0.0
    assert M.nsd(np.zeros_like(gt), np.zeros_like(gt), 1.0) == 1.0
    with pytest.raises(ValueError, match="tolerance"):
        M.nsd(pred, gt, -1.0)


def _label_volume(seed: int, shape=(18, 40, 36), n=5):
    rng = np.random.default_rng(seed)
    gt = np.zeros(shape, np.uint8)
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    for k in range(1, n + 1):
        c = [rng.uniform(0, s) for s in shape]  # may touch the volume border
        r = [rng.uniform(2, s / 3) for s in shape]
        gt[((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1] = k
    pred = gt.copy()
    pred[rng.random(shape) < 0.02] = rng.integers(0, n + 1)  # speckle noise, also other labels
    pred = np.roll(pred, 1, axis=1)
    return pred, gt


def test_label_metrics_match_per_class_medpy_in_both_protocols():
    pred, gt = _label_volume(0)
    pred[pred == 2] = 0  # a missed organ
    gt[gt == 3] = 0  # an organ absent from the ground truth (false positive if predicted)
    pred[pred == 4] = 0
    gt[gt == 4] = 0  # absent from both
    spacing = (2.5, 0.8, 0.7)
    out = M.label_metrics(pred, gt, range(1, 7), spacing)
    statuses = {c: out["corrected"][c].status for c in range(1, 7)}
    assert statuses[2] == "missed" and statuses[4] == "absent" and statuses[6] == "absent"
    assert statuses[3] in ("false_positive", "absent") and statuses[1] == "ok"
    for c in range(1, 7):
        p, g = pred == c, gt == c
        ref = _medpy_official(p.astype(np.uint8), g.astype(np.uint8))
        off = out["official"][c]
        assert abs(off.dice - ref[0]) <= TOL and abs(off.hd95 - ref[1]) <= TOL
        cor = out["corrected"][c]
        assert cor.status == off.status
        if cor.status == "ok":
            assert abs(cor.hd95 - medpy_binary.hd95(p, g, voxelspacing=spacing)) <= TOL
            assert abs(cor.assd - medpy_binary.assd(p, g, voxelspacing=spacing)) <= TOL
            assert abs(cor.dice - medpy_binary.dc(p, g)) <= TOL
            assert cor.nsd == pytest.approx(M.nsd(p, g, M.NSD_TOLERANCE_MM, spacing))


def test_inputs_are_not_modified():
    pred, gt = _label_volume(1)
    p0, g0 = pred.copy(), gt.copy()
    M.label_metrics(pred, gt, range(1, 6), (1.0, 1.0, 1.0))
    masks = (pred * 3, gt.astype(np.int32))  # non-binary masks: the official code binarises in place
    copies = tuple(m.copy() for m in masks)
    M.official_metric(*masks)
    M.corrected_metric(*masks, (1.0, 2.0, 3.0))
    M.hd95(*masks)
    assert np.array_equal(pred, p0) and np.array_equal(gt, g0)
    assert all(np.array_equal(m, c) for m, c in zip(masks, copies))


def test_surface_map_equals_medpy_erosion_for_every_label():
    from scipy.ndimage import binary_erosion, generate_binary_structure

    pred, _ = _label_volume(4)
    surf = M.surface_map(pred)
    fp = generate_binary_structure(3, 1)
    for c in range(1, 6):
        m = pred == c
        assert np.array_equal(surf & m, m ^ binary_erosion(m, structure=fp, iterations=1))


def test_bad_inputs_raise_one_line_errors():
    a = np.ones((3, 4, 5), bool)
    with pytest.raises(ValueError, match="shape"):
        M.hd95(a, np.ones((3, 4, 6), bool))
    with pytest.raises(ValueError, match="non-empty"):
        M.hd95(a, np.zeros_like(a))
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="integer"):
        M.label_metrics(a.astype(np.float32), a.astype(np.uint8), [1])
    with pytest.raises(ValueError, match="protocol"):
        M.label_metrics(a.astype(np.uint8), a.astype(np.uint8), [1], protocols=("offical",))
    with pytest.raises(ValueError, match="negative"):
        M.label_metrics(-a.astype(np.int8), a.astype(np.uint8), [1])
    with pytest.raises(ValueError, match="positive labels"):
        M.label_metrics(a.astype(np.uint8), a.astype(np.uint8), [0, 1])


def test_nan_to_none():
    assert M.nan_to_none(float("nan")) is None
    assert M.nan_to_none(None) is None
    assert M.nan_to_none(float("inf")) is None
    assert M.nan_to_none(np.float64(1.5)) == 1.5
