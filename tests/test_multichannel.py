"""Multi-channel datasets end to end (issue 15, item 6): nnU-Net ``CASE_000k`` files and MSD 4D images.

prepare -> train -> evaluate -> predict through the CLI on tiny two-channel datasets whose label needs
both channels (foreground = bright in channel 0 AND bright in channel 1), plus the error cases.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from transunet.cli import main

SHAPE = (24, 24, 4)  # NIfTI (X, Y, Z): slices (S, H, W) = (4, 24, 24)
AFFINE = np.array([[-0.8, 0.0, 0.0, 30.0], [0.0, 0.8, 0.0, -12.0], [0.0, 0.0, 3.0, 5.0], [0.0, 0.0, 0.0, 1.0]])


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two channels on different scales (an MRI-like one and a CT-like one) and a label needing both."""
    a = np.zeros(SHAPE, bool)
    b = np.zeros(SHAPE, bool)
    x0, y0 = rng.integers(2, 8, 2)
    a[x0:x0 + 12, y0:y0 + 10] = True
    b[x0 + 6:x0 + 16, y0 - 2:y0 + 14] = True
    ch0 = (400.0 + 300.0 * a + rng.normal(0, 20, SHAPE)).astype(np.float32)
    ch1 = (-200.0 + 300.0 * b + rng.normal(0, 20, SHAPE)).astype(np.float32)
    return ch0, ch1, (a & b).astype(np.uint8)


def _save(arr: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(arr, AFFINE)
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=1)
    nib.save(img, str(path))


