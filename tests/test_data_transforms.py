"""The official augmentation: torch vs scipy reference, draw distribution, dataset determinism."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from transunet.data.datasets import SliceDataset
from transunet.data.phantom import generate_phantom
from transunet.data.prepare import prepare
from transunet.data.transforms import AugParams, apply_scipy, augment_batch, sample_params

ALL = ([AugParams("rotflip", k, a) for k in range(4) for a in range(2)]
       + [AugParams("rotate", angle=a) for a in (-20, -7, 1, 19)] + [AugParams()])


@pytest.mark.parametrize("shape,out", [((96, 96), (64, 64)), ((70, 50), (64, 48)), ((40, 56), (96, 96)),
                                       ((64, 64), (64, 64))])
def test_torch_matches_scipy_reference(shape: tuple[int, int], out: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    img = rng.random(shape).astype(np.float32)
    lab = rng.integers(0, 9, shape).astype(np.uint8)
    for p in ALL:
        ref_img, ref_lab = apply_scipy(img, lab, p, out)
        t_img, t_lab = augment_batch([torch.from_numpy(img)], [torch.from_numpy(lab)], [p], out)
        assert t_img.shape == (1, *out) and t_lab.dtype == torch.int64
        np.testing.assert_allclose(t_img[0].numpy(), ref_img, atol=2e-6, err_msg=str(p))
        np.testing.assert_array_equal(t_lab[0].numpy(), ref_lab, err_msg=str(p))


def test_batch_equals_single_calls() -> None:
    rng = np.random.default_rng(1)
    imgs = [torch.from_numpy(rng.random((48, 40)).astype(np.float32)) for _ in ALL]
    labs = [torch.from_numpy(rng.integers(0, 4, (48, 40)).astype(np.uint8)) for _ in ALL]
    bi, bl = augment_batch(imgs, labs, ALL, (32, 32))
    for i, p in enumerate(ALL):
        si, sl = augment_batch([imgs[i]], [labs[i]], [p], (32, 32))
        assert torch.equal(bi[i], si[0]) and torch.equal(bl[i], sl[0])


def test_official_draw_distribution() -> None:
    kinds, ks, angles = Counter(), Counter(), Counter()
    n = 20000
    for i in range(n):
        p = sample_params(np.random.default_rng([5, 0, i]))
        kinds[p.kind] += 1
        if p.kind == "rotflip":
            ks[p.k] += 1
        if p.kind == "rotate":
            angles[p.angle] += 1
    assert abs(kinds["rotflip"] / n - 0.5) < 0.015
    assert abs(kinds["rotate"] / n - 0.25) < 0.015 and abs(kinds["none"] / n - 0.25) < 0.015
    assert set(ks) == {0, 1, 2, 3} and min(angles) == -20 and max(angles) == 19 and len(angles) == 40


def test_extras_are_off_by_default_and_keep_official_draws() -> None:
    base = sample_params(np.random.default_rng(3))
    assert base.elastic is None and base.scale == 1.0 and base.shift == 0.0 and base.gamma == 1.0
    for seed in range(20):
        off = sample_params(np.random.default_rng(seed))
        on = sample_params(np.random.default_rng(seed), elastic=True, intensity=True, gamma=True)
        assert (off.kind, off.k, off.axis, off.angle) == (on.kind, on.k, on.axis, on.angle)
    p = AugParams(elastic=np.full((2, 5, 5), 2.0, np.float32), scale=1.05, shift=0.02, gamma=1.3)
    img = torch.linspace(0, 1, 32 * 32).view(32, 32)
    lab = (img > 0.5).to(torch.uint8)
    oi, ol = augment_batch([img], [lab], [p], (32, 32))
    ri, _ = augment_batch([img], [lab], [AugParams()], (32, 32))
    assert not torch.allclose(oi, ri) and set(ol.unique().tolist()) <= {0, 1}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("aug")
    raw = generate_phantom(tmp / "raw", layout="btcv", cases=3, seed=0)
    return prepare("synapse", raw, tmp / "prep")


def test_slice_dataset_items(prepared: Path) -> None:
    ds = SliceDataset(prepared, "train", img_size=(64, 64))
    item = ds[0]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    assert item["label"].shape == (64, 64) and item["label"].dtype == torch.int64
    assert item["case_id"] == ds.case_ids[0] and item["index"] == 0
    val = SliceDataset(prepared, "test", img_size=(64, 64), augment="none")
    image, label = val.read_slice(3)
    np.testing.assert_allclose(val[3]["image"][0].numpy(), apply_scipy(image, label, AugParams(), (64, 64))[0],
                               atol=2e-6)
    with pytest.raises(ValueError, match="augment"):
        SliceDataset(prepared, "train", augment="heavy")


def test_slice_dataset_is_deterministic_across_workers_and_resume(prepared: Path) -> None:
    ds = SliceDataset(prepared, "train", img_size=(48, 48), seed=11)
    idx = list(range(0, len(ds), max(1, len(ds) // 8)))[:8]
    sub = torch.utils.data.Subset(ds, idx)

    def epoch(e: int, workers: int) -> torch.Tensor:
        ds.set_epoch(e)
        return torch.cat([b["image"] for b in DataLoader(sub, batch_size=4, num_workers=workers)])

    e0 = epoch(0, 0)
    assert torch.equal(e0, epoch(0, 2))  # independent of num_workers
    e1 = epoch(1, 0)
    assert not torch.equal(e0, e1)  # new augmentations each epoch
    fresh = SliceDataset(prepared, "train", img_size=(48, 48), seed=11)  # a resumed run
    fresh.set_epoch(1)
    assert torch.equal(torch.stack([fresh[i]["image"] for i in idx]), e1)
