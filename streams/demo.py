"""The demo: the whole system on the embedded stack, on data no one in the project wrote.

``make demo`` (or ``livelearn demo``) starts a real Kafka under ``.livelearn/demo``, the
stream worker and a trainer as child processes, then plays a scenario:

1. **Live RAG**: Python's standard-library docstrings are produced to ``docs`` and indexed
   live; questions are answered with cited sources; some documents are then updated and
   deleted mid-run, and the same questions are asked again.
2. **Models that follow the data**: a labelled tabular stream (river's Phishing data) flows
   through ``events``; a retrain job trains the batch model; then the concept changes (the
   labels flip) and a fine-tune job on the new range is trained, evaluated against the
   serving version on the same held-out slice, and promoted.

Live progress shows in the terminal; at the end a summary is printed and a self-contained
HTML report (plots inline) is written to ``.livelearn/demo/report.html``.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from rich.console import Console

from streams import report
from streams.broker import LocalBroker, free_port
from streams.kafka import admin_client
from streams.sdk import LiveLearnClient
from streams.settings import KafkaSettings, Settings
from streams.topics import ensure_topics, topic_specs

__all__ = ["DemoResult", "run_demo"]

QUESTIONS = (
    "How do I delete a whole directory tree recursively?",
    "How can I count hashable items and find the most common ones?",
    "How can I create a temporary directory that is removed automatically?",
)
#: The best source of the first answer is rewritten mid-run with this text ...
UPDATED_TEXT = (
    "REVISED: to delete a directory tree recursively on this platform, call "
    "retention.schedule_delete(path); the retention service removes the whole tree."
)
# ... and the best source of the second answer is deleted.


@dataclass
class DemoResult:
    """What the demo saw, for the summary, the report and the tests."""

    answers_before: list[dict[str, Any]] = field(default_factory=list)
    answers_after: list[dict[str, Any]] = field(default_factory=list)
    updated_doc: str = ""
    deleted_doc: str = ""
    deleted_found_after: bool = True
    updates: list[dict[str, Any]] = field(default_factory=list)
    freshness_buckets: list[tuple[str, float]] = field(default_factory=list)  # bulk load
    steady_freshness: list[tuple[str, float]] = field(default_factory=list)  # 4 docs/s
    rolling_accuracy: list[tuple[float, float]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    predictions: int = 0
    docs_indexed: int = 0
    events_sent: int = 0
    report_path: Path | None = None
    seconds: float = 0.0


class _Child:
    """A ``python -m streams <command>`` child process with its log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams", *args], env=env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        body = resp.read()
    return orjson.loads(body) if body[:1] in b"{[" else body.decode()


def _wait_http(url: str, timeout_s: float, child: _Child) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.proc.args!r} exited; see its log")
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout_s:.0f} s")


def _env(settings: Settings, bootstrap: str, web_port: int, metrics_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LIVELEARN_DATA_DIR=str(settings.data_dir),
        LIVELEARN_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        LIVELEARN_WEB_PORT=str(web_port),
        LIVELEARN_METRICS_PORT=str(metrics_port),
        LIVELEARN_LOG_LEVEL="WARNING",
    )
    return env


