"""nnU-Net v2 datasets read the way nnU-Net reads them (issue 15), on datasets in nnU-Net's own layout."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from transunet.errors import DataError


def _nnunet_dataset(root: Path, *, labels=None, channel="CT", n=4, ending=".nii.gz", with_ignore=False,
                    seed=0) -> Path:
    """Dataset501_Test in nnU-Net v2 raw layout: imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz, dataset.json."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    labels = labels or ({"background": 0, "organ": 1, "ignore": 2} if with_ignore else {"background": 0, "organ": 1})
    for i in range(n):
        img = rng.normal(300, 50, (8, 8, 3)).astype(np.float32)
        lab = np.zeros((8, 8, 3), np.uint8)
        lab[2:5, 2:5, :] = 1
        if with_ignore:
            lab[6:, :, :] = 2
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(root / "labelsTr" / f"case_{i:03d}.nii.gz"))
    meta = {"channel_names": {"0": channel}, "labels": labels, "numTraining": n, "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _labels_of(out: Path) -> np.ndarray:
    vals = set()
    for p in (out / "test_vol_h5").glob("*.h5"):
        with h5py.File(p) as f:
            vals |= set(np.unique(f["label"][:]).tolist())
    for p in (out / "train_npz").glob("*.npz"):
        with np.load(p) as z:
            vals |= set(np.unique(z["label"]).tolist())
    return np.array(sorted(vals))


# ---------------------------------------------------------------- 1. ignore label


def test_ignore_label_is_not_a_class(tmp_path):
    from transunet.data.datasets import IGNORE_LABEL, read_dataset_info
    from transunet.data.prepare import prepare

    raw = _nnunet_dataset(tmp_path / "Dataset501_Test", with_ignore=True)
    out = prepare("nnunet", raw, tmp_path / "out", val_cases=1)
    info = read_dataset_info(out)
    assert info["class_names"] == ["background", "organ"]
    assert info["ignore_label"] == IGNORE_LABEL
    assert _labels_of(out).tolist() == [0, 1, IGNORE_LABEL]


def test_ignore_label_excluded_from_loss():
    from transunet.losses import DiceCELoss

    torch.manual_seed(0)
    target = torch.randint(0, 2, (2, 6, 6))
    target[:, :2] = 255
    logits = torch.randn(2, 2, 6, 6)
    other = logits.clone()
    other[:, :, :2] = torch.randn(2, 2, 2, 6) * 10  # change only the ignored voxels
    loss = DiceCELoss(2, ignore_index=255)
    assert torch.isfinite(loss(logits, target))
    assert torch.allclose(loss(logits, target), loss(other, target))
    with pytest.raises((ValueError, IndexError)):  # without ignore_index, 255 is an invalid class
        DiceCELoss(2)(logits, target)


def test_ignore_label_excluded_from_metrics():
    from transunet.data.datasets import mask_ignored
    from transunet.train.validation import foreground_dice

    gt = np.zeros((2, 6, 6), np.uint8)
    gt[:, 1:3, 1:3] = 1
    gt[:, 4:, :] = 255
    pred = (gt == 1).astype(np.uint8)
    pred[:, 4:, :] = 1  # predictions inside the ignored region must not count as false positives
    p, g = mask_ignored(pred, gt, 255)
    assert foreground_dice(p, g, 2).tolist() == [1.0]


# ---------------------------------------------------------------- 2. .mha / .nrrd


def test_mha_dataset_refused_naming_the_format(tmp_path):
    from transunet.data.prepare import prepare

    raw = _nnunet_dataset(tmp_path / "Dataset502_Mha", ending=".mha", n=1)
    for p in (raw / "imagesTr").iterdir():
        p.rename(p.with_name(p.name.replace(".nii.gz", ".mha")))
    with pytest.raises(DataError, match=r"\.mha.*NIfTI.*SimpleITK"):
        prepare("nnunet", raw, tmp_path / "out")


def test_nrrd_folder_refused_naming_the_format(tmp_path):
    from transunet.data.prepare import prepare

    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "labels").mkdir()
    (raw / "images" / "a.nrrd").write_bytes(b"NRRD0004\n")
    with pytest.raises(DataError, match=r"\.nrrd.*NIfTI"):
        prepare("nifti", raw, tmp_path / "out")


# ---------------------------------------------------------------- 3. predict output names


def test_predict_output_names_drop_channel_suffix(tmp_path):
    from transunet.infer import plan_outputs

    raw = _nnunet_dataset(tmp_path / "Dataset503_Names", n=2)
    plan = plan_outputs(raw / "imagesTr", tmp_path / "pred")
    assert sorted(p[1].name for p in plan) == ["case_000.nii.gz", "case_001.nii.gz"]
    single = plan_outputs(raw / "imagesTr" / "case_000_0000.nii.gz", tmp_path / "pred2")
    assert single[0][1].name == "case_000.nii.gz"


def test_predict_refuses_second_channel(tmp_path):
    from transunet.infer import plan_outputs

    raw = _nnunet_dataset(tmp_path / "Dataset504_Two", n=1)
    src = raw / "imagesTr" / "case_000_0000.nii.gz"
    (raw / "imagesTr" / "case_000_0001.nii.gz").write_bytes(src.read_bytes())
    with pytest.raises(DataError, match="_0001"):
        plan_outputs(raw / "imagesTr", tmp_path / "pred")


