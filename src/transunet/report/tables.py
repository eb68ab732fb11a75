"""Reading an evaluation ``summary.json`` and rendering its tables as HTML.

The summary is written by ``transunet evaluate``; its schema (one entry per protocol)::

    {"split", "checkpoint", "data_root", "class_names": [...incl. background], "n_cases",
     "protocols": {"official"|"corrected": {"hd95_unit": "voxel"|"mm",
         "per_case": {case_id: {class_name: {"dice", "hd95", "status"}}},
         "per_class": {class_name: {"dice_mean", "dice_std", "dice_ci95", "hd95_mean", "hd95_std",
                                    "hd95_ci95", "n", "n_missed", "n_false_positive"}},
         "mean": {"dice", "hd95", "dice_ci95", "hd95_ci95"}}},
     "cases": [{"case_id", "shape", "spacing", "prediction", "mean_dice_official",
                "mean_dice_corrected"}]}
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transunet.data.synapse import display_columns
from transunet.errors import DataError

PROTOCOL_TITLES = {
    "official": "Official protocol (as published: HD95 in voxels, a missed organ scores Dice 0 and "
                "HD95 0, a false positive on an absent organ scores Dice 1 and HD95 0, an organ absent "
                "in both scores 0)",
    "corrected": "Corrected protocol (HD95 in mm, a missed organ scores Dice 0 and counts as an HD95 "
                 "failure, organs absent in both are excluded)",
}


def display_order(class_names: Sequence[str]) -> list[str]:
    """Foreground class names in the order tables print them.

    The eight Synapse organs are printed in the paper's column order (aorta, gallbladder, kidney L,
    kidney R, liver, pancreas, spleen, stomach); any other label set keeps its label order.

    Args:
        class_names: Names of labels ``0..C-1`` (index 0 is background).
    """
    return [class_names[i] for i, _ in display_columns(class_names)]


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read and check an evaluation ``summary.json``.

    Args:
        path: The file written by ``transunet evaluate``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no evaluation summary; run 'transunet evaluate RUN' first (it also writes the report)."
        )
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({e}); re-run 'transunet evaluate'.") from None
    if not isinstance(summary, dict):
        raise DataError(f"{path}: expected a JSON object at the top level; re-run 'transunet evaluate'.")
    for key in ("class_names", "protocols", "cases"):
        if key not in summary:
            raise DataError(f"{path}: missing key '{key}'; it was not written by 'transunet evaluate'.")
    if not isinstance(summary["protocols"], dict) or not summary["protocols"]:
        raise DataError(f"{path}: 'protocols' is empty; re-run 'transunet evaluate --protocol both'.")
    for name, proto in summary["protocols"].items():
        for key in ("per_class", "mean"):
            if key not in proto:
                raise DataError(f"{path}: protocol '{name}' has no '{key}'; re-run 'transunet evaluate'.")
    return summary


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def fmt(v: Any, scale: float = 1.0, digits: int = 2) -> str:
    """Format a number (``None``/NaN as an en dash)."""
    f = _num(v)
    return "–" if f is None else f"{f * scale:.{digits}f}"


def fmt_pm(mean: Any, std: Any, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (std omitted when missing)."""
    if _num(mean) is None:
        return "–"
    return fmt(mean, scale, digits) + ("" if _num(std) is None else f" ± {fmt(std, scale, digits)}")


