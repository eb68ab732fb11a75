"""Readers of prepared datasets (``transunet prepare`` output or the official Synapse files).

A prepared dataset folder is a superset of the official preprocessed Synapse layout::

    ROOT/dataset.json                   format, class names, normalisation, splits, spacing,
                                        source geometry (affine + NIfTI header) per case
    ROOT/train_npz/<case>_slice000.npz  arrays image (H, W) float32 and label (H, W) uint8
    ROOT/test_vol_h5/<case>.npy.h5      datasets image (S, H, W) float32 and label (S, H, W) uint8
    ROOT/lists/train.txt                slice names, no extension
    ROOT/lists/val.txt                  case ids (volumes in test_vol_h5/)
    ROOT/lists/test_vol.txt             case ids

Multi-channel datasets (``channels`` > 1 in ``dataset.json``, format version 2, e.g. prostate T2 +
ADC) store slices as ``image (C, H, W)`` and volumes as ``image (S, C, H, W)`` (labels unchanged);
``normalization`` is then a list with one record per channel and ``channel_names`` names them.

The official distribution (``train_npz/``, ``test_vol_h5/`` and the ``lists_Synapse`` files) is
read as is: without ``dataset.json`` the 9 Synapse classes, the CT window and unknown spacing are
assumed, and the list files are looked up in ``ROOT/lists``, ``ROOT/lists/lists_Synapse`` or an
explicit ``list_dir``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from torch.utils.data import Dataset

from transunet.data.safe_io import check_claim, check_numeric, read_npz, short_repr
from transunet.data.synapse import CT_WINDOW, SYNAPSE_CLASS_NAMES
from transunet.data.volume import Volume
from transunet.errors import DataError

log = logging.getLogger(__name__)

FORMAT = "transunet-prepared"
#: Format version of one-channel datasets (unchanged since the first release).
VERSION = 1
#: Format version of multi-channel datasets (``channels`` > 1); older transunet refuses them cleanly.
VERSION_MULTICHANNEL = 2
SPLITS = ("train", "val", "test")
#: List file of each split: train lists slice names, the others case ids.
LIST_FILES = {"train": "train.txt", "val": "val.txt", "test": "test_vol.txt"}
#: Label value of voxels excluded from loss and metrics (nnU-Net's ``ignore`` label after ``prepare``).
IGNORE_LABEL = 255
_SLICE_RE = re.compile(r"^(?P<case>.+)_slice(?P<idx>\d+)$")


# --------------------------------------------------------------------------- file readers


def slice_name(case_id: str, index: int) -> str:
    """``("case0005", 3)`` -> ``"case0005_slice003"`` (the official naming)."""
    return f"{case_id}_slice{index:03d}"


def parse_slice_name(name: str) -> tuple[str, int]:
    """``"case0005_slice003"`` -> ``("case0005", 3)``; raises DataError for other names."""
    m = _SLICE_RE.match(name)
    if not m:
        raise DataError(f"slice name {name!r} does not look like '<case>_slice<NNN>'; fix the train list file.")
    return m.group("case"), int(m.group("idx"))


def read_npz_slice(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one training slice ``(image (H, W) or (C, H, W) float32, label (H, W) uint8)`` from an ``.npz``.

    Headers are checked before anything is allocated (:func:`~transunet.data.safe_io.read_npz`).

    Args:
        path: ``train_npz/<case>_sliceNNN.npz``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: slice file not found; prepare the dataset again or fix the list file.")
    arrays = read_npz(path, ("image", "label"), fix="prepare the dataset again")
    image, label = arrays["image"].astype(np.float32), arrays["label"]
    if image.ndim not in (2, 3) or label.shape != image.shape[-2:]:
        raise DataError(f"{path}: expected an image (H, W) or (C, H, W) and a label (H, W), got {image.shape} and "
                        f"{label.shape}; prepare the dataset again.")
    return image, _as_label(label, path)


def _as_label(label: np.ndarray, where: Any) -> np.ndarray:
    if label.dtype == np.uint8:
        return label
    lab = np.asarray(label)
    check_numeric(where, lab.dtype, "label")
    if lab.size and (not np.all(np.isfinite(lab)) or lab.min() < 0 or lab.max() > 255):
        raise DataError(f"{where}: label values must be integers in 0..255; prepare the dataset again.")
    return np.rint(lab).astype(np.uint8)


def _h5_fail(path: Path, e: BaseException) -> DataError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    why = f"{type(e).__name__}: {short_repr(msg)}" if msg else type(e).__name__
    return DataError(f"{path}: cannot read HDF5 ({why}); the file is truncated or corrupt, prepare or copy it "
                     "again.")


def _check_h5_dataset(f: h5py.File, name: str, path: Path) -> h5py.Dataset:
    obj = f.get(name, getlink=False)
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{path}: '{name}' is a {type(obj).__name__}, not an array dataset; prepare the dataset "
                        "again.")
    check_numeric(path, obj.dtype, f"dataset '{name}'")
    if obj.ndim != 3 and not (name == "image" and obj.ndim == 4):  # multi-channel image: (S, C, H, W)
        shape = "(S, H, W) or (S, C, H, W)" if name == "image" else "(S, H, W)"
        raise DataError(f"{path}: expected '{name}' shaped {shape}, got {short_repr(obj.shape)}; prepare the "
                        "dataset again.")
    try:
        stored = int(obj.id.get_storage_size())
    except Exception:  # noqa: BLE001 - external or virtual storage: no size to compare with
        stored = None
    if obj.external:
        stored = None
    # chunked data may be compressed (filters): allow deflate's expansion; contiguous data is stored as is
    check_claim(path, obj.shape, obj.dtype.itemsize, stored, obj.chunks is not None, f"dataset '{name}'")
    return obj


def _open_h5(path: Path) -> h5py.File:
    if not path.is_file():
        raise DataError(f"{path}: volume file not found; prepare the dataset again or fix the list file.")
    try:
        f = h5py.File(path, "r")
    except Exception as e:  # noqa: BLE001 - h5py raises many types for damaged files
        raise _h5_fail(path, e) from None
    try:
        if "image" not in f:
            keys = sorted(f.keys())
            raise DataError(f"{path}: needs dataset 'image' (and 'label'), found {short_repr(keys)}; prepare the "
                            "dataset again.")
        image = _check_h5_dataset(f, "image", path)
        if "label" in f:
            label = _check_h5_dataset(f, "label", path)
            if label.shape != (image.shape[0], *image.shape[-2:]):
                raise DataError(f"{path}: expected image (S, H, W) or (S, C, H, W) and label (S, H, W), got "
                                f"{image.shape} and {label.shape}; prepare the dataset again.")
    except DataError:
        f.close()
        raise
    except Exception as e:  # noqa: BLE001
        f.close()
        raise _h5_fail(path, e) from None
    return f


def read_h5_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``(image (S, H, W) or (S, C, H, W) float32, label (S, H, W) uint8 or None)`` from a ``.npy.h5`` file.

    Args:
        path: ``test_vol_h5/<case>.npy.h5``.
    """
    path = Path(path)
    f = _open_h5(path)
    try:
        image = np.asarray(f["image"][:], dtype=np.float32)
        label = _as_label(f["label"][:], path) if "label" in f else None
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises many types for damaged data
        raise _h5_fail(path, e) from None
    finally:
        f.close()
    return image, label