# ---------------------------------------------------------------- 4. noNorm / rescale_to_0_1


@pytest.mark.parametrize("channel,kind", [("noNorm", "none"), ("rescale_to_0_1", "rescale_to_0_1"),
                                          ("T2", "zscore"), ("CT", "ct_window")])
def test_channel_name_normalization(tmp_path, channel, kind):
    from transunet.data.datasets import load_volume, read_dataset_info
    from transunet.data.prepare import prepare

    raw = _nnunet_dataset(tmp_path / "Dataset505_Norm", channel=channel)
    out = prepare("nnunet", raw, tmp_path / "out", val_cases=1)
    info = read_dataset_info(out)
    assert info["normalization"]["kind"] == kind
    case = info["splits"]["test"][0]
    vol = load_volume(out, "test", case)
    src = np.transpose(nib.load(str(raw / "imagesTr" / f"{case}_0000.nii.gz")).get_fdata(), (2, 1, 0))
    if kind == "none":
        np.testing.assert_allclose(vol.image, src, rtol=1e-6)
    elif kind == "rescale_to_0_1":
        assert vol.image.min() == 0.0 and vol.image.max() == pytest.approx(1.0)


# ---------------------------------------------------------------- 5. ids, $nnUNet_raw, hints, errors


@pytest.mark.parametrize("name", ["501", "Dataset501_Test", "Dataset501"])
def test_dataset_id_lookup_in_nnunet_raw(tmp_path, monkeypatch, name):
    from transunet.data.prepare import prepare

    _nnunet_dataset(tmp_path / "nnUNet_raw" / "Dataset501_Test")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "nnUNet_raw"))
    monkeypatch.chdir(tmp_path)
    out = prepare("nnunet", name, tmp_path / "out", val_cases=1)
    assert (out / "dataset.json").is_file()


def test_dataset_id_without_nnunet_raw(tmp_path, monkeypatch):
    from transunet.data.prepare import prepare

    monkeypatch.delenv("nnUNet_raw", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"nnUNet_raw"):
        prepare("nnunet", "501", tmp_path / "out")


def test_msd_folder_hint_names_msd(tmp_path):
    from transunet.data.prepare import prepare

    raw = tmp_path / "Task02_Heart"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), str(raw / "imagesTr" / "la_003.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.eye(4)), str(raw / "labelsTr" / "la_003.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "left atrium"}, "modality": {"0": "MRI"},
        "training": [{"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}]}))
    with pytest.raises(DataError, match="kind 'msd'"):
        prepare("nnunet", raw, tmp_path / "out")


def test_msd_multichannel_channel_count_checked(tmp_path):
    from transunet.data.prepare import prepare

    raw = tmp_path / "Task05_Prostate"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for i in (1, 2, 3):
        four_d = nib.Nifti1Image(np.zeros((4, 4, 2, 2), np.float32), np.eye(4))
        nib.save(four_d, str(raw / "imagesTr" / f"p_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.eye(4)), str(raw / "labelsTr" / f"p_{i}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "PZ"}, "modality": {"0": "T2", "1": "ADC", "2": "DWI"},
        "training": [{"image": f"./imagesTr/p_{i}.nii.gz", "label": f"./labelsTr/p_{i}.nii.gz"} for i in (1, 2, 3)]}))
    # multi-channel MSD data is supported (tests/test_multichannel.py); the 4D image must hold every channel
    with pytest.raises(DataError, match=r"p_1\.nii\.gz: 2 volumes on its last axis.*3 channels \(T2, ADC, DWI\)"):
        prepare("msd", raw, tmp_path / "out")


def test_label_without_image_reported(tmp_path):
    from transunet.data.prepare import prepare

    raw = _nnunet_dataset(tmp_path / "Dataset506_Orphan", n=3)
    lab = raw / "labelsTr" / "case_000.nii.gz"
    (raw / "labelsTr" / "case_999.nii.gz").write_bytes(lab.read_bytes())
    with pytest.raises(DataError, match=r"case_999\.nii\.gz: label without image"):
        prepare("nnunet", raw, tmp_path / "out")


def test_label_without_image_reported_plain_folders(tmp_path):
    from transunet.data.prepare import prepare

    raw = _nnunet_dataset(tmp_path / "Dataset508_Plain", n=3)
    lab = raw / "labelsTr" / "case_000.nii.gz"
    (raw / "labelsTr" / "extra.nii.gz").write_bytes(lab.read_bytes())
    with pytest.raises(DataError, match=r"extra\.nii\.gz: label without image"):
        prepare("nifti", raw, tmp_path / "out")


# ---------------------------------------------------------------- 6. multi-channel (supported, checked)


def test_nnunet_multichannel_missing_channel_named(tmp_path):
    from transunet.data.prepare import prepare

    raw = _nnunet_dataset(tmp_path / "Dataset507_Multi", n=3)
    meta = json.loads((raw / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T2", "1": "ADC"}
    (raw / "dataset.json").write_text(json.dumps(meta))
    # two channels declared, only the _0000 files present: the first missing file is named
    with pytest.raises(DataError, match=r"case_000_0001\.nii\.gz: channel 1 \(ADC\) of case case_000 is missing"):
        prepare("nnunet", raw, tmp_path / "out")
