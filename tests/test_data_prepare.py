"""phantom -> prepare end to end (BTCV and ACDC layouts), own-data kinds, the official layout, bad input."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from transunet.cli import main
from transunet.data.datasets import list_cases, load_volume, read_dataset_info
from transunet.data.phantom import generate_phantom, phantom_case_ids
from transunet.data.prepare import prepare
from transunet.data.synapse import SYNAPSE_CLASS_NAMES, SYNAPSE_TEST_IDS, SYNAPSE_TRAIN_IDS
from transunet.errors import DataError


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def btcv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("btcv")
    raw = generate_phantom(tmp / "raw", layout="btcv", cases=5, seed=3)
    before = _tree(raw)
    assert main(["prepare", "synapse", str(raw), str(tmp / "prep")]) == 0
    assert _tree(raw) == before, "prepare modified its input"
    return raw, tmp / "prep"


@pytest.fixture(scope="module")
def acdc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("acdc")
    raw = generate_phantom(tmp / "raw", layout="acdc", cases=4, seed=1)
    assert main(["prepare", "acdc", str(raw), str(tmp / "prep")]) == 0
    return raw, tmp / "prep"


# --------------------------------------------------------------------------- phantom


def test_phantom_ids_follow_the_official_split() -> None:
    ids = phantom_case_ids(30)
    assert sorted(ids) == sorted(SYNAPSE_TRAIN_IDS + SYNAPSE_TEST_IDS)
    small = phantom_case_ids(5)
    assert len(small) == 5
    assert sum(i in SYNAPSE_TEST_IDS for i in small) == 2  # round(5 * 12 / 30)
    with pytest.raises(DataError, match="3 to 30"):
        phantom_case_ids(2)


def test_btcv_phantom_raw_layout(btcv: tuple[Path, Path]) -> None:
    raw, _ = btcv
    base = raw / "RawData" / "Training"
    ids = phantom_case_ids(5)
    assert sorted(p.name for p in (base / "img").iterdir()) == [f"img{i}.nii.gz" for i in ids]
    assert sorted(p.name for p in (base / "label").iterdir()) == [f"label{i}.nii.gz" for i in ids]
    img = nib.load(base / "img" / f"img{ids[0]}.nii.gz")
    lab = nib.load(base / "label" / f"label{ids[0]}.nii.gz")
    assert img.get_data_dtype() == np.int16
    assert img.shape[:2] == (128, 128) and 36 <= img.shape[2] <= 44
    zooms = img.header.get_zooms()
    assert zooms[0] == zooms[1] and zooms[2] > zooms[0]  # anisotropic, thick slices
    data = np.asarray(img.dataobj)
    assert data.min() >= -1024 and data.max() > 300  # HU: air, bone, contrast
    labels = np.unique(np.asarray(lab.dataobj))
    assert set(labels.tolist()) <= set(range(14)) and len(labels) >= 12
    assert np.allclose(img.affine, lab.affine)


def test_phantom_is_deterministic(tmp_path: Path) -> None:
    a = generate_phantom(tmp_path / "a", layout="btcv", cases=3, seed=7)
    b = generate_phantom(tmp_path / "b", layout="btcv", cases=3, seed=7)
    ta, tb = _tree(a), _tree(b)
    def arr(root, name):
        return np.asarray(nib.load(root / "RawData/Training/img" / name).dataobj)
    assert list(ta) == list(tb)
    name = f"img{phantom_case_ids(3)[0]}.nii.gz"
    assert np.array_equal(arr(a, name), arr(b, name))
    with pytest.raises(DataError, match="not empty"):
        generate_phantom(tmp_path / "a", layout="btcv", cases=3, seed=7)


def test_acdc_phantom_raw_layout(acdc: tuple[Path, Path]) -> None:
    raw, _ = acdc
    pdir = raw / "training" / "patient001"
    info = dict(line.split(": ") for line in (pdir / "Info.cfg").read_text().splitlines())
    assert set(info) == {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}
    for fr in (info["ED"], info["ES"]):
        gt = np.asarray(nib.load(pdir / f"patient001_frame{int(fr):02d}_gt.nii.gz").dataobj)
        assert set(np.unique(gt).tolist()) == {0, 1, 2, 3}
    ed = np.asarray(nib.load(pdir / f"patient001_frame{int(info['ED']):02d}_gt.nii.gz").dataobj)
    es = np.asarray(nib.load(pdir / f"patient001_frame{int(info['ES']):02d}_gt.nii.gz").dataobj)
    assert (es == 3).sum() < (ed == 3).sum()  # the LV cavity contracts at end-systole


# --------------------------------------------------------------------------- prepared synapse


def test_synapse_prepared_as_the_official_loader_expects(btcv: tuple[Path, Path]) -> None:
    _, prep = btcv
    info = json.loads((prep / "dataset.json").read_text())
    assert info["format"] == "transunet-prepared" and info["class_names"] == list(SYNAPSE_CLASS_NAMES)
    assert info["normalization"] == {"kind": "ct_window", "low": -125.0, "high": 275.0}
    ids = phantom_case_ids(5)
    test = [f"case{i}" for i in ids if i in SYNAPSE_TEST_IDS]
    assert info["splits"]["test"] == test
    assert len(info["splits"]["val"]) == 1 and not set(info["splits"]["val"]) & set(test)
    assert sorted(info["splits"]["train"] + info["splits"]["val"] + test) == sorted(f"case{i}" for i in ids)
    train_list = (prep / "lists" / "train.txt").read_text().split()
    assert (prep / "lists" / "test_vol.txt").read_text().split() == test
    assert (prep / "lists" / "val.txt").read_text().split() == info["splits"]["val"]
    # Every listed slice exists and is read the way the official Synapse_dataset reads it.
    assert sorted(p.stem for p in (prep / "train_npz").glob("*.npz")) == sorted(train_list)
    assert {n.rsplit("_slice", 1)[0] for n in train_list} == set(info["splits"]["train"])
    labels_seen: set[int] = set()
    for name in train_list[::7]:
        data = np.load(prep / "train_npz" / f"{name}.npz")
        image, label = data["image"], data["label"]
        assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape == (128, 128)
        assert 0.0 <= image.min() and image.max() <= 1.0
        labels_seen |= set(np.unique(label).tolist())
    assert labels_seen <= set(range(9)) and len(labels_seen) >= 6
    for case in test + info["splits"]["val"]:
        with h5py.File(prep / "test_vol_h5" / f"{case}.npy.h5") as f:
            image, label = f["image"][:], f["label"][:]
        assert image.dtype == np.float32 and label.dtype == np.uint8 and image.ndim == 3
        assert image.shape == label.shape and image.shape[1:] == (128, 128)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert set(np.unique(label).tolist()) == set(range(9))  # all 8 organs present
        assert len(info["spacing"][case]) == 3 and info["spacing"][case][0] > info["spacing"][case][1]


def test_synapse_label_map_and_window(btcv: tuple[Path, Path]) -> None:
    raw, prep = btcv
    case = read_dataset_info(prep)["splits"]["test"][0]
    cid = case[len("case"):]
    hu = np.asarray(nib.load(raw / f"RawData/Training/img/img{cid}.nii.gz").dataobj).transpose(2, 1, 0)
    lab = np.asarray(nib.load(raw / f"RawData/Training/label/label{cid}.nii.gz").dataobj).transpose(2, 1, 0)
    vol = load_volume(prep, "test", case)
    np.testing.assert_allclose(vol.image, (np.clip(hu, -125, 275) + 125) / 400, atol=1e-6)
    for raw_v, syn in {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8, 5: 0, 9: 0, 10: 0, 12: 0, 13: 0}.items():
        assert np.all(vol.label[lab == raw_v] == syn)
    assert vol.spacing is not None and vol.class_names == list(SYNAPSE_CLASS_NAMES)


def test_train_volume_assembled_from_slices(btcv: tuple[Path, Path]) -> None:
    _, prep = btcv
    case = list_cases(prep, "train")[0]
    vol = load_volume(prep, "train", case)
    n = sum(1 for name in (prep / "lists/train.txt").read_text().split() if name.startswith(case + "_slice"))
    assert vol.image.shape == (n, 128, 128) and vol.label.dtype == np.uint8
    with pytest.raises(DataError, match="not in split"):
        load_volume(prep, "test", case)


def test_prepare_is_idempotent(btcv: tuple[Path, Path], tmp_path: Path) -> None:
    raw, prep = btcv
    out = tmp_path / "copy"
    shutil.copytree(prep, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    prepare("synapse", raw, out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == before
    # A different validation split moves a case between train_npz and test_vol_h5, leaving no stale files.
    prepare("synapse", raw, out, val_cases=0)
    info = read_dataset_info(out)
    assert info["splits"]["val"] == [] and not (out / "lists/val.txt").exists()
    assert not list((out / "test_vol_h5").glob(f"{read_dataset_info(prep)['splits']['val'][0]}*"))
    with pytest.raises(DataError, match="create a validation split"):
        list_cases(out, "val")


# --------------------------------------------------------------------------- prepared ACDC


def test_acdc_prepared(acdc: tuple[Path, Path]) -> None:
    _, prep = acdc
    info = read_dataset_info(prep)
    assert info["modality"] == "MRI" and info["normalization"] == {"kind": "zscore"}
    assert info["class_names"] == ["background", "right ventricle", "myocardium", "left ventricle"]
    pats = {sp: {c.split("_frame")[0] for c in info["splits"][sp]} for sp in ("train", "val", "test")}
    assert all(pats.values()) and not (pats["train"] & pats["val"] or pats["train"] & pats["test"])
    assert all(len(info["splits"][sp]) == 2 * len(pats[sp]) for sp in pats)  # ED + ES per patient
    vol = load_volume(prep, "test", info["splits"]["test"][0])
    assert abs(float(vol.image.mean())) < 1e-3 and abs(float(vol.image.std()) - 1) < 1e-3
    assert set(np.unique(vol.label).tolist()) == {0, 1, 2, 3}


# --------------------------------------------------------------------------- own data


def _write(path: Path, arr: np.ndarray, zooms: tuple[float, float, float] = (0.8, 0.8, 3.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*zooms, 1.0])), str(path))


def _own_case(rng: np.random.Generator, ct: bool = True) -> tuple[np.ndarray, np.ndarray]:
    lab = np.zeros((20, 18, 6), np.uint8)
    lab[4:12, 5:10, 1:5] = 1
    lab[13:17, 3:8, 2:4] = 2
    img = (rng.normal(0, 20, lab.shape) + np.where(lab > 0, 60, -100 if ct else 300)).astype(np.int16)
    if ct:
        img[:2] = -1000  # air around the body
    return img, lab


@pytest.mark.parametrize("kind", ["nifti", "nnunet", "msd"])
def test_own_data_kinds(kind: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    training = []
    for i in range(5):
        img, lab = _own_case(rng)
        if kind == "nifti":
            _write(raw / "images" / f"scan{i}.nii.gz", img)
            _write(raw / "labels" / f"scan{i}.nii.gz", lab)
        else:
            _write(raw / "imagesTr" / f"scan_{i:03d}{'_0000' if kind == 'nnunet' else ''}.nii.gz", img)
            _write(raw / "labelsTr" / f"scan_{i:03d}.nii.gz", lab)
            training.append({"image": f"./imagesTr/scan_{i:03d}.nii.gz", "label": f"./labelsTr/scan_{i:03d}.nii.gz"})
    if kind == "nnunet":
        meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
                "numTraining": 5, "file_ending": ".nii.gz"}
        (raw / "dataset.json").write_text(json.dumps(meta))
    elif kind == "msd":
        meta = {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "tumour"},
                "training": training}
        (raw / "dataset.json").write_text(json.dumps(meta))
    assert main(["prepare", kind, str(raw), str(tmp_path / "out")]) == 0
    info = read_dataset_info(tmp_path / "out")
    expected = ["background", "class_1", "class_2"] if kind == "nifti" else ["background", "liver", "tumour"]
    assert info["class_names"] == expected
    assert info["normalization"]["kind"] == "ct_window"  # CT modality / HU range detected
    assert [len(info["splits"][s]) for s in ("train", "val", "test")] == [3, 1, 1]
    case = info["splits"]["test"][0]
    vol = load_volume(tmp_path / "out", "test", case)
    assert vol.image.shape == (6, 18, 20)  # (S, H, W) from NIfTI (W, H, S)
    assert vol.spacing == pytest.approx((3.0, 0.8, 0.8))
    assert set(np.unique(vol.label).tolist()) == {0, 1, 2}


def test_zscore_option(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(3):
        img, lab = _own_case(rng, ct=False)
        _write(tmp_path / "raw/images" / f"mr{i}.nii.gz", img)
        _write(tmp_path / "raw/labels" / f"mr{i}.nii.gz", lab)
    prepare("nifti", tmp_path / "raw", tmp_path / "out")
    assert read_dataset_info(tmp_path / "out")["normalization"] == {"kind": "zscore"}


# --------------------------------------------------------------------------- official layout


def test_official_layout_is_read_as_is(btcv: tuple[Path, Path], tmp_path: Path) -> None:
    _, prep = btcv
    off = tmp_path / "Synapse"
    shutil.copytree(prep / "train_npz", off / "train_npz")
    shutil.copytree(prep / "test_vol_h5", off / "test_vol_h5")
    lists = off / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    shutil.copy(prep / "lists/train.txt", lists / "train.txt")
    shutil.copy(prep / "lists/test_vol.txt", lists / "test_vol.txt")
    info = read_dataset_info(off)
    assert info["class_names"] == list(SYNAPSE_CLASS_NAMES) and info["spacing"] == {}
    assert info["normalization"]["kind"] == "ct_window"
    assert list_cases(off, "test") == read_dataset_info(prep)["splits"]["test"]
    vol = load_volume(off, "test", list_cases(off, "test")[0])
    assert vol.spacing is None
    with pytest.raises(DataError, match="--val-cases"):
        list_cases(off, "val")
    # list files given explicitly, data folder without lists
    shutil.move(str(lists), str(tmp_path / "my_lists"))
    assert list_cases(off, "train", list_dir=tmp_path / "my_lists") == read_dataset_info(prep)["splits"]["train"]


# --------------------------------------------------------------------------- bad input


def _good_btcv(tmp: Path) -> Path:
    raw = tmp / "raw"
    base = raw / "img"
    rng = np.random.default_rng(0)
    ids = ["0001", "0005", "0006"]
    for cid in ids:
        img = rng.normal(0, 50, (16, 16, 5)).astype(np.int16)
        lab = np.zeros((16, 16, 5), np.uint8)
        lab[4:10, 4:10, 1:4] = 6
        _write(base / f"img{cid}.nii.gz", img)
        _write(raw / "label" / f"label{cid}.nii.gz", lab)
    return raw


def _corrupt(raw: Path, problem: str) -> None:
    img, lab = raw / "img/img0005.nii.gz", raw / "label/label0005.nii.gz"
    shape = (16, 16, 5)
    if problem == "missing label":
        lab.unlink()
    elif problem == "shape mismatch":
        _write(lab, np.zeros((16, 16, 4), np.uint8))
    elif problem == "affine mismatch":
        _write(lab, np.zeros(shape, np.uint8), zooms=(0.8, 0.8, 2.0))
    elif problem == "non-integer labels":
        _write(lab, np.full(shape, 0.5, np.float32))
    elif problem == "unknown labels":
        _write(lab, np.full(shape, 17, np.uint8))
    elif problem == "nan voxels":
        a = np.zeros(shape, np.float32)
        a[3, 3, 3] = np.nan
        _write(img, a)
    elif problem == "truncated nii.gz":
        data = img.read_bytes()
        img.write_bytes(data[: len(data) // 2])
    elif problem == "corrupt nii.gz":
        img.write_bytes(b"this is not a nifti file at all" * 20)
    elif problem == "2d image":
        nib.save(nib.Nifti1Image(np.zeros((16, 16), np.int16), np.eye(4)), str(img))
    elif problem == "4d image":
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 5, 2), np.int16), np.diag([0.8, 0.8, 3.0, 1.0])), str(img))
    elif problem == "empty folder":
        shutil.rmtree(raw)
        raw.mkdir()
    elif problem == "missing folder":
        shutil.rmtree(raw)
    elif problem == "empty img folder":
        for p in (raw / "img").iterdir():
            p.unlink()


BAD = ["missing label", "shape mismatch", "affine mismatch", "non-integer labels", "unknown labels", "nan voxels",
       "truncated nii.gz", "corrupt nii.gz", "2d image", "4d image", "empty folder", "missing folder",
       "empty img folder"]


@pytest.mark.parametrize("problem", BAD)
def test_bad_input_gives_one_line_error_and_no_output(problem: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    raw = _good_btcv(tmp_path)
    _corrupt(raw, problem)
    out = tmp_path / "out"
    assert main(["prepare", "synapse", str(raw), str(out)]) == 2
    chunks = [c for c in re.split(r"[\r\n]", capsys.readouterr().err) if c.strip()]
    err = [c for c in chunks if "error:" in c]  # progress-bar redraws aside, one error line
    assert len(err) == 1 and err[0].startswith("error: ") and chunks[-1] == err[0]
    if problem not in ("missing folder", "empty folder"):
        assert str(raw) in err[0]  # names the file or folder
    assert not out.exists(), f"partial output left for {problem!r}"


def test_output_inside_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = _good_btcv(tmp_path)
    before = _tree(raw)
    assert main(["prepare", "synapse", str(raw), str(raw / "prepared")]) == 2
    assert "inside the input" in capsys.readouterr().err
    assert _tree(raw) == before


def test_bad_npz_and_h5_are_reported(btcv: tuple[Path, Path], tmp_path: Path) -> None:
    from transunet.data.datasets import read_h5_volume, read_npz_slice

    bad = tmp_path / "x.npz"
    good = next((btcv[1] / "train_npz").glob("*.npz"))
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_npz_slice(bad)
    h5 = tmp_path / "x.npy.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_h5_volume(h5)
    with pytest.raises(DataError, match="not a dataset"):
        read_dataset_info(tmp_path)


def test_failed_overwrite_keeps_earlier_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--overwrite that fails on a bad case never deletes the dataset it was replacing."""
    raw = _good_btcv(tmp_path)
    out = tmp_path / "out"
    assert main(["prepare", "synapse", str(raw), str(out)]) == 0
    before = _tree(out)
    _corrupt(raw, "nan voxels")  # case 0005 now fails while it is loaded, after the header checks
    assert main(["prepare", "synapse", str(raw), str(out), "--overwrite"]) == 2
    assert "error: " in capsys.readouterr().err
    after = _tree(out)
    assert set(after) == set(before)  # nothing deleted, nothing half-written left behind
    info = read_dataset_info(out)
    for split in ("train", "val", "test"):
        for case in info["splits"][split]:
            if split != "train":
                assert load_volume(out, split, case).image.shape[0] > 0
