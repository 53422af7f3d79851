"""The live console: one page served by the worker at ``/``, fed by ``/console.json``.

Open ``http://127.0.0.1:6066/`` (``LIVELEARN_WEB_PORT``) while ``livelearn up`` runs; with a
web token set, open ``/#token=<token>`` (the page sends it as a bearer token). The page
fetches ``/console.json`` every few seconds and draws:

* consumer lag per topic (``livelearn_consumer_lag``, summed over partitions);
* the freshness (produce → searchable) and prediction-latency histograms;
* the rolling accuracy of the serving model over time, with drift alerts and promoted model
  versions marked;
* the model versions in the registry, the recent training jobs with their gate decisions;
* dead-letter counts per topic with the latest reasons.

Where it comes from: the worker's own Prometheus registry (:mod:`streams.metrics`, so the
numbers are the ones ``/metrics`` exports), the model registry on disk, and the tails of the
``drift-alerts``, ``model-updates`` and ``*.dlq`` topics, read on demand by one consumer that
never joins a group or commits. The plots are Vega-Lite specs (:mod:`streams.plots`) drawn
in the browser by the bundles shipped in the package (no CDN).

Everything that builds the page's data is a pure function of those inputs:

>>> from prometheus_client import CollectorRegistry, Counter, Gauge
>>> reg = CollectorRegistry()
>>> lag = Gauge("livelearn_consumer_lag", "lag", ["topic", "partition"], registry=reg)
>>> lag.labels("events", "0").set(3); lag.labels("events", "1").set(4)
>>> dlq = Counter("livelearn_dead_letters_total", "dlq", ["topic"], registry=reg)
>>> dlq.labels("docs").inc()
>>> m = read_metrics(reg)
>>> m.lag, m.dead_letters
({'events': 7.0}, {'docs': 1.0})
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import REGISTRY, CollectorRegistry

from streams import metrics, plots
from streams.paths import StatePaths
from streams.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "ConsoleFeed",
    "MetricsView",
    "console_data",
    "histogram_bins",
    "page_html",
    "read_metrics",
    "register_console",
]

#: Rolling metrics drawn on the accuracy plot (the rest are in the table).
CHARTED = ("accuracy", "mae", "paired_score")
REFRESH_S = 3.0
#: Files under /console/static/: the plotting bundles and the page's script.
SERVED = (*plots.ASSETS, "console.js")


@dataclass
class MetricsView:
    """What the console shows from a Prometheus registry, summed the way the page shows it."""

    lag: dict[str, float] = field(default_factory=dict)  # topic → records behind
    freshness: list[tuple[str, float]] = field(default_factory=list)  # (bucket, count)
    freshness_count: float = 0.0
    latency: list[tuple[str, float]] = field(default_factory=list)
    latency_count: float = 0.0
    dead_letters: dict[str, float] = field(default_factory=dict)  # source topic → count
    drift_alerts: dict[str, float] = field(default_factory=dict)  # severity → count
    model_metrics: dict[str, float] = field(default_factory=dict)  # "model source metric"
    serving: list[str] = field(default_factory=list)  # "model source version"


def histogram_bins(buckets: Sequence[tuple[float, float]], unit: str = "s") -> list[
    tuple[str, float]
]:  # fmt: skip
    """A Prometheus histogram's cumulative ``(le, count)`` buckets as one count per bin.

    >>> histogram_bins([(0.1, 2.0), (0.5, 5.0), (float("inf"), 6.0)])
    [('≤ 0.1 s', 2.0), ('0.1–0.5 s', 3.0), ('> 0.5 s', 1.0)]
    """
    out: list[tuple[str, float]] = []
    below, prev = 0.0, None
    for le, cumulative in sorted(buckets):
        if le == float("inf"):
            label = f"> {prev:g} {unit}" if prev is not None else "all"
        elif prev is None:
            label = f"≤ {le:g} {unit}"
        else:
            label = f"{prev:g}–{le:g} {unit}"
        out.append((label, cumulative - below))
        below, prev = cumulative, le
    return out


def read_metrics(registry: CollectorRegistry = REGISTRY) -> MetricsView:
    """Read the console's numbers from ``registry`` (the worker's own, by default)."""
    view = MetricsView()
    hist: dict[str, list[tuple[float, float]]] = {"freshness": [], "latency": []}
    names = {"livelearn_freshness_seconds": "freshness",
             "livelearn_prediction_latency_seconds": "latency"}  # fmt: skip
    for family in registry.collect():
        for s in family.samples:
            if family.name == "livelearn_consumer_lag":
                topic = s.labels["topic"]
                view.lag[topic] = view.lag.get(topic, 0.0) + s.value
            elif family.name in names and s.name.endswith("_bucket"):
                hist[names[family.name]].append((float(s.labels["le"]), s.value))
            elif family.name in names and s.name.endswith("_count"):
                setattr(view, f"{names[family.name]}_count", s.value)
            elif s.name == "livelearn_dead_letters_total":
                topic = s.labels["topic"]
                view.dead_letters[topic] = view.dead_letters.get(topic, 0.0) + s.value
            elif s.name == "livelearn_drift_alerts_total":
                sev = s.labels["severity"]
                view.drift_alerts[sev] = view.drift_alerts.get(sev, 0.0) + s.value
            elif family.name == "livelearn_model_metric":
                key = f"{s.labels['model']} {s.labels['source']} {s.labels['metric']}"
                view.model_metrics[key] = s.value
            elif s.name == "livelearn_serving_model_info" and s.value:
                view.serving.append(
                    f"{s.labels['model']} {s.labels['source']} {s.labels['version']}"
                )
    view.freshness = histogram_bins(hist["freshness"])
    view.latency = histogram_bins(hist["latency"])
    return view


def _ts(record: Mapping[str, Any]) -> float:
    try:
        return float(record.get("ts") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def console_data(
    view: MetricsView,
    history: Mapping[str, Sequence[tuple[float, float]]],
    alerts: Sequence[Mapping[str, Any]],
    updates: Sequence[Mapping[str, Any]],
    dead: Mapping[str, Sequence[Mapping[str, Any]]],
    versions: Sequence[Mapping[str, Any]],
    now: float,
) -> dict[str, Any]:
    """Everything ``/console.json`` returns: numbers, tables and Vega-Lite specs.

    ``history`` is each charted metric over time (epoch seconds); ``dead`` the latest
    dead letters by DLQ topic; ``versions`` the registry's versions, newest last.

    >>> data = console_data(MetricsView(lag={"events": 2.0}), {}, [], [], {}, [], now=1.0)
    >>> data["lag"], sorted(data["plots"])
    ({'events': 2.0}, ['accuracy', 'freshness', 'latency'])
    """
    markers = [(_ts(a), f"{a.get('severity')} {a.get('detector')} ({a.get('model')})",
                "drift alert") for a in alerts if _ts(a)]  # fmt: skip
    markers += [(_ts(u), f"{u.get('model_version')} ({u.get('kind')})", "model version")
                for u in updates if u.get("status") == "promoted" and _ts(u)]  # fmt: skip
    shares = all(name.endswith(("accuracy", "paired_score")) for name in history)
    accuracy = plots.line_spec(
        dict(history), "Rolling accuracy of the serving model", markers,
        x_title="time", y_title="rolling metric", x_temporal=True,
        y_domain=(0.0, 1.0) if shares else None,  # errors (regression): their own range
    )  # fmt: skip
    jobs = [
        {
            "job_id": u.get("job_id"), "kind": u.get("kind"), "status": u.get("status"),
            "model": u.get("model"), "model_version": u.get("model_version"),
            "metrics": u.get("metrics"), "baseline_metrics": u.get("baseline_metrics"),
            "reason": u.get("reason") or u.get("error"), "ts": _ts(u),
        }
        for u in reversed(updates)
    ]  # fmt: skip
    dead_rows = [
        {"topic": topic, "count": view.dead_letters.get(topic, 0.0),
         "latest": [{"offset": d.get("offset"), "error": d.get("error"), "ts": d.get("ts")}
                    for d in reversed(dead.get(topic, ()))]}
        for topic in sorted(set(view.dead_letters) | set(dead))
    ]  # fmt: skip
    return {
        "generated": now,
        "lag": dict(sorted(view.lag.items())),
        "freshness": {"count": view.freshness_count, "bins": view.freshness},
        "latency": {"count": view.latency_count, "bins": view.latency},
        "model_metrics": dict(sorted(view.model_metrics.items())),
        "serving": view.serving,
        "drift_alert_counts": view.drift_alerts,
        "alerts": [dict(a) for a in reversed(alerts)],
        "jobs": jobs,
        "versions": [dict(v) for v in reversed(versions)],
        "dead_letters": dead_rows,
        "plots": {
            "freshness": plots.histogram_spec(view.freshness, "Freshness: produce → searchable",
                                              "seconds"),
            "latency": plots.histogram_spec(view.latency, "Prediction latency: produce → "
                                            "prediction", "seconds"),
            "accuracy": accuracy,
        },
    }  # fmt: skip


class ConsoleFeed:
    """The state the console keeps between two refreshes, and the reads that update it.

    ``sample`` (every few seconds, cheap) appends the charted rolling metrics to their
    history; ``refresh`` (on a request, at most every ``min_interval_s``) reads the new tail
    records of the alert, update and dead-letter topics and the registry's versions.
    """

    def __init__(self, settings: Settings, bootstrap: str, keep: int = 50,
                 history: int = 1800, min_interval_s: float = 2.0) -> None:  # fmt: skip
        self.settings, self.bootstrap, self.keep = settings, bootstrap, keep
        self.min_interval_s = min_interval_s
        self.history: dict[str, deque[tuple[float, float]]] = {}
        self._history_len = history
        self.alerts: deque[dict[str, Any]] = deque(maxlen=keep)
        self.updates: deque[dict[str, Any]] = deque(maxlen=keep)
        self.dead: dict[str, deque[dict[str, Any]]] = {}
        self.versions: list[dict[str, Any]] = []
        self._positions: dict[tuple[str, int], int] = {}
        self._consumer: Any = None
        self._lock = threading.Lock()  # one refresh at a time (it reads Kafka: seconds)
        self._history_lock = threading.Lock()  # brief: sample() runs on the event loop
        self._refreshed = 0.0

    def sample(self, now: float | None = None) -> None:
        """Append the current value of each charted rolling metric to its history."""
        now = time.time() if now is None else now
        model = self.settings.models.name
        for family in metrics.MODEL_METRIC.collect():
            for s in family.samples:
                if s.labels["model"] != model or s.labels["metric"] not in CHARTED:
                    continue
                name = f"{s.labels['source']} {s.labels['metric']}"
                with self._history_lock:
                    series = self.history.setdefault(name, deque(maxlen=self._history_len))
                    series.append((now, s.value))

    def data(self) -> dict[str, Any]:
        """``/console.json``: refresh (when due), then build the page's data."""
        with self._lock:
            if time.monotonic() - self._refreshed >= self.min_interval_s:
                self._refresh_locked()
                self._refreshed = time.monotonic()
            with self._history_lock:
                history = {k: list(v) for k, v in self.history.items()}
            return console_data(
                read_metrics(), history,
                list(self.alerts), list(self.updates),
                {k: list(v) for k, v in self.dead.items()}, self.versions, time.time(),
            )  # fmt: skip

    def _refresh_locked(self) -> None:
        try:
            self._read_tails()
        except Exception as exc:  # Kafka away: show what was read before, say so in the log
            log.warning("console: could not read the alert/update/dead-letter topics: %s", exc)
        try:
            self.versions = self._read_versions()
        except Exception as exc:  # a registry folder being written: next refresh
            log.warning("console: could not read the model registry: %s", exc)

    def _read_versions(self) -> list[dict[str, Any]]:
        from trainers.batch.registry import ModelRegistry

        registry = ModelRegistry(StatePaths.of(self.settings).registry)
        name = self.settings.models.name
        serving = registry.serving(name)
        return [
            {"version": v.version, "status": v.status, "kind": v.manifest.get("kind"),
             "job_id": v.job_id, "metrics": v.metrics,
             "serving": serving is not None and v.version == serving.version}
            for v in registry.list(name)[-self.keep:]
        ]  # fmt: skip

    def _tail_topics(self) -> list[str]:
        t = self.settings.topics
        return [t.drift_alerts, t.model_updates, *(t.dlq(x) for x in t.by_contract().values())]

    def _read_tails(self, timeout_s: float = 2.0) -> None:
        """Consume what is new on the tail topics since the last refresh (at most the last
        ``keep`` records per partition); positions are kept here, nothing is committed."""
        from confluent_kafka import TopicPartition

        from streams.kafka import consumer

        if self._consumer is None:
            self._consumer = consumer(self.settings, self.bootstrap, None)
        c = self._consumer
        present = c.list_topics(timeout=10).topics
        wanted: list[Any] = []
        ends: dict[tuple[str, int], int] = {}
        for topic in dict.fromkeys(self._tail_topics()):
            if topic not in present:
                continue
            for p in present[topic].partitions:
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                start = max(low, high - self.keep, self._positions.get((topic, p), 0))
                if high > start:
                    wanted.append(TopicPartition(topic, p, start))
                    ends[(topic, p)] = high
        if not wanted:
            return
        c.assign(wanted)
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for m in c.consume(500, 0.2):
                if m.error() is not None:
                    continue
                where = (m.topic(), m.partition())
                self._positions[where] = m.offset() + 1
                if where in ends and m.offset() + 1 >= ends[where]:
                    del ends[where]
                self._keep(m.topic(), m.value())
        c.unassign()

    def _keep(self, topic: str, raw: bytes | None) -> None:
        try:
            value = orjson.loads(raw or b"null")
        except orjson.JSONDecodeError:
            return  # an output topic: its producers validate what they write
        if not isinstance(value, dict):
            return
        t = self.settings.topics
        if topic == t.drift_alerts:
            self.alerts.append(value)
        elif topic == t.model_updates:
            if value.get("status") != "started":
                self.updates.append(value)
        else:
            source = str(value.get("topic") or topic.removesuffix(".dlq"))
            self.dead.setdefault(source, deque(maxlen=5)).append(value)

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None


