"""Hybrid retrieval in a real worker: modes, filters and k on /search, /ask and ``queries``;
update/delete latency metrics. Real Kafka, milvus-lite, numpy/SciPy docstrings."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest

from retrieval.corpus import scientific_corpus
from streams.broker import free_port
from streams.sdk import LiveLearnClient
from streams.settings import ModelSettings, Settings
from tests.conftest import make_settings
from tests.integration.helpers import wait_caught_up
from tests.integration.worker import WorkerProcess


@pytest.fixture
def live(tmp_path: Path, kafka_bootstrap: str) -> Any:
    from streams.kafka import admin_client
    from streams.topics import ensure_topics, topic_specs

    s: Settings = make_settings(
        tmp_path, kafka_bootstrap, models=ModelSettings(chunk_tokens=96, chunk_overlap=16)
    )
    ensure_topics(admin_client(s, kafka_bootstrap), topic_specs(s.topics))
    port = free_port()
    worker = WorkerProcess(s, tmp_path / "worker.log", env={"LIVELEARN_METRICS_PORT": str(port)})
    corpus = scientific_corpus(720)  # numpy's docstrings, then numpy.linalg's
    docs = [d for d in corpus if d["source"] == "numpy"][:30]
    docs += [d for d in corpus if d["source"] == "numpy.linalg"]
    client = LiveLearnClient(s)
    for d in docs:
        client.produce("docs", d)
    client.flush()
    worker.start()
    try:
        wait_caught_up(s, f"{s.kafka.group_prefix}-worker", s.topics.docs)
        yield s, worker, client, docs, port
    finally:
        worker.stop()
        client.close()


def _status(worker: WorkerProcess, path: str) -> tuple[int, dict[str, Any]]:
    try:
        return 200, worker.get(path)
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_modes_filters_and_k_over_http_and_kafka(live: Any) -> None:
    s, worker, client, docs, port = live
    target = next(d for d in docs if d["id"] == "numpy.linalg.svd")
    question = "factor a matrix into two unitary matrices and a diagonal of singular values"
    for mode in ("dense", "sparse", "hybrid"):
        hits = worker.get(f"/search?q={quote(question)}&k=5&mode={mode}")["hits"]
        assert target["id"] in {h["doc_id"] for h in hits}, mode

    only = {"source": "numpy.linalg", "meta": json.dumps({"package": "numpy"})}
    hits = worker.get(f"/search?{urlencode({'q': 'sort an array', 'k': 10, **only})}")["hits"]
    assert hits and {h["source"] for h in hits} == {"numpy.linalg"}
    status, _ = _status(worker, f"/search?{urlencode({'q': 'x', 'title': 'no such title'})}")
    assert status == 200 and worker.get("/search?q=x&title=nope")["hits"] == []

    for bad, reason in [
        ("k=0", "less than the minimum of 1"),
        ("k=101", "greater than the maximum of 100"),
        ("k=many", "k must be an integer"),
        ("mode=fuzzy", "is not one of"),
        ("meta=" + quote('{"a": null}'), "None is not of type"),
    ]:
        for page in ("search", "ask"):
            status, body = _status(worker, f"/{page}?q=x&{bad}")
            assert status == 400 and reason in body["error"], (page, bad, body)

    # /ask with k=50 quotes only from the best-ranked contexts, in order, bounded.
    answer = worker.get(f"/ask?q={quote(question)}&k=50")
    assert len(answer["contexts"]) == 50
    text, sources = answer["answer"].split("\nSources: ")
    cited = [int(n) for n in re.findall(r"\[(\d+)\]", text)]
    assert cited and cited == sorted(cited) and max(cited) <= 5 and len(text) <= 700
    assert ">>>" not in text and "----" not in text

    # The queries topic takes the same mode and filter; a bad filter is dead-lettered.
    answer = client.ask(question, k=3, filter={"source": "numpy.linalg"}, timeout_s=90)
    assert answer["contexts"] and {c["doc_id"] for c in answer["contexts"]} <= {
        d["id"] for d in docs if d["source"] == "numpy.linalg"
    }
    from streams.kafka import producer

    raw = producer(s, s.kafka.bootstrap_servers)  # the SDK itself refuses the bad record
    bad = {"id": "bad", "question": "?", "filter": {"meta": {"x": None}}}
    raw.produce(s.topics.queries, orjson.dumps(bad), key=b"bad")
    raw.flush(30)
    dead = next(iter(client.subscribe(s.topics.dlq(s.topics.queries), from_beginning=True,
                                      timeout_s=60)))  # fmt: skip
    assert dead["key"] == "bad" and "None is not of type" in dead["error"]


def test_update_and_delete_latencies_are_exported(live: Any) -> None:
    s, worker, client, docs, port = live
    first, second = docs[0], docs[1]
    client.produce("docs", dict(first, text="Quokkas are small marsupials of Rottnest Island."))
    client.produce("docs", {"id": second["id"], "op": "delete"})
    client.flush()
    wait_caught_up(s, f"{s.kafka.group_prefix}-worker", s.topics.docs)
    hits = worker.get("/search?q=quokkas+marsupials&k=3&mode=sparse")["hits"]
    assert hits[0]["doc_id"] == first["id"] and "Quokkas" in hits[0]["text"]
    q = quote(second["text"][:200])
    for mode in ("dense", "sparse", "hybrid"):
        assert second["id"] not in {
            h["doc_id"] for h in worker.get(f"/search?q={q}&k=10&mode={mode}")["hits"]
        }
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        scraped = resp.read().decode()
    counts = dict(re.findall(r"^(livelearn_\w+_count) (\S+)$", scraped, re.M))
    assert float(counts["livelearn_update_visible_seconds_count"]) >= 1
    assert float(counts["livelearn_delete_invisible_seconds_count"]) >= 1
