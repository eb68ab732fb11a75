"""Evaluate a trained model on a split: per-case, per-class metrics in both protocols.

``transunet evaluate RUN|CHECKPOINT --data DIR`` predicts every volume of the split slice by slice
exactly as the official ``test_single_volume`` (:func:`transunet.infer.predict_volume`) and scores
each foreground class on the whole 3D volume (:func:`transunet.metrics.label_metrics`):

* ``official``: the published protocol (Dice, HD95 in voxels, a prediction on an absent organ
  scores Dice 1 / HD95 0, an empty prediction scores Dice 0 / HD95 0); every case counts in every
  class mean.
* ``corrected``: HD95 in mm from the volume's spacing; a missed organ scores Dice 0 and its HD95 is
  a failure counted in ``n_missed`` (not averaged in); a prediction on an absent organ scores Dice
  0 and is counted in ``n_false_positive``; an organ absent from both is excluded. The HD95 mean is
  over the cases where HD95 is defined; ``hd95_penalized_mean`` additionally counts every
  missed / false-positive case at the volume diagonal (the largest distance the volume allows).

Outputs (in ``RUN/eval/SPLIT`` or ``out_dir``), written only once every case has been scored:

* ``summary.json``: per case, per class, means, standard deviations and bootstrap 95% confidence
  intervals (schema in :func:`evaluate`);
* ``metrics.csv``: one row per case x class x protocol;
* ``table.md``: the paper's table layout (Method | DSC | HD95 | one column per organ) and per-case
  Dice tables;
* ``predictions/<case>.nii.gz`` with ``save_predictions=True``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from transunet.checkpoint import resolve_checkpoint
from transunet.config import PROTOCOLS as CONFIG_PROTOCOLS
from transunet.config import config_from_dict
from transunet.data.synapse import display_columns
from transunet.errors import CheckpointError, ConfigError, DataError, check_choice
from transunet.infer import Predictor
from transunet.metrics import NSD_TOLERANCE_MM, ClassMetrics, label_metrics, nan_to_none
from transunet.paths import RunPaths
from transunet.utils import atomic_write_text, resolve_device

log = logging.getLogger(__name__)

#: Seed of the bootstrap resampling (fixed, so confidence intervals are reproducible).
BOOTSTRAP_SEED = 0

# ----------------------------------------------------------------------------- statistics


def _mean(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None


def _std(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x.std(ddof=1)) if x.size > 1 else None


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    """NaN-ignoring mean without the all-NaN RuntimeWarning (all-NaN gives NaN)."""
    valid = ~np.isnan(a)
    n = valid.sum(axis=axis)
    s = np.where(valid, a, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def bootstrap_ci(values: np.ndarray, resamples: int, seed: int = BOOTSTRAP_SEED) -> tuple[list, list]:
    """Percentile bootstrap 95% intervals over cases of per-class means and of their mean.

    Cases are resampled with replacement; in each resample the per-class mean ignores NaN
    (undefined) entries and the overall mean averages the classes that are defined.

    Args:
        values: ``(cases, classes)`` array, NaN where a value is undefined or excluded.
        resamples: Number of bootstrap resamples (0 disables: all intervals ``None``).
        seed: Random seed.

    Returns:
        ``(per_class_ci, mean_ci)``: a list of ``[lo, hi]`` (or ``None``) per class and one for the mean.
    """
    n, c = values.shape
    if resamples <= 0 or n == 0:
        return [None] * c, None  # type: ignore[list-item]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    per_class = _nanmean(values[idx], axis=1)  # (B, classes)
    overall = _nanmean(per_class, axis=1)  # (B,)

    def ci(x: np.ndarray) -> list[float] | None:
        x = x[~np.isnan(x)]
        if not x.size:
            return None
        lo, hi = np.percentile(x, [2.5, 97.5])
        return [float(lo), float(hi)]

    return [ci(per_class[:, k]) for k in range(c)], ci(overall)


def summarize_protocol(
    per_case: dict[str, dict[int, ClassMetrics]],
    class_names: Sequence[str],
    protocol: str,
    *,
    resamples: int,
    penalty: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Per-class and overall statistics of one protocol.

    Args:
        per_case: ``{case_id: {label: ClassMetrics}}``.
        class_names: Names of labels ``0..K-1``.
        protocol: ``official`` or ``corrected`` (only used for the penalised HD95).
        resamples: Bootstrap resamples for the confidence intervals.
        penalty: Per case, the HD95 assigned to a missed / false-positive organ in
            ``hd95_penalized_mean`` (corrected protocol; the volume diagonal).

    Returns:
        ``{"per_class": {...}, "mean": {...}}`` with ``None`` for undefined values.
    """
    cases = list(per_case)
    labels = list(range(1, len(class_names)))

    def grid(key: str) -> np.ndarray:
        a = np.full((len(cases), len(labels)), np.nan)
        for i, case in enumerate(cases):
            for j, lab in enumerate(labels):
                v = getattr(per_case[case][lab], key)
                a[i, j] = np.nan if v is None else v
        return a

    dice, hd = grid("dice"), grid("hd95")
    status = [[per_case[case][lab].status for lab in labels] for case in cases]
    dice_ci, dice_mean_ci = bootstrap_ci(dice, resamples)
    hd_ci, hd_mean_ci = bootstrap_ci(hd, resamples)
    per_class: dict[str, dict[str, Any]] = {}
    for j, lab in enumerate(labels):
        col = [s[j] for s in status]
        entry: dict[str, Any] = {
            "dice_mean": _mean(dice[:, j]), "dice_std": _std(dice[:, j]), "dice_ci95": dice_ci[j],
            "hd95_mean": _mean(hd[:, j]), "hd95_std": _std(hd[:, j]), "hd95_ci95": hd_ci[j],
            "n": int(np.count_nonzero(~np.isnan(dice[:, j]))),
            "n_hd95": int(np.count_nonzero(~np.isnan(hd[:, j]))),
            "n_missed": col.count("missed"), "n_false_positive": col.count("false_positive"),
            "n_absent": col.count("absent"),
        }
        if protocol == "corrected":
            assd_ = grid("assd")[:, j]
            nsd_ = grid("nsd")[:, j]
            entry["assd_mean"] = _mean(assd_)
            entry["nsd_mean"] = _mean(nsd_)
            if penalty is not None:
                pen = hd[:, j].copy()
                for i, case in enumerate(cases):
                    if status[i][j] in ("missed", "false_positive"):
                        pen[i] = penalty[case]
                entry["hd95_penalized_mean"] = _mean(pen)
        per_class[str(class_names[lab])] = entry
    dice_means = np.array([np.nan if e["dice_mean"] is None else e["dice_mean"] for e in per_class.values()])
    hd_means = np.array([np.nan if e["hd95_mean"] is None else e["hd95_mean"] for e in per_class.values()])
    mean: dict[str, Any] = {"dice": _mean(dice_means), "hd95": _mean(hd_means),
                            "dice_ci95": dice_mean_ci, "hd95_ci95": hd_mean_ci}
    if protocol == "corrected":
        for key in ("assd_mean", "nsd_mean", "hd95_penalized_mean"):
            vals = [e.get(key) for e in per_class.values()]
            mean[key.replace("_mean", "")] = _mean(np.array([np.nan if v is None else v for v in vals]))
        mean["n_missed"] = sum(e["n_missed"] for e in per_class.values())
        mean["n_false_positive"] = sum(e["n_false_positive"] for e in per_class.values())
    return {"per_class": per_class, "mean": mean}


