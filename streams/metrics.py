"""Prometheus metrics exported by every service (``/metrics`` on ``LIVELEARN_METRICS_PORT``).

Names are stable: the Grafana dashboard in ``deploy/`` and its test refer to them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "DEAD_LETTERS",
    "FRESHNESS",
    "SEARCH_SECONDS",
    "DELETE_INVISIBLE",
    "UPDATE_VISIBLE",
    "PREDICTION_LATENCY",
    "RECORDS_IN",
    "RECORDS_OUT",
    "BATCH_SECONDS",
    "CONSUMER_LAG",
    "RETRIES",
    "LATE_EVENTS",
    "DRIFT_ALERTS",
    "MODEL_METRIC",
    "SERVING_VERSION",
    "JOB_SECONDS",
    "JOBS",
    "FEEDBACK_ROUTES",
    "GENERATOR_RATING",
    "STYLE_ADHERENCE",
    "EMBEDDER_MIGRATION",
    "LEASE_HELD",
    "LEASE_LOST",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_RETRIES",
    "WEBHOOK_SECONDS",
    "serve_metrics",
]

RECORDS_IN = Counter(
    "livelearn_records_in_total", "Records consumed, by topic and outcome", ["topic", "outcome"]
)
RECORDS_OUT = Counter("livelearn_records_out_total", "Records produced, by topic", ["topic"])
DEAD_LETTERS = Counter(
    "livelearn_dead_letters_total", "Records sent to a dead-letter topic", ["topic"]
)
BATCH_SECONDS = Histogram(
    "livelearn_batch_seconds",
    "Time to process one batch, by agent",
    ["agent"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FRESHNESS = Histogram(
    "livelearn_freshness_seconds",
    "Time from a document's produce timestamp to the moment it is searchable",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60),
)
UPDATE_VISIBLE = Histogram(
    "livelearn_update_visible_seconds",
    "Time from an update's produce timestamp (a document already indexed) to the moment "
    "searches return its new text",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60),
)
DELETE_INVISIBLE = Histogram(
    "livelearn_delete_invisible_seconds",
    "Time from a delete's produce timestamp to the moment no search returns the document",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60),
)
SEARCH_SECONDS = Histogram(
    "livelearn_search_seconds",
    "Time from a /search or /ask request's arrival to its answer (waiting included)",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PREDICTION_LATENCY = Histogram(
    "livelearn_prediction_latency_seconds",
    "Time from an event's produce timestamp to its prediction being produced",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CONSUMER_LAG = Gauge(
    "livelearn_consumer_lag", "Records not yet processed, by topic and partition",
    ["topic", "partition"],
)  # fmt: skip
TRACKING_FAILURES = Counter(
    "livelearn_tracking_failures_total",
    "Training jobs an external tracker (MLflow) could not log; the jobs themselves went on",
    ["tracker"],
)
RETRIES = Counter(
    "livelearn_retries_total", "Transient failures retried with backoff, by dependency",
    ["dependency"],
)  # fmt: skip
LATE_EVENTS = Counter(
    "livelearn_late_events_total",
    "Events learned after one with a later ts (they came past the event-time merge's lateness)",
    ["topic"],
)

DRIFT_ALERTS = Counter(
    "livelearn_drift_alerts_total", "Drift alerts raised, by model, detector and severity",
    ["model", "detector", "severity"],
)  # fmt: skip
MODEL_METRIC = Gauge(
    "livelearn_model_metric",
    "Rolling prequential metric of a serving model (source: online or batch)",
    ["model", "source", "metric"],
)
SERVING_VERSION = Gauge(
    "livelearn_serving_model_info",
    "1 for the model version that serves now, by source (online, batch; generator: the "
    "answering LM)",
    ["model", "source", "version"],
)
JOB_SECONDS = Histogram(
    "livelearn_training_job_seconds",
    "Wall time of a training job, by kind and outcome",
    ["kind", "status"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
JOBS = Counter(
    "livelearn_training_jobs_total", "Training jobs finished, by kind and outcome",
    ["kind", "status"],
)  # fmt: skip
FEEDBACK_ROUTES = Counter(
    "livelearn_feedback_routes_total", "Feedback records by route (knowledge, style, neither)",
    ["route"],
)  # fmt: skip
GENERATOR_RATING = Histogram(
    "livelearn_generator_rating", "Ratings of generated answers, by generator version",
    ["version"], buckets=(0, 1, 2, 3, 4, 5),
)  # fmt: skip
STYLE_ADHERENCE = Gauge(
    "livelearn_generator_style_adherence", "Rolling style adherence of generated answers"
)

LEASE_HELD = Gauge(
    "livelearn_learner_lease_held", "1 while this worker holds the model's learner lease",
    ["model"],
)  # fmt: skip
EMBEDDER_MIGRATION = Gauge(
    "livelearn_embedder_migration_progress",
    "Share of the docs topic an embedder migration has replayed into its new collection "
    "(1: switched; -1: the switch was refused by the probe set)",
)
LEASE_LOST = Counter(
    "livelearn_learner_lease_lost_total",
    "Times this worker lost the learner lease it held (a rebalance, a session timeout)",
    ["model"],
)
WEBHOOK_DELIVERIES = Counter(
    "livelearn_webhook_deliveries_total",
    "Records the webhook sink handled, by topic and outcome (delivered, dead_lettered)",
    ["topic", "outcome"],
)
WEBHOOK_RETRIES = Counter(
    "livelearn_webhook_retries_total", "Webhook requests tried again after a failure",
    ["topic"],
)  # fmt: skip
WEBHOOK_SECONDS = Histogram(
    "livelearn_webhook_request_seconds", "Time of one webhook request (any outcome)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip


class SearchCacheCollector:
    """``livelearn_search_cache_lookups_total{cache,outcome}`` (a counter) and
    ``livelearn_search_cache_bytes{cache}``, read from the worker's search caches at every
    scrape ('embedding': query vectors; 'result': hits valid until the index changes)."""

    def __init__(self) -> None:
        self.caches: dict[str, Any] = {}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        lookups = CounterMetricFamily(
            "livelearn_search_cache_lookups",
            "Lookups in the worker's search caches since it started, by outcome",
            labels=["cache", "outcome"],
        )
        size = GaugeMetricFamily(
            "livelearn_search_cache_bytes",
            "Memory held by a search cache's entries",
            labels=["cache"],
        )
        for name, cache in list(self.caches.items()):
            lookups.add_metric([name, "hit"], float(cache.hits))
            lookups.add_metric([name, "miss"], float(cache.misses))
            size.add_metric([name], float(cache.bytes))
        yield lookups
        yield size


SEARCH_CACHES = SearchCacheCollector()
REGISTRY.register(SEARCH_CACHES)


def export_cache_metrics(caches: dict[str, Any]) -> None:
    """Read the caches' hit and miss counts and sizes at every scrape (``None``: no cache).

    >>> from retrieval.cache import ResultCache
    >>> cache = ResultCache()
    >>> export_cache_metrics({"result": cache, "embedding": None})
    >>> cache.hits, cache.bytes = 3, 1234  # as if it had answered and held entries
    >>> REGISTRY.get_sample_value("livelearn_search_cache_lookups_total", {"cache": "result",
    ...                                                                    "outcome": "hit"})
    3.0
    >>> REGISTRY.get_sample_value("livelearn_search_cache_bytes", {"cache": "result"})
    1234.0
    """
    SEARCH_CACHES.caches = {name: c for name, c in caches.items() if c is not None}


def serve_metrics(port: int, host: str = "127.0.0.1", token: str = "") -> None:
    """Serve ``/metrics`` on ``host:port`` (0 = do nothing), in a background thread.

    With a ``token``, a scrape must send ``Authorization: Bearer <token>`` (Prometheus:
    ``authorization: {credentials: ...}`` in the scrape config); others get 401.
    """
    if not port:
        return
    if not token:
        start_http_server(port, addr=host)
        return
    import hmac
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    metrics_app = make_wsgi_app()
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"missing or wrong bearer token\n"]
        return metrics_app(environ, start_response)

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = make_server(host, port, guarded, ThreadingWSGIServer, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
