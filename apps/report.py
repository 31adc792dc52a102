"""A self-contained HTML report: summary table, before/after evaluations, every step's figures.

plotly.js is inlined once, so the file opens offline and can be mailed around.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    return pd.DataFrame(rows).to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, classes="t")


def write_report(path: Path, spec, res, outputs) -> Path:
    import plotly.io as pio

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(spec.title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table.t{border-collapse:collapse;font-size:14px}table.t td,table.t th{padding:3px 8px;"
        "border-bottom:1px solid #ddd;text-align:right}h2{margin-top:2em}</style></head><body>",
        f"<h1>{html.escape(spec.title)}</h1>",
        f"<p>{len(spec.steps)} steps ({len(res.computed)} computed, {len(res.reused)} reused), "
        f"{res.seconds:.0f} s. Source: <code>{html.escape(str(spec.file))}</code></p>",
        "<h2>Effects against controls</h2>", _table(res.rows),
        "<h2>Evaluations before and after the edits</h2>", _table(res.evaluations),
    ]
    first = True
    for cfg in spec.steps:
        o = outputs[cfg["id"]]
        parts.append(f"<h2>{html.escape(cfg['id'])} <small>({html.escape(cfg['kind'])} on "
                     f"{html.escape(cfg['subject'])})</small></h2>")
        if o.rows:
            parts.append(_table(o.rows))
        if o.edit is not None:
            parts.append(f"<p>Edit: <code>{html.escape(repr(o.edit))}</code>, saved in "
                         f"<code>steps/{html.escape(cfg['id'])}/edit</code></p>")
        for name, fig in o.figures.items():
            parts.append(f"<h3>{html.escape(name)}</h3>")
            parts.append(pio.to_html(fig, include_plotlyjs="inline" if first else False, full_html=False))
            first = False
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
