"""Plots as Vega-Lite specs, for the demo report and the live console (one library for both).

The specs are plain dicts (JSON); the browser renders them with the Vega and Vega-Lite bundles
shipped in ``streams/static`` (no CDN, no network): :func:`scripts` inlines them into a
self-contained page, the console serves them from ``/console/static/``. Vega-Lite draws the
axes with titles and ticks, a legend for every colour, and drops tick labels that would
overlap (``labelOverlap``); markers (drift alerts, model versions) are rules with their label
in the tooltip and in the legend, so labels never pile up on the plot.

>>> spec = line_spec({"accuracy": [(0, 0.5), (10, 0.9)]}, "Rolling accuracy",
...                  markers=[(5, "drift", "alert")], x_title="record")
>>> spec["layer"][0]["mark"]["type"], spec["layer"][1]["mark"]["type"]
('line', 'rule')
>>> bars = histogram_spec([("≤ 0.1", 3), ("≤ 0.5", 1)], "Freshness", "seconds")
>>> [row["count"] for row in bars["data"]["values"]]
[3, 1]
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

import orjson

__all__ = [
    "ASSETS",
    "asset",
    "histogram_spec",
    "line_spec",
    "plot_div",
    "render_js",
    "scripts",
    "timeline_spec",
]

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"  # an id: nothing is fetched
#: The vendored bundles (their licences are beside them), in load order.
ASSETS = ("vega.min.js", "vega-lite.min.js")
WIDTH, HEIGHT = 640, 220
_STATUS_COLORS = {"promoted": "#059669", "rejected": "#d97706", "failed": "#dc2626"}
_AXIS = {"labelOverlap": True, "labelFontSize": 11, "titleFontSize": 12, "grid": True}


def _base(title: str, height: int = HEIGHT) -> dict[str, Any]:
    return {
        "$schema": SCHEMA,
        "title": {"text": title, "fontSize": 14, "anchor": "start"},
        "width": WIDTH,
        "height": height,
        "config": {"axis": _AXIS, "legend": {"orient": "bottom", "labelLimit": 260},
                   "view": {"stroke": None}},
    }  # fmt: skip


def line_spec(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    markers: Sequence[tuple[float, str, str]] = (),
    x_title: str = "",
    y_title: str = "",
    y_domain: tuple[float, float] | None = None,
    x_temporal: bool = False,
) -> dict[str, Any]:
    """Lines, one per series, with vertical rules at ``markers`` ``(x, label, kind)``.

    ``kind`` names the markers' colour in the legend (shared with the series: one legend,
    e.g. ``drift alert``, ``model version``); the label shows in the tooltip.
    ``x_temporal``: x values are epoch seconds, shown as times.
    """
    x_type = "temporal" if x_temporal else "quantitative"
    scale = 1000.0 if x_temporal else 1.0  # Vega's times are milliseconds
    points = [
        {"x": x * scale, "y": y, "series": name} for name, pts in series.items() for x, y in pts
    ]
    rules = [{"x": x * scale, "label": label, "kind": kind} for x, label, kind in markers]
    y_scale: dict[str, Any] = {"zero": False}
    if y_domain is not None:
        y_scale = {"domain": list(y_domain)}
    spec = _base(title)
    spec["layer"] = [
        {
            "data": {"values": points},
            "mark": {"type": "line", "strokeWidth": 2, "interpolate": "monotone"},
            "encoding": {
                "x": {"field": "x", "type": x_type, "title": x_title},
                "y": {"field": "y", "type": "quantitative", "title": y_title, "scale": y_scale},
                "color": {"field": "series", "type": "nominal", "title": None},
            },
        },
        {
            "data": {"values": rules},
            "mark": {"type": "rule", "strokeDash": [4, 3], "strokeWidth": 1.5},
            "encoding": {
                "x": {"field": "x", "type": x_type},
                "color": {"field": "kind", "type": "nominal", "title": None},
                "tooltip": [{"field": "kind"}, {"field": "label"}],
            },
        },
    ]
    return spec


def histogram_spec(bins: Sequence[tuple[str, float]], title: str, x_title: str) -> dict[str, Any]:
    """Bars in the given order, one per ``(bucket label, count)``: a Prometheus histogram's
    buckets, each counted alone (not cumulative)."""
    spec = _base(title)
    order = [label for label, _ in bins]
    spec["data"] = {"values": [{"bucket": label, "count": count} for label, count in bins]}
    spec["mark"] = {"type": "bar", "color": "#2563eb", "tooltip": True}
    spec["encoding"] = {
        "x": {"field": "bucket", "type": "ordinal", "sort": order, "title": x_title,
              "axis": {"labelAngle": 0}},
        "y": {"field": "count", "type": "quantitative", "title": "count"},
    }  # fmt: skip
    return spec


def timeline_spec(spans: Sequence[tuple[str, float, float, str]], title: str) -> dict[str, Any]:
    """Horizontal bars ``(label, start, end, status)`` in seconds since the first start,
    coloured by status (promoted, rejected, failed) with a legend."""
    t0 = min((s for _, s, _, _ in spans), default=0.0)
    spec = _base(title, height=max(60, 28 * len(spans)))
    spec["data"] = {
        "values": [
            {"job": label, "start": s - t0, "end": max(e - t0, s - t0 + 0.5), "status": status}
            for label, s, e, status in spans
        ]
    }
    statuses = sorted({status for *_, status in spans}) or ["promoted"]
    spec["mark"] = {"type": "bar", "tooltip": True, "cornerRadius": 2}
    spec["encoding"] = {
        "y": {"field": "job", "type": "nominal", "sort": None, "title": None,
              "axis": {"labelLimit": 280}},
        "x": {"field": "start", "type": "quantitative", "title": "seconds since the first job"},
        "x2": {"field": "end"},
        "color": {"field": "status", "type": "nominal", "title": None,
                  "scale": {"domain": statuses,
                            "range": [_STATUS_COLORS.get(s, "#6b7280") for s in statuses]}},
    }  # fmt: skip
    return spec


@cache
def asset(name: str) -> bytes:
    """The bytes of a vendored file in ``streams/static`` (a bundle or its licence)."""
    if name not in (*ASSETS, "console.js", "LICENSE.vega", "LICENSE.vega-lite"):
        raise KeyError(f"no such asset: {name!r} (have {', '.join(ASSETS)})")
    return (resources.files("streams") / "static" / name).read_bytes()


#: Renders every ``<div class="plot" data-spec="...">`` of the page; ``render(el, spec)`` is
#: also what the console calls on each refresh.
RENDER_JS = """
function livelearnRender(el, spec) {
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec),
                             {renderer: 'svg', container: el, hover: true});
  if (el._view) { el._view.finalize(); }
  el._view = view;
  return view.runAsync();
}
document.querySelectorAll('div.plot[data-spec]').forEach(
  el => livelearnRender(el, JSON.parse(el.dataset.spec)));
"""


def render_js() -> str:
    """The page script that renders the plots (see :data:`RENDER_JS`)."""
    return RENDER_JS


def scripts() -> str:
    """``<script>`` elements with the bundles inline: a page that needs no server."""
    return "".join(f"<script>{asset(name).decode()}</script>" for name in ASSETS)


def plot_div(spec: Mapping[str, Any], name: str = "") -> str:
    """A placeholder the page script fills with the plot of ``spec``."""
    data = html.escape(orjson.dumps(spec).decode(), quote=True)
    return f'<div class="plot" id="{html.escape(name)}" data-spec="{data}"></div>'
