"""``transunet prepare``: raw scans -> the (official-compatible) prepared dataset format.

Kinds:

* ``synapse``: raw BTCV (``img/img0001.nii.gz``, ``label/label0001.nii.gz``; the folder may be
  the one holding ``RawData/Training``, ``Training`` or ``img``/``label`` directly). HU clipped to
  [-125, 275] and scaled to [0, 1]; the 13 raw labels mapped to the 8 Synapse organs; the
  official 18/12 split (cases not in the official lists join the training pool, with a warning);
  validation cases carved from the training cases only: ``--val-cases`` (default 4 of the 18,
  i.e. ``max(1, round(4/18 * n_train))``), drawn with ``--seed``.
* ``acdc``: the ACDC training layout (``patientXXX/patientXXX_frameYY.nii.gz`` + ``_gt``; ED and ES
  frames from ``Info.cfg``). Patients are split 70/10/20 (train/val/test), stratified by the
  ``Group`` of ``Info.cfg`` (a seeded permutation inside each group); both frames of a patient
  stay in the same split. MRI intensities are z-scored per volume.
* ``nifti``: ``images/`` and ``labels/`` folders with matching file names (``imagesTr``/``labelsTr``
  also accepted); ``nnunet``: nnU-Net raw (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``,
  ``dataset.json``); ``msd``: a Medical Segmentation Decathlon task (``dataset.json`` with a
  ``training`` list). Cases are split 70/10/20 by a seeded permutation. Normalisation: ``ct``
  (window, default [-125, 275]) or ``zscore``; by default the CT window when the modality is CT
  (or, without metadata, when the first image goes below -500) and z-score otherwise.
* Multi-channel ``nnunet`` / ``msd`` data (``channel_names`` / ``modality`` with several entries, e.g.
  prostate T2 + ADC): nnU-Net's ``CASE_0000``, ``CASE_0001``... files, or MSD's 4D images with the
  channels on the last axis. Every channel must exist and lie on channel 0's grid; each is normalised
  by the scheme of its own name (as above). Slices are stored ``(C, H, W)`` and volumes
  ``(S, C, H, W)``; ``dataset.json`` records ``channels``, ``channel_names`` and one normalisation per
  channel (format version 2). One-channel datasets keep the version-1 format unchanged.

Every case is checked before anything is written (missing label, shape or affine mismatch,
non-integer or unknown labels, NaN/Inf voxels, unreadable or non-3D files); a failure raises one
:class:`~transunet.errors.DataError` line and removes what this run wrote. Each file is written
atomically; a per-case record (``cases/<case>.json``) marks finished cases, so a rerun with the
same settings skips them (``--overwrite`` redoes all). The input is never modified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
from tqdm import tqdm

from transunet.data.datasets import (
    FORMAT,
    IGNORE_LABEL,
    LIST_FILES,
    VERSION,
    VERSION_MULTICHANNEL,
    _read_json,
    slice_name,
)
from transunet.data.nifti import (
    check_same_grid,
    geometry_of,
    is_nifti,
    load_nifti,
    load_nifti_channels,
    read_nifti_header,
    strip_nifti_suffix,
)
from transunet.data.normalize import normalize, normalize_channels
from transunet.data.safe_io import short_repr
from transunet.data.synapse import (
    ACDC_CLASS_NAMES,
    BTCV_RAW_NAMES,
    CT_WINDOW,
    SYNAPSE_CLASS_NAMES,
    SYNAPSE_TEST_IDS,
    SYNAPSE_TRAIN_IDS,
    btcv_lut,
    synapse_case_name,
)
from transunet.errors import DataError
from transunet.utils import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

KINDS = ("synapse", "acdc", "nifti", "nnunet", "msd")


@dataclass
class CaseSpec:
    """One raw case to prepare.

    Args:
        case_id: Output case id.
        image: Raw image path.
        label: Raw label path.
        group: Stratification group (ACDC pathology, patient id), or ``""``.
        patient: Unit of splitting (cases of one patient share a split).
        split: Assigned split.
        channels: nnU-Net multi-channel data: the file of every channel (``image`` is the first);
            empty otherwise (``image`` holds every channel: 3D for one, 4D channels-last for several).
    """

    case_id: str
    image: str
    label: str
    group: str = ""
    patient: str = ""
    split: str = ""
    channels: list[str] = field(default_factory=list)


@dataclass
class _Settings:
    kind: str
    normalization: dict[str, Any] | list[dict[str, Any]]  # a list (one per channel) for multi-channel data
    label_lut: list[int] | None
    allowed_labels: list[int] | None
    class_names: list[str] | None
    modality: str
    name: str
    extra: dict[str, Any] = field(default_factory=dict)
    channel_names: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return max(1, len(self.channel_names))

    def fingerprint(self) -> str:
        d: dict[str, Any] = {"kind": self.kind, "normalization": self.normalization, "lut": self.label_lut,
                             "format": VERSION}
        if self.channels > 1:
            d["channels"] = self.channel_names
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- discovery


def _niftis(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p.name) and not p.name.startswith("."))


def _require_dir(path: Path, what: str, fix: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found; {fix}.")
    return path


def _discover_synapse(raw: Path) -> list[CaseSpec]:
    base = None
    for cand in (raw, raw / "Training", raw / "RawData" / "Training", raw / "RawData"):
        if (cand / "img").is_dir():
            base = cand
            break
    if base is None:
        raise DataError(f"{raw}: no img/ folder found (looked in {raw}, Training/, RawData/Training/); "
                        "point to the BTCV folder holding img/ and label/.")
    _require_dir(base / "label", "label", "the raw BTCV layout needs label/labelNNNN.nii.gz beside img/")
    imgs = {}
    for p in _niftis(base / "img"):
        m = re.fullmatch(r"img(\d+)", strip_nifti_suffix(p.name))
        if m:
            imgs[m.group(1)] = p
    if not imgs:
        raise DataError(f"{base / 'img'}: no imgNNNN.nii.gz files; the folder is empty or not raw BTCV.")
    labels = {}
    for p in _niftis(base / "label"):
        m = re.fullmatch(r"label(\d+)", strip_nifti_suffix(p.name))
        if m:
            labels[m.group(1)] = p
    specs = []
    for cid, p in sorted(imgs.items()):
        if cid not in labels:
            raise DataError(f"{p}: no matching label {base / 'label' / f'label{cid}.nii.gz'}; add the label "
                            "file or move the unlabelled image out of img/.")
        specs.append(CaseSpec(synapse_case_name(cid), str(p), str(labels[cid]), patient=cid))
    for cid, p in labels.items():
        if cid not in imgs:
            raise DataError(f"{p}: label without image {base / 'img' / f'img{cid}.nii.gz'}; add the image "
                            "or remove the label.")
    return specs


def _read_info_cfg(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def _discover_acdc(raw: Path) -> list[CaseSpec]:
    base = None
    for cand in (raw, raw / "training", raw / "database" / "training"):
        if cand.is_dir() and any(p.is_dir() and p.name.startswith("patient") for p in cand.iterdir()):
            base = cand
            break
    if base is None:
        raise DataError(f"{raw}: no patientXXX folders found (looked in {raw}, training/, database/training/); "
                        "point to the ACDC training folder.")
    specs = []
    for pdir in sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("patient")):
        cfg = pdir / "Info.cfg"
        info = _read_info_cfg(cfg) if cfg.is_file() else {}
        group = info.get("Group", "")
        frames = []
        if "ED" in info and "ES" in info:
            try:
                frames = sorted({int(float(info["ED"])), int(float(info["ES"]))})
            except ValueError:
                raise DataError(f"{cfg}: ED/ES must be frame numbers, got {info['ED']!r}/{info['ES']!r}; "
                                "fix Info.cfg.") from None
        else:
            for p in _niftis(pdir):
                m = re.fullmatch(rf"{pdir.name}_frame(\d+)_gt", strip_nifti_suffix(p.name))
                if m:
                    frames.append(int(m.group(1)))
            frames = sorted(frames)
        if not frames:
            raise DataError(f"{pdir}: no Info.cfg ED/ES entries and no *_frameYY_gt.nii.gz labels; "
                            "add Info.cfg or the ground-truth files.")
        for fr in frames:
            stem = f"{pdir.name}_frame{fr:02d}"
            img = next((pdir / f"{stem}{s}" for s in (".nii.gz", ".nii") if (pdir / f"{stem}{s}").is_file()), None)
            gt = next((pdir / f"{stem}_gt{s}" for s in (".nii.gz", ".nii") if (pdir / f"{stem}_gt{s}").is_file()),
                      None)
            if img is None:
                raise DataError(f"{pdir / (stem + '.nii.gz')}: frame listed in Info.cfg is missing; "
                                "restore the file or fix Info.cfg.")
            if gt is None:
                raise DataError(f"{img}: no matching label {pdir / (stem + '_gt.nii.gz')}; add the ground truth.")
            specs.append(CaseSpec(stem, str(img), str(gt), group=group, patient=pdir.name))
    if not specs:
        raise DataError(f"{base}: no ACDC cases found; point to the ACDC training folder.")
    return specs


def _discover_nifti(raw: Path) -> list[CaseSpec]:
    pairs = [("images", "labels"), ("imagesTr", "labelsTr"), ("img", "label")]
    found = next(((raw / a, raw / b) for a, b in pairs if (raw / a).is_dir()), None)
    if found is None:
        raise DataError(f"{raw}: no images/ folder (or imagesTr/); put images in images/ and labels with the "
                        "same file names in labels/.")
    idir, ldir = found
    _require_dir(ldir, "labels", f"put the label maps in {ldir} with the same names as the images")
    imgs = _niftis(idir)
    if not imgs:
        suf = _foreign_files(idir)
        if suf:
            raise _refuse_format(idir, suf)
        raise DataError(f"{idir}: no .nii/.nii.gz files; the folder is empty.")
    specs = []
    for p in imgs:
        stem = strip_nifti_suffix(p.name)
        cands = [stem, re.sub(r"_0000$", "", stem)]
        lab = next((ldir / f"{c}{s}" for c in cands for s in (".nii.gz", ".nii") if (ldir / f"{c}{s}").is_file()),
                   None)
        if lab is None:
            raise DataError(f"{p}: no matching label in {ldir} (expected {cands[-1]}.nii.gz); add it or remove "
                            "the image.")
        cid = cands[-1]
        specs.append(CaseSpec(cid, str(p), str(lab), patient=cid))
    used = {Path(s.label).name for s in specs}
    for lab in _niftis(ldir):
        if lab.name not in used:
            raise DataError(f"{lab}: label without image (expected {idir / lab.name}); add the image or remove the "
                            "label.")
    return specs


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: dataset.json not found; nnU-Net and MSD folders need it "
                        "(use kind 'nifti' for plain images/ + labels/ folders).")
    data = _read_json(path, "fix the file")
    if not isinstance(data, dict):
        raise DataError(f"{path}: must contain a JSON object; fix the file.")
    return data


def _label_names(meta: dict[str, Any], path: Path) -> tuple[list[int], list[str], int | None]:
    """Label values, class names and nnU-Net's ``ignore`` label value (None without one)."""
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: missing 'labels' mapping; add e.g. {{\"0\": \"background\", \"1\": \"organ\"}}.")
    pairs = []
    ignore = None
    for k, v in labels.items():
        if k == "ignore" and isinstance(v, int) and not isinstance(v, bool):  # nnU-Net v2 ignore label
            ignore = int(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):  # nnU-Net v2: name -> value
            pairs.append((int(v), str(k)))
        elif isinstance(v, list):  # nnU-Net v2 region labels
            raise DataError(f"{path}: region-based label {k!r} is not supported; use plain integer labels.")
        else:  # MSD / nnU-Net v1: "value" -> name
            try:
                pairs.append((int(k), str(v)))
            except ValueError:
                raise DataError(f"{path}: label key {k!r} is not an integer; fix 'labels'.") from None
    pairs.sort()
    values = [v for v, _ in pairs]
    if values != list(range(len(values))):
        raise DataError(f"{path}: label values {short_repr(values)} must be 0..N-1 without gaps; fix 'labels'.")
    if ignore is not None and ignore != len(values):
        raise DataError(f"{path}: the 'ignore' label must be the highest label ({len(values)}), as nnU-Net "
                        f"requires, got {ignore}; fix 'labels'.")
    return values, [n for _, n in pairs], ignore


def _channel_names(meta: dict[str, Any], path: Path) -> list[str]:
    """The input channels of dataset.json (nnU-Net ``channel_names`` / MSD ``modality``), in order."""
    key = "channel_names" if meta.get("channel_names") else "modality"
    mod = meta.get(key) or {}
    if not isinstance(mod, dict):
        return [str(mod)] if mod else []
    try:
        idx = sorted((int(k), str(v)) for k, v in mod.items())
    except (TypeError, ValueError):
        raise DataError(f"{path}: '{key}' keys must be channel indices \"0\", \"1\", ..., got "
                        f"{short_repr(list(mod))}; fix dataset.json.") from None
    if [i for i, _ in idx] != list(range(len(idx))):
        raise DataError(f"{path}: '{key}' keys must be the channel indices 0..{len(idx) - 1} without gaps, got "
                        f"{short_repr(list(mod))}; fix dataset.json.")
    return [n for _, n in idx]


#: nnU-Net v2's normalisation schemes by channel name (case-insensitive); other names: z-score.
NNUNET_NORMALIZATION = {"nonorm": "none", "rescale_to_0_1": "rescale_to_0_1", "rgb_to_0_1": "rgb_to_0_1",
                        "zscore": "zscore", "ct": "ct"}
#: Image formats nnU-Net reads that transunet does not (only NIfTI).
FOREIGN_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr", ".tif", ".tiff", ".png", ".bmp")


def _refuse_format(where: Path, ending: str) -> DataError:
    return DataError(f"{where}: images are {ending} files; transunet reads NIfTI (.nii/.nii.gz) only. Convert the "
                     "images and labels first, e.g. with SimpleITK: sitk.WriteImage(sitk.ReadImage('x"
                     f"{ending}'), 'x.nii.gz'), and set \"file_ending\": \".nii.gz\" in dataset.json.")


def _foreign_files(folder: Path) -> str | None:
    """The non-NIfTI image suffix of a folder without NIfTI files (``.mha``...), else None."""
    if not folder.is_dir():
        return None
    for p in sorted(folder.iterdir()):
        name = p.name.lower()
        for suf in FOREIGN_SUFFIXES:
            if name.endswith(suf):
                return suf
    return None


def resolve_nnunet_dataset(name: str) -> Path:
    """The raw folder of an nnU-Net dataset id (``501``, ``Dataset501_Name``) in ``$nnUNet_raw``.

    Args:
        name: A dataset id, a ``DatasetXXX_Name`` folder name, or a path (returned unchanged).
    """
    m = re.fullmatch(r"(?:Dataset)?(\d{1,3})(?:_.*)?", name)
    if m is None:
        return Path(name)
    env = os.environ.get("nnUNet_raw")
    if not env:
        raise DataError(f"{name}: an nnU-Net dataset id needs $nnUNet_raw (the folder holding DatasetXXX_Name "
                        "folders); set it, or pass the dataset folder itself.")
    base = Path(env)
    if not base.is_dir():
        raise DataError(f"$nnUNet_raw={env} is not a folder; set it to nnU-Net's raw data folder.")
    if not name.isdigit() and (base / name).is_dir():
        return base / name
    hits = sorted(base.glob(f"Dataset{int(m.group(1)):03d}_*"))
    if len(hits) != 1:
        found = sorted(p.name for p in base.glob("Dataset*_*"))[:8]
        raise DataError(f"{name}: {'no' if not hits else 'several'} dataset folder(s) Dataset{int(m.group(1)):03d}_* "
                        f"in $nnUNet_raw={env} (found {found}); pass the folder itself.")
    return hits[0]


def _discover_nnunet(raw: Path) -> tuple[list[CaseSpec], dict[str, Any]]:
    meta = _load_json(raw / "dataset.json")
    idir = _require_dir(raw / "imagesTr", "imagesTr", "nnU-Net raw data needs imagesTr/ and labelsTr/")
    ldir = _require_dir(raw / "labelsTr", "labelsTr", "nnU-Net raw data needs imagesTr/ and labelsTr/")
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not is_nifti("x" + ending):
        raise _refuse_format(raw / "dataset.json", short_repr(ending).strip("'"))
    specs = []
    images = _niftis(idir)
    msd = isinstance(meta.get("training"), list)
    names = _channel_names(meta, raw / "dataset.json")
    n = max(1, len(names))
    cases: dict[str, dict[int, Path]] = {}
    for p in images:
        stem = strip_nifti_suffix(p.name)
        m = re.fullmatch(r"(.+)_(\d{4})", stem)
        if not m:
            hint = "this is a Medical Segmentation Decathlon folder (dataset.json has 'training'): use kind 'msd'" \
                if msd else "rename it or use kind 'nifti'"
            raise DataError(f"{p}: nnU-Net image names end with _0000; {hint}.")
        k = int(m.group(2))
        if k >= n:
            raise DataError(f"{p}: channel _{k:04d}, but {raw / 'dataset.json'} declares {n} input channel(s) "
                            f"({', '.join(names) or 'no channel_names'}) in 'channel_names'; declare the channel there "
                            "or remove the file.")
        cases.setdefault(m.group(1), {})[k] = p
    for case, chans in sorted(cases.items()):
        for k in range(n):
            if k not in chans:
                raise DataError(f"{idir / f'{case}_{k:04d}{ending}'}: channel {k} ({names[k]}) of case {case} is "
                                f"missing; dataset.json declares {n} channels ({', '.join(names)}), one file each. "
                                "Add the file or remove the case.")
        p = chans[0]
        lab = ldir / f"{case}{ending}"
        if not lab.is_file():
            raise DataError(f"{p}: no matching label {lab}; add it or remove the image.")
        specs.append(CaseSpec(case, str(p), str(lab), patient=case,
                              channels=[str(chans[k]) for k in range(n)] if n > 1 else []))
    if not specs:
        suf = _foreign_files(idir)
        if suf:
            raise _refuse_format(idir, suf)
        raise DataError(f"{idir}: no images; the folder is empty.")
    cases = {s.case_id for s in specs}
    for lab in _niftis(ldir):
        if strip_nifti_suffix(lab.name) not in cases:
            raise DataError(f"{lab}: label without image (expected {idir / (strip_nifti_suffix(lab.name) + '_0000')}"
                            f"{ending}); add the image or remove the label.")
    return specs, meta


def _discover_msd(raw: Path) -> tuple[list[CaseSpec], dict[str, Any]]:
    meta = _load_json(raw / "dataset.json")
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        raise DataError(f"{raw / 'dataset.json'}: no 'training' list of {{image, label}} pairs; "
                        "this is not an MSD dataset.json.")
    specs = []
    for item in training:
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise DataError(f"{raw / 'dataset.json'}: training entry {short_repr(item)} needs 'image' and 'label'.")
        if not isinstance(item["image"], str) or not isinstance(item["label"], str):
            raise DataError(f"{raw / 'dataset.json'}: training entry {short_repr(item)}: 'image' and 'label' must be "
                            "paths (strings).")
        img, lab = raw / item["image"], raw / item["label"]
        if not is_nifti(img.name):
            raise _refuse_format(raw / "dataset.json", Path(img.name).suffix or img.name)
        if not img.is_file():
            raise DataError(f"{img}: image listed in dataset.json not found; restore it or fix dataset.json.")
        if not lab.is_file():
            raise DataError(f"{lab}: label of {img.name} listed in dataset.json not found; restore it.")
        cid = strip_nifti_suffix(img.name)
        specs.append(CaseSpec(cid, str(img), str(lab), patient=cid))
    return specs, meta


# --------------------------------------------------------------------------- splits


def _n_val_default(n_train: int, per_18: float = 4.0) -> int:
    return max(1, round(per_18 / 18.0 * n_train))


def _carve_val(train: list[str], val_cases: int | None, seed: int, default: int,
               what: str) -> tuple[list[str], list[str]]:
    n = default if val_cases is None else int(val_cases)
    if n < 0 or n >= len(train):
        raise DataError(f"--val-cases {n}: must be between 0 and {len(train) - 1} (the training pool has "
                        f"{len(train)} {what}); choose a smaller number.")
    order = np.random.default_rng(seed).permutation(len(train))
    val = sorted(train[i] for i in order[:n])
    return [t for t in train if t not in val], val


def _split_synapse(specs: list[CaseSpec], val_cases: int | None, seed: int) -> None:
    ids = [s.patient for s in specs]
    unknown = [i for i in ids if i not in SYNAPSE_TRAIN_IDS and i not in SYNAPSE_TEST_IDS]
    if unknown:
        log.warning("cases %s are not in the official Synapse split; they join the training pool", unknown)
    train = [i for i in ids if i not in SYNAPSE_TEST_IDS]
    test = [i for i in ids if i in SYNAPSE_TEST_IDS]
    if not test:
        raise DataError("none of the official Synapse test cases (0001-0004, 0008, 0022, 0025, 0029, 0032, "
                        "0035, 0036, 0038) is present; the official split needs them, or use kind 'nifti'.")
    if len(train) < 2:
        raise DataError(f"only {len(train)} official training case(s) present; at least 2 are needed "
                        "(training and validation).")
    train, val = _carve_val(train, val_cases, seed, _n_val_default(len(train)), "cases")
    for s in specs:
        s.split = "test" if s.patient in test else "val" if s.patient in val else "train"


def _split_patients(specs: list[CaseSpec], val_cases: int | None, seed: int) -> None:
    """70/10/20 split of patients (stratified by group), seeded."""
    patients: dict[str, str] = {}
    for s in specs:
        patients.setdefault(s.patient, s.group)
    pats = sorted(patients)
    n = len(pats)
    if n < 3:
        raise DataError(f"only {n} case(s)/patient(s); at least 3 are needed for train, validation and test.")
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[str]] = {}
    for p in pats:
        by_group.setdefault(patients[p], []).append(p)
    # Interleave the groups' permuted members (by relative rank inside the group), then take test,
    # validation and training patients as consecutive blocks, so every split gets its share of
    # every group (ACDC: 4 test, 2 validation and 14 training patients of each group of 20).
    rank: dict[str, tuple[float, int]] = {}
    for gi, (_g, members) in enumerate(sorted(by_group.items())):
        perm = rng.permutation(len(members))
        for r, i in enumerate(perm):
            rank[members[i]] = ((r + 0.5) / len(members), gi)
    order = sorted(pats, key=lambda p: rank[p])
    n_test = max(1, round(0.2 * n))
    n_val = max(1, round(0.1 * n)) if val_cases is None else int(val_cases)
    if n_val < 0 or n_test + n_val >= n:
        raise DataError(f"--val-cases {n_val}: with {n} patients and {n_test} test patients it must be between "
                        f"0 and {n - n_test - 1}; choose a smaller number.")
    test = set(order[:n_test])
    val = set(order[n_test:n_test + n_val])
    for s in specs:
        s.split = "test" if s.patient in test else "val" if s.patient in val else "train"


