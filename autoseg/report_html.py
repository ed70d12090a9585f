"""HTML pieces of ``autoseg report``: tables (sortable by a click on a header), line charts as inline
SVG, pictures as data URIs and the page around them. Everything is inline: the page loads nothing.
"""
from __future__ import annotations

import base64
import html
import math
from typing import Optional, Sequence, Union

Cell = Union[str, int, float, None]
# line colours of the charts, one per series in order (cycled)
SERIES_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.2em .5em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
table.sortable th{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tr.chosen td{font-weight:bold}
.missing{background:#fff6e0;border-left:4px solid #e0a000;padding:.5em 1em}
code{background:#f3f3f3;padding:0 .2em}
figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:.85em;max-width:300px}
.charts svg{margin-right:1em}nav a{margin-right:1em}
"""

# sorts the rows of a table.sortable by the clicked column: numbers (data-value) by value, text by
# text; cells without a value (data-value="") last either way
_SCRIPT = """
function sortKey(cell){var v=cell.getAttribute('data-value');
 if(v===null)return[0,cell.textContent];if(v==='')return[1,0];return[0,parseFloat(v)];}
document.querySelectorAll('table.sortable th').forEach(function(th){
 th.addEventListener('click',function(){
  var table=th.closest('table'),body=table.tBodies[0],i=th.cellIndex;
  var asc=th.getAttribute('aria-sort')!=='ascending';
  table.querySelectorAll('th').forEach(function(h){h.removeAttribute('aria-sort');});
  th.setAttribute('aria-sort',asc?'ascending':'descending');
  var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){var x=sortKey(a.cells[i]),y=sortKey(b.cells[i]);
   if(x[0]!==y[0])return x[0]-y[0];var c=x[1]<y[1]?-1:x[1]>y[1]?1:0;return asc?c:-c;});
  rows.forEach(function(r){body.appendChild(r);});
 });
});
"""


def esc(text: object) -> str:
    """``text`` as HTML text, with ``<``, ``&`` and quotes escaped."""
    return html.escape(str(text), quote=True)


def fmt(value: Cell, digits: int = 4) -> str:
    """A cell's text: floats with ``digits`` decimals, None and NaN as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "\u2013"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _td(value: Cell, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and value is not None:
        return f"<td>{esc(value)}</td>"
    number = "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else repr(value)
    return f'<td data-value="{number}">{esc(fmt(value, digits))}</td>'


def table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], sortable: bool = False,
          table_id: Optional[str] = None, chosen: Sequence[bool] = (), digits: int = 4) -> str:
    """An HTML table; number cells carry their value in ``data-value`` (what sorting compares), and
    ``sortable`` makes a click on a header sort by that column. ``chosen[i]`` marks row i bold."""
    attrs = (' class="sortable"' if sortable else "") + (f' id="{esc(table_id)}"' if table_id else "")
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    marks = [' class="chosen"' if i < len(chosen) and chosen[i] else "" for i in range(len(rows))]
    body = "".join(f"<tr{mark}>" + "".join(_td(v, digits) for v in row) + "</tr>" for mark, row in zip(marks, rows))
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def missing(what: str, command: str) -> str:
    """The box shown for a part not made yet: what is missing and the command that makes it."""
    return f'<p class="missing">{esc(what)}: not yet run. Make it with <code>{esc(command)}</code></p>'


def data_uri_img(png: bytes, alt: str) -> str:
    """An ``<img>`` holding ``png`` as a base64 data URI."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def line_chart(series: dict[str, Sequence[Optional[float]]], title: str, y_range: Optional[tuple[float, float]] = None,
               width: int = 460, height: int = 240) -> str:
    """An inline SVG chart of ``series`` (name -> one value per epoch) against the epoch; a value that is
    None or not finite breaks its line. ``y_range`` fixes the y axis (default: the values' range)."""
    left, right, top, bottom = 48, 10, 22, 34
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    n = max((len(vs) for vs in series.values()), default=0)
    low, high = y_range if y_range else ((min(values), max(values)) if values else (0.0, 1.0))
    if high <= low:
        low, high = low - 0.5, high + 0.5
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - low) / (high - low))

    parts = [f'<svg width="{width}" height="{height + 16 * len(series)}" '
             f'role="img" aria-label="{esc(title)}">',
             f'<text x="{left}" y="14" font-size="13" font-weight="bold">{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>']
    for v in (low, (low + high) / 2, high):
        parts.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.3g}</text>')
    for i in sorted({0, n - 1}) if n else ():
        parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h + 14}" font-size="11" text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 28}" font-size="11" '
                 'text-anchor="middle">epoch</text>')
    for k, (name, vs) in enumerate(series.items()):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        for run in _finite_runs(vs):
            if len(run) == 1:
                i, v = run[0]
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{colour}"/>')
            else:
                points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
        ly = height + 16 * k + 4
        parts.append(f'<rect x="{left}" y="{ly}" width="12" height="3" fill="{colour}"/>'
                     f'<text x="{left + 18}" y="{ly + 5}" font-size="11">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _finite_runs(values: Sequence[Optional[float]]) -> list[list[tuple[int, float]]]:
    runs, current = [], []
    for i, v in enumerate(values):
        if v is not None and math.isfinite(v):
            current.append((i, float(v)))
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def page(title: str, sections: Sequence[tuple[str, str, str]], subtitle: str = "") -> str:
    """The whole page: ``sections`` are (anchor id, heading, inner HTML), listed in a menu at the top."""
    nav = "".join(f'<a href="#{esc(i)}">{esc(h)}</a>' for i, h, _ in sections)
    body = "".join(f'<section id="{esc(i)}"><h2>{esc(h)}</h2>{inner}</section>' for i, h, inner in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1><p>{esc(subtitle)}</p><nav>{nav}</nav>"
            f"{body}<script>{_SCRIPT}</script></body></html>\n")
