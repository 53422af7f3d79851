"""A self-contained HTML report: Vega-Lite plots, the Vega bundles inline (no network, no files).

The plots are specs from :mod:`streams.plots` (the live console draws with the same ones); the
page's script renders them as SVG when it is opened.

>>> div = line_chart([("accuracy", [(0, 0.5), (10, 0.9)])], title="acc", markers=[(5, "drift")])
>>> div.startswith('<div class="plot"') and "drift" in div
True
>>> "&quot;bar&quot;" in histogram([("0.1", 3), ("0.5", 1)], title="freshness")
True
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from streams import plots

__all__ = ["histogram", "html_page", "line_chart", "timeline"]


def line_chart(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    title: str,
    markers: Sequence[tuple[float, str]] = (),
    y_range: tuple[float, float] | None = None,
    x_label: str = "",
) -> str:
    """Lines with vertical markers (e.g. drift alerts, model versions), each named in the
    legend."""
    spec = plots.line_spec(
        dict(series), title, [(x, label, label) for x, label in markers],
        x_title=x_label, y_domain=y_range,
    )  # fmt: skip
    return plots.plot_div(spec)


def histogram(bins: Sequence[tuple[str, float]], title: str, x_label: str = "") -> str:
    """Bars, one per (label, count)."""
    return plots.plot_div(plots.histogram_spec(bins, title, x_label))


def timeline(spans: Sequence[tuple[str, float, float, str]], title: str) -> str:
    """Horizontal bars: (label, start, end, status) in seconds since the start."""
    return plots.plot_div(plots.timeline_spec(spans, title))


#: Tables fit the page: fixed layout, long cells wrap (ids, JSON metrics) instead of widening.
PAGE_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;"
    "color:#111}section{margin:1.5em 0}"
    "table{border-collapse:collapse;width:100%;table-layout:fixed;font-size:13px}"
    "td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top;"
    "overflow-wrap:anywhere}"
    "pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f6f6;padding:8px;margin:0}"
    "div.plot{margin:0.5em 0;overflow-x:auto}"
)


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """One HTML page: ``sections`` are (heading, inner HTML) pairs; plots render on load."""
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{inner}</section>" for h, inner in sections)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style>"
        f"{plots.scripts()}</head><body><h1>{html.escape(title)}</h1>{body}"
        f"<script>{plots.render_js()}</script></body></html>"
    )