# --------------------------------------------------------------------------- checks


def _header(path: str, channels: int = 1, names: Sequence[str] = ()) -> tuple[tuple[int, ...], np.ndarray,
                                                                               nib.Nifti1Image]:
    """Checked header of a 3D volume, or (``channels > 1``) of a 4D volume with the channels last."""
    img = read_nifti_header(path)  # checked claims: datatype, dims, size against the file, pixdim
    shape = tuple(int(v) for v in img.shape)
    if channels > 1:
        if len(shape) != 4 or shape[3] != channels:
            got = f"{shape[3]} volumes on its last axis" if len(shape) == 4 else f"a {len(shape)}D volume"
            raise DataError(f"{path}: {got} (shape {shape}), but dataset.json declares {channels} channels "
                            f"({', '.join(names)}); MSD stores them as a 4D image (X, Y, Z, {channels}): fix the file "
                            "or the 'modality' list.")
        return shape[:3], np.asarray(img.affine, dtype=np.float64), img
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got {len(shape)}D with shape {shape}; "
                        "split 4D series into 3D files (one per frame) first.")
    return shape, np.asarray(img.affine, dtype=np.float64), img


def _check_pair(spec: CaseSpec, channel_names: Sequence[str] = ()) -> tuple[tuple[int, int, int], dict[str, Any]]:
    """Header checks of one case (every channel, the label); returns its slice-first shape and source geometry."""
    n = max(1, len(channel_names))
    ishape, iaff, iimg = _header(spec.image, 1 if spec.channels else n, channel_names)
    for k, path in enumerate(spec.channels[1:], 1):
        _header(path)
        check_same_grid(path, read_nifti_header(path), spec.image, iimg, f"channel {k} ({channel_names[k]})")
    lshape, laff, _ = _header(spec.label)
    if ishape != lshape:
        raise DataError(f"{spec.label}: label shape {lshape} differs from image shape {ishape} "
                        f"({spec.image}); resample the label onto the image grid.")
    if not np.allclose(iaff, laff, rtol=1e-4, atol=1e-3):
        raise DataError(f"{spec.label}: affine differs from the image's ({spec.image}); the label is not on "
                        "the image grid, resample it or copy the image header.")
    return (ishape[2], ishape[1], ishape[0]), geometry_of(iimg)  # slice-first (S, H, W)


