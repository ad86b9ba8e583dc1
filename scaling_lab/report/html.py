"""A self-contained HTML page: plotly.js inlined once, figures drawn from inline JSON, no requests.

The page records its own console errors and, once every figure is drawn, how many points,
lines and heatmap images each figure holds, in ``<pre id="render-check">`` (JSON), so a
headless browser can check the page through its DOM.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

Formatter = Callable[[Any], str]

# Registered before anything else runs, so errors from plotly.js or the figures are caught too.
ERROR_RECORDER = """
window.reportErrors = [];
window.addEventListener("error", function (e) { window.reportErrors.push(String(e.message)); });
window.addEventListener("unhandledrejection", function (e) { window.reportErrors.push("unhandled rejection: " + String(e.reason)); });
(function () {
  var original = console.error;
  console.error = function () {
    window.reportErrors.push(Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
})();
"""

FIGURE_DRAWER = """
function drawnCounts(div) {
  return {
    id: div.id,
    points: div.querySelectorAll(".scatterlayer .point, .barlayer .point").length,
    lines: div.querySelectorAll(".scatterlayer path.js-line").length,
    heatmaps: div.querySelectorAll(".heatmaplayer image").length,
    errorbars: div.querySelectorAll(".errorbars .errorbar").length,
    legend: div.querySelectorAll(".legend .traces").length
  };
}
var drawing = Array.prototype.map.call(document.querySelectorAll("script.figure-data"), function (data) {
  var figure = JSON.parse(data.textContent);
  return Plotly.newPlot(data.dataset.target, figure.data, figure.layout, {displaylogo: false, responsive: true});
});
Promise.all(drawing).catch(function (error) { window.reportErrors.push("plot failed: " + error); }).then(function () {
  document.getElementById("render-check").textContent = JSON.stringify({
    errors: window.reportErrors,
    figures: Array.prototype.map.call(document.querySelectorAll(".figure"), drawnCounts),
    requests: performance.getEntriesByType("resource").map(function (r) { return r.name; })
  });
});
"""

TABLE_SORTER = """
document.querySelectorAll("table.sortable th").forEach(function (header, column) {
  header.addEventListener("click", function () {
    var table = header.closest("table"), body = table.tBodies[0];
    var ascending = header.dataset.order !== "asc";
    table.querySelectorAll("th").forEach(function (th) { delete th.dataset.order; });
    header.dataset.order = ascending ? "asc" : "desc";
    var index = Array.prototype.indexOf.call(header.parentNode.children, header);
    var key = function (row) {
      var cell = row.children[index], value = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
      var number = parseFloat(value);
      return isNaN(number) || cell.dataset.value === undefined ? value : number;
    };
    Array.prototype.slice.call(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return ascending ? order : -order;
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""

STYLE = """
body { font-family: sans-serif; margin: 0 auto; max-width: 1280px; padding: 0 24px 60px; color: #1d2430; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #d5d9e0; padding-bottom: 4px; margin-top: 40px; }
nav a { margin-right: 14px; } .note { color: #5a6270; } .banner { background: #fff4d6; border: 1px solid #e8c66b; padding: 8px 12px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 13px; } th, td { border-bottom: 1px solid #e3e6eb; padding: 4px 8px; text-align: right; }
th { background: #f3f5f8; } td.text, th.text { text-align: left; } table.sortable th { cursor: pointer; user-select: none; }
th[data-order="asc"]::after { content: " ▲"; } th[data-order="desc"]::after { content: " ▼"; }
tr.front td { font-weight: 600; } .tables { display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 12px; } .state-failed, .state-rejected { color: #a12a2a; }
"""


@dataclass
class Section:
    anchor: str
    title: str
    body: str


@dataclass
class Page:
    """Sections in order, and the figures they place, each under a name that says what it shows
    (its PNG is ``<name>.png``: links to it survive new figures)."""

    title: str
    sections: list[Section] = field(default_factory=list)
    figures: list[tuple[str, go.Figure]] = field(default_factory=list)

    def figure(self, figure: go.Figure, name: str) -> str:
        """Register a figure under ``name`` (e.g. ``pareto-flops``); returns the HTML that places it."""
        if any(name == taken for taken, _ in self.figures):
            raise ValueError(f"two figures named {name!r} on one page")
        self.figures.append((name, figure))
        figure_id = f"figure-{name}"
        data = figure.to_json().replace("<", "\\u003c")  # JSON inside <script> must not close the tag
        return f'<div class="figure" id="{figure_id}"></div>\n<script type="application/json" class="figure-data" data-target="{figure_id}">{data}</script>'

    def add(self, anchor: str, title: str, *parts: str) -> None:
        self.sections.append(Section(anchor, title, "\n".join(parts)))

    def render(self, header: str) -> str:
        nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self.sections)
        body = "\n".join(f'<section id="{s.anchor}">\n<h2>{html.escape(s.title)}</h2>\n{s.body}\n</section>' for s in self.sections)
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(self.title)}</title>
<script>{ERROR_RECORDER}</script>
<style>{STYLE}</style>
<script>{get_plotlyjs()}</script>
</head>
<body>
{header}
<nav>{nav}</nav>
{body}
<pre id="render-check" hidden></pre>
<script>{TABLE_SORTER}{FIGURE_DRAWER}</script>
</body>
</html>
"""


def table(frame: pd.DataFrame, columns: dict[str, tuple[str, Formatter]], sortable: bool = False, highlight: pd.Series | None = None) -> str:
    """An HTML table of ``frame``'s ``columns`` (column -> (header, formatter)).

    Numeric cells carry their raw value in ``data-value`` so the sorter orders them as numbers.
    """
    headers = "".join(
        f'<th class="{"text" if not pd.api.types.is_numeric_dtype(frame[c]) else ""}">{html.escape(header)}</th>'
        for c, (header, _) in columns.items()
    )
    rows = []
    for index, row in frame.iterrows():
        cells = []
        for column, (_, formatter) in columns.items():
            value = row[column]
            numeric = pd.api.types.is_numeric_dtype(frame[column]) and not isinstance(value, bool)
            attributes = f' data-value="{value}"' if numeric and pd.notna(value) else ("" if numeric else ' class="text"')
            cells.append(f"<td{attributes}>{html.escape(formatter(value))}</td>")
        css = ' class="front"' if highlight is not None and bool(highlight.loc[index]) else ""
        rows.append(f"<tr{css}>{''.join(cells)}</tr>")
    css = ' class="sortable"' if sortable else ""
    return f"<table{css}><thead><tr>{headers}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def paragraph(text: str, css: str = "note") -> str:
    return f'<p class="{css}">{html.escape(text)}</p>'


def definitions(items: dict[str, Any]) -> str:
    rows = "".join(f'<tr><th class="text">{html.escape(str(k))}</th><td class="text">{html.escape(str(v))}</td></tr>' for k, v in items.items())
    return f"<table>{rows}</table>"


def preformatted(text: str, summary: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"


def side_by_side(*tables: tuple[str, str]) -> str:
    return '<div class="tables">' + "".join(f"<div><h3>{html.escape(title)}</h3>{body}</div>" for title, body in tables) + "</div>"
