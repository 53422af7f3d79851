"""A producer that stops delivering hands its records to a new one, none lost, none doubled.

librdkafka 2.16 can keep a producer that never delivers again after a broker restart
(confluentinc/librdkafka#5430); the trigger is a race in its metadata handling that a test
cannot call up at will, so here the stalled producer is one whose broker never answers: a
port nothing listens on. Its records wait in its queues as the stuck ones do, and the new
producer is on the real broker.
"""

from __future__ import annotations

import time

import orjson

from streams.broker import free_port
from streams.kafka import move_to_new_producer, producer
from streams.sdk import LiveLearnClient
from streams.settings import Settings


def _events(client: LiveLearnClient, n: int) -> list[dict[str, object]]:
    return list(client.subscribe("events", from_beginning=True, max_records=n, timeout_s=60))


def test_the_records_of_a_stalled_producer_move_to_a_new_one_in_order(settings: Settings) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    stalled = producer(settings, nowhere)
    values = [orjson.dumps({"id": f"e{i}", "ts": 1.0, "features": {"x": i}}) for i in range(50)]
    for v in values:
        stalled.produce(settings.topics.events, v, key=b"one-key")  # one key: one partition
    stalled.poll(0.5)
    assert len(stalled) == 50  # all waiting: nothing can be delivered

    bootstrap = settings.kafka.bootstrap_servers
    new = move_to_new_producer(stalled, lambda: producer(settings, bootstrap))
    assert len(stalled) == 0 and new.flush(30) == 0
    assert new.take_failures() == [] and new.delivered_total == 50
    got = _events(LiveLearnClient(settings), 50)
    assert [e["id"] for e in got] == [f"e{i}" for i in range(50)]  # in order, once each


def test_the_client_replaces_a_producer_that_delivers_nothing(settings: Settings) -> None:
    client = LiveLearnClient(settings, stall_s=2.0)
    client._producer = producer(settings, f"127.0.0.1:{free_port()}")  # stuck from the start
    for i in range(20):
        client.send_event(f"s{i}", features={"x": i})
    started = time.monotonic()
    client.flush(30)  # the stall is seen after 2 s; the new producer delivers at once
    assert time.monotonic() - started < 20
    got = [e["id"] for e in _events(client, 20)]  # keyed by id: over the partitions
    assert sorted(got) == sorted(f"s{i}" for i in range(20))
