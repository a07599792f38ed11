"""Self-contained HTML pages for counterexamples: one column per thread, one row a step."""

from __future__ import annotations

import html
import re
from pathlib import Path

from ..checking import Verdict
from .text import counterexample_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.3em; } .meta td { padding: 2px 12px 2px 0; }
.broke { background: #fff3f3; border-left: 4px solid #c33; padding: .6em 1em;
         white-space: pre-wrap; }
table.trace { border-collapse: collapse; margin-top: 1em;
              font-family: ui-monospace, monospace; font-size: .9em; }
table.trace th, table.trace td { border: 1px solid #ddd; padding: 3px 8px; vertical-align: top; }
table.trace th { background: #f4f4f4; position: sticky; top: 0; }
td.step { color: #888; text-align: right; } td.src { color: #888; font-size: .85em; }
tr:last-child td { background: #fff3f3; }
code { background: #f4f4f4; padding: 1px 4px; }
"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def counterexample_html(v: Verdict) -> str:
    viol = v.violation
    e = html.escape
    title = f"{v.case.protocol} / {v.case.scenario}: {viol.kind if viol else 'verified'}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{e(title)}</h1>",
             "<table class='meta'>"]
    rows = [("protocol", v.case.protocol), ("scenario", v.case.scenario),
            ("memory model", v.exploration.memory_model),
            ("executions explored", f"{v.exploration.executions:,}")]
    if viol is not None:
        rows.append(("replay", f"vcpureq replay ... '{viol.schedule}'"))
    parts += [f"<tr><td>{e(k)}</td><td><code>{e(str(val))}</code></td></tr>" for k, val in rows]
    parts.append("</table>")
    if viol is None:
        parts.append("<p>No counterexample.</p></body></html>")
        return "".join(parts)
    parts.append(f"<div class='broke'><b>{e(viol.kind)}</b>: {e(viol.message)}</div>")
    if v.case.explain is not None:
        parts.append(f"<pre class='words'>{e(v.case.explain(viol))}</pre>")
    threads: dict[int, str] = {}
    for ev in viol.trace:
        threads.setdefault(ev.thread, ev.thread_name)
    order = sorted(threads)
    parts.append("<table class='trace'><tr><th>step</th>")
    parts += [f"<th>{e(threads[t])}</th>" for t in order]
    parts.append("<th>source</th></tr>")
    for ev in viol.trace:
        what = ev.describe().split(None, 2)[2].rsplit("  (", 1)[0]
        cells = ["<td></td>"] * len(order)
        cells[order.index(ev.thread)] = f"<td>{e(what)}</td>"
        parts.append(f"<tr><td class='step'>{ev.step}</td>{''.join(cells)}"
                     f"<td class='src'>{e(ev.source or '')}</td></tr>")
    parts.append("</table></body></html>")
    return "".join(parts)


def write_reports(verdicts: list[Verdict], directory: str | Path) -> list[Path]:
    """Write a .txt and a .html for every counterexample; returns the paths written."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for v in verdicts:
        if v.violation is None:
            continue
        stem = _slug(f"{v.case.protocol}__{v.case.scenario}__{v.exploration.memory_model}")
        txt = out / f"{stem}.txt"
        txt.write_text(counterexample_text(v))
        page = out / f"{stem}.html"
        page.write_text(counterexample_html(v))
        written += [txt, page]
    return written
