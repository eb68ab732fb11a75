"""Tests of ``transunet compare``: statistics against scipy, Holm by hand, a reduced demo_compare end to
end (reuse, refusal of a changed config), bad input, and the report in headless Chromium."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from transunet import compare as cmp
from transunet.cli import main as cli_main
from transunet.errors import ConfigError, DataError
from transunet.evaluate import bootstrap_ci

# ----------------------------------------------------------------------------- statistics

# per-case Dice in % (whole numbers, so the differences and their ties are exact)
X = np.array([81, 77, 69, 90, 72, 66, 85, 79, 74, 88, 70, 83], dtype=float)
Y = np.array([78, 79, 61, 86, 70, 60, 86, 71, 69, 84, 62, 80], dtype=float)


def test_wilcoxon_matches_scipy_and_rank_biserial_by_hand() -> None:
    res = cmp.wilcoxon_test(X, Y)
    ref = stats.wilcoxon(X, Y, zero_method="wilcox", alternative="two-sided")
    assert res["n"] == 12
    assert res["statistic"] == pytest.approx(ref.statistic) and res["p"] == pytest.approx(ref.pvalue)
    d = X - Y
    assert res["mean_diff"] == pytest.approx(d.mean()) and res["median_diff"] == pytest.approx(np.median(d))
    # by hand: |d| = 3 2 8 4 2 6 1 8 5 4 8 3; ranks 1 (|1|), 2.5 (the two |2|), 4.5, 6.5, 8, 9, 11 (three |8|);
    # the negative differences -2 and -1 have ranks 2.5 and 1: R- = 3.5, R+ = 78 - 3.5
    assert stats.rankdata(np.abs(d))[d < 0].sum() == 3.5
    assert res["rank_biserial"] == pytest.approx((74.5 - 3.5) / 78)
    # NaN pairs are dropped from both sides; identical inputs give p = 1 and r = 0
    xn, yn = X.copy(), Y.copy()
    xn[0] = np.nan
    assert cmp.wilcoxon_test(xn, yn)["p"] == pytest.approx(stats.wilcoxon(X[1:], Y[1:]).pvalue)
    same = cmp.wilcoxon_test(X, X)
    assert same["p"] == 1.0 and same["rank_biserial"] == 0.0
    assert cmp.rank_biserial([1, 2, 3], [0, 0, 0]) == 1.0


def test_holm_against_a_hand_computed_example() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert cmp.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = cmp.holm([0.2, None, 0.6])  # None is kept and not counted: m = 2
    assert out[1] is None and out[0] == pytest.approx(0.4) and out[2] == pytest.approx(0.6)
    assert cmp.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_model_statistics_reuse_evaluate_bootstrap_and_seed_spread() -> None:
    rng = np.random.default_rng(1)
    names = ["background", "a", "b", "c"]
    g1, g2 = rng.uniform(0.5, 1, (12, 3)), rng.uniform(0.5, 1, (12, 3))
    g1[3, 1] = np.nan
    one = cmp.model_statistics({"dice": [g1], "hd95": [g1 * 10]}, names, 200)
    ci_class, ci_mean = bootstrap_ci(g1, 200)
    assert one["dice"]["ci95"] == pytest.approx(ci_mean)
    assert one["per_class"]["b"]["dice_ci95"] == pytest.approx(ci_class[1])
    assert one["per_class"]["b"]["dice"] == pytest.approx(np.nanmean(g1[:, 1]))
    assert one["dice"]["seeds_std"] is None
    two = cmp.model_statistics({"dice": [g1, g2], "hd95": [g1, g2]}, names, 50)
    m1, m2 = np.mean(np.nanmean(g1, 0)), np.mean(np.nanmean(g2, 0))
    assert two["dice"]["seeds_mean"] == pytest.approx((m1 + m2) / 2)
    assert two["dice"]["seeds_std"] == pytest.approx(np.std([m1, m2], ddof=1))
    assert two["dice"]["per_case_mean"][0] == pytest.approx(np.mean((g1[0] + g2[0]) / 2))


# ----------------------------------------------------------------------------- spec validation


def _spec(tmp: Path, **extra) -> dict:
    spec = {
        "name": "tiny", "output_dir": str(tmp / "cmp"), "base": "demo", "device": "cpu", "bootstrap": 50,
        "timing_repeats": 1, "reference": "TransUNet-Tiny",
        "set": {"model.img_size": [32, 32], "train.epochs": 1, "train.iterations_per_epoch": 2,
                "train.batch_size": 4, "train.val_every": 0, "eval.batch_size": 64},
        "data": {"root": str(tmp / "data"), "split": "test", "phantom": {"cases": 4, "val_cases": 1}},
        "models": [{"name": "TransUNet-Tiny"},
                   {"name": "U-Net", "model": "UNet", "args": {"features": [4, 8, 16, 32, 64]}}],
    }
    spec.update(extra)
    return spec


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_specs_give_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_model = _spec(tmp_path)
    bad_model["models"][1]["model"] = "UNett"
    with pytest.raises(ConfigError, match="unknown model 'UNett'.*Did you mean 'UNet'"):
        cmp.load_spec(bad_model)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad_model))
    assert "UNett" in _cli_error(capsys, ["compare", str(path)])

    dup = _spec(tmp_path)
    dup["models"].append({"name": "U-Net", "model": "AttentionUNet"})
    path.write_text(yaml.safe_dump(dup))
    err = _cli_error(capsys, ["compare", str(path)])
    assert "entries 2 and 3 are both named 'U-Net'" in err
    with pytest.raises(ConfigError, match="unknown key 'modles'"):
        cmp.load_spec({"modles": []})
    with pytest.raises(ConfigError, match="reference 'X'"):
        cmp.load_spec(_spec(tmp_path, reference="X"))
    assert "demo_compar" in _cli_error(capsys, ["compare", "demo_compar"])  # did you mean demo_compare


def test_presets_load_and_build_valid_configs() -> None:
    for name in ("demo_compare", "synapse_paper", "acdc_paper"):
        spec = cmp.load_spec(name)
        for e in spec.models:
            cmp.run_config(spec, e, spec.seeds[0])  # validates model.args on the meta device
        assert (Path(__file__).parents[1] / "configs" / "compare" / f"{name}.yaml").read_text() == \
            cmp.preset_path(name).read_text()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    tmp = tmp_path_factory.mktemp("compare")
    spec = _spec(tmp)
    folder = cmp.compare(spec)
    return tmp, spec, folder


def test_compare_writes_tables_in_the_paper_layout(tiny: tuple[Path, dict, Path]) -> None:
    _, spec, folder = tiny
    result = json.loads((folder / cmp.COMPARISON_JSON).read_text())
    assert list(result["models"]) == ["TransUNet-Tiny", "U-Net"] and result["reference"] == "TransUNet-Tiny"
    assert result["protocols"] == ["official", "corrected"]
    assert result["hd95_units"] == {"official": "voxel", "corrected": "mm"}
    for m in result["models"].values():
        assert m["parameters"] > 0 and m["gflops"] > 0 and m["seconds_per_volume"] > 0
        assert set(m["protocols"]["corrected"]["per_case"]) == set(result["cases"])
    assert [t["model"] for t in result["tests"]] == ["U-Net"] * 4
    md = (folder / cmp.TABLE_MD).read_text()
    assert "## Official protocol" in md and "## Corrected protocol" in md
    head = [line for line in md.splitlines() if line.startswith("| Method | DSC")]
    assert len(head) == 2
    assert head[0].startswith("| Method | DSC (%) ↑ | HD95 (voxels) ↓ | Aorta | Gallbladder | Kidney (L) | "
                              "Kidney (R) | Liver | Pancreas | Spleen | Stomach | Params (M) | GFLOPs | "
                              "Time (s/volume) |")
    assert "HD95 (mm)" in head[1]
    assert f"n = {result['n_cases']} test cases" in md and "low power" in md
    rows = list(csv.DictReader(io.StringIO((folder / cmp.TABLE_CSV).read_text())))
    assert len(rows) == 4 and {r["protocol"] for r in rows} == {"official", "corrected"}
    r = next(r for r in rows if r["model"] == "U-Net" and r["protocol"] == "official")
    t = next(t for t in result["tests"] if t["protocol"] == "official" and t["metric"] == "dice")
    assert float(r["dice_p_holm"]) == pytest.approx(t["p_holm"])


def test_second_call_reuses_and_changed_config_is_refused(tiny: tuple[Path, dict, Path],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    tmp, spec, folder = tiny
    ckpts = sorted((folder / "runs").glob("*/checkpoints/*.pt"))
    before = {p: p.stat().st_mtime_ns for p in ckpts}
    summaries = {p: p.stat().st_mtime_ns for p in (folder / "runs").glob("*/eval/test/summary.json")}

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("transunet.train.train", no_training)
    cmp.compare(spec)
    assert {p: p.stat().st_mtime_ns for p in ckpts} == before
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries  # evaluations reused too
    result = json.loads((folder / cmp.COMPARISON_JSON).read_text())
    assert all(not r["trained"] and r["evaluation_reused"] for m in result["models"].values() for r in m["runs"])

    changed = json.loads(json.dumps(spec))
    changed["models"][1]["set"] = {"train.lr": 0.02}
    with pytest.raises(ConfigError, match=r"U-Net_seed1234.*train\.lr: run has 0\.05, given 0\.02"):
        cmp.compare(changed)
    path = tmp / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    assert "train.lr: run has 0.05, given 0.02" in _cli_error(capsys, ["compare", str(path)])
    assert {p: p.stat().st_mtime_ns for p in ckpts} == before


def test_runs_mode_and_its_refusals(tiny: tuple[Path, dict, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _, _, folder = tiny
    a, b = folder / "runs" / "TransUNet-Tiny_seed1234", folder / "runs" / "U-Net_seed1234"
    out = cmp.compare_runs([a, b], tmp_path / "runs_cmp", device="cpu", bootstrap=50, timing_repeats=1)
    result = json.loads((out / cmp.COMPARISON_JSON).read_text())
    assert result["reference"] == a.name and list(result["models"]) == [a.name, b.name]

    def variant(name: str, edit) -> Path:
        c = tmp_path / name
        shutil.copytree(b, c)
        s = c / "eval" / "test" / "summary.json"
        data = json.loads(s.read_text())
        edit(data)
        s.write_text(json.dumps(data))
        return c

    def drop_case(d: dict) -> None:
        gone = d["cases"].pop()["case_id"]
        for p in d["protocols"].values():
            p["per_case"].pop(gone)

    fewer = variant("fewer", drop_case)
    with pytest.raises(DataError, match="other test cases"):
        cmp.compare_runs([a, fewer], tmp_path / "x", device="cpu", timing_repeats=0)
    assert "other test cases" in _cli_error(capsys, ["compare", "--runs", str(a), str(fewer), "--out",
                                                     str(tmp_path / "x"), "--no-report"])
    official = variant("official_only", lambda d: d["protocols"].pop("corrected"))
    err = _cli_error(capsys, ["compare", "--runs", str(a), str(official), "--out", str(tmp_path / "y")])
    assert "protocol(s) official" in err
    dup = tmp_path / "other" / a.name
    shutil.copytree(a, dup)
    assert "two runs are named" in _cli_error(capsys, ["compare", "--runs", str(a), str(dup)])


def test_comparison_report_renders_in_headless_chromium(tiny: tuple[Path, dict, Path], tmp_path: Path) -> None:
    from transunet.report.compare_report import make_compare_report, pareto_front

    assert pareto_front([1, 2, 3, 4], [50, 40, 70, 60]) == [0, 2]
    _, _, folder = tiny
    index = make_compare_report(folder, device="cpu")
    page = index.read_text()
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    assert pngs == ["organ_bars.png", "overlay_models.png", "pareto.png", "per_case.png"]
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "Official protocol" in page and "Corrected protocol" in page and "low power" in page
    from test_report import console_errors, run_chromium

    dom, stderr = run_chromium(index, tmp_path)
    m = re.search(r'id="render-check" data-images="(\d+)" data-rendered="(\d+)"', dom)
    assert m and int(m.group(1)) == int(m.group(2)) == len(pngs)
    assert console_errors(stderr) == []
