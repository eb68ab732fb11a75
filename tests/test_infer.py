"""Prediction on NIfTI files: exact geometry round trip, preprocessing, folders, refusals."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from transunet.checkpoint import save_checkpoint
from transunet.cli import main
from transunet.data.normalize import check_normalization, ct_window, normalize, zscore
from transunet.errors import DataError
from transunet.infer import PROBABILITY_SUFFIX, predict_path, predict_volume
from transunet.registry import list_models, register_model

K = 3
LOW, HIGH = -125.0, 275.0


class BandNet(nn.Module):
    """Class k wins where the normalised intensity is closest to k / K."""

    def __init__(self, num_classes: int = K, in_channels: int = 1, img_size=(16, 16), **_: object) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.register_buffer("centers", torch.arange(num_classes, dtype=torch.float32) / num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K, H, W)
        return -50.0 * (x[:, :1] - self.centers.view(1, -1, 1, 1)) ** 2


if "_InferBandNet" not in list_models():  # registered once per process, even if this module is re-imported
    register_model(BandNet, name="_InferBandNet")


def make_checkpoint(path: Path, normalization=None, in_channels: int = 1) -> Path:
    norm = normalization or {"kind": "ct_window", "low": LOW, "high": HIGH}
    return save_checkpoint(path, BandNet(K, in_channels), "_InferBandNet",
                           {"num_classes": K, "in_channels": in_channels, "img_size": (16, 16)},
                           preprocessing={"class_names": ["background", "a", "b"], "normalization": norm})


def band_volume(shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """NIfTI-ordered ``(X, Y, Z)`` HU volume and the label BandNet should find, as blocks."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    X, Y, Z = shape
    lab[X // 4: X // 2 + 2, Y // 4: 3 * Y // 4, :] = 1
    lab[X // 2 + 4:, : Y // 3, Z // 2:] = 2
    hu = LOW + (HIGH - LOW) * lab / K + rng.normal(0, 2, shape)
    return hu.astype(np.float32), lab


def unusual_image(shape=(23, 17, 5)) -> tuple[nib.Nifti1Image, np.ndarray]:
    hu, lab = band_volume(shape)
    affine = np.array([[-0.7, 0.0, 0.0, 120.5],    # flipped x, anisotropic, oblique between y and z
                       [0.0, 0.0, 3.3, -40.25],
                       [0.0, -0.9, 0.2, 15.0],
                       [0.0, 0.0, 0.0, 1.0]])
    img = nib.Nifti1Image(hu, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    return img, lab


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "model.pt")


def test_round_trip_keeps_shape_affine_and_header(tmp_path, ckpt):
    img, lab = unusual_image()
    src = tmp_path / "scan.nii.gz"
    nib.save(img, str(src))
    src_bytes = src.read_bytes()
    [out] = predict_path(ckpt, src, tmp_path / "out" / "scan_seg.nii.gz", device="cpu")
    res = nib.load(str(out))
    ref = nib.load(str(src))
    assert res.shape == ref.shape == (23, 17, 5)
    assert np.array_equal(res.affine, ref.affine)
    assert np.array_equal(res.get_qform(), ref.get_qform()) and np.array_equal(res.get_sform(), ref.get_sform())
    assert int(res.header["qform_code"]) == 1 and int(res.header["sform_code"]) == 2
    assert res.header.get_zooms() == ref.header.get_zooms()
    assert res.get_data_dtype() == np.uint8
    pred = np.asarray(res.dataobj)
    # labels land on the voxels they came from (no axis swapped or flipped on the way back)
    assert np.mean(pred == lab) > 0.9
    for c in (1, 2):
        assert 2 * np.sum((pred == c) & (lab == c)) / (np.sum(pred == c) + np.sum(lab == c)) > 0.85
    assert src.read_bytes() == src_bytes  # the input is untouched


def test_prediction_equals_predict_volume_on_the_normalised_slices(tmp_path, ckpt):
    img, _ = unusual_image((19, 26, 4))
    src = tmp_path / "scan.nii"
    nib.save(img, str(src))
    [out] = predict_path(ckpt, src, tmp_path / "o", device="cpu")
    assert out == tmp_path / "o" / "scan.nii.gz"
    vol = np.transpose(np.asarray(img.dataobj), (2, 1, 0))  # slice-first (Z, Y, X)
    expected = predict_volume(BandNet(), ct_window(vol, LOW, HIGH), (16, 16))
    got = np.transpose(np.asarray(nib.load(str(out)).dataobj), (2, 1, 0))
    assert np.array_equal(got, expected)


def test_zscore_checkpoint_uses_zscore(tmp_path):
    ck = make_checkpoint(tmp_path / "mri.pt", normalization={"kind": "zscore"})
    rng = np.random.default_rng(3)
    data = rng.normal(500.0, 80.0, (12, 14, 3)).astype(np.float32)
    src = tmp_path / "mri.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 6.0, 1.0])), str(src))
    [out] = predict_path(ck, src, tmp_path / "seg.nii.gz", device="cpu")
    expected = predict_volume(BandNet(), zscore(np.transpose(data, (2, 1, 0))), (16, 16))
    assert np.array_equal(np.transpose(np.asarray(nib.load(str(out)).dataobj), (2, 1, 0)), expected)


def test_folder_input_probabilities_and_tta(tmp_path, ckpt):
    inp = tmp_path / "scans"
    inp.mkdir()
    shapes = {"a.nii.gz": (21, 15, 3), "b.nii": (16, 16, 2)}
    for name, shape in shapes.items():
        hu, _ = band_volume(shape, seed=len(name))
        nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.5, 1.0])), str(inp / name))
    (inp / "notes.txt").write_text("ignored")
    outs = predict_path(ckpt, inp, tmp_path / "preds", device="cpu", tta=True, save_probabilities=True)
    assert [p.name for p in outs] == ["a.nii.gz", "b.nii.gz"]
    for name, out in zip(shapes, outs):
        assert nib.load(str(out)).shape == shapes[name]
        probs = nib.load(str(out.with_name(out.name.replace(".nii.gz", PROBABILITY_SUFFIX))))
        assert probs.shape == shapes[name] + (K,) and probs.get_data_dtype() == np.float32
        p = np.asarray(probs.dataobj)
        assert np.allclose(p.sum(axis=-1), 1.0, atol=1e-4)
        assert np.array_equal(probs.affine, nib.load(str(inp / name)).affine)


