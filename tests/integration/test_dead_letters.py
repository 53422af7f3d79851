"""Bad input is dead-lettered with a reason while the good records around it are processed."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from streams.kafka import producer
from streams.sdk import LiveLearnClient
from streams.settings import Settings
from tests.integration.worker import WorkerProcess

EPIC = " ".join(f"word{i}" for i in range(50_000))  # ~390 KB of distinct words


@pytest.fixture
def worker(settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    w = WorkerProcess(settings, tmp_path / "worker.log").start()
    yield w
    w.stop()


def test_bad_docs_go_to_the_dlq_and_good_ones_are_indexed(
    settings: Settings, worker: WorkerProcess
) -> None:
    topic = settings.topics.docs
    prod = producer(settings, settings.kafka.bootstrap_servers)
    good_1 = {"id": "kraft", "op": "upsert", "text": "KRaft mode runs Kafka without ZooKeeper."}
    good_2 = {"id": "compaction", "op": "upsert", "text": "Log compaction keeps the last value."}
    records: list[tuple[bytes | None, bytes]] = [
        (b"kraft", orjson.dumps(good_1)),
        (b"broken", b'{"id": "broken", "op": "upsert", "text": "unterminated'),
        # docs is compacted: Kafka itself refuses a record without a key, so the key is set
        (b"anonymous", orjson.dumps({"op": "upsert", "text": "who am I?"})),
        (b"7", b'{"id": 7, "op": "upsert", "text": "numbers are not ids"}'),
        (b"bin", b"\xff\xfe not utf-8"),
        # valid by the contract (~390 KB, under max_record_bytes) but wrong in size: 50,000
        # words become far more chunks than one document may (max_chunks_per_doc)
        (b"epic", orjson.dumps({"id": "epic", "op": "upsert", "text": EPIC})),
        (b"compaction", orjson.dumps(good_2)),
    ]
    errors: list[object] = []
    for key, value in records:
        prod.produce(
            topic,
            value,
            key=key,
            partition=0,  # one partition: order is known
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )
    assert prod.flush(30) == 0 and errors == []

    client = LiveLearnClient(settings)
    dead = list(
        client.subscribe(
            settings.topics.dlq(topic), from_beginning=True, max_records=5, timeout_s=90
        )
    )
    assert [d["offset"] for d in sorted(dead, key=lambda d: d["offset"])] == [1, 2, 3, 4, 5]
    reasons = {d["offset"]: d["error"] for d in dead}
    assert reasons[1].startswith("docs: not valid JSON")
    assert reasons[2] == "docs: 'id' is a required property (at $)"
    assert reasons[3] == "docs: 7 is not of type 'string' (at $.id)"
    assert reasons[4].startswith("docs: not valid JSON")
    max_chunks = settings.limits.max_chunks_per_doc
    assert f"chunks, over the {max_chunks}-chunk limit" in reasons[5], reasons[5]
    by_offset = {d["offset"]: d for d in dead}
    assert by_offset[1]["raw"].startswith('{"id": "broken"') and by_offset[1]["key"] == "broken"
    assert by_offset[4]["raw_encoding"] == "base64" and by_offset[4]["partition"] == 0
    assert all(d["topic"] == topic for d in dead)

    deadline = time.monotonic() + 60
    found: set[str] = set()
    while time.monotonic() < deadline and found != {"kraft", "compaction"}:
        for q in ("Kafka without ZooKeeper", "compaction keeps the last value"):
            hits = worker.get(f"/search?q={quote(q)}&k=1")["hits"]
            found.update(h["doc_id"] for h in hits)
        time.sleep(0.5)
    assert found == {"kraft", "compaction"}