#: Longest case id or slice name accepted (file systems refuse names over 255 bytes).
MAX_NAME = 200


def check_name(name: Any, where: Any, what: str = "case id") -> str:
    """A case id / slice name usable as a file name, or one DataError naming ``where``."""
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: {what} {short_repr(name)} must be a non-empty string; prepare the dataset "
                        "again.")
    if len(name) > MAX_NAME or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise DataError(f"{where}: {what} {short_repr(name)} is not a usable file name (at most {MAX_NAME} "
                        "characters, no path separators); fix the list or prepare the dataset again.")
    return name


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#x} at position {e.start}); write the "
                        "list file again.") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read list file ({type(e).__name__}); check the file.") from None
    return [check_name(line.strip(), path, "name") for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- dataset info


def _read_json(path: Path, fix: str) -> Any:
    """JSON content of ``path``; one DataError naming it for unreadable, non-UTF-8 or invalid JSON."""
    try:
        if path.stat().st_size > 512 * 2**20:
            raise DataError(f"{path}: {path.stat().st_size} bytes is too large for a dataset description; {fix}.")
        return json.loads(path.read_text(encoding="utf-8"))
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#x} at position {e.start}); {fix}.") from None
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise DataError(f"{path}: not valid JSON ({type(e).__name__}: {short_repr(str(e))}); {fix}.") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({type(e).__name__}); check the file.") from None


def _check_info(info: dict[str, Any], where: Path) -> None:
    """Types of the dataset.json entries the readers use (one DataError naming the file and key)."""
    def bad(key: str, rule: str) -> DataError:
        return DataError(f"{where}: '{key}' must be {rule}, got {short_repr(info.get(key))}; prepare the dataset "
                         "again.")

    names = info["class_names"]
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "a list of at least 2 class names (strings)")
    channels = info.get("channels", 1)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise bad("channels", "a positive integer (input channels)")
    norm = info["normalization"]
    if channels == 1 and not isinstance(norm, dict):
        raise bad("normalization", 'a mapping such as {"kind": "zscore"}')
    if channels > 1 and not (isinstance(norm, list) and len(norm) == channels
                             and all(isinstance(n, dict) for n in norm)):
        raise bad("normalization", f"a list of {channels} mappings (one per channel) such as {{\"kind\": \"zscore\"}}")
    cn = info.get("channel_names")
    if cn is not None and not (isinstance(cn, list) and len(cn) == channels and all(isinstance(n, str) for n in cn)):
        raise bad("channel_names", f"a list of {channels} channel names (strings)")
    splits = info["splits"]
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise bad("splits", "a mapping of split names to lists of case ids")
    for cases in splits.values():
        for c in cases:
            check_name(c, where)
    for key in ("spacing", "geometry"):
        if info.get(key) is not None and not isinstance(info[key], dict):
            raise bad(key, "a mapping of case ids to records")
    for case, sp in (info.get("spacing") or {}).items():
        if sp is None:
            continue
        ok = isinstance(sp, list) and len(sp) == 3 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in sp)
        if not ok:
            raise DataError(f"{where}: spacing of {short_repr(case)} must be 3 positive numbers (mm), got "
                            f"{short_repr(sp)}; prepare the dataset again.")
    for key in ("modality", "name"):
        if key in info and not isinstance(info[key], str):
            raise bad(key, "a string")
    ig = info.get("ignore_label")
    if ig is not None and (isinstance(ig, bool) or not isinstance(ig, int) or not len(names) <= ig <= 255):
        raise bad("ignore_label", f"null or an integer in {len(names)}..255 (above the class labels)")


