"""HTML/PNG report of a comparison folder (``transunet compare``).

One self-contained page (every figure embedded as base64 PNG and also written beside
``index.html``): the paper-layout tables of both protocols, the paired tests, a per-organ bar chart
with bootstrap 95% CI whiskers, per-case box/strip plots, Pareto plots of Dice against parameters,
GFLOPs and inference time, and one overlay of the same slice per model.

Example::

    from transunet.report.compare_report import make_compare_report
    index_html = make_compare_report("comparisons/demo_compare")
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from transunet.compare import COMPARISON_JSON, PROTOCOL_LABELS, load_comparison, render_markdown, table_columns
from transunet.errors import TransUNetError
from transunet.report import plots
from transunet.report.builder import REPORT_HTML, _meta_table, _note, _Page, representative_slices
from transunet.utils import atomic_write_text, resolve_device

log = logging.getLogger(__name__)

#: Colours of the models (cycled).
MODEL_COLORS = ("#4363d8", "#e6194b", "#3cb44b", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
                "#808000", "#000075", "#469990", "#800000")


def _color(i: int) -> str:
    return MODEL_COLORS[i % len(MODEL_COLORS)]


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def plot_organ_bars(result: dict[str, Any]) -> Figure:
    """Per-organ mean Dice per model, bootstrap 95% CI whiskers; one panel per protocol.

    Args:
        result: ``comparison.json`` content.
    """
    names = result["class_names"]
    cols = table_columns(names)
    models = list(result["models"])
    protos = result["protocols"]
    fig = Figure(figsize=(max(7.0, 1.1 * (len(cols) + 1) * max(1, len(models)) * 0.45), 3.4 * len(protos)),
                 layout="constrained")
    axes = fig.subplots(len(protos), 1, squeeze=False)[:, 0]
    width = 0.8 / max(1, len(models))
    x = np.arange(len(cols) + 1)
    for ax, p in zip(axes, protos):
        for k, mname in enumerate(models):
            st = result["models"][mname]["protocols"][p]
            vals = [_num(st["per_class"][names[i]]["dice"]) for i, _ in cols] + [_num(st["dice"]["mean"])]
            cis = [st["per_class"][names[i]]["dice_ci95"] for i, _ in cols] + [st["dice"]["ci95"]]
            lo = [v - c[0] if c else 0.0 for v, c in zip(vals, cis)]
            hi = [c[1] - v if c else 0.0 for v, c in zip(vals, cis)]
            err = np.clip(np.nan_to_num(np.array([lo, hi]) * 100), 0, None)
            ax.bar(x + (k - (len(models) - 1) / 2) * width, np.array(vals) * 100, width, yerr=err, capsize=2,
                   color=_color(k), label=mname, error_kw={"elinewidth": 0.8})
        ax.set_xticks(x, [h for _, h in cols] + ["Mean"], rotation=0, fontsize=8)
        ax.set_ylabel("Dice (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{p} protocol: mean Dice per organ (whiskers: bootstrap 95% CI over cases)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=min(len(models), 4), loc="lower left")
    return fig


def plot_case_distributions(result: dict[str, Any]) -> Figure:
    """Per-case mean Dice and HD95 per model as box plots with the cases as points (strip).

    Args:
        result: ``comparison.json`` content.
    """
    models = list(result["models"])
    protos = result["protocols"]
    fig = Figure(figsize=(max(7.0, 1.3 * len(models) * 2), 3.2 * len(protos)), layout="constrained")
    axes = fig.subplots(len(protos), 2, squeeze=False)
    rng = np.random.default_rng(0)
    for r, p in enumerate(protos):
        for c, (metric, scale, label) in enumerate((("dice", 100, "mean Dice (%)"),
                                                    ("hd95", 1, f"mean HD95 ({result['hd95_units'][p]})"))):
            ax = axes[r, c]
            data = []
            for m in models:
                v = np.array([_num(x) for x in result["models"][m]["protocols"][p][metric]["per_case_mean"]]) * scale
                data.append(v[~np.isnan(v)])
            ax.boxplot([d if d.size else np.array([np.nan]) for d in data], showfliers=False, widths=0.55)
            for k, d in enumerate(data):
                ax.scatter(k + 1 + rng.uniform(-0.12, 0.12, d.size), d, s=12, color=_color(k), alpha=0.8,
                           zorder=3)
            ax.set_xticks(range(1, len(models) + 1), models, rotation=20, fontsize=8, ha="right")
            ax.set_ylabel(label)
            ax.set_title(f"{p} protocol: per-case {label} (n = {result['n_cases']})", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    return fig


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (lower or equal cost and higher or equal Dice, one strictly).

    Args:
        xs: Costs (parameters, GFLOPs, seconds).
        ys: Scores (Dice).
    """
    pts = [(x, y, i) for i, (x, y) in enumerate(zip(xs, ys)) if np.isfinite(x) and np.isfinite(y)]
    front = []
    for x, y, i in pts:
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for x2, y2, _ in pts):
            front.append(i)
    return sorted(front, key=lambda i: xs[i])


