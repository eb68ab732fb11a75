"""Training: short runs on a tiny synthetic dataset with TransUNet-Tiny at 32x32.

Covers: loss goes down and every output is written; exact resume (with and without DataLoader
workers); bf16 autocast on CPU; the frozen-transformer stage; NaN stop keeping the last good
checkpoint; refusing to overwrite a run; config errors; a 2-process torchrun (gloo) run.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from transunet.checkpoint import load_checkpoint, model_from_checkpoint
from transunet.cli import main as cli_main
from transunet.config import ExperimentConfig, load_config, save_config
from transunet.errors import ConfigError
from transunet.paths import run_paths
from transunet.registry import list_models, register_model
from transunet.train import Trainer, TrainingDivergedError, train
from transunet.train.distributed import DistInfo, state_hash
from transunet.train.schedule import PolySchedule
from transunet.train.validation import foreground_dice, summarize

CLASSES = ["background", "square", "disc"]
IMG = 32


# ----------------------------------------------------------------------------- tiny dataset


def _synthetic_slice(rng: np.random.Generator, size: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A noisy slice with a bright square (class 1) and a mid-grey disc (class 2)."""
    img = rng.normal(0.1, 0.05, (size, size)).astype(np.float32)
    lab = np.zeros((size, size), np.uint8)
    y, x = rng.integers(2, size // 2 - 2, 2)
    s = int(rng.integers(6, 12))
    img[y:y + s, x:x + s] += 0.8
    lab[y:y + s, x:x + s] = 1
    cy, cx = rng.integers(size // 2 + 4, size - 6, 2)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(3, 5)) ** 2
    img[disc] += 0.45
    lab[disc] = 2
    return np.clip(img, 0, 1), lab


def make_dataset(root: Path, train_cases: int = 3, slices: int = 4, val_cases: int = 1) -> Path:
    """Write a tiny dataset in the prepared layout (dataset.json, train_npz/, test_vol_h5/, lists/)."""
    rng = np.random.default_rng(0)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    (root / "lists").mkdir()
    train_ids = [f"case{i:04d}" for i in range(1, train_cases + 1)]
    val_ids = [f"case{i:04d}" for i in range(100, 100 + val_cases)]
    names = []
    for case in train_ids:
        for s in range(slices):
            img, lab = _synthetic_slice(rng)
            name = f"{case}_slice{s:03d}"
            np.savez(root / "train_npz" / f"{name}.npz", image=img, label=lab)
            names.append(name)
    for case in val_ids:
        pairs = [_synthetic_slice(rng) for _ in range(slices)]
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f["image"] = np.stack([p[0] for p in pairs])
            f["label"] = np.stack([p[1] for p in pairs])
    (root / "lists" / "train.txt").write_text("\n".join(names) + "\n")
    (root / "lists" / "val.txt").write_text("\n".join(val_ids) + "\n")
    (root / "dataset.json").write_text(json.dumps({
        "format": "transunet-prepared", "version": 1, "name": "tiny", "modality": "CT",
        "class_names": CLASSES, "normalization": {"kind": "ct_window", "low": -125, "high": 275},
        "splits": {"train": train_ids, "val": val_ids}, "spacing": {},
    }))
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny_data"))


def tiny_cfg(data_root: Path, out: Path, name: str = "run", **overrides: Any) -> ExperimentConfig:
    """TransUNet-Tiny at 32x32, batch 4 (3 iterations per epoch), 2 epochs, validation every epoch."""
    sets = {
        "name": name, "output_dir": str(out), "device": "cpu",
        "model.name": "TransUNet-Tiny", "model.num_classes": 3, "model.img_size": IMG,
        "model.dropout": 0.1, "model.drop_path": 0.1,
        "data.root": str(data_root), "data.num_workers": 0,
        "train.batch_size": 4, "train.epochs": 2, "train.lr": 0.05, "train.seed": 7,
        "eval.batch_size": 8,
    }
    sets.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def reference_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-epoch run (no workers) shared by several tests."""
    out = tmp_path_factory.mktemp("runs")
    return train(tiny_cfg(data_root, out, "reference"))


# ----------------------------------------------------------------------------- runs


def test_short_run_lowers_loss_and_writes_everything(reference_run: Path, data_root: Path) -> None:
    paths = run_paths(load_config(reference_run / "config.yaml"))
    assert paths.root == reference_run
    for p in (paths.config, paths.last, paths.best, paths.metrics, paths.progress_png):
        assert p.is_file(), p
    assert paths.progress_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = list(csv.DictReader(paths.metrics.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [int(r["iteration"]) for r in rows] == [3, 6]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    for r in rows:
        assert 0.0 <= float(r["val_mean_dice"]) <= 1.0
        assert {"val_dice_square", "val_dice_disc"} <= set(r)
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.05

    last = load_checkpoint(paths.last)
    ts = last["train_state"]
    assert ts["epoch"] == 2 and ts["iteration"] == 6 and len(ts["history"]) == 2
    assert last["config"]["train"]["lr"] == 0.05
    assert last["preprocessing"]["class_names"] == CLASSES
    best = load_checkpoint(paths.best)
    assert best["meta"]["selected_by"] == "val_mean_dice"
    assert best["train_state"]["best_score"] == pytest.approx(max(float(r["val_mean_dice"]) for r in rows), rel=1e-5)
    # The checkpoint rebuilds a plain model that predicts (B, K, H, W) logits.
    model, _ = model_from_checkpoint(paths.best)
    assert model(torch.zeros(1, 1, IMG, IMG)).shape == (1, 3, IMG, IMG)


def test_tensorboard_events_when_installed(reference_run: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(reference_run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/train_loss", "train/lr", "val/val_mean_dice", "val/val_dice_square"} <= tags
    assert [e.step for e in acc.Scalars("train/train_loss")] == [3, 6]


def test_refuses_to_overwrite_and_resume_of_finished_run_is_noop(reference_run: Path, data_root: Path) -> None:
    cfg = tiny_cfg(data_root, reference_run.parent, "reference")
    before = (reference_run / "checkpoints" / "last.pt").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="already has checkpoints.*--resume"):
        train(cfg)
    assert train(cfg, resume=True) == reference_run  # all epochs done: nothing trained
    assert (reference_run / "checkpoints" / "last.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize("workers,stop_after", [(0, 1), (2, 1)])
def test_resume_is_bit_exact(reference_run: Path, data_root: Path, tmp_path: Path, workers: int,
                             stop_after: int) -> None:
    cfg = tiny_cfg(data_root, tmp_path, "interrupted", **{"data.num_workers": workers})
    train(cfg, stop_after_epochs=stop_after)
    mid = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pt")
    assert mid["train_state"]["epoch"] == stop_after
    train(cfg, resume=True)
    ref = load_checkpoint(reference_run / "checkpoints" / "last.pt")
    got = load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pt")
    assert _states_equal(ref["state_dict"], got["state_dict"]) == []
    mom_ref = ref["train_state"]["optimizer"]["state"]
    mom_got = got["train_state"]["optimizer"]["state"]
    assert all(torch.equal(mom_ref[k]["momentum_buffer"], mom_got[k]["momentum_buffer"]) for k in mom_ref)
    assert [r["train_loss"] for r in ref["train_state"]["history"]] == \
        [r["train_loss"] for r in got["train_state"]["history"]]
    rows = list(csv.DictReader((tmp_path / "interrupted" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


def test_bf16_autocast_on_cpu_without_validation(data_root: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(data_root, tmp_path, "bf16", **{"train.amp": "bf16", "train.epochs": 1,
                                                   "data.val_split": "null"})
    trainer = Trainer(cfg, DistInfo())
    seen: list[torch.dtype] = []
    trainer.model.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
    trainer.fit()
    assert seen and set(seen) == {torch.bfloat16}  # logits came out of autocast in bf16
    last = load_checkpoint(tmp_path / "bf16" / "checkpoints" / "last.pt")
    assert all(v.dtype != torch.bfloat16 for v in last["state_dict"].values())  # fp32 master weights
    assert math.isfinite(last["train_state"]["history"][0]["train_loss"])
    # Without validation best.pt is the final model, and says so.
    best = load_checkpoint(tmp_path / "bf16" / "checkpoints" / "best.pt")
    assert best["meta"]["selected_by"] == "final_epoch"
    assert _states_equal(best["state_dict"], last["state_dict"]) == []
    row = next(csv.DictReader((tmp_path / "bf16" / "metrics.csv").open()))
    assert row["val_mean_dice"] == "" and row["train_loss"] != ""


def test_two_stage_freezes_then_trains_transformer(data_root: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(data_root, tmp_path, "two_stage", **{
        "train.freeze_transformer_epochs": 1, "train.stage2_lr_scale": 0.1, "train.epochs": 2,
        "model.dropout": 0.0, "model.drop_path": 0.0})
    trainer = Trainer(cfg, DistInfo())
    tnames = {n for n, p in trainer.model.named_parameters()
              if any(p is q for q in trainer.model.param_groups()["transformer"])}
    assert tnames
    init = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(stop_after_epochs=1)
    after1 = load_checkpoint(tmp_path / "two_stage" / "checkpoints" / "last.pt")["state_dict"]
    changed = set(_states_equal(init, after1))
    assert not (changed & tnames), "frozen transformer parameters changed in stage 1"
    others = {n for n, _ in trainer.model.named_parameters()} - tnames
    assert others & changed == others, "non-transformer parameters must train in stage 1"
    train(cfg, resume=True)
    final = load_checkpoint(tmp_path / "two_stage" / "checkpoints" / "last.pt")
    assert tnames <= set(_states_equal(after1, final["state_dict"])), "stage 2 must train the transformer"
    # Stage 2 keeps the poly curve and scales it: lr(it) = 0.05 * 0.1 * (1 - it / 6) ** 0.9.
    hist = final["train_state"]["history"]
    assert hist[0]["lr"] == pytest.approx(0.05 * (1 - 2 / 6) ** 0.9)  # stage 1, iteration 2
    assert hist[1]["lr"] == pytest.approx(0.05 * 0.1 * (1 - 5 / 6) ** 0.9)  # stage 2, iteration 5


def test_pretrained_initialises_the_model(reference_run: Path, data_root: Path, tmp_path: Path) -> None:
    best = reference_run / "checkpoints" / "best.pt"
    trainer = Trainer(tiny_cfg(data_root, tmp_path, "finetune", **{"model.pretrained": str(best)}), DistInfo())
    assert _states_equal(load_checkpoint(best)["state_dict"], trainer.model.state_dict()) == []


class _NaNAfter(nn.Module):
    """A tiny conv net whose training forward returns NaN from its 4th call."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, **_: Any) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.training:
            self.calls += 1
            if self.calls > 3:
                out = out * float("nan")
        return out


if "_test_nan_after" not in list_models():
    register_model(_NaNAfter, name="_test_nan_after")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_root: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(data_root, tmp_path, "nan", **{"model.name": "_test_nan_after"})
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 2, iteration 4.*last\.pt"):
        train(cfg)
    last = load_checkpoint(tmp_path / "nan" / "checkpoints" / "last.pt")
    assert last["train_state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    # The CLI reports it as one line and exit code 2.
    save_config(cfg, tmp_path / "nan.yaml")
    assert cli_main(["train", str(tmp_path / "nan.yaml"), "--set", "name=nan2"]) == 2


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("overrides,match", [
    ({"train.amp": "fp16"}, "fp16.*needs CUDA.*bf16"),
    ({"model.num_classes": 4}, "model.num_classes=4 but dataset .* has 3 classes"),
    ({"data.val_split": "nope"}, "data.val_split='nope' has no cases"),
    ({"data.root": "/nonexistent/data"}, "data.root=.*does not exist"),
    ({"model.pretrained": "/nonexistent/R50+ViT-B_16.npz"}, "model.pretrained=.*does not exist"),
    ({"model.name": "TransUNet-Tiyn"}, "Did you mean 'TransUNet-Tiny'"),
])
def test_config_errors_are_one_line(data_root: Path, tmp_path: Path, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises((ConfigError, KeyError), match=match) as exc:
        train(tiny_cfg(data_root, tmp_path, **overrides))
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_errors(data_root: Path, tmp_path: Path, reference_run: Path) -> None:
    with pytest.raises(ConfigError, match="--resume was given but .*last.pt does not exist"):
        train(tiny_cfg(data_root, tmp_path, "fresh"), resume=True)
    changed = tiny_cfg(data_root, reference_run.parent, "reference", **{"train.lr": 0.1})
    with pytest.raises(ConfigError, match="train.lr: run has 0.05, given 0.1"):
        train(changed, resume=True)
    with pytest.raises(ConfigError, match="stop_after_epochs"):
        train(tiny_cfg(data_root, tmp_path), stop_after_epochs=0)
    # A YAML path works like the config object (here: refused, the run exists).
    with pytest.raises(ConfigError, match="already has checkpoints"):
        train(reference_run / "config.yaml")


# ----------------------------------------------------------------------------- pieces


def test_poly_schedule_matches_paper_formula() -> None:
    s = PolySchedule(base_lr=0.01, total_iterations=100, power=0.9)
    assert s.lr(0) == 0.01
    assert s.lr(50) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert s.lr(100) == 0.0 and s.stage(99) == 1
    two = PolySchedule(0.01, 100, 0.9, freeze_epochs=2, stage2_lr_scale=0.1, iterations_per_epoch=10)
    assert two.stage2_start == 20 and two.stage(19) == 1 and two.stage(20) == 2
    assert two.lr(19) == pytest.approx(0.01 * (1 - 0.19) ** 0.9)
    assert two.lr(20) == pytest.approx(0.001 * (1 - 0.20) ** 0.9)


def test_foreground_dice_empty_rules() -> None:
    gt = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros_like(gt)
    gt[0, :2, :2] = 1
    pred[0, :2, :1] = 1  # class 1: 2*2/(2+4)
    pred[1, 0, 0] = 2  # class 2: predicted but absent -> 0
    d = foreground_dice(pred, gt, 4)  # class 3 absent from both -> NaN
    assert d[0] == pytest.approx(2 / 3) and d[1] == 0.0 and math.isnan(d[2])
    s = summarize({"a": d.tolist(), "b": [1.0, math.nan, math.nan]}, ["bg", "x", "y", "z"])
    assert s["per_class"]["x"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["per_class"]["y"] == 0.0 and math.isnan(s["per_class"]["z"])
    assert s["mean_dice"] == pytest.approx(((2 / 3 + 1) / 2 + 0.0) / 2)


# ----------------------------------------------------------------------------- torchrun


def test_torchrun_two_processes_gloo(data_root: Path, tmp_path: Path) -> None:
    # Two-stage training also exercises re-wrapping DDP when the transformer is unfrozen.
    cfg = tiny_cfg(data_root, tmp_path, "ddp", **{"train.freeze_transformer_epochs": 1})
    save_config(cfg, tmp_path / "ddp.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "transunet", "train", str(tmp_path / "ddp.yaml")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 1/2" in proc.stderr and "gloo" in proc.stderr
    last = tmp_path / "ddp" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    ts = ckpt["train_state"]
    assert ts["world_size"] == 2 and ts["epoch"] == 2
    hashes = ts["rank_state_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1], "ranks hold different weights"
    model, _ = model_from_checkpoint(last)  # loads into a plain model (no 'module.' prefixes)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert state_hash(model) == hashes[0]
    assert (tmp_path / "ddp" / "checkpoints" / "best.pt").is_file()
    assert len(list(csv.DictReader((tmp_path / "ddp" / "metrics.csv").open()))) == 2
    # global batch 4 over 2 processes: 12 slices -> 3 iterations per epoch, as with one process
    assert ts["iteration"] == 6