def mask_ignored(pred: np.ndarray, label: np.ndarray, ignore: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Exclude the voxels labelled ``ignore`` from scoring, as nnU-Net does.

    Both the prediction and the ground truth become background there, so those voxels count for
    no foreground class (neither as hits nor as misses).

    Args:
        pred: Predicted labels.
        label: Ground-truth labels of the same shape.
        ignore: The ignore label (``Volume.ignore_label``), or None (arrays returned unchanged).
    """
    if ignore is None:
        return pred, label
    keep = label != ignore
    if keep.all():
        return pred, label
    return np.where(keep, pred, 0).astype(pred.dtype), np.where(keep, label, 0).astype(label.dtype)


def _list_dir(root: Path, list_dir: str | Path | None) -> Path | None:
    if list_dir is not None:
        d = Path(list_dir)
        if not d.is_dir():
            raise DataError(f"list folder {d} does not exist; pass the folder holding train.txt and test_vol.txt.")
        return d
    for d in (root / "lists", root / "lists" / "lists_Synapse", root):
        if any((d / name).is_file() for name in LIST_FILES.values()):
            return d
    return None


def read_dataset_info(root: str | Path, list_dir: str | Path | None = None) -> dict[str, Any]:
    """Describe a prepared (or official Synapse) dataset folder.

    Args:
        root: Dataset folder.
        list_dir: Folder of the list files when they are not in ``ROOT/lists`` or
            ``ROOT/lists/lists_Synapse`` (the official ``lists/lists_Synapse`` of the TransUNet code).

    Returns:
        The ``dataset.json`` content (or the official defaults) with the extra keys ``root`` and
        ``list_dir`` (paths as strings). ``splits`` holds case ids; ``spacing`` maps case ids to
        ``[s, h, w]`` in mm (empty when unknown).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; create it with 'transunet prepare' "
                        "or point to the official Synapse folder (train_npz/, test_vol_h5/).")
    meta_path = root / "dataset.json"
    ldir = _list_dir(root, list_dir)
    if meta_path.is_file():
        info = _read_json(meta_path, "prepare the dataset again")
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise DataError(f"{meta_path}: not a transunet dataset (format must be {FORMAT!r}); "
                            "prepare it with 'transunet prepare'.")
        version = info.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise DataError(f"{meta_path}: 'version' must be an integer, got {short_repr(version)}; prepare the "
                            "dataset again.")
        if version > VERSION_MULTICHANNEL:
            raise DataError(f"{meta_path}: dataset format version {version} is newer than "
                            f"this transunet supports ({VERSION_MULTICHANNEL}); upgrade transunet.")
        for key in ("class_names", "normalization", "splits"):
            if key not in info:
                raise DataError(f"{meta_path}: missing key {key!r}; prepare the dataset again.")
        _check_info(info, meta_path)
        info.setdefault("spacing", {})
        info.setdefault("modality", "CT")
        info.setdefault("name", root.name)
        info.setdefault("channels", 1)
    else:
        if not (root / "train_npz").is_dir() and not (root / "test_vol_h5").is_dir():
            content = sorted(p.name for p in root.iterdir())[:5]
            raise DataError(
                f"{root} is not a dataset: no dataset.json, train_npz/ or test_vol_h5/ "
                f"(found {content or 'an empty folder'}); create one with 'transunet prepare'."
            )
        splits: dict[str, list[str]] = {}
        if ldir is not None:
            for split, name in LIST_FILES.items():
                if (ldir / name).is_file():
                    names = _read_list(ldir / name)
                    if split == "train":
                        names = list(dict.fromkeys(parse_slice_name(n)[0] for n in names))
                    splits[split] = names
        info = {
            "format": FORMAT, "version": VERSION, "name": root.name, "modality": "CT",
            "class_names": list(SYNAPSE_CLASS_NAMES),
            "normalization": {"kind": "ct_window", "low": CT_WINDOW[0], "high": CT_WINDOW[1]},
            "splits": splits, "spacing": {}, "source": "official Synapse preprocessed files", "channels": 1,
        }
    info["root"] = str(root)
    info["list_dir"] = str(ldir) if ldir is not None else None
    return info


