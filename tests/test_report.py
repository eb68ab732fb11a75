"""Tests of the HTML report: attention rollout, tables, figures, make_report, headless Chromium."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from transunet.data.volume import Volume
from transunet.errors import DataError
from transunet.layers.attention import RecordsAttention
from transunet.models.base import SegmentationModel
from transunet.report import attention as att
from transunet.report import builder, plots, tables

CLASS_NAMES = ["background", "spleen", "right kidney", "liver"]

# ----------------------------------------------------------------------------- helpers


class _TinyAttention(RecordsAttention):
    """Single-projection self-attention that records its softmax maps like the package's layers."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        q, k, v = self.qkv(t).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)  # (B, h, N, N)
        self.record(a)
        return t + (a @ v).transpose(1, 2).reshape(b, n, d)


class TinyAttnNet(SegmentationModel):
    """A few-parameter transformer segmenter on the model contract: global attention, 8-px tokens."""

    attention_kind = "global"

    def __init__(self, num_classes: int = 4, in_channels: int = 1, img_size: tuple[int, int] = (64, 48),
                 dim: int = 8, heads: int = 2, layers: int = 3) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, img_size=img_size, size_multiple=8)
        self.embed = nn.Conv2d(in_channels, dim, 8, 8)
        self.blocks = nn.ModuleList(_TinyAttention(dim, heads) for _ in range(layers))
        self.head = nn.Conv2d(dim, num_classes, 1)

    def attention_grid(self) -> tuple[int, int]:
        return (self.img_size[0] // 8, self.img_size[1] // 8)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)  # (B, D, gh, gw)
        b, d, gh, gw = t.shape
        t = t.flatten(2).transpose(1, 2)  # (B, N, D)
        for blk in self.blocks:
            t = blk(t)
        logits = self.head(t.transpose(1, 2).reshape(b, d, gh, gw))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _volume(case_id: str, seed: int, shape=(10, 48, 40)) -> Volume:
    rng = np.random.default_rng(seed)
    s, h, w = shape
    label = np.zeros(shape, dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for z in range(2, s - 1):
        label[z][(yy - 16) ** 2 + (xx - 12) ** 2 < 40 + 8 * z] = 1
        label[z][(abs(yy - 30) < 5) & (abs(xx - 30) < 4)] = 2
        if z > 4:
            label[z][(yy - 12) ** 2 / 30 + (xx - 30) ** 2 / 20 < 1] = 3
    image = (label * 0.2 + rng.normal(0.2, 0.05, shape)).astype(np.float32)
    return Volume(case_id, image, label, (2.5, 0.8, 0.8), None, CLASS_NAMES)


def _summary(case_ids: list[str], data_root: Path, checkpoint: str | None) -> dict:
    rng = np.random.default_rng(0)
    names = CLASS_NAMES[1:]
    protocols = {}
    cases = [{"case_id": c, "shape": [10, 48, 40], "spacing": [2.5, 0.8, 0.8], "prediction": None}
             for c in case_ids]
    for proto, unit in (("official", "voxel"), ("corrected", "mm")):
        per_case = {}
        for c in case_ids:
            per_case[c] = {}
            for n in names:
                per_case[c][n] = {"dice": float(rng.uniform(0.5, 0.99)), "hd95": float(rng.uniform(1, 9)),
                                  "status": "ok"}
        per_case[case_ids[-1]][names[-1]] = {"dice": 0.0, "hd95": None, "status": "missed"}
        per_class = {}
        for n in names:
            d = np.array([per_case[c][n]["dice"] for c in case_ids])
            hd = np.array([per_case[c][n]["hd95"] for c in case_ids if per_case[c][n]["hd95"] is not None])
            per_class[n] = {"dice_mean": d.mean(), "dice_std": d.std(), "dice_ci95": [d.min(), d.max()],
                            "hd95_mean": hd.mean(), "hd95_std": hd.std(), "hd95_ci95": [hd.min(), hd.max()],
                            "n": len(case_ids), "n_missed": int((d == 0).sum()), "n_false_positive": 0}
        protocols[proto] = {
            "hd95_unit": unit, "per_case": per_case, "per_class": per_class,
            "mean": {"dice": float(np.mean([v["dice_mean"] for v in per_class.values()])),
                     "hd95": float(np.mean([v["hd95_mean"] for v in per_class.values()])),
                     "dice_ci95": [0.5, 0.9], "hd95_ci95": [1.0, 8.0]}}
        for case in cases:
            case[f"mean_dice_{proto}"] = float(np.mean([per_case[case["case_id"]][n]["dice"] for n in names]))
    return {"split": "test", "checkpoint": checkpoint, "data_root": str(data_root), "class_names": CLASS_NAMES,
            "n_cases": len(case_ids), "protocols": protocols, "cases": cases}


@pytest.fixture
def fake_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run folder with metrics.csv, a checkpoint of TinyAttnNet and an evaluation summary."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    data_root = tmp_path / "data"
    data_root.mkdir()
    with (run / "metrics.csv").open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["epoch", "iteration", "lr", "train_loss", "train_ce", "train_dice", "val_mean_dice",
                     "val_dice_spleen", "val_dice_right kidney", "val_dice_liver", "epoch_time_s", "best"])
        for e in range(1, 6):
            wr.writerow([e, e * 10, 0.01 * (1 - e / 6) ** 0.9, 1 / e, 0.5 / e, 0.5 / e, 0.5 + e / 20, 0.6,
                         0.5 + e / 30, "", 3.0, int(e == 5)])
    torch.manual_seed(0)
    model = TinyAttnNet()
    ckpt_path = run / "checkpoints" / "best.pt"
    ckpt = {"model": {"name": "TinyAttnNet", "kwargs": {"img_size": [64, 48]}}, "config": None}
    torch.save(model.state_dict(), ckpt_path)

    def fake_model_from_checkpoint(path, device="cpu"):
        assert Path(path) == ckpt_path
        m = TinyAttnNet()
        m.load_state_dict(torch.load(path, weights_only=True))
        return m.eval(), ckpt

    vols = {c: _volume(c, i) for i, c in enumerate(["case0001", "case0002", "case0003"])}
    monkeypatch.setattr("transunet.checkpoint.model_from_checkpoint", fake_model_from_checkpoint)
    monkeypatch.setattr(builder, "_load_case", lambda root, split, case_id: vols[case_id])
    summary = _summary(list(vols), data_root, str(ckpt_path))
    eval_dir = run / "eval" / "test"
    eval_dir.mkdir(parents=True)
    (eval_dir / "summary.json").write_text(json.dumps(summary))
    return run


def run_chromium(index: Path, tmp_path: Path) -> tuple[str, str]:
    """Load ``index`` in headless Chromium; return (dumped DOM, stderr with console messages)."""
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        pytest.skip("headless Chromium is not installed (make setup-browser installs it)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
           index.resolve().as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def console_errors(stderr: str) -> list[str]:
    """Console messages of the page (errors and uncaught exceptions) from Chromium's log."""
    return [ln for ln in stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]


# ----------------------------------------------------------------------------- attention maths


def _random_attention(b: int, h: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(b, h, n, n, generator=g), dim=-1)


def test_rollout_matches_explicit_product_and_keeps_inputs() -> None:
    layers = [_random_attention(2, 3, 6, s) for s in range(4)]
    copies = [a.clone() for a in layers]
    out = att.attention_rollout(layers)
    expected = []
    for b in range(2):
        r = np.eye(6)
        for a in layers:
            m = a[b].double().numpy().mean(axis=0) + np.eye(6)
            m = m / m.sum(axis=1, keepdims=True)
            r = m @ r
        expected.append(r)
    np.testing.assert_allclose(out.numpy(), np.stack(expected), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.sum(-1).numpy(), 1.0, atol=1e-5)
    for a, c in zip(layers, copies):
        assert torch.equal(a, c)


def test_rollout_special_cases() -> None:
    n = 5
    ident = torch.eye(n).expand(1, 2, n, n)
    assert torch.allclose(att.attention_rollout([ident, ident]), torch.eye(n)[None])
    uniform = torch.full((1, 4, n, n), 1.0 / n)
    # one layer: (A + I) / 2 since the rows of A sum to one
    assert torch.allclose(att.attention_rollout([uniform]), ((uniform[0, 0] + torch.eye(n)) / 2)[None])
    # without the residual term, a uniform layer mixes everything uniformly
    assert torch.allclose(att.attention_rollout([uniform, _random_attention(1, 4, n, 0)], add_identity=False)
                          @ torch.ones(n), torch.ones(1, n))
    with pytest.raises(ValueError, match="at least one layer"):
        att.attention_rollout([])
    with pytest.raises(ValueError, match="layer 1"):
        att.attention_rollout([uniform, torch.full((1, 4, n + 1, n + 1), 0.1)])


def test_head_maps_token_index_and_query_point() -> None:
    a = _random_attention(1, 3, 12, 1)
    maps = att.head_maps(a, 7, (3, 4))
    assert maps.shape == (3, 3, 4)
    np.testing.assert_allclose(maps[2].ravel(), a[0, 2, 7].numpy())
    with pytest.raises(ValueError, match="token grid 4x4"):
        att.head_maps(a, 0, (4, 4))
    with pytest.raises(ValueError, match="outside"):
        att.head_maps(a, 12, (3, 4))
    # a 100x60 image over a 5x3 grid: pixel (99, 59) is the last token, (0, 0) the first
    assert att.token_index((0, 0), (100, 60), (5, 3)) == 0
    assert att.token_index((99, 59), (100, 60), (5, 3)) == 14
    assert att.token_index((45, 25), (100, 60), (5, 3)) == 2 * 3 + 1
    # the query of a C-shaped organ lies inside it (its centroid does not)
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35, 5:12] = mask[5:12, 5:35] = mask[28:35, 5:35] = True
    r, c = att.query_point(mask)
    assert mask[r, c]
    with pytest.raises(ValueError, match="non-empty"):
        att.query_point(np.zeros((4, 4), dtype=bool))
    up = att.upsample_map(np.arange(6, dtype=np.float32).reshape(2, 3), (20, 30))
    assert up.shape == (20, 30) and up.min() >= -1e-5 and abs(up.max() - 5) < 1e-5


def test_slice_attention_on_a_tiny_transformer() -> None:
    torch.manual_seed(0)
    model = TinyAttnNet(img_size=(64, 48), layers=3, heads=2)
    image = np.random.default_rng(0).random((50, 37)).astype(np.float32)
    res = att.slice_attention(model, image, (49, 0), model.img_size)
    assert res.grid == (8, 6) and res.n_layers == 3
    assert res.query == 7 * 6 + 0
    assert res.heads.shape == (2, 8, 6) and res.rollout.shape == (8, 6)
    np.testing.assert_allclose(res.heads.sum(axis=(1, 2)), 1.0, atol=1e-5)
    np.testing.assert_allclose(res.rollout.sum(), 1.0, atol=1e-5)
    with pytest.raises(Exception, match="no global token attention"):
        att.slice_attention(nn.Conv2d(1, 2, 1), image, (0, 0), (64, 48))


# ----------------------------------------------------------------------------- tables and figures


def test_display_order_follows_the_paper_for_synapse_and_labels_otherwise() -> None:
    synapse = ["background", "spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach",
               "aorta", "pancreas"]
    assert tables.display_order(synapse) == ["aorta", "gallbladder", "left kidney", "right kidney", "liver",
                                             "pancreas", "spleen", "stomach"]
    assert tables.display_order(["bg", "RV", "Myo", "LV"]) == ["RV", "Myo", "LV"]


def test_protocol_table_shows_the_summary_values(tmp_path: Path) -> None:
    summary = _summary(["a", "b"], tmp_path, None)
    html = tables.protocol_table(summary, "corrected")
    liver = summary["protocols"]["corrected"]["per_class"]["liver"]
    assert f"{liver['dice_mean'] * 100:.2f} ± {liver['dice_std'] * 100:.2f}" in html
    assert "HD95 mm" in html and html.count("<tr") == 1 + 3 + 1
    assert "HD95 voxel" in tables.protocol_table(summary, "official") and "NSD" not in html
    # the corrected protocol's extras get their own columns when present
    summary["nsd_tolerance_mm"] = 2.0
    for i, st in enumerate(summary["protocols"]["corrected"]["per_class"].values()):
        st.update(nsd_mean=0.5 + i / 10, n_absent=i)
    summary["protocols"]["corrected"]["mean"]["nsd"] = 0.123
    html = tables.protocol_table(summary, "corrected")
    assert "<th>NSD % (2.0 mm)</th>" in html and "<th>absent</th>" in html and "ASSD" not in html
    assert "<td>12.30</td>" in html and "<td>70.00</td>" in html
    cases = tables.per_case_table(summary, "official")
    assert "missed" in cases and "class='flag'" in cases
    assert tables.fmt(None) == "–" and tables.fmt(float("nan")) == "–" and tables.fmt_ci([1, None]) == "–"


def test_load_summary_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run 'transunet evaluate"):
        tables.load_summary(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not a readable JSON"):
        tables.load_summary(bad)
    bad.write_text(json.dumps({"class_names": [], "cases": []}))
    with pytest.raises(DataError, match="missing key 'protocols'"):
        tables.load_summary(bad)


def test_metrics_csv_curves(tmp_path: Path, fake_run: Path) -> None:
    curves = plots.read_metrics_csv(fake_run / "metrics.csv")
    assert curves.x_name == "epoch" and list(curves.x) == [1, 2, 3, 4, 5]
    assert "val_dice_liver" not in curves.columns  # an all-empty column is not plotted
    assert set(curves.columns) >= {"lr", "train_loss", "val_mean_dice", "val_dice_spleen", "best"}
    panels = {title: cols for title, cols, _ in plots._panels(curves)}
    assert panels == {"Training loss": ["train_loss", "train_ce", "train_dice"],
                      "Validation Dice": ["val_mean_dice", "val_dice_spleen", "val_dice_right kidney"],
                      "Learning rate": ["lr"]}
    fig = plots.plot_training_curves(curves, CLASS_NAMES)
    assert {ax.get_title() for ax in fig.axes} == set(panels)
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,train_loss\n")
    with pytest.raises(DataError, match="no rows"):
        plots.read_metrics_csv(empty)


def test_crop_box_keeps_body_and_labels() -> None:
    image = np.zeros((100, 80), dtype=np.float32)
    image[30:60, 20:50] = 1.0  # the body
    label = np.zeros((100, 80), dtype=np.uint8)
    label[70, 60] = 3  # an organ outside the bright region still fits
    rows, cols = plots.crop_box(image, label, margin=0.05)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (25, 76, 16, 65)
    assert plots.crop_box(np.zeros((10, 12))) == (slice(0, 10), slice(0, 12))


def test_representative_slices() -> None:
    label = np.zeros((16, 8, 8), dtype=np.uint8)
    label[6, :6, :6] = 1  # most foreground
    label[7, :5, :5] = 1
    label[13, :2, :2] = 1
    label[13, 5:, 5:] = 2  # most organs, far away
    assert builder.representative_slices(label) == [6, 13]
    assert builder.representative_slices(np.zeros((5, 4, 4), dtype=np.uint8)) == [2]


# ----------------------------------------------------------------------------- the whole report


def test_make_report_writes_a_self_contained_page(fake_run: Path, tmp_path: Path) -> None:
    index = builder.make_report(fake_run, split="test", device="cpu")
    assert index == fake_run / "report" / "test" / "index.html"  # one report per split
    page = index.read_text()
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    summary = json.loads((fake_run / "eval" / "test" / "summary.json").read_text())
    ranked = sorted(summary["cases"], key=lambda c: -c["mean_dice_corrected"])
    best, worst = ranked[0]["case_id"], ranked[-1]["case_id"]
    assert pngs == sorted(["curves.png", f"overlay_best_{best}.png", f"overlay_worst_{worst}.png",
                           "attention_rollout.png", "attention_heads.png"])
    # every picture is embedded; nothing is fetched from the network
    assert page.count("data:image/png;base64,") == 5
    assert not re.search(r"(src|href)=['\"]https?:", page)
    assert "Official protocol" in page and "Corrected protocol" in page
    assert "centre of the spleen" in page  # largest organ on the best case's slice
    for name in pngs:  # the PNGs are real images
        assert (index.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a checkpoint path works as the run argument; stale figures are removed on rewrite
    (index.parent / "overlay_best_old.png").write_bytes(b"x")
    index2 = builder.make_report(fake_run / "checkpoints" / "best.pt", device="cpu")
    assert index2 == index and not (index.parent / "overlay_best_old.png").exists()


def test_make_report_degrades_without_data_or_checkpoint(fake_run: Path, tmp_path: Path) -> None:
    (fake_run / "checkpoints" / "best.pt").unlink()
    s = json.loads((fake_run / "eval" / "test" / "summary.json").read_text())
    s["checkpoint"] = None
    s["data_root"] = str(tmp_path / "nowhere")
    out = tmp_path / "other"
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps(s))
    index = builder.make_report(fake_run, summary=summary, out_dir=out, device="cpu")
    page = index.read_text()
    assert "pass --data to draw the overlays" in page and "No checkpoint found" in page
    assert sorted(p.name for p in out.glob("*.png")) == ["curves.png"]
    with pytest.raises(DataError, match="is not a folder"):
        builder.make_report(fake_run, data=tmp_path / "nowhere", summary=summary, out_dir=out)
    with pytest.raises(DataError, match="does not exist"):
        builder.make_report(tmp_path / "no_run")


def test_report_renders_in_headless_chromium(fake_run: Path, tmp_path: Path) -> None:
    index = builder.make_report(fake_run, device="cpu")
    dom, stderr = run_chromium(index, tmp_path)
    m = re.search(r'id="render-check" data-images="(\d+)" data-rendered="(\d+)"', dom)
    assert m, "the page's load handler did not run"
    assert int(m.group(1)) == 5 and int(m.group(2)) == 5
    assert console_errors(stderr) == []
    # the console check does catch a failing script
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, stderr = run_chromium(broken, tmp_path)
    assert any("undefinedFunction" in ln for ln in console_errors(stderr))


def test_saved_predictions_are_read_back_in_slice_first_order(tmp_path: Path) -> None:
    from transunet.data.nifti import save_like

    pred = np.random.default_rng(0).integers(0, 4, (5, 12, 9)).astype(np.uint8)
    save_like(pred, None, tmp_path / "predictions" / "case0001.nii.gz")
    case = {"case_id": "case0001", "prediction": "predictions/case0001.nii.gz"}
    out = builder._saved_prediction(case, tmp_path, tmp_path / "run", pred.shape)
    assert out is not None and np.array_equal(out, pred)
    # a prediction of another shape, or none, falls back to predicting with the model
    assert builder._saved_prediction(case, tmp_path, tmp_path, (5, 9, 12)) is None
    assert builder._saved_prediction({"prediction": None}, tmp_path, tmp_path, pred.shape) is None