def plot_pareto(result: dict[str, Any]) -> Figure:
    """Mean Dice (corrected protocol if present) against parameters, GFLOPs and time, Pareto front drawn.

    Args:
        result: ``comparison.json`` content.
    """
    proto = "corrected" if "corrected" in result["protocols"] else result["protocols"][0]
    models = list(result["models"])
    ys = [_num(result["models"][m]["protocols"][proto]["dice"]["mean"]) * 100 for m in models]
    costs = (("parameters", 1e-6, "parameters (M)"), ("gflops", 1.0, "GFLOPs per slice"),
             ("seconds_per_volume", 1.0, "seconds per test volume"))
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (key, scale, label) in zip(axes, costs):
        xs = [_num(result["models"][m].get(key)) * scale for m in models]
        if not any(np.isfinite(x) for x in xs):
            ax.text(0.5, 0.5, f"no {label}", ha="center", va="center", transform=ax.transAxes)
        for k, (x, y, m) in enumerate(zip(xs, ys, models)):
            if np.isfinite(x) and np.isfinite(y):
                ax.scatter([x], [y], s=40, color=_color(k), zorder=3)
                ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = pareto_front(xs, ys)
        if len(front) > 1:
            ax.plot([xs[i] for i in front], [ys[i] for i in front], "--", color="#888", lw=1, label="Pareto front")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel(label)
        ax.set_ylabel(f"mean Dice (%), {proto}")
        ax.grid(alpha=0.3)
    fig.suptitle("Accuracy against cost (upper left is better)", fontsize=11)
    return fig