def _split_list_path(info: dict[str, Any], split: str) -> Path | None:
    ldir = info.get("list_dir")
    if ldir is None:
        return None
    p = Path(ldir) / LIST_FILES.get(split, f"{split}.txt")
    return p if p.is_file() else None


def _missing_split(root: Any, split: str, info: dict[str, Any]) -> DataError:
    avail = [s for s in info.get("splits", {}) if info["splits"][s]]
    if split == "val":
        fix = ("create a validation split with 'transunet prepare KIND RAW OUT --val-cases N', "
               "or set data.val_split to null")
    else:
        fix = f"use one of {avail}" if avail else "prepare the dataset again"
    return DataError(f"split {split!r} not found in dataset {root} (available: {avail}); {fix}.")


def list_cases(root: str | Path, split: str, list_dir: str | Path | None = None) -> list[str]:
    """Case ids of a split.

    Args:
        root: Dataset folder.
        split: ``train``, ``val`` or ``test`` (or any split named in ``dataset.json``).
        list_dir: Explicit list-file folder for the official layout.
    """
    info = read_dataset_info(root, list_dir)
    cases = info["splits"].get(split)
    if not cases:
        lp = _split_list_path(info, split)
        if lp is not None:
            names = _read_list(lp)
            cases = list(dict.fromkeys(parse_slice_name(n)[0] for n in names)) if split == "train" else names
    if not cases:
        raise _missing_split(root, split, info)
    return list(cases)


def _train_slice_names(info: dict[str, Any]) -> list[str]:
    lp = _split_list_path(info, "train")
    if lp is None:
        raise DataError(f"no train.txt list in dataset {info['root']} (looked in {info.get('list_dir')}); "
                        "prepare the dataset again or pass list_dir.")
    return _read_list(lp)


