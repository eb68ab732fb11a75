"""HTML/PNG report of an evaluated run: tables in both protocols, training curves, overlays of the
best and worst cases, and the transformer's attention (per head and attention rollout).

Example::

    from transunet.report import make_report
    index_html = make_report("runs/synapse_transunet_r50_vit_b16", split="test")
"""

from transunet.report.attention import attention_rollout, head_maps, query_point, slice_attention
from transunet.report.builder import REPORT_HTML, make_report, representative_slices, resolve_run

__all__ = [
    "REPORT_HTML", "attention_rollout", "head_maps", "make_report", "query_point",
    "representative_slices", "resolve_run", "slice_attention",
]
