"""A self-contained HTML report with inline SVG plots (no scripts, no network, no files).

>>> svg = line_chart([("accuracy", [(0, 0.5), (10, 0.9)])], title="acc", markers=[(5, "drift")])
>>> svg.startswith("<svg") and "drift" in svg and "polyline" in svg
True
>>> "<rect" in histogram([("0.1", 3), ("0.5", 1)], title="freshness")
True
"""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["histogram", "html_page", "line_chart", "timeline"]

_W, _H, _PAD = 720, 260, 44
_COLORS = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed")


def _scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    return a if hi == lo else a + (v - lo) * (b - a) / (hi - lo)


def line_chart(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    title: str,
    markers: Sequence[tuple[float, str]] = (),
    y_range: tuple[float, float] | None = None,
    x_label: str = "",
) -> str:
    """Lines with vertical markers (e.g. drift alerts, model versions)."""
    xs = [x for _, pts in series for x, _ in pts] + [m for m, _ in markers] or [0.0, 1.0]
    ys = [y for _, pts in series for _, y in pts] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range or (min(ys), max(ys))
    parts = [_frame(title, x0, x1, y0, y1, x_label)]
    for i, (name, pts) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        coords = " ".join(
            f"{_scale(x, x0, x1, _PAD, _W - _PAD):.1f},{_scale(y, y0, y1, _H - _PAD, _PAD):.1f}"
            for x, y in pts
        )
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>')
        parts.append(
            f'<text x="{_PAD + 8}" y="{_H - _PAD - 8 - 14 * i}" fill="{color}" '
            f'font-size="12">{html.escape(name)}</text>'
        )
    for j, (mx, label) in enumerate(markers):
        x = _scale(mx, x0, x1, _PAD, _W - _PAD)
        parts.append(
            f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{_PAD}" y2="{_H - _PAD}" '
            f'stroke="#6b7280" stroke-dasharray="4 3"/>'
            f'<text x="{x + 3:.1f}" y="{_PAD + 12 + 12 * (j % 4)}" font-size="11" '
            f'fill="#374151">{html.escape(label)}</text>'
        )
    return _svg(parts, title)


def histogram(bins: Sequence[tuple[str, float]], title: str, x_label: str = "") -> str:
    """Bars, one per (label, count)."""
    top = max((c for _, c in bins), default=1) or 1
    parts = [_frame(title, 0, 1, 0, top, x_label, x_ticks=False)]
    width = (_W - 2 * _PAD) / max(1, len(bins))
    for i, (label, count) in enumerate(bins):
        h = _scale(count, 0, top, 0, _H - 2 * _PAD)
        x = _PAD + i * width
        parts.append(
            f'<rect x="{x + 2:.1f}" y="{_H - _PAD - h:.1f}" width="{width - 4:.1f}" '
            f'height="{h:.1f}" fill="{_COLORS[0]}"><title>{html.escape(label)}: {count:g}'
            f"</title></rect>"
            f'<text x="{x + width / 2:.1f}" y="{_H - _PAD + 14}" font-size="10" '
            f'text-anchor="middle">{html.escape(label)}</text>'
        )
    return _svg(parts, title)


def timeline(spans: Sequence[tuple[str, float, float, str]], title: str) -> str:
    """Horizontal bars: (label, start, end, status) in seconds since the start."""
    if not spans:
        return _svg([_frame(title, 0, 1, 0, 1, "s")], title)
    t0 = min(s for _, s, _, _ in spans)
    t1 = max(e for _, _, e, _ in spans)
    parts = [_frame(title, t0, t1, 0, 1, "seconds", y_ticks=False)]
    row = (_H - 2 * _PAD) / max(1, len(spans))
    color = {"promoted": "#059669", "rejected": "#d97706", "failed": "#dc2626"}
    for i, (label, start, end, status) in enumerate(spans):
        xa = _scale(start, t0, t1, _PAD, _W - _PAD)
        xb = max(xa + 3, _scale(end, t0, t1, _PAD, _W - _PAD))
        y = _PAD + i * row
        parts.append(
            f'<rect x="{xa:.1f}" y="{y + 3:.1f}" width="{xb - xa:.1f}" height="{row - 6:.1f}" '
            f'fill="{color.get(status, "#6b7280")}"/>'
            f'<text x="{xa + 4:.1f}" y="{y + row / 2 + 4:.1f}" font-size="11" fill="#111">'
            f"{html.escape(label)} ({html.escape(status)})</text>"
        )
    return _svg(parts, title)


def _frame(
    title: str, x0: float, x1: float, y0: float, y1: float, x_label: str,
    x_ticks: bool = True, y_ticks: bool = True,
) -> str:  # fmt: skip
    out = [
        f'<text x="{_W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">'
        f"{html.escape(title)}</text>",
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#111"/>',
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#111"/>',
        f'<text x="{_W / 2}" y="{_H - 8}" text-anchor="middle" font-size="11">'
        f"{html.escape(x_label)}</text>",
    ]
    for k in range(5):
        if y_ticks:
            v = y0 + (y1 - y0) * k / 4
            y = _scale(v, y0, y1, _H - _PAD, _PAD)
            out.append(
                f'<text x="{_PAD - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
                f"{v:.3g}</text>"
            )
        if x_ticks:
            v = x0 + (x1 - x0) * k / 4
            x = _scale(v, x0, x1, _PAD, _W - _PAD)
            out.append(
                f'<text x="{x:.1f}" y="{_H - _PAD + 14}" font-size="10" text-anchor="middle">'
                f"{v:.4g}</text>"
            )
    return "".join(out)


def _svg(parts: Sequence[str], title: str) -> str:
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" '
        f'width="{_W}" height="{_H}" role="img" aria-label="{html.escape(title)}">'
        + "".join(parts)
        + "</svg>"
    )


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """One HTML page: ``sections`` are (heading, inner HTML) pairs."""
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{inner}</section>" for h, inner in sections)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:900px;margin:2em auto;color:#111}"
        "section{margin:1.5em 0}table{border-collapse:collapse}"
        "td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}"
        "pre{white-space:pre-wrap;background:#f6f6f6;padding:8px}"
        f"</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