def _case_spacing(info: dict[str, Any], case_id: str) -> tuple[float, float, float] | None:
    sp = (info.get("spacing") or {}).get(case_id)
    return tuple(float(s) for s in sp) if sp else None  # type: ignore[return-value]


def case_geometry(info: dict[str, Any], case_id: str) -> dict[str, Any] | None:
    """The source geometry of a case (``{"shape", "affine", "header"}``, NIfTI order), if recorded.

    Written by ``transunet prepare`` from the source scan; absent for the official Synapse files
    and datasets prepared before it was recorded (prepare them again to add it).
    """
    geom = (info.get("geometry") or {}).get(case_id)
    return geom if isinstance(geom, dict) else None


def load_volume(root: str | Path, split: str, case_id: str, list_dir: str | Path | None = None) -> Volume:
    """Load one case as a :class:`~transunet.data.volume.Volume`.

    Val and test cases are read from ``test_vol_h5/``; training cases are assembled from their
    slices in ``train_npz/`` (or read from ``test_vol_h5/`` when a volume file exists there).

    Args:
        root: Dataset folder.
        split: Split the case belongs to.
        case_id: Case id as listed in the split.
        list_dir: Explicit list-file folder for the official layout.
    """
    root = Path(root)
    info = read_dataset_info(root, list_dir)
    cases = list_cases(root, split, list_dir)
    if case_id not in cases:
        raise DataError(f"case {case_id!r} is not in split {split!r} of {root} "
                        f"({len(cases)} cases, e.g. {cases[:3]}); check the case id.")
    h5 = root / "test_vol_h5" / f"{case_id}.npy.h5"
    if h5.is_file() or split != "train":
        image, label = read_h5_volume(h5)
    else:
        idx = sorted(parse_slice_name(n)[1] for n in _train_slice_names(info) if parse_slice_name(n)[0] == case_id)
        pairs = [read_npz_slice(root / "train_npz" / f"{slice_name(case_id, i)}.npz") for i in idx]
        if len({p[0].shape for p in pairs}) != 1:
            raise DataError(f"slices of {case_id} in {root / 'train_npz'} have different shapes; prepare again.")
        image = np.stack([p[0] for p in pairs])
        label = np.stack([p[1] for p in pairs])
    if len(image):
        _check_channels(image[0], info, h5 if h5.is_file() else root / "train_npz", case_id)
    geom = case_geometry(info, case_id)
    try:
        affine = np.asarray(geom["affine"], dtype=np.float64).reshape(4, 4) if geom and "affine" in geom else None
    except (TypeError, ValueError):
        raise DataError(f"{root / 'dataset.json'}: the geometry of {short_repr(case_id)} has no valid 4x4 affine; "
                        "prepare the dataset again.") from None
    return Volume(case_id=case_id, image=image, label=label, spacing=_case_spacing(info, case_id),
                  affine=affine, class_names=list(info["class_names"]), ignore_label=info.get("ignore_label"))


def _check_channels(sl: np.ndarray, info: dict[str, Any], where: Any, case_id: str) -> None:
    """One DataError unless a slice (``(H, W)`` or ``(C, H, W)``) has the dataset's channel count."""
    got = 1 if sl.ndim <= 2 else int(sl.shape[0])
    want = int(info.get("channels", 1))
    if got != want:
        raise DataError(f"{where}: case {case_id} has {got} channel(s) but {info['root']}/dataset.json declares "
                        f"{want}; prepare the dataset again.")


# --------------------------------------------------------------------------- training slices