def plot_model_overlays(image: np.ndarray, label: np.ndarray, predictions: dict[str, np.ndarray],
                        class_names: Sequence[str], title: str) -> Figure:
    """The same slice for every model: image, ground truth, then each model's prediction.

    Args:
        image: Normalised slice ``(H, W)``.
        label: Ground truth ``(H, W)``.
        predictions: Model name -> predicted ``(H, W)`` labels.
        class_names: Names of labels ``0..K-1``.
        title: Figure title.
    """
    box = plots.crop_box(image, label, *predictions.values())
    img = plots.display_image(image[box])
    panels = [("image", None), ("ground truth", label[box])] + [(n, p[box]) for n, p in predictions.items()]
    ncol = min(len(panels), 4)
    nrow = -(-len(panels) // ncol)
    h, w = img.shape
    fig = Figure(figsize=(3.0 * ncol * max(w / h, 0.6), 3.0 * nrow + 0.8), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    present: set[int] = set()
    for ax, (name, lab) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if lab is not None:
            ax.imshow(plots.label_rgba(lab), interpolation="nearest")
            if name != "ground truth" and label[box].any():
                ax.contour(label[box] > 0, levels=[0.5], colors="yellow", linewidths=0.5)
            present |= {int(v) for v in np.unique(lab) if v > 0}
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels):]:
        ax.axis("off")
    names = list(class_names)
    handles = [Patch(color=plots.organ_color(i), label=names[i] if i < len(names) else f"class {i}")
               for i in sorted(present)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def _md_table_to_html(md: str) -> str:
    """The Markdown tables and paragraphs of ``table.md`` as simple HTML (headings become h3)."""
    out: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if not rows:
            return
        head, body = rows[0], rows[2:] if len(rows) > 1 else []
        cells = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
        cells += "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        out.append(f"<div class='scroll'><table>{cells}</table></div>")
        rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        flush()
        if line.startswith("# "):
            continue
        if line.startswith("## "):
            out.append(f"<h3>{html.escape(line[3:])}</h3>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "".join(out)


def _overlay_case(result: dict[str, Any]) -> str | None:
    """The case whose reference per-case mean Dice is the median (a typical case)."""
    proto = "corrected" if "corrected" in result["protocols"] else result["protocols"][0]
    ref = result["models"][result["reference"]]["protocols"][proto]["dice"]["per_case_mean"]
    scored = [(v, c) for v, c in zip(ref, result["cases"]) if v is not None]
    if not scored:
        return result["cases"][0] if result["cases"] else None
    scored.sort()
    return scored[len(scored) // 2][1]


def make_compare_report(folder: str | Path, *, device: str = "auto", data: str | Path | None = None,
                        out_dir: str | Path | None = None) -> Path:
    """Write the HTML report of a comparison folder and return the path of ``index.html``.

    Args:
        folder: Comparison folder (holds ``comparison.json``).
        device: Device of the few forward passes of the overlay.
        data: Prepared dataset for the overlay (default: the comparison's ``data_root``).
        out_dir: Output folder (default ``FOLDER/report``).

    Returns:
        Path of the written ``index.html``.
    """
    folder = Path(folder)
    result = load_comparison(folder)
    out = Path(out_dir) if out_dir is not None else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    page = _Page(out)
    n = result["n_cases"]
    header = _meta_table([
        ("comparison", folder),
        ("models", ", ".join(result["models"])),
        ("reference", result["reference"]),
        ("test cases", f"{n} (split {result['split']})"),
        ("data", result.get("data_root")),
        ("seeds", ", ".join(map(str, result["seeds"])) if result.get("seeds") else None),
        ("written", _dt.datetime.now().isoformat(timespec="seconds")),
    ])
    sec = page.section("Tables")
    if result.get("description"):
        sec.body.append(f"<p>{html.escape(result['description'])}</p>")
    sec.body.append(_note(f"The paired tests rest on {n} test cases. With so few cases (Synapse has 12) a "
                          "Wilcoxon signed-rank test has low power: p > 0.05 does not show that two models are "
                          "equivalent, and small differences cannot reach significance."))
    sec.body.append(_md_table_to_html(render_markdown(result)))

    sec = page.section("Per organ")
    page.figure(sec, plot_organ_bars(result), "organ_bars.png",
                "Mean Dice per organ and over organs for every model, in each protocol; whiskers: percentile "
                "bootstrap 95% confidence intervals over cases (seed-averaged per case).")
    sec = page.section("Per case")
    page.figure(sec, plot_case_distributions(result), "per_case.png",
                f"Per-case mean Dice and mean HD95 (over the organs defined in each case) of every model: box "
                f"(quartiles, whiskers 1.5 IQR) with the {n} cases as points. These per-case means are the pairs "
                "of the Wilcoxon tests.")
    sec = page.section("Accuracy against cost")
    page.figure(sec, plot_pareto(result), "pareto.png",
                "Mean Dice against parameters, GFLOPs per slice (2 FLOPs per multiply-add, batch 1) and median "
                "seconds to segment one test volume on the comparison's device; dashed: the Pareto front.")

    sec = page.section("The same slice, every model")
    _overlay_section(page, sec, result, device, data)
    title = f"transunet comparison: {result['title']}"
    index = atomic_write_text(out / REPORT_HTML, page.render(title, header))
    log.info("comparison report written to %s", index)
    return index


def _overlay_section(page: _Page, sec: Any, result: dict[str, Any], device: str, data: str | Path | None) -> None:
    from transunet.data.datasets import load_volume
    from transunet.infer import Predictor

    root = Path(data) if data is not None else (Path(result["data_root"]) if result.get("data_root") else None)
    case = _overlay_case(result)
    if root is None or not root.is_dir() or case is None:
        sec.body.append(_note(f"The dataset ({root}) is not available here; pass --data to draw the overlay."))
        return
    try:
        vol = load_volume(root, result["split"], case)
    except TransUNetError as e:
        sec.body.append(_note(f"{case}: {e}"))
        return
    if vol.label is None:
        sec.body.append(_note(f"{case} has no ground truth in {root}."))
        return
    s = representative_slices(vol.label, 1)[0]
    dev = resolve_device(device)
    preds: dict[str, np.ndarray] = {}
    for name, m in result["models"].items():
        ckpt = m["runs"][0]["checkpoint"]
        try:
            predictor = Predictor.from_checkpoint(ckpt, device=dev)
        except (TransUNetError, OSError) as e:
            sec.body.append(_note(f"{name}: cannot load {ckpt} ({' '.join(str(e).split())})."))
            continue
        preds[name] = predictor.predict_volume(vol.image[[s]])[0]
    if not preds:
        return
    seed = m["runs"][0].get("seed")
    title = f"{case}, slice {s} (median case of the reference; first seed{'' if seed is None else f' {seed}'})"
    page.figure(sec, plot_model_overlays(vol.display_slice(s), vol.label[s], preds, result["class_names"], title),
                "overlay_models.png",
                f"{title}: the image, the ground truth, then each model's prediction (yellow: ground-truth "
                "outline). The slice has the most foreground of the case.")


__all__ = ["COMPARISON_JSON", "PROTOCOL_LABELS", "make_compare_report", "pareto_front", "plot_case_distributions",
           "plot_model_overlays", "plot_organ_bars", "plot_pareto"]
