"""Tests of ``transunet demo``: the whole pipeline at a tiny budget, and its refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from transunet import demo
from transunet.cli import main as cli_main
from transunet.errors import ConfigError

# A few iterations on 32x32 inputs: proves the plumbing, not the accuracy (the README states the
# full demo's measured Dice and time).
TINY = ["model.img_size=[32,32]", "train.epochs=1", "train.iterations_per_epoch=2", "train.batch_size=4",
        "train.val_every=1", "eval.bootstrap=20", "eval.batch_size=64"]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny demo run shared by the tests of this module; returns the demo folder."""
    out = tmp_path_factory.mktemp("demo") / "out"
    index = demo.run_demo(out, device="cpu", cases=4, val_cases=1, overrides=TINY)
    assert index.is_file()
    return out


def test_demo_writes_every_stage(tiny_demo: Path) -> None:
    out = tiny_demo
    record = json.loads((out / demo.MARKER).read_text())
    assert record["finished"] is True
    assert set(record["stages_s"]) == {"phantom", "prepare", "train", "evaluate_and_report"}
    assert record["total_s"] >= sum(record["stages_s"].values()) - 0.05  # each value rounded to 0.01 s
    assert (out / "raw" / "RawData" / "Training" / "img").is_dir()
    info = json.loads((out / "data" / "dataset.json").read_text())
    run = Path(record["run"])
    assert run == out / "runs" / demo.demo_config(out).name
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "metrics.csv").is_file()

    summary = json.loads((run / "eval" / "test" / "summary.json").read_text())
    test_cases = info["splits"]["test"]
    assert summary["n_cases"] == len(test_cases) == len(summary["cases"])
    assert sorted(c["case_id"] for c in summary["cases"]) == sorted(test_cases)
    assert set(summary["protocols"]) == {"official", "corrected"}
    assert summary["protocols"]["official"]["hd95_unit"] == "voxel"
    assert summary["protocols"]["corrected"]["hd95_unit"] == "mm"
    for proto in summary["protocols"].values():
        assert set(proto["per_class"]) == set(info["class_names"][1:])
        assert set(proto["per_case"]) == set(test_cases)
        assert proto["mean"]["dice"] is None or 0.0 <= proto["mean"]["dice"] <= 1.0
    # demo.json repeats the evaluation's means
    for p in ("official", "corrected"):
        assert record["mean_dice"][p] == summary["protocols"][p]["mean"]["dice"]


def test_demo_report_renders(tiny_demo: Path, tmp_path: Path) -> None:
    from test_report import console_errors, run_chromium

    record = json.loads((tiny_demo / demo.MARKER).read_text())
    index = Path(record["report"])
    page = index.read_text()
    assert "Official protocol" in page and "Corrected protocol" in page
    n_images = page.count("data:image/png;base64,")
    assert n_images >= 2  # curves and at least one overlay (attention needs a foreground slice)
    dom, stderr = run_chromium(index, tmp_path)
    m = re.search(r'id="render-check" data-images="(\d+)" data-rendered="(\d+)"', dom)
    assert m and int(m.group(1)) == int(m.group(2)) == n_images
    assert console_errors(stderr) == []


def test_demo_refuses_a_finished_folder_without_overwrite(tiny_demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (tiny_demo / demo.MARKER).read_text()
    with pytest.raises(ConfigError, match="already holds a finished demo"):
        demo.run_demo(tiny_demo, device="cpu")
    assert cli_main(["demo", "--out", str(tiny_demo), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "--overwrite" in err and err.count("\n") == 1
    assert (tiny_demo / demo.MARKER).read_text() == before  # nothing was touched


def test_demo_never_writes_into_a_foreign_folder(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="no demo created"):
            demo.run_demo(mine, overwrite=overwrite, device="cpu")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        demo.run_demo(a_file, device="cpu")
    with pytest.raises(ConfigError, match="unknown config key"):
        demo.run_demo(tmp_path / "new", device="cpu", overrides=["train.lrr=1"])
    assert not (tmp_path / "new").exists()  # a bad config fails before anything is written


def test_claim_clears_only_the_demo_subfolders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for name in demo.OWNED:
        (out / name).mkdir(parents=True)
        (out / name / "f").write_text("old")
    (out / "mine.txt").write_text("keep")
    (out / demo.MARKER).write_text(json.dumps({"finished": False}))  # an interrupted demo
    demo._claim(out, overwrite=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([demo.MARKER, "mine.txt"])
    (out / demo.MARKER).write_text(json.dumps({"finished": True, "report": "r"}))
    (out / "runs").mkdir()
    with pytest.raises(ConfigError, match="finished demo"):
        demo._claim(out, overwrite=False)
    demo._claim(out, overwrite=True)
    assert not (out / "runs").exists() and (out / "mine.txt").read_text() == "keep"


def test_demo_config_points_into_the_demo_folder(tmp_path: Path) -> None:
    cfg = demo.demo_config(tmp_path / "d", "cpu", ["train.lr=0.02"])
    assert Path(cfg.data.root) == tmp_path / "d" / "data"
    assert Path(cfg.output_dir) == tmp_path / "d" / "runs"
    assert cfg.device == "cpu" and cfg.train.lr == 0.02
    assert cfg.model.name == "TransUNet-Tiny"
