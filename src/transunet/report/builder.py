"""``make_report``: one self-contained HTML page (plus its PNGs) for an evaluated run.

The page opens offline: every picture is embedded as a base64 PNG (the same PNGs are also written
beside ``index.html`` for reuse in papers and READMEs) and no external script or style is loaded.
Sections: per-organ tables in both protocols, per-case values, training curves re-plotted from
``metrics.csv``, overlays of prediction vs ground truth for the best and worst case (by corrected
mean Dice) and the transformer's attention on one slice (per head of the last layer, and attention
rollout).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from transunet.errors import DataError, TransUNetError
from transunet.paths import RunPaths, run_folder_of
from transunet.report import attention as att
from transunet.report import plots, tables
from transunet.utils import atomic_write_text, resolve_device

log = logging.getLogger(__name__)

REPORT_HTML = "index.html"


def resolve_run(run: str | Path) -> Path:
    """The run folder of ``run``: the folder itself, or the run holding a checkpoint file.

    Args:
        run: Run folder, or a checkpoint inside ``RUN/checkpoints/``.
    """
    run = Path(run)
    if run.is_file():
        return run_folder_of(run)
    if not run.is_dir():
        raise DataError(f"run folder {run} does not exist; pass the folder written by 'transunet train'.")
    return run


@dataclass
class _Section:
    title: str
    body: list[str] = field(default_factory=list)


class _Page:
    """Collects sections and embedded figures, then renders the HTML."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.sections: list[_Section] = []
        self.pngs: list[Path] = []

    def section(self, title: str) -> _Section:
        s = _Section(title)
        self.sections.append(s)
        return s

    def figure(self, section: _Section, fig: Any, name: str, caption: str) -> Path:
        path = plots.save_png(fig, self.out_dir / name)
        self.pngs.append(path)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        section.body.append(
            f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}' "
            f"data-file='{html.escape(name)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        return path

    def render(self, title: str, header: str) -> str:
        nav = " · ".join(f"<a href='#s{i}'>{html.escape(s.title)}</a>" for i, s in enumerate(self.sections))
        body = "".join(
            f"<section id='s{i}'><h2>{html.escape(s.title)}</h2>{''.join(s.body)}</section>"
            for i, s in enumerate(self.sections)
        )
        return _TEMPLATE.format(title=html.escape(title), header=header, nav=nav, body=body)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
        padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }}