def fmt_ci(ci: Any, scale: float = 1.0, digits: int = 2) -> str:
    """``[lo, hi]`` of a confidence interval (en dash when missing)."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or _num(ci[0]) is None or _num(ci[1]) is None:
        return "–"
    return f"[{fmt(ci[0], scale, digits)}, {fmt(ci[1], scale, digits)}]"


def protocol_table(summary: dict[str, Any], protocol: str) -> str:
    """HTML table of one protocol: one row per organ plus the mean row.

    Dice is printed in percent, HD95 in the protocol's unit; the corrected protocol's extras
    (average surface distance, normalised surface Dice) get columns when the summary has them.

    Args:
        summary: Output of :func:`load_summary`.
        protocol: ``official`` or ``corrected``.
    """
    proto = summary["protocols"][protocol]
    unit = proto.get("hd95_unit", "voxel" if protocol == "official" else "mm")
    per_class = proto["per_class"]
    stats = list(per_class.values())
    e = html.escape
    tol = summary.get("nsd_tolerance_mm")
    extras = [(key, label, scale) for key, label, scale in (
        ("assd_mean", f"ASSD {unit}", 1.0),
        ("nsd_mean", "NSD %" + (f" ({fmt(tol, digits=1)} mm)" if _num(tol) is not None else ""), 100.0),
    ) if any(key in st for st in stats)]
    counts = [(key, label) for key, label in (("n", "n"), ("n_missed", "missed"),
                                              ("n_false_positive", "false positive"), ("n_absent", "absent"))
              if any(key in st for st in stats)]
    head = ("<tr><th>organ</th><th>Dice % (mean ± std)</th><th>Dice 95% CI</th>"
            f"<th>HD95 {e(unit)} (mean ± std)</th><th>HD95 95% CI</th>"
            + "".join(f"<th>{e(label)}</th>" for _, label, _ in extras)
            + "".join(f"<th>{e(label)}</th>" for _, label in counts) + "</tr>")
    rows = []
    for name in display_order(summary["class_names"]):
        st = per_class.get(name)
        if st is None:
            continue
        rows.append(
            f"<tr><td>{e(name)}</td><td>{fmt_pm(st.get('dice_mean'), st.get('dice_std'), 100)}</td>"
            f"<td>{fmt_ci(st.get('dice_ci95'), 100)}</td>"
            f"<td>{fmt_pm(st.get('hd95_mean'), st.get('hd95_std'))}</td><td>{fmt_ci(st.get('hd95_ci95'))}</td>"
            + "".join(f"<td>{fmt(st.get(key), scale)}</td>" for key, _, scale in extras)
            + "".join(f"<td>{e(str(st.get(key, '–')))}</td>" for key, _ in counts) + "</tr>"
        )
    m = proto["mean"]
    rows.append(
        f"<tr class='mean'><td>mean</td><td>{fmt(m.get('dice'), 100)}</td><td>{fmt_ci(m.get('dice_ci95'), 100)}</td>"
        f"<td>{fmt(m.get('hd95'))}</td><td>{fmt_ci(m.get('hd95_ci95'))}</td>"
        + "".join(f"<td>{fmt(m.get(key.removesuffix('_mean')), scale)}</td>" for key, _, scale in extras)
        + "".join(f"<td>{e(str(m[key])) if key in m else ''}</td>" for key, _ in counts) + "</tr>"
    )
    return f"<table class='metrics'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def per_case_table(summary: dict[str, Any], protocol: str) -> str:
    """HTML table of one protocol's per-case values: ``Dice % / HD95`` per organ.

    Cells whose status is not a plain overlap (missed organ, false positive, absent) show it.

    Args:
        summary: Output of :func:`load_summary`.
        protocol: ``official`` or ``corrected``.
    """
    proto = summary["protocols"][protocol]
    per_case = proto.get("per_case") or {}
    if not per_case:
        return "<p>No per-case values in the summary.</p>"
    names = display_order(summary["class_names"])
    e = html.escape
    means = {c.get("case_id"): c for c in summary.get("cases", [])}
    key = f"mean_dice_{protocol}"
    head = "<tr><th>case</th><th>mean Dice %</th>" + "".join(f"<th>{e(n)}</th>" for n in names) + "</tr>"
    rows = []
    for case_id in sorted(per_case):
        cells = []
        for n in names:
            v = per_case[case_id].get(n)
            if v is None:
                cells.append("<td>–</td>")
                continue
            status = str(v.get("status", ""))
            note = "" if status in ("", "ok") else f"<br><small>{e(status)}</small>"
            cls = "" if status in ("", "ok") else " class='flag'"
            cells.append(f"<td{cls}>{fmt(v.get('dice'), 100)} / {fmt(v.get('hd95'))}{note}</td>")
        mean = fmt(means.get(case_id, {}).get(key), 100)
        rows.append(f"<tr><td>{e(str(case_id))}</td><td>{mean}</td>{''.join(cells)}</tr>")
    return f"<table class='cases'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


__all__ = ["PROTOCOL_TITLES", "display_order", "fmt", "fmt_ci", "fmt_pm", "load_summary",
           "per_case_table", "protocol_table"]