class WorkerLagExporter:
    """Sets ``livelearn_consumer_lag`` for the topics the worker's agents consume (docs,
    queries, feedback, style examples) from the worker group's committed offsets: the
    learner sets it for ``events`` itself. Read with a consumer that never joins the group."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings, self.bootstrap = settings, bootstrap
        self._consumer: Any = None

    def topics(self) -> list[str]:
        t = self.settings.topics
        return [t.docs, t.queries, t.feedback, t.style_examples]

    def export(self) -> dict[str, int]:
        """Read and set the lag; returns it per topic."""
        from confluent_kafka import TopicPartition

        from streams.kafka import consumer

        if self._consumer is None:
            group = f"{self.settings.kafka.group_prefix}-worker"
            self._consumer = consumer(self.settings, self.bootstrap, group)
        c = self._consumer
        present = c.list_topics(timeout=10).topics
        parts = [TopicPartition(t, p) for t in self.topics() if t in present
                 for p in present[t].partitions]  # fmt: skip
        if not parts:
            return {}
        committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(parts, timeout=10)}
        out: dict[str, int] = {}
        for tp in parts:
            low, high = c.get_watermark_offsets(tp, timeout=10)
            done = committed.get((tp.topic, tp.partition), -1)
            lag = max(0, high - (done if done >= 0 else low))
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
            out[tp.topic] = out.get(tp.topic, 0) + lag
        return out

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def page_html(settings: Settings, refresh_s: float = REFRESH_S) -> str:
    """The console page: the layout; the data comes from ``/console.json``."""
    from streams.report import PAGE_CSS

    title = f"livelearn console · {settings.models.name}"
    assets = "".join(f'<script src="console/static/{name}"></script>' for name in plots.ASSETS)
    sections = [
        ("Consumer lag", '<table id="lag"></table>'),
        ("Freshness", '<p><span id="freshness-count"></span> documents searchable</p>'
                      '<div class="plot" id="plot-freshness"></div>'),
        ("Prediction latency", '<p><span id="latency-count"></span> predictions</p>'
                               '<div class="plot" id="plot-latency"></div>'),
        ("Rolling accuracy, drift alerts and model versions",
         '<div class="plot" id="plot-accuracy"></div><p>Serving: <span id="serving"></span></p>'
         '<table id="model-metrics"></table>'),
        ("Drift alerts", '<table id="alert-counts"></table><table id="alerts"></table>'),
        ("Recent training jobs and their gate decisions", '<table id="jobs"></table>'),
        ("Model versions", '<table id="versions"></table>'),
        ("Dead letters", '<table id="dead"></table>'),
    ]  # fmt: skip
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{inner}</section>" for h, inner in sections)
    css = PAGE_CSS + ("h2{font-size:1.1em;margin-bottom:.3em}td.none{color:#6b7280}"
                      ".gate-promoted{color:#059669}.gate-rejected{color:#b45309}"
                      ".gate-failed{color:#dc2626}#error{color:#dc2626}"
                      "table+table{margin-top:.5em}")  # fmt: skip
    script = plots.render_js().split("document.querySelectorAll")[0]  # the function alone
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{css}</style>{assets}</head><body>"
        f"<h1>{html.escape(title)}</h1><p><span id='updated'>loading …</span> · refreshes "
        f"every {refresh_s:g} s · <span id='error'></span></p>{body}<script>{script}"
        f"window.LIVELEARN_REFRESH_MS = {int(refresh_s * 1000)};</script>"
        '<script src="console/static/console.js"></script></body></html>'
    )


def register_console(app: Any, settings: Settings, bootstrap: str, guard: Any) -> ConsoleFeed:
    """Add the console's routes and timers to the faust ``app``; ``guard`` checks the
    bearer token and size of ``/console.json`` requests (the page and bundles hold no data)."""
    feed = ConsoleFeed(settings, bootstrap)
    lag = WorkerLagExporter(settings, bootstrap)
    page = page_html(settings).encode()

    @app.page("/", name="console")
    async def console_page(web: Any, request: Any) -> Any:
        return web.bytes(page, content_type="text/html")

    @app.page("/console.json", name="console-data")
    async def console_json(web: Any, request: Any) -> Any:
        refused = guard.check(request)
        if refused is not None:
            return web.json({"error": refused[1]}, status=refused[0])
        data = await asyncio.get_running_loop().run_in_executor(None, feed.data)
        return web.bytes(orjson.dumps(data), content_type="application/json")

    @app.page("/console/static/{name}", name="console-static")
    async def console_static(web: Any, request: Any, name: str) -> Any:
        if name not in SERVED:
            return web.json({"error": f"no such file: {name}"}, status=404)
        return web.bytes(plots.asset(name), content_type="text/javascript",
                         headers={"Cache-Control": "max-age=86400"})  # fmt: skip

    @app.timer(interval=2.0)
    async def sample_console() -> None:
        feed.sample()

    @app.timer(interval=10.0)
    async def export_worker_lag() -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, lag.export)
        except Exception as exc:  # Kafka away: the gauges keep their last values
            log.warning("could not read the worker group's lag: %s", exc)

    @app.on_before_shutdown.connect
    async def close_console(app: Any, **kwargs: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, _close_all, (feed, lag))

    return feed


def _close_all(things: Iterable[Any]) -> None:
    for thing in things:
        thing.close()
