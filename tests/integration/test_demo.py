"""The demo's story, end to end on its own embedded stack (shortened: fewer documents)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from streams.demo import run_demo


def test_demo_tells_the_story(tmp_path: Path, answering_lm_cache: Path) -> None:
    result = run_demo(tmp_path / "demo", n_docs=120, console=Console(quiet=True),
                      cache_dir=answering_lm_cache)  # fmt: skip
    # Live RAG: the rewritten document is answered with its new text; the deleted one is gone.
    assert "REVISED" in result.answers_after[0]["answer"]
    assert result.answers_after[0]["contexts"][0]["doc_id"] == result.updated_doc
    assert result.deleted_doc and not result.deleted_found_after
    assert sum(count for _, count in result.freshness_buckets) >= 120
    # Models: the volume rule starts a first retrain; after the concept change the drift
    # alert starts a fine-tune; both are promoted.
    assert [(u["reason"], u["kind"], u["status"]) for u in result.updates] == [
        ("volume", "retrain", "promoted"),
        ("drift", "finetune", "promoted"),
    ]
    assert result.predictions == result.events_sent == len(result.served_by) == 1450
    # The change is noticed: one drift alert soon after it (the 800th record).
    drift = [a for a in result.alerts if a["severity"] == "drift"]
    assert len(drift) == 1 and 800 < drift[0]["window"]["records"] < 1050
    assert drift[0]["action"] == "finetune"
    # Each promoted version was swapped in: the predictions name it, in promotion order.
    # In the order they were served (the partitions are learned in arrival order, so event
    # p423 may be answered before p400): once v2 answers, v1 never does again.
    v1, v2 = (u["model_version"] for u in result.updates)
    by_time = sorted(zip(result.served_at, result.served_by, strict=True), key=lambda p: p[0])
    order = [v for _ts, (src, v) in by_time if src == "batch"]
    assert v1 in order and v2 in order
    assert order.index(v2) > len(order) - 1 - order[::-1].index(v1)  # no v1 after v2
    # The served accuracy recovers after the change.
    after = [acc for i, acc in result.rolling_accuracy if i > 800]
    assert after[-1] > min(after) + 0.25 and after[-1] > 0.6
    # The answering model: a LoRA fine-tune on the house-style examples is promoted and swapped
    # in; questions about functions no example covers are answered in the house style after
    # it (none before), by the new version.
    style = result.style
    assert style.update is not None and style.update["status"] == "promoted", style.update
    assert style.update["kind"] == "finetune" and style.served
    assert {a["generator_version"] for a in style.before} == {"base"}
    assert {a["generator_version"] for a in style.after} == {style.update["model_version"]}
    assert style.styled(style.before) == 0, [a["answer"] for a in style.before]
    assert style.styled(style.after) >= len(style.after) - 1, [a["answer"] for a in style.after]
    html = result.report_path.read_text() if result.report_path else ""
    assert "The answering model learns the house style" in html
    assert html.count('<div class="plot"') == 4 and "REVISED" in html
    assert sum(count for _, count in result.steady_freshness) == 40
    _render_in_chromium(result.report_path, result.report_path.parent)


def _render_in_chromium(report: Path | None, out: Path) -> None:
    """Open the report in headless Chromium: the DOM its script renders holds the four plots
    (Vega-Lite, as SVG): one line chart, and bars."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or report is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={out / 'chromium'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [chromium, *flags, "--virtual-time-budget=10000", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert dom.count("<svg") == 4 and dom.count('"line mark container"') == 1
    assert dom.count('aria-roledescription="bar"') >= 3
    shot = out / "report.png"
    subprocess.run(
        [chromium, *flags, "--virtual-time-budget=10000", "--window-size=1000,2400",
         f"--screenshot={shot}", report.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.stat().st_size > 20_000  # a page with pictures, not a blank one