table {{ border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }}
th, td {{ border: 1px solid #ccc; padding: .2em .5em; text-align: right; white-space: nowrap; }}
.scroll {{ overflow-x: auto; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
tr.mean td {{ font-weight: bold; background: #fafafa; }} td.flag {{ background: #fff3e0; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; height: auto; }}
figcaption {{ color: #555; font-size: .9em; }} .meta td {{ text-align: left; }}
.note {{ color: #7a4b00; background: #fff8e6; padding: .4em .8em; border-left: 3px solid #f0a000; }}
footer {{ margin-top: 3em; color: #888; font-size: .8em; }} nav {{ margin-bottom: 1em; }}
</style></head>
<body>
<h1>{title}</h1>
{header}
<nav>{nav}</nav>
{body}
<footer>Written by transunet. <span id="render-check" data-images="-1" data-rendered="-1"></span></footer>
<script>
window.addEventListener("load", function () {{
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {{ if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }}
  var m = document.getElementById("render-check");
  m.setAttribute("data-images", String(imgs.length));
  m.setAttribute("data-rendered", String(ok));
  m.textContent = ok + "/" + imgs.length + " images rendered.";
}});
</script>
</body></html>
"""


def _meta_table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows if v is not None
    )
    return f"<table class='meta'>{cells}</table>"


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def _find_checkpoint(summary: dict[str, Any], paths: RunPaths) -> Path | None:
    candidates = []
    if summary.get("checkpoint"):
        p = Path(summary["checkpoint"])
        candidates += [p, paths.root / p]
    candidates += [paths.best, paths.last]
    for p in candidates:
        if p.is_file():
            return p
    return None


def _rank_cases(summary: dict[str, Any]) -> list[tuple[str, float]]:
    """Cases with a corrected (else official) mean Dice, best first."""
    ranked = []
    for case in summary.get("cases", []):
        v = case.get("mean_dice_corrected")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            v = case.get("mean_dice_official")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        ranked.append((str(case["case_id"]), float(v)))
    ranked.sort(key=lambda t: (-t[1], t[0]))
    return ranked


def representative_slices(label: np.ndarray, max_slices: int = 2) -> list[int]:
    """Slices to show for a case: the one with the most foreground, then the one with the most
    distinct organs at least ``S // 8`` slices away from it.

    Args:
        label: Ground truth ``(S, H, W)``.
        max_slices: At most this many slices.
    """
    s = label.shape[0]
    area = (label > 0).reshape(s, -1).sum(axis=1)
    if area.max() == 0:
        return [s // 2]
    first = int(np.argmax(area))
    chosen = [first]
    if max_slices > 1 and s > 1:
        gap = max(1, s // 8)
        n_organs = np.array([len(np.unique(label[i][label[i] > 0])) for i in range(s)])
        far = [i for i in range(s) if abs(i - first) >= gap and area[i] > 0]
        if far:
            chosen.append(max(far, key=lambda i: (n_organs[i], area[i])))
    return chosen[:max_slices]


def _saved_prediction(case: dict[str, Any], summary_dir: Path, run_root: Path, shape: tuple) -> np.ndarray | None:
    rel = case.get("prediction")
    if not rel:
        return None
    from transunet.data.nifti import is_nifti, load_nifti

    for base in (summary_dir, run_root, Path.cwd()):
        p = Path(rel) if Path(rel).is_absolute() else base / rel
        if p.is_file():
            if not is_nifti(p):
                return None
            try:
                arr = load_nifti(p, dtype=np.uint8)[0]
            except TransUNetError as e:
                log.warning("cannot read the saved prediction %s (%s); predicting again.", p, e)
                return None
            if tuple(arr.shape) != tuple(shape):
                log.warning("saved prediction %s has shape %s, the volume %s; predicting again.",
                            p, arr.shape, shape)
                return None
            return arr
    return None


def make_report(
    run: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    device: str = "auto",
    summary: str | Path | None = None,
    out_dir: str | Path | None = None,
    predictor: Any = None,
) -> Path:
    """Write the HTML report of an evaluated run and return the path of ``index.html``.

    Args:
        run: Run folder (or a checkpoint inside ``RUN/checkpoints/``), or any folder
            ``transunet evaluate`` wrote (``RUN/eval/SPLIT``, an ``--out`` folder: its
            ``summary.json`` is reported into its ``report/``, or ``RUN/report/SPLIT`` for the
            run's own evaluation folders).
        data: Prepared dataset used for the overlays and attention maps (default: the summary's
            ``data_root``, then the run config's ``data.root``).
        split: Evaluated split whose ``RUN/eval/SPLIT/summary.json`` is reported.
        device: Device for the few forward passes (``auto``, ``cpu``, ``cuda``, ``mps``).
        summary: An explicit ``summary.json`` (e.g. from ``evaluate --out``) instead of the run's.
        out_dir: Output folder (default ``RUN/report/SPLIT``: one report per split, so reporting
            one split never touches another's; rebuilding a report replaces its own files).
        predictor: A :class:`~transunet.infer.Predictor` already built from the run's checkpoint
            (``transunet evaluate`` passes its own, so the checkpoint is read once).

    Returns:
        Path of the written ``index.html``.
    """
    root, summary_path, default_out = _locate(run, split, summary)
    paths = RunPaths(root)
    summ = tables.load_summary(summary_path)
    out = Path(out_dir) if out_dir is not None else default_out or paths.report_dir(str(summ.get("split") or split))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # figures of a previous report (case names may differ)
        old.unlink()
    class_names = [str(c) for c in summ["class_names"]]
    dev = resolve_device(device)
    page = _Page(out)
    steps = tqdm(total=5, desc="report", unit="step", leave=False)

    # -- model and data (each optional: sections explain what is missing)
    ckpt_path = _find_checkpoint(summ, paths)
    model = ckpt = None
    if predictor is None and ckpt_path is not None:
        from transunet.infer import Predictor

        predictor = Predictor.from_checkpoint(ckpt_path, dev)
    if predictor is not None:
        model, ckpt = predictor.model, predictor.checkpoint
        ckpt_path = predictor.path or ckpt_path
    cfg = _run_config(paths, ckpt)
    data_root = _data_root(data, summ, cfg)

    # -- header
    model_name = ckpt["model"]["name"] if ckpt else None
    n_params = sum(p.numel() for p in model.parameters()) if model is not None else None
    header = _meta_table([
        ("run", root),
        ("split", summ.get("split", split)),
        ("cases", summ.get("n_cases", len(summ.get("cases", [])))),
        ("checkpoint", summ.get("checkpoint") or ckpt_path),
        ("model", f"{model_name} ({n_params:,} parameters)" if model_name else None),
        ("input size", "×".join(map(str, predictor.img_size)) if predictor is not None else None),
        ("data", summ.get("data_root") or data_root),
        ("written", _dt.datetime.now().isoformat(timespec="seconds")),
    ])

    # -- tables
    sec = page.section("Per-organ results")
    protos = [p for p in ("official", "corrected") if p in summ["protocols"]]
    protos += [p for p in summ["protocols"] if p not in protos]
    for p in protos:
        sec.body.append(f"<h3>{html.escape(tables.PROTOCOL_TITLES.get(p, p))}</h3>")
        sec.body.append(f"<div class='scroll'>{tables.protocol_table(summ, p)}</div>")
    sec = page.section("Per-case results")
    for p in protos:
        sec.body.append(f"<details><summary>{html.escape(p)}: Dice % / HD95 "
                        f"{html.escape(str(summ['protocols'][p].get('hd95_unit', '')))} per case and organ"
                        "</summary><div class='scroll'>" + tables.per_case_table(summ, p) + "</div></details>")
    steps.update()

    # -- training curves
    sec = page.section("Training curves")
    if paths.metrics.is_file():
        try:
            curves = plots.read_metrics_csv(paths.metrics)
            page.figure(sec, plots.plot_training_curves(curves, class_names), "curves.png",
                        f"Training curves re-plotted from {paths.metrics.name} "
                        f"({len(curves.x)} rows, x axis: {curves.x_name}).")
        except DataError as e:
            sec.body.append(_note(str(e)))
    else:
        sec.body.append(_note(f"No training log at {paths.metrics} (a converted checkpoint has none)."))
    steps.update()

    # -- overlays of the best and worst cases
    sec = page.section("Best and worst cases")
    ranked = _rank_cases(summ)
    picked: list[tuple[str, str, float]] = []
    if ranked:
        picked.append(("best", *ranked[0]))
        if len(ranked) > 1:
            picked.append(("worst", *ranked[-1]))
    attention_input: tuple[str, np.ndarray, np.ndarray, int] | None = None
    if not picked:
        sec.body.append(_note("The summary has no per-case mean Dice to rank the cases."))
    elif data_root is None:
        sec.body.append(_note("The dataset folder is unknown or missing; pass --data to draw the overlays."))
    else:
        cases = {str(c["case_id"]): c for c in summ.get("cases", [])}
        for kind, case_id, score in tqdm(picked, desc="overlays", leave=False):
            try:
                vol = _load_case(data_root, summ.get("split", split), case_id)
            except TransUNetError as e:
                sec.body.append(_note(f"{case_id}: {e}"))
                continue
            if vol.label is None:
                sec.body.append(_note(f"{case_id} has no ground truth in {data_root}."))
                continue
            idx = representative_slices(vol.label)
            pred = _saved_prediction(cases.get(case_id, {}), summary_path.parent, root, vol.label.shape)
            if pred is not None:
                pred_slices = pred[idx]
            elif predictor is not None:
                pred_slices = predictor.predict_volume(vol.image[idx])
            else:
                sec.body.append(_note(f"{case_id}: no saved prediction and no checkpoint to predict with."))
                continue
            rows = [plots.OverlayRow(f"{case_id}, slice {i}", vol.display_slice(i), vol.label[i], pred_slices[j])
                    for j, i in enumerate(idx)]
            proto = "corrected" if cases.get(case_id, {}).get("mean_dice_corrected") is not None else "official"
            title = f"{kind} case {case_id}: mean Dice {score * 100:.2f}% ({proto})"
            page.figure(sec, plots.plot_overlays(rows, class_names, title), f"overlay_{kind}_{case_id}.png",
                        f"{title}. Columns: image, ground truth, prediction, disagreement (red; yellow: "
                        "ground-truth outline). Slices: the one with the most foreground, then the one "
                        "with the most organs further away.")
            if attention_input is None:
                attention_input = (case_id, vol.image[idx[0]], vol.label[idx[0]], idx[0])
    steps.update()

    # -- attention
    sec = page.section("Attention")
    kind = att.attention_kind(model) if model is not None else None
    if model is None:
        sec.body.append(_note("No checkpoint found: attention maps need the model."))
    elif kind is None:
        sec.body.append(_note(f"{model_name} has no attention layers: no attention to show."))
    elif kind != "global":
        sec.body.append(_note(f"{model_name} has {kind} attention; this report draws global (token) "
                              "attention maps only, so none are shown."))
    elif attention_input is None:
        sec.body.append(_note("No slice with ground truth available to place the query token."))
    else:
        case_id, image, label, s = attention_input  # image: the model's input slice, (H, W) or (C, H, W)
        shown = image if image.ndim == 2 else image[0]  # figures draw the first channel
        areas = {int(v): int((label == v).sum()) for v in np.unique(label) if v > 0}
        organ = max(areas, key=lambda k: areas[k])
        point = att.query_point(label == organ)
        organ_name = class_names[organ] if organ < len(class_names) else f"class {organ}"
        try:
            res = att.slice_attention(model, image, point, predictor.img_size, dev)
        except (TypeError, ValueError, NotImplementedError, TransUNetError) as e:
            sec.body.append(_note(f"{model_name} did not give attention maps ({' '.join(str(e).split())})."))
        else:
            where = f"{case_id}, slice {s}, query at the centre of the {organ_name}"
            page.figure(sec, plots.plot_attention_rollout(shown, res, label, class_names,
                                                          f"Attention of one token: {where}"),
                        "attention_rollout.png",
                        f"{where}. Left: query (cyan ×) over the ground truth. Middle: the last layer's "
                        "attention averaged over heads. Right: attention rollout (Abnar & Zuidema 2020: "
                        "heads averaged, identity added for the residual path, rows renormalised, "
                        f"multiplied over the {res.n_layers} layers).")
            page.figure(sec, plots.plot_attention_heads(shown, res, f"Last layer, per head: {where}"),
                        "attention_heads.png",
                        f"{where}. What each head of layer {res.n_layers} attends to from the query token "
                        f"(token grid {res.grid[0]}×{res.grid[1]} upsampled over the slice).")
    steps.update()

    title = f"transunet report: {root.name} ({summ.get('split', split)})"
    index = atomic_write_text(out / REPORT_HTML, page.render(title, header))
    steps.update()
    steps.close()
    log.info("report written to %s", index)
    return index


def _locate(run: str | Path, split: str, summary: str | Path | None) -> tuple[Path, Path, Path | None]:
    """``(run folder, summary.json, default output folder or None)`` of what ``run`` names.

    ``run`` is a run folder (its ``eval/SPLIT/summary.json``), a checkpoint inside one, or any
    folder ``transunet evaluate`` wrote (``RUN/eval/SPLIT`` or an ``--out`` folder: it holds
    ``summary.json``; its run is the one of the checkpoint the summary names).
    """
    path = Path(run)
    if summary is None and path.is_dir() and (path / "summary.json").is_file():
        summary_path = path / "summary.json"
        try:
            ckpt = json.loads(summary_path.read_text()).get("checkpoint")
        except (OSError, json.JSONDecodeError, AttributeError):
            ckpt = None
        root = run_folder_of(ckpt) if ckpt and Path(ckpt).is_file() else path
        split_of = path.name if path.parent.name == "eval" else None
        if split_of and path.parent.parent.resolve() == root.resolve():
            return root, summary_path, RunPaths(root).report_dir(split_of)  # the run's own evaluation
        return root, summary_path, path / "report"
    root = resolve_run(run)
    paths = RunPaths(root)
    if summary is not None:
        return root, Path(summary), None
    summary_path = paths.eval_summary(split)
    if not summary_path.is_file() and not paths.checkpoints.is_dir() and not paths.config.is_file():
        raise DataError(f"{root} is neither a run folder (no {summary_path.relative_to(root)}, checkpoints/ or "
                        "config.yaml) nor an evaluation folder (no summary.json); pass a run folder or a folder "
                        "written by 'transunet evaluate' (e.g. its --out DIR).")
    return root, summary_path, None


def _run_config(paths: RunPaths, ckpt: dict[str, Any] | None) -> Any:
    from transunet.config import config_from_dict, load_config

    if paths.config.is_file():
        try:
            return load_config(paths.config)
        except TransUNetError as e:
            log.warning("cannot read %s (%s)", paths.config, e)
    if ckpt is not None and ckpt.get("config"):
        try:
            return config_from_dict(ckpt["config"])
        except TransUNetError as e:
            log.warning("cannot read the checkpoint's config (%s)", e)
    return None


def _data_root(data: str | Path | None, summary: dict[str, Any], cfg: Any) -> Path | None:
    if data is not None:
        if not Path(data).is_dir():
            raise DataError(f"--data {data} is not a folder; pass the prepared dataset of the evaluation.")
        return Path(data)
    for cand in (summary.get("data_root"), getattr(getattr(cfg, "data", None), "root", None)):
        if cand and Path(cand).is_dir():
            return Path(cand)
    log.warning("dataset folder not found (summary data_root=%s); overlays are skipped.", summary.get("data_root"))
    return None


def _load_case(root: Path, split: str, case_id: str) -> Any:
    from transunet.data.datasets import load_volume

    return load_volume(root, split, case_id)


__all__ = ["REPORT_HTML", "make_report", "representative_slices", "resolve_run"]