def _load_case(spec: CaseSpec, settings: _Settings) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Normalised image ``(S, H, W)`` (one channel) or ``(S, C, H, W)``, labels ``(S, H, W)`` and spacing."""
    n = settings.channels
    if n == 1:
        image, spacing, _, _ = load_nifti(spec.image, dtype=np.float32)
        raws, files = [image], [spec.image]
    else:
        raws, spacing, _, _ = load_nifti_channels(spec.image, n, dtype=np.float32,
                                                  expected=f"{n} channels ({', '.join(settings.channel_names)})")
        files = spec.channels or [f"{spec.image} (channel {k})" for k in range(n)]
    raw_lab, _, _, _ = load_nifti(spec.label, dtype=np.float64)
    for raw, file in zip(raws, files):
        bad = ~np.isfinite(raw)
        if bad.any():
            raise DataError(f"{file}: {int(bad.sum())} NaN/Inf voxel(s); fix or re-export the image.")
    if not np.all(np.isfinite(raw_lab)) or np.any(raw_lab != np.rint(raw_lab)):
        raise DataError(f"{spec.label}: non-integer label values; labels must be integer class ids "
                        "(save the label map with an integer type, nearest-neighbour resampled).")
    vals = np.unique(raw_lab).astype(np.int64)
    allowed = settings.allowed_labels
    if allowed is not None:
        unknown = sorted(set(vals.tolist()) - set(allowed))
        if unknown:
            raise DataError(f"{spec.label}: unknown label value(s) {unknown[:10]}; {settings.kind} labels are "
                            f"{min(allowed)}..{max(allowed)}, fix the label map.")
    elif vals.min() < 0 or vals.max() > 255:
        raise DataError(f"{spec.label}: label values must be in 0..255, found {vals.min()}..{vals.max()}; "
                        "fix the label map.")
    lab = raw_lab.astype(np.int64)
    if settings.label_lut is not None:
        lab = np.asarray(settings.label_lut, dtype=np.int64)[lab]
    if n == 1:
        return normalize(raws[0], settings.normalization), lab.astype(np.uint8), spacing
    return normalize_channels(raws, settings.normalization), lab.astype(np.uint8), spacing  # (S, C, H, W)


# --------------------------------------------------------------------------- writing


def _save_npz(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    def w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, image=image.astype(np.float32), label=label.astype(np.uint8))

    atomic_write(path, w)


def _save_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    H, W = image.shape[-2:]

    def w(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:  # image (S, H, W), or (S, C, H, W) for multi-channel data
            f.create_dataset("image", data=image.astype(np.float32), chunks=(1, *image.shape[1:]))
            f.create_dataset("label", data=label.astype(np.uint8), chunks=(1, H, W))

    atomic_write(path, w)


def _outputs(out: Path, case_id: str, split: str, slices: int) -> list[Path]:
    if split == "train":
        return [out / "train_npz" / f"{slice_name(case_id, i)}.npz" for i in range(slices)]
    return [out / "test_vol_h5" / f"{case_id}.npy.h5"]


def _process(args: tuple[CaseSpec, _Settings, str, str]) -> dict[str, Any]:
    spec, settings, out_s, fp = args
    out = Path(out_s)
    image, label, spacing = _load_case(spec, settings)
    # A case being rewritten is unfinished until its new record lands: drop the old record first so
    # an interruption half-way never leaves old and new files passing as one finished case.
    (out / "cases" / f"{spec.case_id}.json").unlink(missing_ok=True)
    if spec.split == "train":
        for i in range(image.shape[0]):
            _save_npz(out / "train_npz" / f"{slice_name(spec.case_id, i)}.npz", image[i], label[i])
    else:
        _save_h5(out / "test_vol_h5" / f"{spec.case_id}.npy.h5", image, label)
    rec = {"case_id": spec.case_id, "split": spec.split, "slices": int(image.shape[0]),
           "shape": list(image.shape), "spacing": [float(s) for s in spacing],
           "labels": sorted(int(v) for v in np.unique(label)), "image": spec.image, "label": spec.label,
           "settings": fp, **({"channel_files": spec.channels} if spec.channels else {})}
    atomic_write_text(out / "cases" / f"{spec.case_id}.json", json.dumps(rec, indent=1))
    return rec


def _finished(out: Path, spec: CaseSpec, slices: int, fp: str) -> dict[str, Any] | None:
    rp = out / "cases" / f"{spec.case_id}.json"
    if not rp.is_file():
        return None
    try:
        rec = json.loads(rp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if rec.get("settings") != fp or rec.get("split") != spec.split or rec.get("slices") != slices:
        return None
    if not all(p.is_file() for p in _outputs(out, spec.case_id, spec.split, slices)):
        return None
    return rec


# --------------------------------------------------------------------------- entry point


def _inside(child: Path, parent: Path) -> bool:
    c, p = child.resolve(), parent.resolve()
    return c == p or p in c.parents


def prepare(kind: str, raw: str | Path, out: str | Path, *, val_cases: int | None = None, overwrite: bool = False,
            normalization: str | None = None, window: Sequence[float] | None = None, seed: int = 0,
            num_workers: int = 1) -> Path:
    """Convert raw scans into a prepared dataset folder (see the module docstring).

    Args:
        kind: ``synapse``, ``acdc``, ``nifti``, ``nnunet`` or ``msd``.
        raw: Raw data folder (never modified).
        out: Output folder; must not be inside ``raw``.
        val_cases: Validation cases (patients for ACDC) carved from the training pool.
        overwrite: Redo every case even when a finished one exists.
        normalization: ``ct`` or ``zscore`` (default depends on the kind and modality).
        window: CT window ``(low, high)`` in HU (default ``(-125, 275)``).
        seed: Seed of the validation (and own-data) split.
        num_workers: Processes converting cases in parallel.

    Returns:
        The output folder.
    """
    if kind not in KINDS:
        raise DataError(f"prepare kind {kind!r} is not valid; choose one of {', '.join(KINDS)}.")
    raw, out = Path(raw), Path(out)
    if kind == "nnunet" and not raw.is_dir():
        raw = resolve_nnunet_dataset(str(raw))
    if not raw.is_dir():
        raise DataError(f"{raw}: input folder not found; check the path.")
    if not any(raw.iterdir()):
        raise DataError(f"{raw}: input folder is empty; point to the raw data.")
    if _inside(out, raw):
        raise DataError(f"output {out} is inside the input {raw}; choose an output folder outside the input "
                        "(prepare never writes into its input).")
    if normalization not in (None, "ct", "zscore", "none", "rescale_to_0_1", "rgb_to_0_1"):
        raise DataError(f"--normalization {short_repr(normalization)} is not valid; choose 'ct', 'zscore', 'none', "
                        "'rescale_to_0_1' or 'rgb_to_0_1'.")
    if window is not None and not (len(window) == 2 and float(window[1]) > float(window[0])):
        raise DataError(f"--window {list(window)} is not valid; give LOW HIGH with HIGH > LOW, e.g. -125 275.")
    if num_workers < 1:
        raise DataError(f"--workers {num_workers}: must be at least 1.")

    meta: dict[str, Any] = {}
    lut: list[int] | None = None
    allowed: list[int] | None = None
    names: list[str] | None = None
    channel_names: list[str] = []  # input channels declared by dataset.json (nnunet, msd)
    modality = "CT"
    if kind == "synapse":
        specs = _discover_synapse(raw)
        _split_synapse(specs, val_cases, seed)
        lut, allowed, names = btcv_lut(), list(range(len(BTCV_RAW_NAMES))), list(SYNAPSE_CLASS_NAMES)
    elif kind == "acdc":
        specs = _discover_acdc(raw)
        _split_patients(specs, val_cases, seed)
        allowed, names, modality = list(range(len(ACDC_CLASS_NAMES))), list(ACDC_CLASS_NAMES), "MRI"
    else:
        modality = ""
        if kind == "nifti":
            specs = _discover_nifti(raw)
        elif kind == "nnunet":
            specs, meta = _discover_nnunet(raw)
        else:
            specs, meta = _discover_msd(raw)
        if meta:
            allowed, names, ignore = _label_names(meta, raw / "dataset.json")
            channel_names = _channel_names(meta, raw / "dataset.json")
            modality = channel_names[0] if len(channel_names) == 1 else ""
            if ignore is not None:  # nnU-Net's ignore label: stored as IGNORE_LABEL, excluded from loss and metrics
                allowed = [*allowed, ignore]
                lut = list(range(ignore)) + [IGNORE_LABEL]
        _split_patients(specs, val_cases, seed)
    ids = [s.case_id for s in specs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"{raw}: duplicate case ids {dup[:5]}; rename the files so every case id is unique.")

    # Normalisation (per channel for multi-channel data: each by the scheme of its own name).
    multi = len(channel_names) > 1
    if multi:
        norm_kind = ""
        modality = "+".join(channel_names)
    elif kind == "synapse":
        norm_kind = normalization or "ct"
    elif kind == "acdc":
        norm_kind = normalization or "zscore"
    elif normalization:
        norm_kind = normalization
    elif modality:  # nnU-Net's scheme of the channel name (CT, noNorm, rescale_to_0_1, ...); others z-score
        norm_kind = NNUNET_NORMALIZATION.get(modality.casefold(), "zscore")
    else:
        first = load_nifti(specs[0].image)[0]
        norm_kind = "ct" if float(first.min()) <= -500 else "zscore"
        log.info("no modality given: %s (minimum %.0f) looks like %s; using %s normalisation (override with "
                 "--normalization)", specs[0].image, float(first.min()), "CT" if norm_kind == "ct" else "MRI",
                 norm_kind)
    norm: dict[str, Any] | list[dict[str, Any]]
    if multi:
        norm = [_norm_spec(normalization or NNUNET_NORMALIZATION.get(c.casefold(), "zscore"), window)
                for c in channel_names]
        log.info("%d input channels: %s", len(channel_names),
                 ", ".join(f"{c} ({n['kind']})" for c, n in zip(channel_names, norm)))
    else:
        norm = _norm_spec(norm_kind, window)
        modality = modality or ("CT" if norm_kind == "ct" else "MRI")
    settings = _Settings(kind, norm, lut, allowed, names, modality, raw.name,
                         channel_names=list(channel_names) if multi else [])
    fp = settings.fingerprint()

    # Check every pair's headers before writing anything.
    slices: dict[str, int] = {}
    geometry: dict[str, dict[str, Any]] = {}
    with tqdm(specs, desc="checking", unit="case", leave=False) as bar:
        for s in bar:
            shape, geometry[s.case_id] = _check_pair(s, settings.channel_names)
            slices[s.case_id] = shape[0]

    # Output folder state.
    meta_path = out / "dataset.json"
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a folder; choose another output path.")
    if out.is_dir() and any(out.iterdir()) and not meta_path.is_file() and not (out / "cases").is_dir():
        raise DataError(f"output {out} is not empty and is not a prepared dataset; choose an empty or new folder.")
    if meta_path.is_file() and not overwrite:
        try:
            old = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if old.get("settings") not in (None, fp):
            raise DataError(f"{out} was prepared with different settings ({old.get('source', {}).get('kind')}, "
                            f"{old.get('normalization')}); pass --overwrite to redo it or choose another folder.")

    created_out = not out.exists()
    done: dict[str, dict[str, Any]] = {}
    if not overwrite:
        for s in specs:
            rec = _finished(out, s, slices[s.case_id], fp)
            if rec is not None:
                done[s.case_id] = rec
    todo = [s for s in specs if s.case_id not in done]
    if done:
        log.info("%d of %d case(s) already prepared; skipping them (use --overwrite to redo)", len(done), len(specs))
    # Cases with complete output from an earlier run: a failure of this run must not delete them.
    earlier = {s.case_id for s in todo if (out / "cases" / f"{s.case_id}.json").is_file()}
    try:
        tasks = [(s, settings, str(out), fp) for s in todo]
        bar = tqdm(total=len(specs), initial=len(done), desc=f"prepare {kind}", unit="case")
        with bar:
            if num_workers > 1 and len(tasks) > 1:
                with ProcessPoolExecutor(max_workers=num_workers) as ex:
                    for rec in ex.map(_process, tasks):
                        done[rec["case_id"]] = rec
                        bar.update(1)
            else:
                for t in tasks:
                    rec = _process(t)
                    done[rec["case_id"]] = rec
                    bar.update(1)
    except Exception:
        _rollback(out, [s for s in todo if s.case_id not in earlier], slices, created_out)
        raise

    _remove_stale(out, specs, slices)
    if kind not in ("synapse", "acdc") and names is None:
        top = max(max(r["labels"]) for r in done.values())
        names = ["background"] + [f"class_{i}" for i in range(1, top + 1)]
    splits = {sp: [s.case_id for s in specs if s.split == sp] for sp in ("train", "val", "test")}
    train_slices = [slice_name(s.case_id, i) for s in specs if s.split == "train" for i in range(slices[s.case_id])]
    atomic_write_text(out / "lists" / LIST_FILES["train"], "\n".join(train_slices) + "\n")
    for sp in ("val", "test"):
        path = out / "lists" / LIST_FILES[sp]
        if splits[sp]:
            atomic_write_text(path, "\n".join(splits[sp]) + "\n")
        else:
            path.unlink(missing_ok=True)
    info = {
        "format": FORMAT, "version": VERSION, "name": raw.resolve().name, "modality": modality,
        "class_names": names, "normalization": norm, "splits": splits,
        "spacing": {s.case_id: done[s.case_id]["spacing"] for s in specs},
        # Source geometry (affine + NIfTI header) per case: exported label maps overlay the scans.
        "geometry": {s.case_id: geometry[s.case_id] for s in specs},
        "source": {"kind": kind, "raw": str(raw.resolve()), "seed": seed,
                   **({"label_map": {BTCV_RAW_NAMES[k]: SYNAPSE_CLASS_NAMES[v] for k, v in
                                     enumerate(btcv_lut()) if k and v}} if kind == "synapse" else {})},
        "num_slices": {"train": len(train_slices)},
        "settings": fp,
    }
    if lut is not None and IGNORE_LABEL in lut:
        info["ignore_label"] = IGNORE_LABEL
    if multi:  # one-channel datasets keep the version-1 format exactly
        info.update(version=VERSION_MULTICHANNEL, channels=len(channel_names), channel_names=list(channel_names))
    atomic_write_text(meta_path, json.dumps(info, indent=1))
    log.info("prepared %d case(s) (train %d / val %d / test %d, %d training slices) in %s", len(specs),
             len(splits["train"]), len(splits["val"]), len(splits["test"]), len(train_slices), out)
    return out


def _norm_spec(kind: str, window: Sequence[float] | None) -> dict[str, Any]:
    """The normalisation record of a scheme name (``ct``: the window, default [-125, 275] HU)."""
    if kind == "ct":
        lo, hi = (float(window[0]), float(window[1])) if window is not None else CT_WINDOW
        return {"kind": "ct_window", "low": lo, "high": hi}
    return {"kind": kind}


def _rollback(out: Path, todo: list[CaseSpec], slices: dict[str, int], created_out: bool) -> None:
    """Remove what this run wrote for cases that had no earlier output (and the folder if it created it).

    Cases prepared by an earlier run keep their files (each written atomically): with
    ``--overwrite`` a failure leaves them as they were or already replaced, never deleted.
    """
    for s in todo:
        for p in _outputs(out, s.case_id, s.split, slices[s.case_id]) + [out / "cases" / f"{s.case_id}.json"]:
            p.unlink(missing_ok=True)
    if created_out and out.is_dir():
        shutil.rmtree(out, ignore_errors=True)


def _remove_stale(out: Path, specs: list[CaseSpec], slices: dict[str, int]) -> None:
    """Delete outputs of cases that changed split (e.g. a new --val-cases)."""
    for s in specs:
        other = "val" if s.split == "train" else "train"
        for p in _outputs(out, s.case_id, other, slices[s.case_id]):
            if p.is_file():
                p.unlink()


__all__ = ["KINDS", "CaseSpec", "prepare"]
