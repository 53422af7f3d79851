"""One valid example record per contract (used by unit and integration tests)."""

from __future__ import annotations

from typing import Any

EXAMPLES: dict[str, dict[str, Any]] = {
    "docs": {
        "id": "d1",
        "op": "upsert",
        "text": "Kafka keeps an ordered log.",
        "title": "kafka",
        "source": "man",
        "meta": {"lang": "en", "rank": 1},
        "ts": 1.7e9,
    },
    "events": {"id": "e1", "ts": 1.7e9, "features": {"x": 0.5, "city": "Oslo"}, "label": True},
    "queries": {
        "id": "q1",
        "question": "What keeps an ordered log?",
        "k": 3,
        "filter": {"source": "man"},
    },
    "predictions": {
        "id": "e1",
        "prediction": True,
        "proba": {"True": 0.8, "False": 0.2},
        "model": "default",
        "model_version": "online-10",
        "ts": 1.7e9,
        "latency_ms": 1.5,
    },
    "answers": {
        "id": "q1",
        "answer": "Kafka [1]",
        "contexts": [
            {"doc_id": "d1", "chunk": 0, "score": 0.9, "text": "Kafka keeps an ordered log."}
        ],
        "latency_ms": 12.0,
    },
    "drift-alerts": {
        "alert_id": "a1",
        "ts": 1.7e9,
        "model": "default",
        "model_version": "online-10",
        "detector": "adwin",
        "signal": "concept",
        "value": 0.4,
        "threshold": 0.002,
        "severity": "drift",
        "action": "retrain",
    },
    "training-jobs": {
        "job_id": "j1",
        "kind": "retrain",
        "reason": "drift",
        "data": {"topic": "events", "offsets": {"0": [0, 100], "1": [0, 80]}},
        "base_version": "v0001-0123abcd",
    },
    "model-updates": {
        "job_id": "j1",
        "model_version": "v0002",
        "kind": "retrain",
        "status": "promoted",
        "metrics": {"accuracy": 0.9},
        "baseline_metrics": {"accuracy": 0.8},
        "artifact": "/models/v0002",
        "data": {"topic": "events", "offsets": {"0": [0, 100]}},
        "ts": 1.7e9,
    },
    "dlq": {
        "topic": "events",
        "partition": 0,
        "offset": 5,
        "key": "e1",
        "raw": "{",
        "raw_encoding": "utf-8",
        "raw_truncated": False,
        "error": "not JSON",
        "ts": 1.7e9,
    },
    "style-examples": {
        "id": "s1",
        "question": "What keeps an ordered log?",
        "answer": "Summary: Kafka keeps an ordered log. [1]\nSources: [1] d1",
        "contexts": ["Kafka keeps an ordered log.", {"doc_id": "d1", "text": "Kafka."}],
        "ts": 1.7e9,
        "source": "editor",
    },
    "feedback": {
        "id": "f1",
        "answer_id": "q1",
        "rating": 2,
        "preferred_answer": "Summary: Kafka keeps an ordered log. [1]",
        "comment": "house format, please",
    },
}
