"""What the worker's retrieval agents do with a batch: functions of (services, records).

Each takes the batch's decoded records, calls ``retrieval`` (on the retrieval thread: the
agents run these through :meth:`streams.services.RetrievalServices.run`) and returns the
records to produce; the agent's :class:`streams.batch_runner.BatchRunner` produces them and
dead-letters what comes back as a :class:`streams.processing.Rejection`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from streams import metrics
from streams.processing import OutRecord, Rejection
from streams.services import RetrievalServices

log = logging.getLogger(__name__)

__all__ = ["answer_queries", "index_docs", "query_filter"]


def index_docs(services: RetrievalServices, records: Sequence[Any]) -> list[OutRecord | Rejection]:
    """Apply a batch of valid docs records to the index; record freshness per document.
    A document the indexer refused (over the chunk limit) comes back as a :class:`Rejection`
    of its last record in the batch."""
    report = services.indexer.apply([r.value for r in records])
    services.note_written(report.chunks_written + report.chunks_removed)  # flushes when due
    now = time.time()
    last = {str(r.value["id"]): r for r in records}
    refused: list[OutRecord | Rejection] = [
        Rejection(last[d].partition, last[d].offset, f"docs: {why}")
        for d, why in report.refused.items()
    ]
    updated, deleted = set(report.updated_ids), set(report.deleted_ids)
    for r in records:
        produced = r.value.get("ts") or r.timestamp
        if produced and str(r.value["id"]) not in report.refused:
            # Strong consistency: once apply returns, every search sees the batch.
            age = max(0.0, now - float(produced))
            doc_id = str(r.value.get("id"))
            metrics.FRESHNESS.observe(age)
            if r.value.get("op") == "delete":
                if doc_id in deleted:
                    metrics.DELETE_INVISIBLE.observe(age)
            elif doc_id in updated:
                metrics.UPDATE_VISIBLE.observe(age)
    log.debug("indexed %s", report)
    return refused + list(_embedding_alerts(services, records, report.vectors))


def _embedding_alerts(
    services: RetrievalServices, records: Sequence[Any], vectors: Any
) -> list[OutRecord]:
    """Feed the batch's chunk embeddings to the docs stream's drift monitor."""
    monitor = services.embedding_monitor
    if monitor is None or vectors is None or not len(vectors):
        return []
    s = services.settings
    out: list[OutRecord] = []
    now = time.monotonic()  # the batch's vectors came together (a bulk load is one reference)
    for vector in vectors:
        signal = monitor.update(vector.tolist(), now)
        if signal is not None:  # at most one per episode
            alert = signal.to_alert(s.models.embedding, "embedder", "none", records[-1])
            if any(o.key == alert["alert_id"] for o in out):
                continue  # one alert per id: the batch's record names it
            metrics.DRIFT_ALERTS.labels("docs", signal.detector, signal.severity).inc()
            log.warning("embedding drift on %s: %s", s.topics.docs, alert)
            out.append(OutRecord(s.topics.drift_alerts, alert["alert_id"], alert))
    return out


def answer_queries(
    services: RetrievalServices, records: Sequence[Any], answers_topic: str
) -> list[OutRecord]:
    """Answer each query; the answer is keyed by the query id."""
    outputs = []
    for r in records:
        started = time.perf_counter()
        q = r.value
        expr = query_filter(services, q)
        answer = services.answerer.answer(
            q["question"], k=q.get("k"), filter=expr or None, mode=q.get("mode")
        )
        record = dict(answer.to_record())
        record["id"] = q["id"]
        record["latency_ms"] = (time.perf_counter() - started) * 1000
        outputs.append(OutRecord(answers_topic, q["id"], record))
    return outputs


def query_filter(services: RetrievalServices, query: dict[str, Any]) -> str | None:
    return services.filter_expr(query)
