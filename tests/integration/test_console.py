"""The live console of a real worker, opened in headless Chromium.

A worker gets documents (one of them bad), labelled events, a drift alert and two model
updates on the real topics (its webhook sink forwards those three to a local HTTP server).
The page it serves at ``/`` must render its plots, its tables must show the alert, the jobs
with their gate decisions and the dead letter's reason, and every number it marks
(``data-metric``) must equal what the worker's ``/metrics`` exports. A screenshot is saved
(``LIVELEARN_CONSOLE_SCREENSHOT=path`` copies it there: the README's picture).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.broker import free_port
from streams.kafka import flush_or_raise, producer
from streams.sdk import LiveLearnClient
from streams.settings import Settings
from tests.integration.test_webhook import Endpoint
from tests.integration.worker import WorkerProcess

CELL = re.compile(r'<td data-metric="(\w+)" data-(\w+)="([^"]*)">([^<]*)</td>')


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _total(samples: dict[str, Any], name: str, **labels: str) -> float:
    return float(sum(v for lbl, v in samples.get(name, []) if labels.items() <= lbl.items()))


def _expected(samples: dict[str, Any], metric: str, label: str, value: str) -> float:
    """What the cell ``(metric, label=value)`` must show, from the scrape."""
    if metric == "lag":
        return _total(samples, "livelearn_consumer_lag", topic=value)
    if metric == "dead_letters":
        return _total(samples, "livelearn_dead_letters_total", topic=value)
    if metric == "drift_alerts":
        return _total(samples, "livelearn_drift_alerts_total", severity=value)
    model, source, name = value.split(" ")
    return _total(samples, "livelearn_model_metric", model=model, source=source, metric=name)


def _chromium(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium on this machine (make browser, or apt-get install chromium)")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={out / 'chromium'}", "--virtual-time-budget=8000",
    ]  # fmt: skip
    return subprocess.run(
        [chromium, *flags, *args], capture_output=True, text=True, timeout=120, check=True
    )


def _wait(what: str, cond: Any, timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow  # ~95 s on the shared 2-core machine, ~50 s of it the worker's model load
def test_console_shows_what_the_worker_exports(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_port = free_port()
    monkeypatch.setenv("LIVELEARN_METRICS_PORT", str(metrics_port))
    hook = Endpoint(fail_first=1)  # the worker's webhook sink forwards the alert and updates
    monkeypatch.setenv("LIVELEARN_WEBHOOK__URL", hook.url)
    monkeypatch.setenv("LIVELEARN_WEBHOOK__BACKOFF_S", "0.1")
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    t = settings.topics
    try:
        client = LiveLearnClient(settings)
        for i in range(120):
            client.send_event(f"e{i}", features={"x": float(i % 7), "y": i % 3}, label=i % 2 == 0)
        # One document waits for the embedder to load; the others come once it is indexed.
        client.upsert_doc("d0", "Kafka keeps record 0 in a partitioned, replicated log.")
        client.flush()
        fresh = "livelearn_freshness_seconds_count"
        _wait("the first document", lambda: _total(_scrape(metrics_port), fresh) >= 1)
        for i in range(1, 6):
            client.upsert_doc(f"d{i}", f"Kafka keeps record {i} in a partitioned, replicated log.")
        client.flush()
        now = time.time()
        raw = producer(settings, settings.kafka.bootstrap_servers)
        raw.produce(t.docs, b"{not json", key=b"bad")
        alert = {"alert_id": "a1", "ts": now - 20, "model": "default", "model_version": "online",
                 "detector": "adwin", "signal": "error_rate", "value": 0.42, "threshold": 0.2,
                 "severity": "drift", "action": "retrain"}  # fmt: skip
        update = {"job_id": "job-7", "model_version": "v-7", "kind": "retrain",
                  "status": "rejected", "metrics": {"accuracy": 0.61},
                  "baseline_metrics": {"accuracy": 0.7}, "artifact": "", "data": {},
                  "ts": now - 10}  # fmt: skip
        raw.produce(t.drift_alerts, orjson.dumps(alert), key=b"a1")
        raw.produce(t.model_updates, orjson.dumps(update), key=b"job-7")
        promoted = {**update, "job_id": "job-8", "model_version": "v-8", "status": "promoted",
                    "metrics": {"accuracy": 0.8}, "ts": now - 5}  # fmt: skip
        raw.produce(t.model_updates, orjson.dumps(promoted), key=b"job-8")
        flush_or_raise(raw, 30)

        def ready() -> Any:
            s = _scrape(metrics_port)
            done = (_total(s, "livelearn_freshness_seconds_count") >= 6
                    and _total(s, "livelearn_prediction_latency_seconds_count") >= 120
                    and _total(s, "livelearn_dead_letters_total", topic=t.docs) >= 1
                    and any(lbl["topic"] == t.docs for lbl, _ in s["livelearn_consumer_lag"])
                    and _total(s, "livelearn_consumer_lag", topic=t.docs) == 0
                    and _total(s, "livelearn_consumer_lag", topic=t.events) == 0)  # fmt: skip
            return s if done else None

        _wait("the traffic in the worker's metrics", ready)
        data = _wait("the console's data", lambda: _console_data(worker, t.docs))
        jobs = [(j["job_id"], j["status"]) for j in data["jobs"]]
        assert jobs == [("job-8", "promoted"), ("job-7", "rejected")]  # newest first
        markers = data["plots"]["accuracy"]["layer"][1]["data"]["values"]
        assert {(m["kind"], m["label"]) for m in markers} == {
            ("drift alert", "drift adwin (default)"),
            ("model version", "v-8 (retrain)"),
        }
        assert set(data["plots"]) == {"freshness", "latency", "accuracy"}

        for _attempt in range(3):  # the numbers must not move between the page and the scrape
            dom = _chromium("--dump-dom", f"http://127.0.0.1:{worker.web_port}/", out=tmp_path)
            samples = _scrape(metrics_port)
            cells = CELL.findall(dom.stdout)
            expected = [(m, v, shown, _expected(samples, m, k, html.unescape(v)))
                        for m, k, v, shown in cells]  # fmt: skip
            wrong = [row for row in expected if abs(float(row[2]) - row[3]) > 5e-4]
            if not wrong:
                break
        assert not wrong, f"page ≠ /metrics: {wrong}"
        shown = {(m, html.unescape(v)) for m, _k, v, _s in cells}
        assert {("lag", t.docs), ("lag", t.events), ("dead_letters", t.docs),
                ("model", "default online accuracy")} <= shown, shown  # fmt: skip
        page = dom.stdout
        assert page.count("<svg") >= 3 and '"line mark container"' in page  # the plots drew
        assert 'aria-roledescription="bar"' in page
        assert "job-7" in page and 'class="gate-rejected"' in page
        assert "not valid JSON" in page and "adwin" in page
        assert "6</span> documents searchable" in page

        shot = tmp_path / "console.png"
        _chromium("--window-size=1000,2250", f"--screenshot={shot}",
                  f"http://127.0.0.1:{worker.web_port}/", out=tmp_path)  # fmt: skip
        assert shot.stat().st_size > 20_000  # a page with pictures, not a blank one
        if os.environ.get("LIVELEARN_CONSOLE_SCREENSHOT"):
            shutil.copy(shot, os.environ["LIVELEARN_CONSOLE_SCREENSHOT"])
        _wait("the webhook deliveries", lambda: len(hook.accepted) == 3, timeout_s=30)
        sent = sorted((b["topic"], b["record"].get("alert_id") or b["record"]["job_id"])
                      for b in hook.accepted)  # fmt: skip
        assert sent == [("drift-alerts", "a1"), ("model-updates", "job-7"),
                        ("model-updates", "job-8")]  # fmt: skip
        assert len(hook.requests) == 4  # the first one failed and was tried again
    finally:
        worker.stop()
        hook.close()


def _console_data(worker: WorkerProcess, docs_topic: str) -> dict[str, Any] | None:
    data: dict[str, Any] = worker.get("/console.json")
    dead = {r["topic"]: r for r in data["dead_letters"]}
    ok = len(data["jobs"]) == 2 and data["alerts"] and dead.get(docs_topic, {}).get("latest")
    return data if ok else None
