"""Evaluation: outputs, schema, protocol bookkeeping, run resolution and refusal of bad input."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from transunet import metrics as M
from transunet.checkpoint import save_checkpoint
from transunet.cli import main
from transunet.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, to_dict
from transunet.evaluate import (
    bootstrap_ci,
    display_columns,
    evaluate,
    resolve_checkpoint,
    summarize_protocol,
)
from transunet.registry import list_models, register_model

SYNAPSE = ["background", "spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach",
           "aorta", "pancreas"]


def _calculate_metric_percase(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """The official TransUNet function, verbatim (it binarises its arguments in place)."""
    metric = pytest.importorskip("medpy.metric")
    pred[pred > 0] = 1
    gt[gt > 0] = 1
    if pred.sum() > 0 and gt.sum() > 0:
        return metric.binary.dc(pred, gt), metric.binary.hd95(pred, gt)
    elif pred.sum() > 0 and gt.sum() == 0:
        return 1, 0
    else:
        return 0, 0


class BandNet(nn.Module):
    """Tiny deterministic segmenter: class k wins where the intensity is closest to k / K."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, img_size=(16, 16), **_: object) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.register_buffer("centers", torch.arange(num_classes, dtype=torch.float32) / num_classes)
        self.scale = nn.Parameter(torch.tensor(50.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K, H, W)
        return -self.scale * (x[:, :1] - self.centers.view(1, -1, 1, 1)) ** 2


if "_EvalBandNet" not in list_models():  # registered once per process, even if this module is re-imported
    register_model(BandNet, name="_EvalBandNet")


def _label(shape, k: int, seed: int, missing: tuple[int, ...] = ()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    S, H, W = shape
    for c in range(1, k):
        if c in missing:
            continue
        s0, h0, w0 = rng.integers(0, S - 2), rng.integers(0, H - 6), rng.integers(0, W - 6)
        lab[s0:s0 + 3, h0:h0 + 6, w0:w0 + 6] = c
    return lab


def write_dataset(root: Path, class_names=SYNAPSE, cases=("case0001", "case0002", "case0003"),
                  shape=(6, 20, 24), spacing=(2.5, 0.8, 0.8), missing=None) -> Path:
    """The official ``test_vol_h5`` layout plus a ``dataset.json``, with BandNet-friendly images."""
    k = len(class_names)
    (root / "test_vol_h5").mkdir(parents=True)
    (root / "lists").mkdir()
    for i, case in enumerate(cases):
        lab = _label(shape, k, i, (missing or {}).get(case, ()))
        img = (lab / k + np.random.default_rng(10 + i).normal(0, 0.01, shape)).astype(np.float32)
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f["image"], f["label"] = img, lab
    (root / "lists" / "test_vol.txt").write_text("\n".join(cases) + "\n")
    info = {"format": "transunet-prepared", "version": 1, "name": "toy", "modality": "CT",
            "class_names": list(class_names), "normalization": {"kind": "ct_window", "low": -125, "high": 275},
            "splits": {"test": list(cases)},
            "spacing": {c: list(spacing) for c in cases} if spacing else {}}
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def write_run(run: Path, data: Path, class_names=SYNAPSE, which: str = "best.pt", bootstrap: int = 200) -> Path:
    k = len(class_names)
    cfg = ExperimentConfig(name=run.name, output_dir=str(run.parent), data=DataConfig(root=str(data)),
                           model=ModelConfig(name="_EvalBandNet", num_classes=k, img_size=(16, 16)),
                           eval=EvalConfig(bootstrap=bootstrap, batch_size=4))
    return save_checkpoint(run / "checkpoints" / which, BandNet(k), "_EvalBandNet",
                           {"num_classes": k, "in_channels": 1, "img_size": (16, 16)}, config=to_dict(cfg),
                           preprocessing={"class_names": list(class_names),
                                          "normalization": {"kind": "ct_window", "low": -125, "high": 275}})


@pytest.fixture
def setup(tmp_path: Path):
    data = write_dataset(tmp_path / "data", missing={"case0002": (4,)})  # gallbladder absent in case0002
    run = tmp_path / "runs" / "toy"
    write_run(run, data)
    return run, data


def test_evaluate_writes_summary_csv_table_and_predictions(setup):
    run, data = setup
    out = evaluate(run, device="cpu", save_predictions=True)
    assert out == run / "eval" / "test"
    summary = json.loads((out / "summary.json").read_text())
    assert {"split", "checkpoint", "data_root", "class_names", "n_cases", "protocols", "cases"} <= set(summary)
    assert summary["n_cases"] == 3 and summary["class_names"] == SYNAPSE
    assert summary["checkpoint"] == str(run / "checkpoints" / "best.pt")
    off, cor = summary["protocols"]["official"], summary["protocols"]["corrected"]
    assert off["hd95_unit"] == "voxel" and cor["hd95_unit"] == "mm"
    for proto in (off, cor):
        assert set(proto["per_case"]) == {"case0001", "case0002", "case0003"}
        for stats in proto["per_class"].values():
            assert {"dice_mean", "dice_std", "dice_ci95", "hd95_mean", "hd95_std", "hd95_ci95", "n",
                    "n_missed", "n_false_positive"} <= set(stats)
        assert {"dice", "hd95", "dice_ci95", "hd95_ci95"} <= set(proto["mean"])
        lo, hi = proto["mean"]["dice_ci95"]
        assert lo <= proto["mean"]["dice"] <= hi
    assert off["mean"]["dice"] > 0.6  # BandNet segments the toy volumes well

    # the prediction files are the evaluated label maps: recompute every value from them
    for row in summary["cases"]:
        pred_img = nib.load(str(out / row["prediction"]))
        pred = np.transpose(np.asarray(pred_img.dataobj), (2, 1, 0))
        assert list(pred.shape) == row["shape"]
        assert np.allclose(pred_img.header.get_zooms(), (0.8, 0.8, 2.5))
        with h5py.File(data / "test_vol_h5" / f"{row['case_id']}.npy.h5") as f:
            gt = f["label"][:]
        for c in range(1, 9):
            ref = _calculate_metric_percase((pred == c).copy(), (gt == c).copy())  # official code + medpy
            got = off["per_case"][row["case_id"]][SYNAPSE[c]]
            assert got["dice"] == pytest.approx(ref[0], abs=1e-12) and got["hd95"] == pytest.approx(ref[1], abs=1e-12)
            cm = M.corrected_metric(pred == c, gt == c, (2.5, 0.8, 0.8))
            assert cor["per_case"][row["case_id"]][SYNAPSE[c]] == cm.to_dict()

    # official means: every case counts; gallbladder absent from case0002 scores Dice 0 there
    gb = off["per_class"]["gallbladder"]
    vals = [off["per_case"][c]["gallbladder"]["dice"] for c in sorted(off["per_case"])]
    assert gb["n"] == 3 and gb["dice_mean"] == pytest.approx(np.mean(vals))
    assert off["per_case"]["case0002"]["gallbladder"]["status"] in ("absent", "false_positive")
    # corrected: absent organs are excluded from the Dice mean
    if cor["per_case"]["case0002"]["gallbladder"]["status"] == "absent":
        assert cor["per_class"]["gallbladder"]["n"] == 2 and cor["per_class"]["gallbladder"]["n_absent"] == 1

    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 3 * 8 * 2
    assert {r["protocol"] for r in rows} == {"official", "corrected"}

    table = (out / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| Method"))
    assert header == ("| Method | DSC | HD95 | Aorta | Gallbladder | Kidney (L) | Kidney (R) | Liver | "
                      "Pancreas | Spleen | Stomach |")
    assert "_EvalBandNet (official, HD95 in voxels)" in table and "(corrected, HD95 in mm)" in table
    assert f"{off['mean']['dice'] * 100:.2f}" in table


def test_single_protocol_checkpoint_file_and_custom_out(setup, tmp_path):
    run, data = setup
    out = evaluate(run / "checkpoints" / "best.pt", data=data, protocol="corrected", out_dir=tmp_path / "ev",
                   device="cpu")
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["protocols"]) == ["corrected"]
    assert summary["cases"][0]["mean_dice_official"] is None
    assert not (out / "predictions").exists()


def test_best_falls_back_to_last_with_a_warning(tmp_path, caplog):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "runs" / "r"
    write_run(run, data, which="last.pt")
    with caplog.at_level(logging.WARNING):
        ckpt, root = resolve_checkpoint(run)
    assert ckpt == run / "checkpoints" / "last.pt" and root == run
    assert "best.pt" in caplog.text
    with pytest.raises(Exception, match="no checkpoints"):
        resolve_checkpoint(tmp_path)


def test_unknown_spacing_gives_voxel_unit(tmp_path, caplog):
    data = write_dataset(tmp_path / "data", spacing=None)
    run = tmp_path / "runs" / "r"
    write_run(run, data, bootstrap=0)
    with caplog.at_level(logging.WARNING):
        out = evaluate(run, device="cpu")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocols"]["corrected"]["hd95_unit"] == "voxel"
    assert summary["protocols"]["official"]["mean"]["dice_ci95"] is None  # bootstrap disabled
    assert "no voxel spacing" in caplog.text


def test_cli_evaluate_and_refusals(setup, tmp_path, capsys):
    run, data = setup
    assert main(["evaluate", str(run), "--device", "cpu", "--no-report"]) == 0
    summary = run / "eval" / "test" / "summary.json"
    before = summary.read_bytes()

    # a split the dataset does not have
    assert main(["evaluate", str(run), "--split", "val", "--device", "cpu", "--no-report"]) == 2
    assert "split 'val'" in capsys.readouterr().err

    # a checkpoint whose classes do not match the data
    other = write_dataset(tmp_path / "acdc", class_names=["background", "rv", "myo", "lv"])
    assert main(["evaluate", str(run), "--data", str(other), "--device", "cpu", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "9 classes" in err and len(err.strip().splitlines()) == 1

    # same number of classes, different names
    renamed = write_dataset(tmp_path / "renamed", class_names=["background"] + [f"organ{i}" for i in range(1, 9)])
    assert main(["evaluate", str(run), "--data", str(renamed), "--device", "cpu", "--no-report"]) == 2
    assert "trained on classes" in capsys.readouterr().err

    # a NaN volume: one-line error, the previous evaluation is left untouched
    with h5py.File(data / "test_vol_h5" / "case0003.npy.h5", "r+") as f:
        img = f["image"][:]
        img[2, 3, 4] = np.nan
        f["image"][...] = img
    assert main(["evaluate", str(run), "--device", "cpu", "--no-report", "--save-predictions",
                 "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "case0003" in err and "NaN" in err
    assert summary.read_bytes() == before
    assert not (run / "eval" / "test" / "predictions").exists()
    assert not list((run / "eval" / "test").glob(".predictions*"))

    # the dataset recorded in the checkpoint has moved: point to --data
    data.rename(tmp_path / "moved")
    assert main(["evaluate", str(run), "--device", "cpu", "--no-report"]) == 2
    assert "pass --data" in capsys.readouterr().err

    # a run folder without checkpoints
    assert main(["evaluate", str(tmp_path / "nothing"), "--no-report"]) == 2


def test_display_columns_paper_order_by_name():
    cols = display_columns(SYNAPSE)
    assert [h for _, h in cols] == ["Aorta", "Gallbladder", "Kidney (L)", "Kidney (R)", "Liver", "Pancreas",
                                    "Spleen", "Stomach"]
    assert [SYNAPSE[i] for i, _ in cols] == ["aorta", "gallbladder", "left kidney", "right kidney", "liver",
                                             "pancreas", "spleen", "stomach"]
    acdc = ["background", "right ventricle", "myocardium", "left ventricle"]
    assert display_columns(acdc) == [(1, "Right ventricle"), (2, "Myocardium"), (3, "Left ventricle")]


def test_bootstrap_ci_is_reproducible_and_nan_aware():
    rng = np.random.default_rng(0)
    vals = rng.uniform(0.5, 1.0, size=(12, 3))
    vals[0, 1] = np.nan  # an excluded case
    vals[:, 2] = np.nan  # a class never defined
    a, am = bootstrap_ci(vals, 500)
    b, bm = bootstrap_ci(vals, 500)
    assert a == b and am == bm
    assert a[0][0] <= np.nanmean(vals[:, 0]) <= a[0][1]
    assert a[1][0] <= np.nanmean(vals[:, 1]) <= a[1][1]
    assert a[2] is None
    assert am[0] <= np.nanmean(np.nanmean(vals[:, :2], axis=0)) <= am[1]
    assert bootstrap_ci(vals, 0) == ([None] * 3, None)


def test_corrected_summary_counts_failures_separately():
    C = M.ClassMetrics
    per_case = {
        "a": {1: C(0.8, 2.0, "ok", 1.0, 0.9), 2: C(0.0, None, "missed", None, 0.0)},
        "b": {1: C(0.6, 4.0, "ok", 2.0, 0.7), 2: C(None, None, "absent")},
        "c": {1: C(0.0, None, "false_positive", None, 0.0), 2: C(0.9, 1.0, "ok", 0.5, 1.0)},
    }
    s = summarize_protocol(per_case, ["bg", "x", "y"], "corrected", resamples=0,
                           penalty={"a": 100.0, "b": 100.0, "c": 50.0})
    x, y = s["per_class"]["x"], s["per_class"]["y"]
    assert x["dice_mean"] == pytest.approx((0.8 + 0.6 + 0.0) / 3) and x["n"] == 3
    assert x["hd95_mean"] == pytest.approx(3.0) and x["n_hd95"] == 2 and x["n_false_positive"] == 1
    assert x["hd95_penalized_mean"] == pytest.approx((2.0 + 4.0 + 50.0) / 3)
    assert y["dice_mean"] == pytest.approx(0.45) and y["n"] == 2 and y["n_missed"] == 1 and y["n_absent"] == 1
    assert y["hd95_mean"] == pytest.approx(1.0) and y["hd95_penalized_mean"] == pytest.approx(50.5)
    assert s["mean"]["dice"] == pytest.approx((x["dice_mean"] + y["dice_mean"]) / 2)
    assert s["mean"]["n_missed"] == 1 and s["mean"]["n_false_positive"] == 1
    assert x["dice_std"] == pytest.approx(np.std([0.8, 0.6, 0.0], ddof=1))