def nnunet_raw(root: Path, n: int = 5, names: dict[str, str] | None = None) -> Path:
    """Dataset601_Two in nnU-Net v2 layout: imagesTr/case_00i_0000 (T2) and _0001 (CT), labelsTr/case_00i."""
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        ch0, ch1, lab = _case(rng)
        _save(ch0, root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        _save(ch1, root / "imagesTr" / f"case_{i:03d}_0001.nii.gz")
        _save(lab, root / "labelsTr" / f"case_{i:03d}.nii.gz")
    meta = {"channel_names": names or {"0": "T2", "1": "CT"}, "labels": {"background": 0, "overlap": 1},
            "numTraining": n, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def msd_raw(root: Path, n: int = 5) -> Path:
    """Task05-like MSD task: imagesTr/p_i.nii.gz 4D (X, Y, Z, 2) with T2 and ADC on the last axis."""
    rng = np.random.default_rng(1)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        ch0, ch1, lab = _case(rng)
        _save(np.stack([ch0, ch1 + 1000.0], axis=-1), root / "imagesTr" / f"p_{i}.nii.gz")
        _save(lab, root / "labelsTr" / f"p_{i}.nii.gz")
        training.append({"image": f"./imagesTr/p_{i}.nii.gz", "label": f"./labelsTr/p_{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "overlap"}, "modality": {"0": "T2", "1": "ADC"},
        "numTraining": n, "training": training}))
    return root


def _zscore(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return (x - x.mean()) / x.std()


def _slices(arr: np.ndarray) -> np.ndarray:
    return np.transpose(arr, (2, 1, 0))  # NIfTI (X, Y, Z) -> (S, H, W)


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    err = [line for line in lines if "error" in line.lower()]  # (progress bars also write to stderr)
    assert code == 2, lines
    assert len(err) == 1 and err[0].startswith("error:") and lines[-1] == err[0], lines
    return err[0]


def _config(path: Path, data: Path, out: Path, **model: object) -> Path:
    import yaml

    cfg = {
        "name": "mc", "output_dir": str(out), "device": "cpu",
        "model": {"name": "UNet", "num_classes": 2, "img_size": [32, 32],
                  "args": {"features": [4, 8, 16], "norm": "batch"}, **model},
        "data": {"root": str(data), "num_workers": 0, "augment": "official", "intensity": True, "gamma": True},
        "train": {"batch_size": 4, "max_iterations": 2, "lr": 0.01, "val_every": 1, "log_every": 1, "threads": 1},
        "eval": {"batch_size": 4, "bootstrap": 10},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


# ----------------------------------------------------------------------------- nnU-Net layout, end to end


def test_nnunet_two_channels_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = nnunet_raw(tmp_path / "Dataset601_Two")
    data = tmp_path / "data"
    assert main(["prepare", "nnunet", str(raw), str(data), "--val-cases", "1"]) == 0

    # dataset.json: the channels, their names and each one's own normalisation
    info = json.loads((data / "dataset.json").read_text())
    assert info["version"] == 2 and info["channels"] == 2 and info["channel_names"] == ["T2", "CT"]
    assert info["normalization"] == [{"kind": "zscore"}, {"kind": "ct_window", "low": -125.0, "high": 275.0}]

    # train slices (C, H, W) and test volumes (S, C, H, W), each channel by hand
    train_case = info["splits"]["train"][0]
    ch0 = _slices(nib.load(str(raw / "imagesTr" / f"{train_case}_0000.nii.gz")).get_fdata())
    ch1 = _slices(nib.load(str(raw / "imagesTr" / f"{train_case}_0001.nii.gz")).get_fdata())
    with np.load(data / "train_npz" / f"{train_case}_slice002.npz") as z:
        assert z["image"].shape == (2, 24, 24) and z["image"].dtype == np.float32 and z["label"].shape == (24, 24)
        np.testing.assert_allclose(z["image"][0], _zscore(ch0)[2], atol=1e-5)  # z-score over the whole volume
        np.testing.assert_allclose(z["image"][1], (np.clip(ch1[2], -125, 275) + 125) / 400, atol=1e-6)
    test_case = info["splits"]["test"][0]
    t0 = _slices(nib.load(str(raw / "imagesTr" / f"{test_case}_0000.nii.gz")).get_fdata())
    t1 = _slices(nib.load(str(raw / "imagesTr" / f"{test_case}_0001.nii.gz")).get_fdata())
    with h5py.File(data / "test_vol_h5" / f"{test_case}.npy.h5") as f:
        image, label = f["image"][:], f["label"][:]
    assert image.shape == (4, 2, 24, 24) and label.shape == (4, 24, 24)
    np.testing.assert_allclose(image[:, 0], _zscore(t0), atol=1e-5)
    np.testing.assert_allclose(image[:, 1], (np.clip(t1, -125, 275) + 125) / 400, atol=1e-6)
    np.testing.assert_array_equal(label, _slices(nib.load(str(raw / "labelsTr" / f"{test_case}.nii.gz")).get_fdata()))

    # train (model.in_channels left at 1: it follows the data), with augmentation and validation
    cfg = _config(tmp_path / "mc.yaml", data, tmp_path / "runs")
    assert main(["train", str(cfg)]) == 0
    run = tmp_path / "runs" / "mc"
    ckpt = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["model"]["kwargs"]["in_channels"] == 2 and ckpt["config"]["model"]["in_channels"] == 2
    pre = ckpt["preprocessing"]
    assert pre["channels"] == 2 and pre["channel_names"] == ["T2", "CT"]
    assert pre["normalization"] == info["normalization"]
    from transunet.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(run / "checkpoints" / "best.pt", device="cpu")
    assert model.in_channels == 2 and model(torch.zeros(1, 2, 32, 32)).shape == (1, 2, 32, 32)

    # evaluate (and its report, which draws the first channel)
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    summary = json.loads((run / "eval" / "test" / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["cases"][0]["shape"] == [4, 24, 24]
    assert (run / "report" / "test" / "index.html").is_file()

    # predict a folder in nnU-Net naming: CASE_0000 + CASE_0001 -> CASE.nii.gz on the input's grid
    pred_in = tmp_path / "pred_in"
    pred_in.mkdir()
    for k in (0, 1):
        (pred_in / f"case_000_{k:04d}.nii.gz").write_bytes((raw / "imagesTr" / f"case_000_{k:04d}.nii.gz").read_bytes())
    assert main(["predict", str(run), str(pred_in), "-o", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["case_000.nii.gz"]
    out = nib.load(str(tmp_path / "pred" / "case_000.nii.gz"))
    assert out.shape == SHAPE and np.allclose(out.affine, AFFINE)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}

    # the same scans by hand: the prediction is the model on both normalised channels
    from transunet.infer import Predictor

    pr = Predictor.from_checkpoint(run, device="cpu")
    src = [_slices(nib.load(str(pred_in / f"case_000_{k:04d}.nii.gz")).get_fdata()) for k in (0, 1)]
    stacked = np.stack([_zscore(src[0]), (np.clip(src[1], -125, 275) + 125) / 400], axis=1).astype(np.float32)
    np.testing.assert_array_equal(_slices(np.asarray(out.dataobj)), pr.predict_volume(stacked))

    # errors at predict: a missing channel file, a one-channel scan
    (tmp_path / "only0").mkdir()
    (tmp_path / "only0" / "case_000_0000.nii.gz").write_bytes((pred_in / "case_000_0000.nii.gz").read_bytes())
    err = _one_error(capsys, ["predict", str(run), str(tmp_path / "only0"), "-o", str(tmp_path / "p1"),
                              "--device", "cpu"])
    assert "case_000_0001.nii.gz" in err and "channel 1 of case case_000 is missing" in err
    assert "2 channels (T2, CT)" in err
    single = tmp_path / "single.nii.gz"
    single.write_bytes((pred_in / "case_000_0000.nii.gz").read_bytes())
    err = _one_error(capsys, ["predict", str(run), str(single), "-o", str(tmp_path / "p2.nii.gz"), "--device", "cpu"])
    assert str(single) in err and "one channel" in err and "2 channels (T2, CT) are expected" in err
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2.nii.gz").exists()

    # a config whose model.in_channels disagrees with the data
    bad = _config(tmp_path / "bad.yaml", data, tmp_path / "runs2", in_channels=3)
    err = _one_error(capsys, ["train", str(bad)])
    assert "model.in_channels=3" in err and "2 input channels (T2, CT)" in err and "model.in_channels=2" in err
    assert not (tmp_path / "runs2").exists()


def test_rgb_pretrained_model_trains_on_two_channels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A model whose first convolution keeps the RGB-pretrained layout takes N channels too: 3-channel
    pretrained weights are adapted to the data's 2 channels, with a warning."""
    from transunet import create_model

    data = tmp_path / "data"
    assert main(["prepare", "nnunet", str(nnunet_raw(tmp_path / "Dataset601_Two", n=3)), str(data),
                 "--val-cases", "0"]) == 0
    rgb = create_model("TransUNet-Tiny", num_classes=2, in_channels=1, img_size=32)  # a 3-channel stored kernel
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    cfg = _config(tmp_path / "tiny.yaml", data, tmp_path / "runs", name="TransUNet-Tiny", args={},
                  pretrained=str(tmp_path / "rgb.pth"))
    with caplog.at_level("WARNING"):
        assert main(["train", str(cfg), "--set", "data.augment=none", "--set", "train.val_every=0",
                     "--set", "data.val_split=null"]) == 0
    assert any("adapted to in_channels=2" in r.getMessage() for r in caplog.records)
    ckpt = torch.load(tmp_path / "runs" / "mc" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["model"]["kwargs"]["in_channels"] == 2
    assert ckpt["state_dict"]["transformer.embeddings.hybrid_model.root.conv.weight"].shape[1] == 2


# ----------------------------------------------------------------------------- MSD 4D, end to end


def test_msd_4d_two_channels_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = msd_raw(tmp_path / "Task05_Prostate")
    data = tmp_path / "data"
    assert main(["prepare", "msd", str(raw), str(data), "--val-cases", "1"]) == 0
    info = json.loads((data / "dataset.json").read_text())
    assert info["channels"] == 2 and info["channel_names"] == ["T2", "ADC"] and info["modality"] == "T2+ADC"
    assert info["normalization"] == [{"kind": "zscore"}, {"kind": "zscore"}]
    case = info["splits"]["test"][0]
    src = nib.load(str(raw / "imagesTr" / f"{case}.nii.gz")).get_fdata()
    with h5py.File(data / "test_vol_h5" / f"{case}.npy.h5") as f:
        image = f["image"][:]
    assert image.shape == (4, 2, 24, 24)
    for k in (0, 1):  # each channel z-scored on its own (a joint z-score would differ: ADC is +1000)
        np.testing.assert_allclose(image[:, k], _zscore(_slices(src[..., k])), atol=1e-5)

    cfg = _config(tmp_path / "mc.yaml", data, tmp_path / "runs", in_channels=2)  # explicit and right
    assert main(["train", str(cfg), "--set", "data.augment=none", "--set", "train.val_every=0"]) == 0
    run = tmp_path / "runs" / "mc"
    assert main(["evaluate", str(run), "--device", "cpu", "--no-report", "--protocol", "official"]) == 0

    # a 4D input is read as channels on the last axis; the label map keeps the 3D grid
    scan = raw / "imagesTr" / f"{case}.nii.gz"
    assert main(["predict", str(run), str(scan), "-o", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    out = nib.load(str(tmp_path / "pred" / f"{case}.nii.gz"))
    assert out.shape == SHAPE and np.allclose(out.affine, AFFINE)

    # a 4D scan with the wrong number of channels
    three = tmp_path / "three.nii.gz"
    _save(np.zeros((*SHAPE, 3), np.float32), three)
    err = _one_error(capsys, ["predict", str(run), str(three), "-o", str(tmp_path / "p3.nii.gz"), "--device", "cpu"])
    assert str(three) in err and "3 channels on the last axis" in err and "2 channels (T2, ADC)" in err

    # evaluating on data whose channels are in another order
    info["channel_names"] = ["ADC", "T2"]
    (data / "dataset.json").write_text(json.dumps(info))
    err = _one_error(capsys, ["evaluate", str(run), "--device", "cpu", "--no-report", "--overwrite"])
    assert "trained on channels ['T2', 'ADC']" in err and "['ADC', 'T2']" in err


# ----------------------------------------------------------------------------- prepare errors


def test_prepare_missing_channel_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = nnunet_raw(tmp_path / "Dataset602_Missing", n=3)
    (raw / "imagesTr" / "case_001_0001.nii.gz").unlink()
    err = _one_error(capsys, ["prepare", "nnunet", str(raw), str(tmp_path / "out")])
    assert str(raw / "imagesTr" / "case_001_0001.nii.gz") in err and "channel 1 (CT) of case case_001" in err
    assert not (tmp_path / "out").exists()


def test_prepare_channel_shape_mismatch_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = nnunet_raw(tmp_path / "Dataset603_Shape", n=3)
    _save(np.zeros((24, 20, 4), np.float32), raw / "imagesTr" / "case_002_0001.nii.gz")
    err = _one_error(capsys, ["prepare", "nnunet", str(raw), str(tmp_path / "out")])
    assert str(raw / "imagesTr" / "case_002_0001.nii.gz") in err and "(24, 20, 4)" in err and "(24, 24, 4)" in err
    assert not (tmp_path / "out").exists()


def test_prepare_channel_affine_mismatch_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = nnunet_raw(tmp_path / "Dataset604_Affine", n=3)
    path = raw / "imagesTr" / "case_000_0001.nii.gz"
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), AFFINE @ np.diag([1.0, 1.0, 1.5, 1.0])), str(path))
    err = _one_error(capsys, ["prepare", "nnunet", str(raw), str(tmp_path / "out")])
    assert str(path) in err and "affine or voxel spacing" in err


def test_prepare_undeclared_channel_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = nnunet_raw(tmp_path / "Dataset605_Extra", n=3)
    extra = raw / "imagesTr" / "case_000_0002.nii.gz"
    extra.write_bytes((raw / "imagesTr" / "case_000_0001.nii.gz").read_bytes())
    err = _one_error(capsys, ["prepare", "nnunet", str(raw), str(tmp_path / "out")])
    assert str(extra) in err and "declares 2 input channel(s)" in err


def test_prepare_msd_channel_count_mismatch_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = msd_raw(tmp_path / "Task05_Prostate", n=3)
    _save(np.zeros(SHAPE, np.float32), raw / "imagesTr" / "p_1.nii.gz")  # 3D where two channels are declared
    err = _one_error(capsys, ["prepare", "msd", str(raw), str(tmp_path / "out")])
    assert str(raw / "imagesTr" / "p_1.nii.gz") in err and "declares 2 channels (T2, ADC)" in err


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_same_geometry_per_channel_own_intensity() -> None:
    from transunet.data.transforms import SliceAugmenter

    rng0 = np.random.default_rng(3)
    base = rng0.normal(size=(20, 16)).astype(np.float32)
    label = (base > 0.5).astype(np.uint8)
    two = np.stack([base, 2.0 * base])
    geo = SliceAugmenter((24, 24), official=True)
    extra = SliceAugmenter((24, 24), official=True, intensity=True, gamma=True)
    seen = set()
    for seed in range(12):
        one_img, one_lab = geo(base, label, np.random.default_rng(seed))
        img, lab = geo(two, label, np.random.default_rng(seed))
        assert img.shape == (2, 24, 24) and lab.shape == (24, 24)
        torch.testing.assert_close(img[0], one_img)  # channel 0 and the label: exactly the one-channel result
        torch.testing.assert_close(img[1], 2.0 * one_img, rtol=1e-5, atol=1e-5)  # the same geometry
        assert torch.equal(lab, one_lab)
        p = geo.params(np.random.default_rng(seed))
        seen.add(p.kind)
        # with intensity extras: channel 0 keeps the one-channel draws, channel 1 gets its own
        e_one, _ = extra(base, label, np.random.default_rng(seed))
        e_two, e_lab = extra(two, label, np.random.default_rng(seed))
        torch.testing.assert_close(e_two[0], e_one)
        assert torch.equal(e_lab, one_lab)
        q = extra.params(np.random.default_rng(seed), channels=2)
        assert len(q.channel_intensity) == 1 and q.channel_intensity[0][:2] != (q.scale, q.shift)
    assert seen == {"none", "rotflip", "rotate"}