class SliceDataset(Dataset):
    """2D slices of a split, augmented and resized, for training.

    The training split reads one ``.npz`` per slice (as the official loader); other splits read
    single slices of the ``test_vol_h5`` volumes (one HDF5 hyperslab per item, never the whole
    volume). The random augmentation of item ``index`` depends only on ``(seed, epoch, index)``,
    so results do not depend on ``num_workers`` and a resumed run sees exactly the augmentations
    of an uninterrupted one. Call :meth:`set_epoch` before each epoch (with
    ``persistent_workers=False``, the DataLoader default, workers pick up the new epoch).

    Args:
        root: Dataset folder.
        split: Split to read (``train``, ``val``, ``test``).
        img_size: Output ``(h, w)``: images resized with a cubic spline, labels with nearest.
        augment: ``official`` (the paper's rot90/flip or rotation) or ``none``.
        elastic: Add elastic deformation.
        intensity: Add random intensity scale and shift.
        gamma: Add random gamma.
        seed: Base seed of the augmentation.
        list_dir: Explicit list-file folder for the official layout.
    """

    def __init__(self, root: str | Path, split: str = "train", img_size: Sequence[int] = (224, 224),
                 augment: str = "official", elastic: bool = False, intensity: bool = False,
                 gamma: bool = False, seed: int = 0, list_dir: str | Path | None = None) -> None:
        from transunet.data.transforms import SliceAugmenter

        if augment not in ("official", "none"):
            raise ValueError(f"augment={augment!r} is not valid; choose 'official' or 'none'.")
        self.root = Path(root)
        self.split = split
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.seed = int(seed)
        self.epoch = 0
        self.info = read_dataset_info(self.root, list_dir)
        self.class_names = list(self.info["class_names"])
        self.augmenter = SliceAugmenter(self.img_size, official=augment == "official", elastic=elastic,
                                        intensity=intensity, gamma=gamma)
        self._items: list[tuple[str, int]] = []
        self._from_npz = split == "train" and _split_list_path(self.info, "train") is not None
        if self._from_npz:
            for name in _train_slice_names(self.info):
                self._items.append(parse_slice_name(name))
        else:
            for case in list_cases(self.root, split, list_dir):
                f = _open_h5(self.root / "test_vol_h5" / f"{case}.npy.h5")
                try:
                    n = f["image"].shape[0]
                finally:
                    f.close()
                self._items.extend((case, i) for i in range(n))
        if not self._items:
            raise DataError(f"split {split!r} of {self.root} has no slices; prepare the dataset again.")
        self._h5: dict[str, h5py.File] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def case_ids(self) -> list[str]:
        """Case id of every item (same order as the indices)."""
        return [c for c, _ in self._items]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations the following items get.

        Args:
            epoch: Epoch number (0-based).
        """
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The random generator of item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def read_slice(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw (not augmented) ``(image (H, W) or (C, H, W), label (H, W))`` of item ``index``."""
        case, i = self._items[index]
        if self._from_npz:
            return read_npz_slice(self.root / "train_npz" / f"{slice_name(case, i)}.npz")
        if os.getpid() != self._pid:  # forked worker: never share HDF5 handles across processes
            self._h5, self._pid = {}, os.getpid()
        f = self._h5.get(case)
        if f is None:
            f = self._h5[case] = _open_h5(self.root / "test_vol_h5" / f"{case}.npy.h5")
        try:
            image = np.asarray(f["image"][i], dtype=np.float32)
            label = _as_label(f["label"][i], f.filename) if "label" in f else np.zeros(image.shape, np.uint8)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - h5py raises many types for damaged data
            raise _h5_fail(self.root / "test_vol_h5" / f"{case}.npy.h5", e) from None
        return image, label

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One augmented slice.

        Returns:
            ``{"image": FloatTensor (C, h, w), "label": LongTensor (h, w), "case_id": str, "index": int}``
            (``C`` is 1 for one-channel data).
        """
        if not 0 <= index < len(self._items):
            raise IndexError(f"index {index} out of range for {len(self._items)} slices")
        image, label = self.read_slice(index)
        _check_channels(image, self.info, self.root, self._items[index][0])
        img_t, lab_t = self.augmenter(image, label, self.rng(index))
        if img_t.ndim == 2:
            img_t = img_t.unsqueeze(0)
        return {"image": img_t, "label": lab_t.long(), "case_id": self._items[index][0], "index": int(index)}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = {}
        return state

    def close(self) -> None:
        """Close cached HDF5 handles."""
        for f in getattr(self, "_h5", {}).values():
            try:
                f.close()
            except Exception as e:  # noqa: BLE001 - closing is best effort
                log.debug("closing %s failed: %s", f, e)
        self._h5 = {}

    def __del__(self) -> None:
        self.close()
