"""A self-contained HTML report of a run: every figure, the config and the notices.

plotly.js is inlined once, so the file opens offline, e.g. on a classroom projector.
"""

from __future__ import annotations

import html
import json
from typing import Iterable, Sequence

from bnviz.figures import FIGURES, preset_figures
from bnviz.runlog import RunSnapshot


def html_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """An HTML table of ``columns`` over ``rows`` of cells, escaped (a run's claims, a sweep's rows)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _table(rows: list[dict]) -> str:
    """Rows of text (bnviz.claims) as an HTML table; nothing without rows."""
    return html_table(list(rows[0]), [list(r.values()) for r in rows]) if rows else ""


def to_html(snap: RunSnapshot, title: str = "bnviz run", note: str | None = None,
            extra: Sequence[str] = ()) -> str:
    """``extra``: names of the figures a preset adds (``Preset.figures``), shown first."""
    parts = []
    specs = preset_figures(extra) + list(FIGURES)
    for i, spec in enumerate(specs):
        fig_html = spec.build(snap).to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False,
                                            config={"displaylogo": False})
        table = _table(spec.table(snap)) if spec.table is not None else ""
        parts.append(f"<section>{fig_html}<p class='caption'>{html.escape(spec.caption)}</p>{table}</section>")
    status = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(v.ended)}</li>" for n, v in snap.variants.items())
    notices = "".join(f"<li>{html.escape(n)}</li>" for n in snap.notices)
    config = json.dumps({n: v.config for n, v in snap.variants.items()}, indent=2)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:Inter,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}}
.caption{{color:#555;margin:0 0 2em 1em}} pre{{background:#f6f6f6;padding:1em;overflow:auto}}
table{{border-collapse:collapse;margin:0 0 2em 1em}} th,td{{border:1px solid #ddd;padding:.3em .8em;text-align:left}}
th{{background:#f6f6f6}}</style></head>
<body><h1>{html.escape(title)}</h1>
{f"<p>{html.escape(note)}</p>" if note else ""}
<ul>{status}</ul>{f"<h3>Notices</h3><ul>{notices}</ul>" if notices else ""}
{''.join(parts)}
<h2>Configuration</h2><pre>{html.escape(config)}</pre>
<p>Made with bnviz.</p></body></html>
"""
