"""Update → visible and delete → invisible latencies, observed by the docs agent's step."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from retrieval.chunking import TokenChunker
from retrieval.indexing import ChunkIndexer
from retrieval.store import VectorStore
from streams import metrics
from streams.handlers import index_docs


class Letters:
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.array([[t.count("a") + 1, t.count("o") + 1] for t in texts], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _count(histogram: object) -> float:
    for metric in histogram.collect():  # type: ignore[attr-defined]
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return float(sample.value)
    return 0.0


def test_updates_and_deletes_are_timed_from_their_produce_time(tmp_path: Path) -> None:
    with VectorStore(str(tmp_path / "m.db"), dim=2, bm25=True) as store:
        services = SimpleNamespace(
            indexer=ChunkIndexer(TokenChunker(None, 50, 0), Letters(), store),
            embedding_monitor=None,
            note_written=lambda rows: None,
        )

        def record(value: dict[str, object], age_s: float) -> SimpleNamespace:
            return SimpleNamespace(value=value, timestamp=time.time() - age_s)

        before = (_count(metrics.UPDATE_VISIBLE), _count(metrics.DELETE_INVISIBLE))
        index_docs(services, [record({"id": "a", "op": "upsert", "text": "alpha"}, 0.2)])
        assert _count(metrics.UPDATE_VISIBLE) == before[0]  # a new document is no update
        batch = [
            record({"id": "a", "op": "upsert", "text": "omega"}, 0.4),
            record({"id": "b", "op": "upsert", "text": "beta"}, 0.4),
        ]
        index_docs(services, batch)
        assert _count(metrics.UPDATE_VISIBLE) == before[0] + 1
        assert store.search(text="omega", k=1, mode="sparse")[0].doc_id == "a"
        index_docs(services, [record({"id": "a", "op": "delete"}, 1.0)])
        assert _count(metrics.DELETE_INVISIBLE) == before[1] + 1
        assert store.search(text="omega", k=1, mode="sparse") == []
        seconds = [
            s.value
            for m in metrics.DELETE_INVISIBLE.collect()
            for s in m.samples
            if s.name.endswith("_sum")
        ]
        assert seconds and seconds[0] >= 1.0
