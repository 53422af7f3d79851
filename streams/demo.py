"""The demo: the whole system on the embedded stack, on data no one in the project wrote.

``make demo`` (or ``livelearn demo``) starts a real Kafka under ``.livelearn/demo``, the
stream worker and a trainer as child processes, then plays a scenario:

1. **Live RAG**: Python's standard-library docstrings are produced to ``docs`` and indexed
   live; questions are answered with cited sources; some documents are then updated and
   deleted mid-run, and the same questions are asked again.
2. **Models that follow the data**: a labelled tabular stream (river's Phishing data) flows
   through ``events``; the online model predicts every event and learns every label. After
   700 labelled records the trigger policy's volume rule starts the first job (a retrain of
   the batch model), which is promoted and hot-swapped into serving. Then the concept
   changes (the labels flip): the drift monitor raises an alert, the policy asks for a
   fine-tune on the new data, the trainer runs it, the evaluation gate promotes it, and the
   worker hot-swaps it in: the predictions name the version that made them.
3. **The answering model learns the house style** (:mod:`streams.demo_style`): the worker
   and the trainer restart with a tiny causal LM as the answering model; style examples in a
   house format stream in, the volume trigger starts a LoRA fine-tune, the gate promotes it,
   the worker swaps it in, and the same questions are answered before and after.

Live progress shows in the terminal; at the end a summary is printed and a self-contained
HTML report (plots inline) is written to ``.livelearn/demo/report.html``.
"""

from __future__ import annotations

import gc
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from rich.console import Console

from streams import demo_style, report
from streams.broker import LocalBroker, free_port
from streams.contracts import FINAL_JOB_STATUSES
from streams.demo_waits import first_record, get, wait_http, wait_searchable, wait_served
from streams.kafka import admin_client
from streams.sdk import LiveLearnClient
from streams.settings import KafkaSettings, Settings
from streams.supervisor import Child
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
    served_by: list[tuple[str, str]] = field(default_factory=list)  # (source, version)
    served_at: list[float] = field(default_factory=list)  # each prediction's ts (0: none)
    stream_labels: list[Any] = field(default_factory=list)
    concept_change: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)
    predictions: int = 0
    docs_indexed: int = 0
    events_sent: int = 0
    style: demo_style.StyleAct = field(default_factory=demo_style.StyleAct)
    report_path: Path | None = None
    seconds: float = 0.0


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
             console: Console | None = None,
             cache_dir: Path = Path(".livelearn/cache")) -> DemoResult:  # fmt: skip
    """Play the scenario on a fresh embedded stack under ``data_dir`` (the tiny answering LM
    is pre-trained once into ``cache_dir``)."""
    console = console or Console()
    started = time.monotonic()
    result = DemoResult()
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    base = Settings(data_dir=data_dir)
    broker = LocalBroker(data_dir, base.broker)
    children: list[Child] = []
    try:
        with console.status("starting the embedded Kafka (KRaft) ..."):
            bootstrap = broker.start()
        state = broker.state()
        console.print(f"[green]✓[/] {state.kind if state else ''} broker at {bootstrap}")
        settings = Settings(data_dir=data_dir, kafka=KafkaSettings(bootstrap_servers=bootstrap))
        ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
        web, prom = free_port(), free_port()
        env = _env(settings, bootstrap, web, prom)
        # The policy decides the jobs: the first after 700 labelled records (volume), the next
        # on drift. Here the change flips the labels, so the old history contradicts the new
        # concept: a drift asks for a fine-tune on the new data (the default, a retrain on
        # everything, suits changes that keep the past valid). A demo compresses hours into
        # minutes, hence the short cooldown.
        env.update(LIVELEARN_TRIGGER__WARNING_ACTION="none",
                   LIVELEARN_TRIGGER__DRIFT_ACTION="finetune",
                   LIVELEARN_TRIGGER__VOLUME_THRESHOLD="700",
                   LIVELEARN_TRIGGER__COOLDOWN_S="10",
                   LIVELEARN_TRIGGER__DRIFT_MIN_RECORDS=str(DRIFT_MIN_RECORDS),
                   # Serve the batch model once one is promoted, so that each swap shows in
                   # the predictions (the default, 'best', may keep the online model).
                   LIVELEARN_MODELS__SERVING="batch")  # fmt: skip
        with console.status("starting the stream worker and a trainer ..."):
            worker = Child(["worker"], env, data_dir / "worker.log")
            children.append(worker)
            trainer_env = dict(env, LIVELEARN_METRICS_PORT="0")
            # replay_ratio 0.2: the change here is a real one (labels flip); a large replay of
            # the old concept would fight the new one.
            trainer_args = ["trainer", "--set", "epochs=6", "--set", "replay_ratio=0.2"]
            children.append(Child(trainer_args, trainer_env,
                                   data_dir / "trainer.log"))  # fmt: skip
            wait_http(f"http://127.0.0.1:{web}/healthz", 180, worker)
        console.print(f"[green]✓[/] worker up (HTTP :{web}, metrics :{prom})")
        client = LiveLearnClient(settings)
        _rag(client, console, result, web, n_docs)
        bulk = _freshness(get(f"http://127.0.0.1:{prom}/metrics"))
        result.freshness_buckets = bulk
        _steady_docs(client, console, web)
        total = _freshness(get(f"http://127.0.0.1:{prom}/metrics"))
        result.steady_freshness = [(le, c - b) for (le, c), (_, b) in zip(total, bulk, strict=True)]
        metrics_url = f"http://127.0.0.1:{prom}/metrics"
        _training(client, console, result, metrics_url)
        with console.status("pre-training a tiny causal LM as the answering model (no hub) ..."):
            result.style.base = demo_style.base_lm(cache_dir)
        with console.status("switching the answering model to it: restarting the services ..."):
            for child in children:
                child.stop()
            lm_env = dict(env, **demo_style.lm_env(result.style.base))
            worker = Child(["worker"], lm_env, data_dir / "worker-lm.log")
            children.append(worker)
            children.append(Child([*trainer_args, *demo_style.trainer_args()],
                                  dict(lm_env, LIVELEARN_METRICS_PORT="0"),
                                  data_dir / "trainer-lm.log"))  # fmt: skip
            wait_http(f"http://127.0.0.1:{web}/healthz", 180, worker)
        console.print(f"[green]✓[/] worker and trainer restarted with {result.style.base}")
        demo_style.play(client, console, result.style, web, metrics_url)
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
            hits = get(f"http://127.0.0.1:{web}/search?q={query}&k=3")["hits"]
            if any(h["doc_id"] == f"live-{docs[-1]['id']}" for h in hits):
                break
            time.sleep(0.2)
    console.print(f"[green]✓[/] {n} documents indexed live at 4 per second")


