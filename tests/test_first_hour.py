"""Issue 14, "the first hour of a new user": one test per numbered defect (each failed before its fix)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from transunet.checkpoint import save_checkpoint
from transunet.cli import main
from transunet.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, to_dict
from transunet.registry import list_models, register_model

LOW, HIGH = -125.0, 275.0
NAMES = ["background", "a", "b"]
K = len(NAMES)


class BandNet(nn.Module):
    """Class k wins where the normalised intensity is closest to k / K (no flip symmetry needed)."""

    def __init__(self, num_classes: int = K, in_channels: int = 1, img_size=(16, 16), **_: object) -> None:
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.register_buffer("centers", torch.arange(num_classes, dtype=torch.float32) / num_classes)
        self.scale = nn.Parameter(torch.tensor(50.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K, H, W)
        return -self.scale * (x[:, :1] - self.centers.view(1, -1, 1, 1)) ** 2


if "_FirstHourBandNet" not in list_models():
    register_model(BandNet, name="_FirstHourBandNet")

#: An LPS-like scanner affine with an origin far from 0 (as BTCV's img0001: negative x/y axes).
SOURCE_AFFINE = np.array([[-0.7, 0.0, 0.0, 221.6],
                          [0.0, -0.8, 0.0, 221.6],
                          [0.0, 0.0, 2.5, -191.9],
                          [0.0, 0.0, 0.0, 1.0]])


def write_raw(raw: Path, n: int = 5, shape=(20, 18, 6)) -> Path:
    """A ``nifti``-kind raw dataset: images/ and labels/ with a scanner affine and q/sform codes."""
    (raw / "images").mkdir(parents=True)
    (raw / "labels").mkdir()
    for i in range(n):
        rng = np.random.default_rng(i)
        lab = np.zeros(shape, np.uint8)
        lab[4:10, 3:12, :] = 1
        lab[12:, :6, 2:] = 2
        hu = (LOW + (HIGH - LOW) * lab / K + rng.normal(0, 2, shape)).astype(np.float32)
        for folder, arr in (("images", hu), ("labels", lab)):
            img = nib.Nifti1Image(arr, SOURCE_AFFINE)
            img.set_qform(SOURCE_AFFINE, code=1)
            img.set_sform(SOURCE_AFFINE, code=2)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, str(raw / folder / f"case{i:02d}.nii.gz"))
    return raw


def write_run(run: Path, data: Path, augment: str = "official", which: str = "best.pt") -> Path:
    cfg = ExperimentConfig(name=run.name, output_dir=str(run.parent),
                           data=DataConfig(root=str(data), augment=augment),
                           model=ModelConfig(name="_FirstHourBandNet", num_classes=K, img_size=(16, 16)),
                           eval=EvalConfig(bootstrap=20, batch_size=4))
    return save_checkpoint(run / "checkpoints" / which, BandNet(K), "_FirstHourBandNet",
                           {"num_classes": K, "in_channels": 1, "img_size": (16, 16)}, config=to_dict(cfg),
                           preprocessing={"class_names": NAMES,
                                          "normalization": {"kind": "ct_window", "low": LOW, "high": HIGH}})


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, Path]:
    from transunet.data.prepare import prepare

    raw = write_raw(tmp_path / "raw")
    data = prepare("nifti", raw, tmp_path / "data", val_cases=1, normalization="ct")
    info = json.loads((data / "dataset.json").read_text())
    info["class_names"] = NAMES
    (data / "dataset.json").write_text(json.dumps(info))
    return raw, data


# ----------------------------------------------------------------------------- defect 3


def test_saved_predictions_overlay_the_source_scans(prepared, tmp_path):
    from transunet.evaluate import evaluate

    raw, data = prepared
    run = tmp_path / "runs" / "toy"
    write_run(run, data)
    out = evaluate(run, device="cpu", save_predictions=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"]
    for row in summary["cases"]:
        src = nib.load(str(raw / "images" / f"{row['case_id']}.nii.gz"))
        pred = nib.load(str(out / row["prediction"]))
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine, atol=1e-5)
        assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(src.affine) == ("L", "P", "S")
        for form in ("qform", "sform"):
            code = f"{form}_code"
            assert int(pred.header[code]) == int(src.header[code])
            np.testing.assert_allclose(getattr(pred, f"get_{form}")(), getattr(src, f"get_{form}")(), atol=1e-5)
        assert pred.header.get_xyzt_units() == src.header.get_xyzt_units()
        # the same voxel lands on the same world point
        ijk = np.array([3, 5, 2, 1.0])
        np.testing.assert_allclose(pred.affine @ ijk, src.affine @ ijk, atol=1e-5)
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "predictions").stat().st_mode & 0o777 == 0o777 & ~umask


# ----------------------------------------------------------------------------- defect 2


def _scan(path: Path) -> Path:
    img_raw = write_raw(path.parent / "scanraw", n=1)
    src = img_raw / "images" / "case00.nii.gz"
    return src


def test_tta_only_with_the_flips_the_model_was_trained_with(tmp_path, capsys, caplog):
    from transunet.infer import Predictor, predict_path

    scan = _scan(tmp_path / "x")
    plain = write_run(tmp_path / "runs" / "plain", tmp_path, augment="none")
    flips = write_run(tmp_path / "runs" / "flips", tmp_path, augment="official")
    assert Predictor.from_checkpoint(plain, device="cpu").trained_flips == ()
    assert Predictor.from_checkpoint(flips, device="cpu").trained_flips == ((3,), (2,))

    # a model trained without flips: --tta is refused with the fix, one error line, exit 2
    code = main(["predict", str(plain), str(scan), "-o", str(tmp_path / "p.nii.gz"), "--tta", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:")
    assert "without flips" in err[0] and "--force-tta" in err[0]
    assert not (tmp_path / "p.nii.gz").exists()
    with pytest.raises(Exception, match="force_tta"):
        predict_path(plain, scan, tmp_path / "p.nii.gz", device="cpu", tta=True)
    # --force-tta overrides, with a warning
    code = main(["predict", str(plain), str(scan), "-o", str(tmp_path / "p.nii.gz"), "--tta", "--force-tta",
                 "--device", "cpu"])
    assert code == 0 and (tmp_path / "p.nii.gz").is_file()
    assert "trained without flips" in caplog.text
    # a model trained with flips uses them
    assert main(["predict", str(flips), str(scan), "-o", str(tmp_path / "q.nii.gz"), "--tta", "--device", "cpu"]) == 0


def test_evaluate_tta_follows_the_training_augmentation(prepared, tmp_path, capsys):
    from transunet.evaluate import evaluate

    _, data = prepared
    run = tmp_path / "runs" / "plain"
    write_run(run, data, augment="none")
    code = main(["evaluate", str(run), "--tta", "--device", "cpu", "--no-report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--force-tta" in err[0]
    out = evaluate(run, device="cpu", tta=True, force_tta=True)
    assert json.loads((out / "summary.json").read_text())["tta"] is True


# ----------------------------------------------------------------------------- defect 4


def test_evaluating_another_split_keeps_the_first_report(prepared, tmp_path, capsys):
    _, data = prepared
    run = tmp_path / "runs" / "toy"
    write_run(run, data)
    assert main(["evaluate", str(run), "--device", "cpu"]) == 0
    test_report = run / "report" / "test"
    before = sorted(p.name for p in test_report.iterdir())
    assert "index.html" in before and any(n.startswith("overlay_") for n in before)
    assert main(["evaluate", str(run), "--split", "val", "--device", "cpu"]) == 0
    assert sorted(p.name for p in test_report.iterdir()) == before  # nothing of the test report deleted
    assert (run / "report" / "val" / "index.html").is_file()
    assert (run / "eval" / "test" / "summary.json").is_file() and (run / "eval" / "val" / "summary.json").is_file()
    capsys.readouterr()

    # evaluating the same split again refuses to replace it, as the other commands do
    stamp = (run / "eval" / "test" / "summary.json").stat().st_mtime_ns
    assert main(["evaluate", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--overwrite" in err[0]
    assert (run / "eval" / "test" / "summary.json").stat().st_mtime_ns == stamp
    assert main(["evaluate", str(run), "--device", "cpu", "--overwrite"]) == 0
    assert (run / "eval" / "test" / "summary.json").stat().st_mtime_ns != stamp


# ----------------------------------------------------------------------------- defect 7


def test_predict_accepts_a_run_folder_and_says_which_checkpoint(tmp_path, caplog, capsys):
    import logging

    from transunet.infer import Predictor

    scan = _scan(tmp_path / "x")
    run = tmp_path / "runs" / "r"
    write_run(run, tmp_path, which="last.pt")  # no validation: only last.pt
    with caplog.at_level(logging.INFO):
        assert main(["predict", str(run), str(scan), "-o", str(tmp_path / "p.nii.gz"), "--device", "cpu"]) == 0
    assert (tmp_path / "p.nii.gz").is_file()
    assert str(run / "checkpoints" / "last.pt") in caplog.text
    write_run(run, tmp_path, which="best.pt")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        predictor = Predictor.from_checkpoint(run, device="cpu")
    assert predictor.path == run / "checkpoints" / "best.pt"
    assert str(run / "checkpoints" / "best.pt") in caplog.text
    # an empty folder: one error line that says what a run folder holds
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "empty"), str(scan), "-o", str(tmp_path / "q.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoints/best.pt" in err[0]


# ----------------------------------------------------------------------------- defect 8


def test_report_rebuilds_any_folder_evaluate_writes(prepared, tmp_path, capsys):
    _, data = prepared
    run = tmp_path / "runs" / "toy"
    write_run(run, data)
    ev = tmp_path / "elsewhere"
    assert main(["evaluate", str(run), "--out", str(ev), "--device", "cpu", "--no-report"]) == 0
    assert main(["report", str(ev), "--device", "cpu"]) == 0
    assert (ev / "report" / "index.html").is_file()
    assert str(ev / "report" / "index.html") in capsys.readouterr().out
    assert not (run / "report").exists()  # the run's own reports are not touched
    # the default evaluation folder of another split works the same way
    assert main(["evaluate", str(run), "--split", "val", "--device", "cpu", "--no-report"]) == 0
    assert main(["report", str(run / "eval" / "val"), "--device", "cpu"]) == 0
    assert (run / "report" / "val" / "index.html").is_file()  # where 'evaluate --split val' puts it
    capsys.readouterr()
    # a folder that holds neither: the error names both places looked at
    (tmp_path / "nothing").mkdir()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "summary.json" in err[0] and "eval/test/summary.json" in err[0]


# ----------------------------------------------------------------------------- defect 6


def test_training_logs_through_tqdm_and_into_train_log(tmp_path, capsys):
    import logging
    import sys

    from test_train import make_dataset, tiny_cfg

    from transunet.train import train

    data = make_dataset(tmp_path / "tiny")
    cfg = tiny_cfg(data, tmp_path / "runs", "logged")
    console = logging.StreamHandler(sys.stderr)  # what 'transunet' (logging.basicConfig) installs
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(console)
    root.setLevel(logging.INFO)
    try:
        run = train(cfg, stop_after_epochs=1)
        err = capsys.readouterr().err
        lines = [seg.split("\r")[-1] for seg in err.split("\n") if "epoch 1/2 |" in seg]
        assert lines and all(line.startswith("INFO transunet") for line in lines), lines  # not inside the bar
        log_file = run / "train.log"
        first = log_file.read_text()
        assert "epoch 1/2 |" in first and "training" in first
        train(cfg, resume=True)
        text = log_file.read_text()
        assert text.startswith(first)  # appended on resume
        assert "resumed" in text and "epoch 2/2 |" in text
    finally:
        root.removeHandler(console)
        root.setLevel(old_level)


# ----------------------------------------------------------------------------- defect 10


def test_yaml_errors_keep_line_and_column_and_typos_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain:\n  lr: 0.01\n  epochs: [1, 2\nmodel:\n  name: TransUNet-Tiny\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
    assert "line 5" in err[0] and "column" in err[0]  # where PyYAML found the problem

    typo = tmp_path / "typo.yaml"
    typo.write_text("name: x\ntrain:\n  lr: 0.01\n  epohcs: 3\n")
    assert main(["train", str(typo)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(typo) in err[0] and "train.epohcs" in err[0] and "epochs" in err[0]
    assert "line 4" in err[0]


# ----------------------------------------------------------------------------- defect 9


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_options_are_discoverable(tmp_path, capsys):
    import argparse

    from transunet.cli import build_parser

    # every option of every command explains itself
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subs.choices.items():
        if name == "compare":  # another issue's command
            continue
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]} has no help text"
    text = _help(capsys, "phantom")
    assert "(default: 30)" in text and "(default: btcv)" in text
    assert "(default: test)" in _help(capsys, "report")
    assert "(default: transunet_demo)" in _help(capsys, "demo")
    text = _help(capsys, "profile")
    assert "--img-size H [W]" in text and "[H [W] ...]" not in text
    text = _help(capsys, "train")
    for name in ("synapse", "acdc", "demo"):
        assert name in text
    assert "--print-config" in text and "--list-keys" in text

    # the resolved config, without training
    out = tmp_path / "runs"
    assert main(["train", "demo", "--set", "train.lr=0.003", "--set", f"output_dir={out}", "--print-config"]) == 0
    text = capsys.readouterr().out
    import yaml

    cfg = yaml.safe_load(text)
    assert cfg["train"]["lr"] == 0.003 and cfg["model"]["name"]
    assert not out.exists()
    # the valid keys with their types and defaults
    assert main(["train", "--list-keys"]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if ln.split() and ln.split()[0] == "train.lr")
    assert "float" in line and "0.01" in line
    assert any(ln.split() and ln.split()[0] == "model.img_size" for ln in text.splitlines())
    assert main(["train"]) == 2  # a config is still required to train
    assert "CONFIG" in capsys.readouterr().err

    # a pattern that matches nothing says so
    assert main(["list-models", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no registered model matches 'tiny'")
    assert "TransUNet-Tiny" in err[0]


# ----------------------------------------------------------------------------- defect 5


def test_interrupted_demo_resumes_its_own_training(tmp_path, caplog, monkeypatch):
    import logging

    from transunet import demo
    from transunet.train import trainer as trainer_mod

    tiny = ["model.img_size=[32,32]", "train.epochs=2", "train.iterations_per_epoch=2", "train.batch_size=4",
            "train.val_every=1", "eval.bootstrap=20", "eval.batch_size=64"]
    out = tmp_path / "demo"
    original = trainer_mod.Trainer._log_epoch

    def interrupt_after_first_epoch(self, record):
        original(self, record)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "_log_epoch", interrupt_after_first_epoch)
    with caplog.at_level(logging.INFO), pytest.raises(KeyboardInterrupt):
        demo.run_demo(out, device="cpu", cases=4, val_cases=1, overrides=tiny)
    assert "--resume" not in caplog.text  # the demo has no --resume: say what to do instead
    assert "run the demo again" in caplog.text
    run = out / "runs" / demo.demo_config(out).name
    assert (run / "checkpoints" / "last.pt").is_file()

    monkeypatch.setattr(trainer_mod.Trainer, "_log_epoch", original)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        index = demo.run_demo(out, device="cpu", cases=4, val_cases=1, overrides=tiny)
    assert index.is_file()
    assert "resumed" in caplog.text and "epoch 1/2 |" not in caplog.text and "epoch 2/2 |" in caplog.text
    assert json.loads((out / demo.MARKER).read_text())["finished"] is True


# ----------------------------------------------------------------------------- defect 1


def test_thread_count_follows_free_cores_processes_and_explicit_choice(monkeypatch):
    from transunet.utils import choose_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(cores=2, busy=0.0, local_world_size=1)[0] == 2
    assert choose_threads(cores=2, busy=1.0, local_world_size=1)[0] == 1  # one core already busy
    assert choose_threads(cores=2, busy=5.0, local_world_size=1)[0] == 1  # never below 1
    assert choose_threads(cores=16, busy=0.0, local_world_size=4)[0] == 4  # DDP: cores shared per process
    assert choose_threads(cores=16, busy=8.0, local_world_size=4)[0] == 2
    assert choose_threads(3, cores=2, busy=2.0, local_world_size=1)[0] == 3  # explicit always wins
    n, why = choose_threads(cores=2, busy=1.0, local_world_size=1)
    assert "2 core" in why and "busy" in why and "--threads" in why
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_threads(cores=8, busy=7.0, local_world_size=1)[0] == 2  # the user's environment is explicit
    assert choose_threads(1, cores=8, busy=0.0, local_world_size=1)[0] == 1


def test_slow_steps_warn_with_the_fix(caplog):
    import logging

    from transunet.utils import ThreadMonitor

    mon = ThreadMonitor(threads=2, min_seconds=1.0)
    with caplog.at_level(logging.WARNING):
        # 10 steps of 1 s wall time in which the process got 0.6 s of CPU over 2 threads: 30% of its cores
        for i in range(10):
            mon.step(wall=float(i), cpu=0.6 * i)
    assert len([r for r in caplog.records if "threads" in r.getMessage()]) == 1
    msg = caplog.records[-1].getMessage()
    assert "--threads 1" in msg and "30%" in msg
    caplog.clear()
    ok = ThreadMonitor(threads=2, min_seconds=1.0)
    with caplog.at_level(logging.WARNING):
        for i in range(10):
            ok.step(wall=float(i), cpu=1.9 * i)
    assert not caplog.records


def test_training_applies_and_logs_the_thread_choice_once(tmp_path, caplog, monkeypatch):
    import logging

    from test_train import make_dataset, tiny_cfg

    from transunet import utils
    from transunet.train import train
    from transunet.train import trainer as trainer_mod

    seen = []
    original = trainer_mod.Trainer._log_epoch
    monkeypatch.setattr(trainer_mod.Trainer, "_log_epoch",
                        lambda self, r: (seen.append(torch.get_num_threads()), original(self, r)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(utils, "_cores", lambda: 2)
    monkeypatch.setattr(utils, "_busy_cores", lambda cores: 1.0)  # another process keeps one core busy
    data = make_dataset(tmp_path / "tiny")
    before = torch.get_num_threads()
    with caplog.at_level(logging.INFO):
        train(tiny_cfg(data, tmp_path / "runs", "auto", **{"train.epochs": 1}))
    assert seen == [1]
    assert len([r for r in caplog.records if "intra-op threads" in r.getMessage()]) == 1
    assert torch.get_num_threads() == before  # restored for the caller
    seen.clear()
    assert main(["train", str(tmp_path / "runs" / "auto" / "config.yaml"), "--set", "name=explicit",
                 "--threads", "2"]) == 0
    assert seen == [2]


# ----------------------------------------------------------------------------- also found: unsafe vs corrupt files


def test_corrupt_and_unsafe_checkpoints_get_their_own_messages(tmp_path, recwarn):
    import pickle

    from transunet.errors import CheckpointError
    from transunet.weights import torch_load

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"a": Evil()}))
    garbage = tmp_path / "last.pt"
    garbage.write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as e:
        torch_load(evil)
    msg = str(e.value)
    assert "refused by the safe loader" in msg and "weights_only=False" not in msg
    assert "trusted" in msg
    assert not [w for w in recwarn.list if "pickle protocol" in str(w.message)]  # torch's warning is not shown
    with pytest.raises(CheckpointError) as e:
        torch_load(garbage)
    msg = str(e.value)
    assert "corrupt" in msg or "truncated" in msg
    assert "safe loader" not in msg and "weights_only=False" not in msg
