"""The console's page and the plotting bundles: shipped in the package, nothing from a CDN."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from streams import plots
from streams.console import SERVED, console_data, histogram_bins, page_html, read_metrics
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_page_loads_only_what_the_worker_serves() -> None:
    page = page_html(Settings())
    sources = re.findall(r'<script src="([^"]+)"', page)
    assert sources == [f"console/static/{name}" for name in SERVED]
    assert "http://" not in page and "https://" not in page  # no CDN, no external font
    for name in SERVED:
        assert plots.asset(name)  # in the package (pyproject's package data: static/*)
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "static/*" in data["tool"]["setuptools"]["package-data"]["streams"]
    assert (ROOT / "streams/static/LICENSE.vega").is_file()
    assert (ROOT / "streams/static/LICENSE.vega-lite").is_file()


def test_report_is_self_contained() -> None:
    from streams.report import html_page, line_chart

    page = html_page("t", [("s", line_chart([("a", [(0, 0.1), (1, 0.2)])], "acc"))])
    assert "<script src=" not in page and plots.asset("vega.min.js").decode()[:200] in page


def test_histogram_bins_and_console_data_from_a_registry() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    reg = CollectorRegistry()
    h = Histogram("livelearn_freshness_seconds", "f", buckets=(0.1, 1.0), registry=reg)
    for v in (0.05, 0.5, 0.7, 3.0):
        h.observe(v)
    view = read_metrics(reg)
    assert view.freshness == [("≤ 0.1 s", 1.0), ("0.1–1 s", 2.0), ("> 1 s", 1.0)]
    assert view.freshness_count == 4
    data = console_data(view, {"online accuracy": [(10.0, 0.8)]}, [], [], {}, [], now=11.0)
    bars = data["plots"]["freshness"]["data"]["values"]
    assert [b["count"] for b in bars] == [1.0, 2.0, 1.0]
    line = data["plots"]["accuracy"]["layer"][0]
    assert line["data"]["values"] == [{"x": 10_000.0, "y": 0.8, "series": "online accuracy"}]
    assert line["encoding"]["y"]["scale"] == {"domain": [0.0, 1.0]}
    assert histogram_bins([]) == []