def _indexing_progress(client: LiveLearnClient, total: int, elapsed: float) -> str:
    """``indexed n/total, rate, lag`` from the indexer group's committed offsets."""
    from streams.status import group_lag

    s = client.settings
    lag = group_lag(s, client.bootstrap, f"{s.kafka.group_prefix}-worker", s.topics.docs)
    done = total - (lag.lag if lag.lag is not None else total)
    return (
        f"indexing: {done}/{total} documents committed, {done / max(elapsed, 1e-9):.1f} "
        f"docs/s, lag {lag.lag if lag.lag is not None else '?'} on {s.topics.docs} ..."
    )


def _rag(client: LiveLearnClient, console: Console, result: DemoResult, web: int, n: int) -> None:
    from retrieval.corpus import stdlib_corpus

    docs = stdlib_corpus(n, min_chars=150)
    with console.status(f"indexing {len(docs)} standard-library docstrings live ...") as shown:
        started = time.monotonic()
        for doc in docs:
            client.upsert_doc(doc["id"], doc["text"], title=doc["title"], source=doc["source"],
                              meta=doc["meta"])  # fmt: skip
        client.flush()
        wait_searchable(
            web,
            docs[-1]["text"],
            docs[-1]["id"],
            300,
            poll_s=0.5,
            on_wait=lambda: shown.update(
                _indexing_progress(client, len(docs), time.monotonic() - started)
            ),
        )
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
            hits = get(f"http://127.0.0.1:{web}/search?q={quote(text)}&k=1")["hits"]
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


# Labelled records after a drift alert before its job starts (the job needs the new concept).
DRIFT_MIN_RECORDS = 200