def test_refusals_via_cli(tmp_path, ckpt, capsys):
    img, _ = unusual_image()
    src = tmp_path / "scan.nii.gz"
    nib.save(img, str(src))
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", str(ckpt), str(src), "-o", str(out), "--device", "cpu"]) == 0
    first = out.read_bytes()

    def fails(*args: str, match: str) -> None:
        assert main(["predict", str(ckpt), *args, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and match in err and len(err.strip().splitlines()) == 1, err

    fails(str(src), "-o", str(out), match="already exists")
    assert out.read_bytes() == first
    assert main(["predict", str(ckpt), str(src), "-o", str(out), "--overwrite", "--device", "cpu"]) == 0
    fails(str(src), "-o", str(src), "--overwrite", match="overwrite the input")
    fails(str(tmp_path), "-o", str(tmp_path / "inside"), match="inside the input folder")
    fails(str(tmp_path / "missing.nii.gz"), "-o", str(out), match="does not exist")
    (tmp_path / "scan.mha").write_text("x")
    fails(str(tmp_path / "scan.mha"), "-o", str(out), match="not a NIfTI")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(str(empty), "-o", str(tmp_path / "o2"), match="no .nii")

    four_d = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3, 2), np.float32), np.eye(4)), str(four_d))
    fails(str(four_d), "-o", str(tmp_path / "s.nii.gz"), match="3D")
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(gzip.compress(b"not a nifti at all" * 10)[:40])
    fails(str(corrupt), "-o", str(tmp_path / "c.nii.gz"), match="corrupt")
    nan = tmp_path / "nan.nii.gz"
    data = np.zeros((6, 6, 3), np.float32)
    data[1, 2, 0] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan))
    fails(str(nan), "-o", str(tmp_path / "n.nii.gz"), match="NaN")
    assert not (tmp_path / "n.nii.gz").exists()

    # a folder where one output exists: nothing is written at all
    folder, dest = tmp_path / "f", tmp_path / "fout"
    folder.mkdir()
    for n in ("x.nii.gz", "y.nii.gz"):
        nib.save(img, str(folder / n))
    dest.mkdir()
    (dest / "y.nii.gz").write_bytes(b"keep")
    fails(str(folder), "-o", str(dest), match="already exists")
    assert not (dest / "x.nii.gz").exists() and (dest / "y.nii.gz").read_bytes() == b"keep"

    not_ours = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(1)}, not_ours)
    assert main(["predict", str(not_ours), str(src), "-o", str(tmp_path / "p.nii.gz"), "--device", "cpu"]) == 2
    assert "convert" in capsys.readouterr().err


def test_normalisation_functions():
    x = np.array([-1000.0, -125.0, 75.0, 275.0, 3000.0])
    assert np.allclose(ct_window(x, -125, 275), [0, 0, 0.5, 1, 1])
    assert ct_window(x, -125, 275).dtype == np.float32
    z = zscore(np.array([1.0, 2.0, 3.0]))
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1.0) < 1e-6
    assert np.all(zscore(np.full((3, 3), 7.0)) == 0)
    assert np.array_equal(normalize(x, {"kind": "none"}), x.astype(np.float32))
    assert check_normalization(None)["kind"] == "ct_window"
    before = x.copy()
    normalize(x, {"kind": "ct_window", "low": -125, "high": 275})
    assert np.array_equal(x, before)
    with pytest.raises(DataError, match="unknown intensity normalisation"):
        normalize(x, {"kind": "minmax"})
    with pytest.raises(DataError, match="empty"):
        normalize(x, {"kind": "ct_window", "low": 10, "high": 10})