def _freshness(metrics_text: str) -> list[tuple[str, float]]:
    """Per-bucket counts (not cumulative) of the freshness histogram from a /metrics scrape."""
    cumulative = []
    for line in metrics_text.splitlines():
        if line.startswith("livelearn_freshness_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            cumulative.append((le, float(line.rsplit(" ", 1)[1])))
    out, previous = [], 0.0
    for le, count in cumulative:
        out.append((f"≤{le}s" if le != "+Inf" else ">60s", count - previous))
        previous = count
    return out


def run_demo(data_dir: Path = Path(".livelearn/demo"), n_docs: int = 300,
             console: Console | None = None) -> DemoResult:  # fmt: skip
    """Play the scenario on a fresh embedded stack under ``data_dir``."""
    console = console or Console()
    started = time.monotonic()
    result = DemoResult()
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    base = Settings(data_dir=data_dir)
    broker = LocalBroker(data_dir, base.broker)
    children: list[_Child] = []
    try:
        with console.status("starting the embedded Kafka (KRaft) ..."):
            bootstrap = broker.start()
        state = broker.state()
        console.print(f"[green]✓[/] {state.kind if state else ''} broker at {bootstrap}")
        settings = Settings(data_dir=data_dir, kafka=KafkaSettings(bootstrap_servers=bootstrap))
        ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
        web, prom = free_port(), free_port()
        env = _env(settings, bootstrap, web, prom)
        # The demo asks for its jobs itself (so its story runs the same way every time);
        # drift alerts are still raised and shown.
        env.update(LIVELEARN_TRIGGER__WARNING_ACTION="none", LIVELEARN_TRIGGER__DRIFT_ACTION="none",
                   LIVELEARN_TRIGGER__VOLUME_THRESHOLD="0")  # fmt: skip
        with console.status("starting the stream worker and a trainer ..."):
            worker = _Child(["worker"], env, data_dir / "worker.log")
            children.append(worker)
            trainer_env = dict(env, LIVELEARN_METRICS_PORT="0")
            # replay_ratio 0.2: the change here is a real one (labels flip); a large replay of
            # the old concept would fight the new one.
            trainer_args = ["trainer", "--set", "epochs=6", "--set", "replay_ratio=0.2"]
            children.append(_Child(trainer_args, trainer_env,
                                   data_dir / "trainer.log"))  # fmt: skip
            _wait_http(f"http://127.0.0.1:{web}/healthz", 180, worker)
        console.print(f"[green]✓[/] worker up (HTTP :{web}, metrics :{prom})")
        client = LiveLearnClient(settings)
        _rag(client, console, result, web, n_docs)
        bulk = _freshness(_get(f"http://127.0.0.1:{prom}/metrics"))
        result.freshness_buckets = bulk
        _steady_docs(client, console, web)
        total = _freshness(_get(f"http://127.0.0.1:{prom}/metrics"))
        result.steady_freshness = [(le, c - b) for (le, c), (_, b) in zip(total, bulk, strict=True)]
        _training(client, console, result)
        client.flush()
        del client  # its librdkafka threads would complain once the broker is gone
        gc.collect()
    finally:
        for child in children:
            child.stop()
        broker.stop()
    result.seconds = time.monotonic() - started
    result.report_path = _write_report(result, data_dir / "report.html")
    _summary(result, console)
    return result


def _steady_docs(client: LiveLearnClient, console: Console, web: int, n: int = 40) -> None:
    """Documents at a steady 4 per second: the freshness a live system sees."""
    from retrieval.corpus import stdlib_corpus

    docs = stdlib_corpus(400 + n, min_chars=150)[-n:]
    with console.status(f"producing {n} more documents at 4 per second ..."):
        for doc in docs:
            client.upsert_doc(f"live-{doc['id']}", doc["text"], title=doc["title"],
                              source=doc["source"], wait=True)  # fmt: skip
            time.sleep(0.25)
        query = quote(docs[-1]["text"][:200])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            hits = _get(f"http://127.0.0.1:{web}/search?q={query}&k=3")["hits"]
            if any(h["doc_id"] == f"live-{docs[-1]['id']}" for h in hits):
                break
            time.sleep(0.2)
    console.print(f"[green]✓[/] {n} documents indexed live at 4 per second")


def _rag(client: LiveLearnClient, console: Console, result: DemoResult, web: int, n: int) -> None:
    from retrieval.corpus import stdlib_corpus

    docs = stdlib_corpus(n, min_chars=150)
    with console.status(f"indexing {len(docs)} standard-library docstrings live ..."):
        for doc in docs:
            client.upsert_doc(doc["id"], doc["text"], title=doc["title"], source=doc["source"],
                              meta=doc["meta"])  # fmt: skip
        client.flush()
        last = docs[-1]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            hits = _get(f"http://127.0.0.1:{web}/search?q={quote(last['text'][:200])}&k=1")
            if hits["hits"] and hits["hits"][0]["doc_id"] == last["id"]:
                break
            time.sleep(0.5)
    result.docs_indexed = len(docs)
    console.print(f"[green]✓[/] {len(docs)} documents searchable")
    for q in QUESTIONS:
        result.answers_before.append(client.ask(q, k=3, timeout_s=120))
    console.print(f"[green]✓[/] {len(QUESTIONS)} questions answered with sources")
    # Mid-run changes: one document rewritten, the source of another answer deleted.
    doc_id, text = result.answers_before[0]["contexts"][0]["doc_id"], UPDATED_TEXT
    result.updated_doc = doc_id
    client.upsert_doc(doc_id, text, title=doc_id, source="demo")
    result.deleted_doc = result.answers_before[1]["contexts"][0]["doc_id"]
    client.delete_doc(result.deleted_doc)
    client.flush()
    with console.status("waiting for the update and the delete to be applied ..."):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            hits = _get(f"http://127.0.0.1:{web}/search?q={quote(text)}&k=1")["hits"]
            if hits and "REVISED" in hits[0]["text"]:
                break
            time.sleep(0.3)
    for q in QUESTIONS:
        result.answers_after.append(client.ask(q, k=3, timeout_s=120))
    result.deleted_found_after = any(
        c["doc_id"] == result.deleted_doc for a in result.answers_after for c in a["contexts"]
    )
    console.print(
        f"[green]✓[/] updated {doc_id}, deleted {result.deleted_doc}; asked again "
        f"(deleted doc cited: {result.deleted_found_after})"
    )


def _training(client: LiveLearnClient, console: Console, result: DemoResult) -> None:
    from river import datasets

    from streams.trainer import manual_job

    rows = list(datasets.Phishing())
    split = 800
    for i, (x, y) in enumerate(rows[:split]):
        client.send_event(f"p{i}", features=x, label=y, ts=1_700_000_000 + i)
    client.flush()
    result.events_sent = split
    for kind in ("retrain", "finetune"):
        if kind == "finetune":
            # The concept changes: the same kind of page now carries the opposite label.
            for i, (x, y) in enumerate(rows[split:], split):
                client.send_event(f"p{i}", features=x, label=not y, ts=1_700_000_000 + i)
            client.flush()
            result.events_sent = len(rows)
        job = manual_job(client.settings, client.bootstrap, kind)
        client.produce("training-jobs", job, wait=True)
        submitted = time.time()
        with console.status(f"{kind} job {job['job_id']} running ..."):
            for update in client.subscribe("model-updates", from_beginning=True, timeout_s=300):
                if update["job_id"] != job["job_id"]:
                    continue
                if update["status"] in ("promoted", "rejected", "failed"):
                    update["submitted"] = submitted
                    result.updates.append(update)
                    break
        last = result.updates[-1] if result.updates else {"status": "none"}
        console.print(
            f"[green]✓[/] {kind}: {last['status']} {last.get('model_version', '')} "
            f"metrics={last.get('metrics')} baseline={last.get('baseline_metrics')}"
        )
    # Every event got a prediction from the online model (predict first, then learn).
    labels = {f"p{i}": (y if i < split else not y) for i, (_x, y) in enumerate(rows)}
    seen: dict[str, Any] = {}
    with console.status("collecting the online model's predictions ..."):
        for p in client.subscribe("predictions", from_beginning=True, timeout_s=60):
            seen[p["id"]] = p["prediction"]
            if len(seen) >= len(rows):
                break
    result.predictions = len(seen)
    result.alerts = list(client.subscribe("drift-alerts", from_beginning=True, timeout_s=3))
    for alert in result.alerts:
        console.print(
            f"[yellow]drift alert[/] {alert['severity']} by {alert['detector']}: error "
            f"{alert['value']:.2f} vs {alert.get('baseline', 0):.2f} at event offset "
            f"{alert['window']['offset']} (partition {alert['window']['partition']})"
        )
    hits = [1.0 if seen.get(f"p{i}") == labels[f"p{i}"] else 0.0 for i in range(len(rows))]
    window = 100
    result.rolling_accuracy = [
        (float(i), sum(hits[i - window : i]) / window) for i in range(window, len(hits) + 1, 10)
    ]
    console.print(
        f"[green]✓[/] {len(seen)} predictions from the online model; rolling accuracy "
        f"{result.rolling_accuracy[-1][1]:.2f} after the change (window {window})"
    )


def _write_report(result: DemoResult, path: Path) -> Path:
    import html

    rows = "".join(
        f"<tr><td>{html.escape(q)}</td><td><pre>{html.escape(b['answer'])}</pre></td>"
        f"<td><pre>{html.escape(a['answer'])}</pre></td></tr>"
        for q, b, a in zip(QUESTIONS, result.answers_before, result.answers_after, strict=False)
    )
    questions = "".join(f"<li>{html.escape(q)}</li>" for q in QUESTIONS)
    answers = (
        f"<ol>{questions}</ol><p>Updated <code>{html.escape(result.updated_doc)}</code>; deleted "
        f"<code>{html.escape(result.deleted_doc)}</code> (cited after the delete: "
        f"{result.deleted_found_after}).</p><table><tr><th>question</th><th>before</th>"
        f"<th>after</th></tr>{rows}</table>"
    )
    t0 = min((u["submitted"] for u in result.updates), default=0.0)
    spans = [
        (f"{u['kind']} {u.get('model_version', '')}", u["submitted"] - t0, u["ts"] - t0,
         u["status"])
        for u in result.updates
    ]  # fmt: skip
    metrics_rows = "".join(
        f"<tr><td>{html.escape(u['kind'])}</td><td>{html.escape(str(u.get('model_version')))}"
        f"</td><td>{u['status']}</td><td>{html.escape(orjson.dumps(u['metrics']).decode())}</td>"
        f"<td>{html.escape(orjson.dumps(u['baseline_metrics']).decode())}</td></tr>"
        for u in result.updates
    )
    sections = [
        ("Summary", f"<p>{result.docs_indexed} documents indexed, {result.events_sent} events "
                    f"streamed, {len(result.updates)} training jobs, in "
                    f"{result.seconds:.0f} s.</p>"),
        ("Freshness: produce → searchable",
         report.histogram(result.steady_freshness, "steady load: 4 documents per second",
                          "seconds from produce to searchable")
         + report.histogram(result.freshness_buckets,
                            f"bulk load: {result.docs_indexed} documents at once (queueing)",
                            "seconds from produce to searchable")),
        ("Answers before and after the update", answers),
        ("Online model: rolling prequential accuracy",
         report.line_chart([("online model (window 100)", result.rolling_accuracy)],
                           "accuracy over the event stream", y_range=(0.0, 1.0),
                           x_label="event index",
                           markers=[(800.0, "concept change + retrain"),
                                    (1250.0, "fine-tune promoted"),
                                    *_alert_markers(result)])),
        ("Training jobs", report.timeline(spans, "job timeline (seconds)")
         + "<table><tr><th>kind</th><th>version</th><th>status</th><th>candidate</th>"
         f"<th>serving before</th></tr>{metrics_rows}</table>"),
    ]  # fmt: skip
    path.write_text(report.html_page("livelearn demo", sections), encoding="utf-8")
    return path


def _alert_markers(result: DemoResult) -> list[tuple[float, str]]:
    # Where in the learner's stream the alert fired (records learned so far).
    return [
        (float(a["window"]["records"]), f"drift {a['severity']}")
        for a in result.alerts
        if isinstance(a.get("window", {}).get("records"), int)
    ]


def _summary(result: DemoResult, console: Console) -> None:
    console.rule("livelearn demo")
    console.print(f"documents indexed: {result.docs_indexed}")
    pairs = zip(QUESTIONS, result.answers_before, result.answers_after, strict=False)
    for q, b, a in pairs:
        console.print(f"[bold]{q}[/]")
        console.print(f"  before: {b['answer'][:110]!r}")
        console.print(f"  after:  {a['answer'][:110]!r}")
    for u in result.updates:
        console.print(f"job {u['job_id']}: {u['status']} {u.get('model_version')}")
    console.print(
        f"drift alerts: {[(a['severity'], a['window'].get('event_id')) for a in result.alerts]}"
    )
    console.print(f"report: {result.report_path}  ({result.seconds:.0f} s)")