def _training(
    client: LiveLearnClient, console: Console, result: DemoResult, metrics_url: str
) -> None:
    """Events with a concept change; the trigger policy and the serving policy do the rest."""
    from river import datasets

    rows = list(datasets.Phishing())
    change = 800
    # After the change the same kind of page carries the opposite label (a real concept
    # change: P(y|x) flips); 650 records follow it.
    stream = rows[:change] + [(x, not y) for x, y in rows[change:] + rows[:200]]
    result.concept_change = change

    def send(lo: int, hi: int, pace: float = 0.0) -> None:
        for i in range(lo, hi):
            x, y = stream[i]
            client.send_event(f"p{i}", features=x, label=y, ts=1_700_000_000 + i)
            if pace and i % 25 == 24:
                time.sleep(pace)
        client.flush()
        result.events_sent = hi

    def final_update(exclude: set[str], timeout_s: float) -> dict[str, Any] | None:
        update = first_record(
            client,
            "model-updates",
            lambda u: u["status"] in FINAL_JOB_STATUSES and u["job_id"] not in exclude,
            timeout_s,
        )
        if update is not None:
            update["events_sent"] = result.events_sent
            job = first_record(
                client, "training-jobs", lambda j: j["job_id"] == update["job_id"], 10
            )
            update["submitted"] = job["ts"] if job else update["ts"]  # when it was decided
            update["reason"] = job["reason"] if job else "?"
            result.updates.append(update)
        return update

    with console.status(f"{change} labelled events; the volume trigger starts a first job ..."):
        send(0, change)
        first = final_update(set(), 300)
        if first is not None and first["status"] == "promoted":  # swapped in before the change
            wait_served(metrics_url, first["model_version"], 120)
    _print_update(console, first)
    with console.status("the concept changes: the labels flip; watching for drift ..."):
        send(change, change + 400)
        alert = first_record(client, "drift-alerts", lambda a: a["severity"] == "drift", 120)
        if alert is not None:
            console.print(
                f"[yellow]drift alert[/] by {alert['detector']}: error {alert['value']:.2f} vs "
                f"{alert.get('baseline', 0):.2f} after {alert['window']['records']} records "
                f"learned; the policy asks for: {alert['action']}"
            )
            # Its fine-tune starts after DRIFT_MIN_RECORDS more labelled records; when the
            # alert came late (the learner reads the partitions in arrival order, so the
            # detector sees a slightly different sequence each run), send them now.
            needed = alert["window"]["records"] + DRIFT_MIN_RECORDS + 25
            if needed > result.events_sent:
                send(result.events_sent, min(needed, len(stream)))
        done = {first["job_id"]} if first else set()
        second = final_update(done, 300) if alert is not None else None
    _print_update(console, second)
    with console.status("more events after the change, answered by the serving policy ..."):
        send(result.events_sent, len(stream), pace=0.2)
    result.stream_labels = [y for _x, y in stream]
    with console.status("collecting the predictions ..."):
        seen: dict[str, dict[str, Any]] = {}
        for p in client.subscribe("predictions", from_beginning=True, timeout_s=60):
            seen[p["id"]] = p
            if len(seen) >= len(stream):
                break
    result.predictions = len(seen)
    result.alerts = list(client.subscribe("drift-alerts", from_beginning=True, timeout_s=3))
    served = [seen.get(f"p{i}") for i in range(len(stream))]
    hits = [1.0 if p is not None and p["prediction"] == y else 0.0
            for p, y in zip(served, result.stream_labels, strict=True)]  # fmt: skip
    window = 100
    result.rolling_accuracy = [
        (float(i), sum(hits[i - window : i]) / window) for i in range(window, len(hits) + 1, 10)
    ]
    result.served_by = [
        (p["source"], p["model_version"]) if p is not None else ("none", "") for p in served
    ]
    result.served_at = [float(p["ts"]) if p is not None else 0.0 for p in served]
    batch = sorted({v for src, v in result.served_by if src == "batch"})
    console.print(
        f"[green]✓[/] {len(seen)} predictions; served by the batch model(s) {batch or 'none'} "
        f"for {sum(src == 'batch' for src, _ in result.served_by)} events; rolling accuracy "
        f"{result.rolling_accuracy[-1][1]:.2f} at the end (window {window})"
    )


def _print_update(console: Console, update: dict[str, Any] | None) -> None:
    if update is None:
        console.print("[red]✗[/] no job finished in time; see trainer.log")
        return
    console.print(
        f"[green]✓[/] {update['reason']} → {update['kind']} job: {update['status']} "
        f"{update.get('model_version', '')}"
        f" (candidate {update.get('metrics')}, serving before {update.get('baseline_metrics')})"
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
                    f"streamed, {len(result.updates)} training jobs for the events' model and "
                    f"{int(result.style.update is not None)} for the answering model, in "
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
                           markers=[(float(result.concept_change), "concept change"),
                                    *_job_markers(result), *_alert_markers(result)])),
        ("Training jobs", report.timeline(spans, "job timeline (seconds)")
         + "<table><tr><th>kind</th><th>version</th><th>status</th><th>candidate</th>"
         f"<th>serving before</th></tr>{metrics_rows}</table>"),
        demo_style.section(result.style),
    ]  # fmt: skip
    path.write_text(report.html_page("livelearn demo", sections), encoding="utf-8")
    return path


def _job_markers(result: DemoResult) -> list[tuple[float, str]]:
    """Where each promoted version first answered an event (else where it was promoted)."""
    out = []
    for u in result.updates:
        if u["status"] != "promoted":
            continue
        version = u.get("model_version", "")
        first = next((i for i, (src, v) in enumerate(result.served_by)
                      if src == "batch" and v == version), None)  # fmt: skip
        if first is not None:
            out.append((float(first), f"{u['kind']} {version[:12]} serves"))
        else:
            out.append((float(u.get("events_sent", 0)), f"{u['kind']} promoted"))
    return out


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
    st = result.style
    console.print(f"answering model: {st.styled(st.before)} → {st.styled(st.after)} of "
                  f"{len(st.questions)} answers in the house style")  # fmt: skip
    for q, b, a in zip(st.questions, st.before, st.after, strict=False):
        console.print(f"[bold]{q}[/]")
        console.print(f"  {b['generator_version']}: {b['answer'][:110]!r}")
        console.print(f"  {a['generator_version']}: {a['answer'][:110]!r}")
    console.print(f"report: {result.report_path}  ({result.seconds:.0f} s)")