# ----------------------------------------------------------------------------- writers


def _fmt(v: float | None, scale: float = 1.0) -> str:
    return "–" if v is None else f"{v * scale:.2f}"


def render_table(summary: dict[str, Any], method: str) -> str:
    """Markdown tables: the paper's layout (one row per protocol) and per-case Dice.

    Args:
        summary: The evaluation summary (see :func:`evaluate`).
        method: Name in the ``Method`` column (e.g. the model name).
    """
    cols = display_columns(summary["class_names"])
    names = summary["class_names"]
    lines = [f"# {method} on {summary['split']} ({summary['n_cases']} cases)", ""]
    lines.append("Dice in %, HD95 in the unit given per row; mean over classes of the per-class means.")
    lines.append("")
    lines.append("| Method | DSC | HD95 | " + " | ".join(h for _, h in cols) + " |")
    lines.append("|---|" + "---:|" * (2 + len(cols)))
    for proto, res in summary["protocols"].items():
        unit = res["hd95_unit"]
        row = [f"{method} ({proto}, HD95 in {'voxels' if unit == 'voxel' else unit})",
               _fmt(res["mean"]["dice"], 100), _fmt(res["mean"]["hd95"])]
        row += [_fmt(res["per_class"][names[i]]["dice_mean"], 100) for i, _ in cols]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for proto, res in summary["protocols"].items():
        lo_hi = res["mean"]["dice_ci95"]
        ci = f"[{lo_hi[0] * 100:.2f}, {lo_hi[1] * 100:.2f}]" if lo_hi else "–"
        lines.append(f"- {proto}: mean DSC 95% bootstrap CI {ci}")
        if proto == "corrected":
            lines.append(f"- corrected: missed organs {res['mean']['n_missed']} (Dice 0, HD95 not averaged), "
                         f"false positives on absent organs {res['mean']['n_false_positive']} (Dice 0), "
                         "penalised mean HD95 (misses at the volume diagonal) "
                         f"{_fmt(res['mean'].get('hd95_penalized'))}")
    for proto, res in summary["protocols"].items():
        lines += ["", f"## Per case, {proto} protocol: Dice % / HD95 ({res['hd95_unit']})", ""]
        lines.append("| Case | " + " | ".join(h for _, h in cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for case, per_class in res["per_case"].items():
            cells = []
            for i, _ in cols:
                m = per_class[names[i]]
                tag = "" if m["status"] == "ok" else f" ({m['status'].replace('_', ' ')})"
                cells.append(f"{_fmt(m['dice'], 100)} / {_fmt(m['hd95'])}{tag}")
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_csv(summary: dict[str, Any]) -> str:
    """``metrics.csv``: one row per case x class x protocol (empty cells for undefined values).

    Args:
        summary: The evaluation summary (see :func:`evaluate`).
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case_id", "class_index", "class_name", "protocol", "status", "dice", "hd95", "hd95_unit",
                "assd", "nsd"])
    names = summary["class_names"]
    for proto, res in summary["protocols"].items():
        for case, per_class in res["per_case"].items():
            for idx in range(1, len(names)):
                m = per_class[names[idx]]
                w.writerow([case, idx, names[idx], proto, m["status"]]
                           + ["" if m.get(k) is None else repr(float(m[k])) for k in ("dice", "hd95")]
                           + [res["hd95_unit"]]
                           + ["" if m.get(k) is None else repr(float(m[k])) for k in ("assd", "nsd")])
    return buf.getvalue()


def _affine_from_spacing(spacing: Sequence[float] | None) -> np.ndarray:
    """NIfTI affine for a slice-first volume of spacing ``(s, h, w)`` (NIfTI axes ``(w, h, s)``)."""
    aff = np.eye(4)
    if spacing is not None:
        aff[0, 0], aff[1, 1], aff[2, 2] = float(spacing[2]), float(spacing[1]), float(spacing[0])
    return aff


def _json_clean(obj: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python numbers, recursively."""
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return nan_to_none(float(obj))
    return obj


# ----------------------------------------------------------------------------- evaluate


def _check_model_vs_data(ckpt_path: Path, ckpt: dict[str, Any], model: Any, data_root: Path,
                         class_names: list[str], info: dict[str, Any]) -> None:
    kwargs = ckpt["model"]["kwargs"]
    num_classes = int(getattr(model, "num_classes", kwargs.get("num_classes", len(class_names))))
    if num_classes != len(class_names):
        raise CheckpointError(
            f"checkpoint {ckpt_path} predicts {num_classes} classes but dataset {data_root} has "
            f"{len(class_names)} ({', '.join(map(str, class_names))}); evaluate it on the dataset it was "
            "trained for, or train a model for this dataset.")
    ck_names = (ckpt.get("preprocessing") or {}).get("class_names")
    if ck_names and [str(n) for n in ck_names] != [str(n) for n in class_names]:
        raise CheckpointError(
            f"checkpoint {ckpt_path} was trained on classes {list(ck_names)} but dataset {data_root} has "
            f"{list(class_names)}; evaluate it on the dataset it was trained for.")
    in_ch = int(getattr(model, "in_channels", kwargs.get("in_channels", 1)))
    data_ch = int(info.get("channels", info.get("in_channels", 1)) or 1)
    if data_ch > 1 and in_ch != data_ch:
        raise CheckpointError(
            f"checkpoint {ckpt_path} expects {in_ch} input channel(s) but dataset {data_root} has "
            f"{data_ch}-channel volumes ({', '.join(map(str, info.get('channel_names') or []))}); evaluate it on "
            "the dataset it was trained for, or train a model for this dataset.")
    ck_ch = (ckpt.get("preprocessing") or {}).get("channel_names")
    if data_ch > 1 and ck_ch and [str(n) for n in ck_ch] != [str(n) for n in info.get("channel_names") or ck_ch]:
        raise CheckpointError(
            f"checkpoint {ckpt_path} was trained on channels {list(ck_ch)} but dataset {data_root} has "
            f"{list(info['channel_names'])}; evaluate it on data with the same channels in the same order.")
    if data_ch == 1 and in_ch not in (1, 3):
        raise CheckpointError(
            f"checkpoint {ckpt_path} expects {in_ch} input channels but dataset {data_root} has "
            f"single-channel volumes; slice-wise evaluation feeds one channel (repeated to 3 for "
            "3-channel models): use a model with in_channels 1 or 3 on single-channel data.")


def evaluate(
    run: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    protocol: str = "both",
    out_dir: str | Path | None = None,
    device: str = "auto",
    save_predictions: bool = False,
    tta: bool = False,
    batch_size: int | None = None,
    nsd_tolerance: float = NSD_TOLERANCE_MM,
    predictor: Predictor | None = None,
    force_tta: bool = False,
    overwrite: bool = False,
) -> Path:
    """Predict and score every case of a split; write ``summary.json``, ``metrics.csv``, ``table.md``.

    ``summary.json`` schema (``null`` where a value is undefined)::

        {"split", "checkpoint", "data_root", "model", "class_names": [... incl. background],
         "n_cases", "tta", "tta_flips", "nsd_tolerance_mm", "bootstrap": {"resamples", "seed"},
         "protocols": {"official"|"corrected": {
             "hd95_unit": "voxel" | "mm",
             "per_case": {case_id: {class_name: {"dice", "hd95", "status", ["assd", "nsd"]}}},
             "per_class": {class_name: {"dice_mean", "dice_std", "dice_ci95": [lo, hi],
                                        "hd95_mean", "hd95_std", "hd95_ci95": [lo, hi], "n",
                                        "n_hd95", "n_missed", "n_false_positive", "n_absent",
                                        ["assd_mean", "nsd_mean", "hd95_penalized_mean"]}},
             "mean": {"dice", "hd95", "dice_ci95", "hd95_ci95", [...corrected extras]}}},
         "cases": [{"case_id", "shape", "spacing", "prediction", "mean_dice_official",
                    "mean_dice_corrected"}]}

    ``status`` is ``ok``, ``missed``, ``false_positive`` or ``absent``; standard deviations are
    sample standard deviations over cases (``ddof=1``); confidence intervals are percentile
    bootstrap intervals over cases (``eval.bootstrap`` resamples of the checkpoint's config,
    default 1000, seed :data:`BOOTSTRAP_SEED`).

    Args:
        run: Run folder (uses ``checkpoints/best.pt``, else ``last.pt``) or a checkpoint file.
        data: Prepared dataset folder (default: the checkpoint config's ``data.root``).
        split: Split to evaluate (``test``, ``val``, ...).
        protocol: ``official``, ``corrected`` or ``both``.
        out_dir: Output folder (default ``RUN/eval/SPLIT``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        save_predictions: Also write ``predictions/<case>.nii.gz`` (label maps).
        tta: Average the softmax over the flips the model was trained with (refused for a model
            trained without flips unless ``force_tta``).
        batch_size: Slices per forward pass (default: the config's ``eval.batch_size``).
        nsd_tolerance: Tolerance of the normalised surface Dice in mm (corrected protocol).
        predictor: A :class:`~transunet.infer.Predictor` already built from the run's checkpoint
            (so a command reads it once); built here otherwise.
        force_tta: With ``tta``, use both flips even on a model trained without them.
        overwrite: Replace an earlier evaluation in the output folder (its ``summary.json``,
            tables and ``predictions/``); without it an existing evaluation is refused up front.

    The HTML report is a separate stage (:func:`transunet.report.make_report`); the
    ``transunet evaluate`` command runs it afterwards unless ``--no-report`` is given.

    Returns:
        The output folder.
    """
    from transunet.data.datasets import list_cases, load_volume, mask_ignored, read_dataset_info

    check_choice("protocol", protocol, CONFIG_PROTOCOLS)
    protocols = ("official", "corrected") if protocol == "both" else (protocol,)
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is invalid: it must be >= 1.")
    ckpt_path, run_root = resolve_checkpoint(run)
    if predictor is None:
        predictor = Predictor.from_checkpoint(ckpt_path, device=resolve_device(device), batch_size=batch_size)
    elif batch_size is not None:
        predictor.batch_size = int(batch_size)
    model, ckpt = predictor.model, predictor.checkpoint
    flips = predictor.tta_flips(tta, force=force_tta)
    cfg = config_from_dict(ckpt["config"]) if ckpt.get("config") else None
    if data is None:
        if cfg is None:
            raise ConfigError(f"checkpoint {ckpt_path} has no training config to find its dataset; pass --data DIR.")
        data = cfg.data.root
        if not Path(data).is_dir():
            raise DataError(f"the dataset recorded in checkpoint {ckpt_path} ({data}) does not exist here "
                            "(a relative path is read from the current folder); pass --data DIR.")
    data_root = Path(data)
    info = read_dataset_info(data_root)
    class_names = [str(n) for n in info["class_names"]]
    cases = list_cases(data_root, split)
    _check_model_vs_data(ckpt_path, ckpt, model, data_root, class_names, info)
    resamples = cfg.eval.bootstrap if cfg else 1000
    out = Path(out_dir) if out_dir is not None else RunPaths(run_root).eval_dir(split)
    earlier = [out / n for n in ("summary.json", "metrics.csv", "table.md", "predictions") if (out / n).exists()]
    if earlier and not overwrite:
        raise FileExistsError(f"{out} already holds an evaluation ({', '.join(p.name for p in earlier)}); pass "
                              "--overwrite (overwrite=True) to replace it, or --out DIR to write elsewhere.")
    classes = list(range(1, len(class_names)))
    known = info.get("spacing") or {}
    unknown = [c for c in cases if not known.get(c)]
    if "corrected" in protocols and 0 < len(unknown) < len(cases):
        raise DataError(f"dataset {data_root} gives a voxel spacing for some cases of split {split!r} but not "
                        f"for {', '.join(unknown[:3])}; corrected HD95 would mix mm and voxels. Add the missing "
                        "spacings to dataset.json or use --protocol official.")

    results: dict[str, dict[str, dict[int, ClassMetrics]]] = {p: {} for p in protocols}
    case_rows: list[dict[str, Any]] = []
    spacings: dict[str, Any] = {}
    penalty: dict[str, float] = {}
    staging = _staging_dir(_existing_parent(out)) if save_predictions else None
    try:
        bar = tqdm(cases, desc=f"evaluate {split}", unit="case", dynamic_ncols=True)
        for case_id in bar:
            bar.set_postfix_str(case_id)
            vol = load_volume(data_root, split, case_id)
            if vol.label is None:
                raise DataError(f"case {case_id} of split {split!r} in {data_root} has no label; "
                                "evaluation needs ground truth (use 'transunet predict' for unlabelled scans).")
            if not np.all(np.isfinite(vol.image)):
                raise DataError(f"case {case_id} of split {split!r} in {data_root}: the image contains NaN or "
                                "infinite values; fix the source volume and prepare the dataset again.")
            pred = predictor.predict_volume(vol.image, tta=flips)
            scored_pred, gt = mask_ignored(pred, vol.label, vol.ignore_label)  # nnU-Net's ignore label: unscored
            if gt.size and int(gt.max()) >= len(class_names):
                raise DataError(f"case {case_id} of split {split!r} in {data_root} has label {int(gt.max())} "
                                f"but the dataset defines {len(class_names)} classes; prepare the dataset again.")
            spacing = tuple(float(s) for s in vol.spacing) if vol.spacing is not None else None
            spacings[case_id] = spacing
            scored = label_metrics(scored_pred, gt, classes, spacing, protocols=protocols,
                                   nsd_tolerance=nsd_tolerance)
            for p in protocols:
                results[p][case_id] = scored[p]
            sp = np.asarray(spacing if spacing is not None else (1.0, 1.0, 1.0))
            penalty[case_id] = float(np.sqrt(np.sum(((np.asarray(vol.shape) - 1) * sp) ** 2)))
            rel = None
            if staging is not None:
                _save_prediction(pred, info, case_id, spacing, staging / f"{case_id}.nii.gz")
                rel = f"predictions/{case_id}.nii.gz"
            row: dict[str, Any] = {"case_id": case_id, "shape": list(vol.shape),
                                   "spacing": list(spacing) if spacing else None, "prediction": rel}
            for p in ("official", "corrected"):
                vals = [m.dice for m in scored[p].values() if m.dice is not None] if p in scored else []
                row[f"mean_dice_{p}"] = float(np.mean(vals)) if vals else None
            case_rows.append(row)
            if "corrected" in scored:
                bar.set_postfix_str(f"{case_id} dice {row['mean_dice_corrected'] or 0:.3f}")

        no_spacing = any(s is None for s in spacings.values())
        if "corrected" in protocols and no_spacing and not all(s is None for s in spacings.values()):
            raise DataError(f"split {split!r} of {data_root} mixes cases with and without voxel spacing; "
                            "corrected HD95 would mix mm and voxels: use --protocol official.")
        if "corrected" in protocols and no_spacing:
            log.warning("%s gives no voxel spacing: corrected HD95 and ASSD are in voxels, not mm", data_root)
        summary: dict[str, Any] = {
            "split": split, "checkpoint": str(ckpt_path), "data_root": str(data_root),
            "model": ckpt["model"]["name"], "class_names": class_names, "n_cases": len(cases),
            "tta": bool(flips), "tta_flips": [list(d) for d in flips], "nsd_tolerance_mm": float(nsd_tolerance),
            "bootstrap": {"resamples": int(resamples), "seed": BOOTSTRAP_SEED}, "protocols": {},
            "cases": case_rows,
        }
        for p in protocols:
            stats = summarize_protocol(results[p], class_names, p, resamples=resamples,
                                       penalty=penalty if p == "corrected" else None)
            summary["protocols"][p] = {
                "hd95_unit": "voxel" if p == "official" or no_spacing else "mm",
                "per_case": {case: {class_names[c]: m.to_dict(extras=p == "corrected") for c, m in per.items()}
                             for case, per in results[p].items()},
                **stats,
            }
        summary = _json_clean(summary)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
        atomic_write_text(out / "metrics.csv", render_csv(summary))
        atomic_write_text(out / "table.md", render_table(summary, str(ckpt["model"]["name"])))
        if staging is not None:
            final = out / "predictions"
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            staging = None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)

    _log_summary(summary)
    return out


def _staging_dir(parent: Path) -> Path:
    """A new hidden folder with normal permissions (``mkdtemp`` would make it 0700)."""
    for _ in range(100):
        p = parent / f".predictions.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            p.mkdir()
        except FileExistsError:
            continue
        return p
    raise FileExistsError(f"cannot create a staging folder in {parent}")


def _save_prediction(pred: np.ndarray, info: dict[str, Any], case_id: str, spacing: Sequence[float] | None,
                     path: Path) -> Path:
    """Write a label map on the source scan's grid: its affine and NIfTI header (``prepare`` records
    them); without a record (official files), an affine from the spacing, with a warning once."""
    from transunet.data.datasets import case_geometry
    from transunet.data.nifti import reference_from_geometry, save_like

    geom = case_geometry(info, case_id)
    if geom is not None:
        ref = reference_from_geometry(geom, Path(info["root"]) / "dataset.json")
        if tuple(ref.shape[:3]) == tuple(pred.shape[::-1]):
            return save_like(pred, ref, path, dtype=np.uint8)
        log.warning("%s: the recorded source geometry has shape %s, the volume %s; writing an affine from "
                    "the spacing", case_id, tuple(ref.shape[:3]), tuple(pred.shape[::-1]))
    elif not getattr(_save_prediction, "_warned", False):
        _save_prediction._warned = True  # type: ignore[attr-defined]
        log.warning("dataset %s records no source geometry (official files, or prepared by an older "
                    "transunet): predictions get an affine from the spacing and will not overlay the "
                    "original scans; prepare the dataset again to keep it", info.get("root"))
    return save_like(pred, None, path, affine=_affine_from_spacing(spacing))


def _existing_parent(path: Path) -> Path:
    """Create ``path`` lazily: staging files live in its nearest existing ancestor until the end."""
    p = path
    while not p.exists():
        p = p.parent
    return p


def _log_summary(summary: dict[str, Any]) -> None:
    for p, res in summary["protocols"].items():
        m = res["mean"]
        log.info("%s protocol: mean Dice %s, mean HD95 %s %s", p,
                 "–" if m["dice"] is None else f"{m['dice']:.4f}",
                 "–" if m["hd95"] is None else f"{m['hd95']:.2f}", res["hd95_unit"])


__all__ = [
    "BOOTSTRAP_SEED",
    "bootstrap_ci",
    "display_columns",
    "evaluate",
    "render_csv",
    "render_table",
    "resolve_checkpoint",
    "summarize_protocol",
]
