"""Contracts, topics, SDK and CLI against the real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import ConfigResource

from streams import contracts
from streams.broker import LocalBroker
from streams.kafka import admin_client, producer
from streams.sdk import LiveLearnClient
from streams.settings import BrokerSettings, Settings
from tests.conftest import broker_settings, settings_env
from tests.contract_examples import EXAMPLES


def test_every_contract_roundtrips_through_kafka(settings: Settings) -> None:
    client = LiveLearnClient(settings)
    topics = dict(settings.topics.by_contract(), dlq=settings.topics.dlq(settings.topics.events))
    for contract, value in EXAMPLES.items():
        if contract == "dlq":
            prod = producer(settings, client.bootstrap)
            prod.produce(topics["dlq"], contracts.encode(value), key=b"e1")
            prod.flush(10)
        else:
            client.produce(contract, value, wait=True)
    for contract, value in EXAMPLES.items():
        got = list(
            client.subscribe(topics[contract], from_beginning=True, max_records=1, timeout_s=20)
        )
        assert len(got) == 1, contract
        assert contracts.decode(contract, contracts.encode(got[0])) == value


def test_topics_have_partitions_compaction_and_retention(settings: Settings) -> None:
    admin = admin_client(settings, settings.kafka.bootstrap_servers)
    md = admin.list_topics(timeout=10)
    assert len(md.topics[settings.topics.events].partitions) == settings.topics.partitions
    resources = [
        ConfigResource("topic", settings.topics.docs),
        ConfigResource("topic", settings.topics.events),
    ]
    configs = {r.name: f.result() for r, f in admin.describe_configs(resources).items()}
    assert configs[settings.topics.docs]["cleanup.policy"].value == "compact"
    assert configs[settings.topics.events]["retention.ms"].value == "-1"


def test_sdk_validates_before_sending_and_subscribes_async(settings: Settings) -> None:
    client = LiveLearnClient(settings)
    with pytest.raises(contracts.ContractError):
        client.send_event("e1", features={"x": [1, 2]})  # type: ignore[dict-item]
    client.send_event("e1", features={"x": 1.0}, label=1, wait=True)
    client.send_label("e0", 0, wait=True)
    client.upsert_doc("d1", "text", title="t", meta={"a": 1}, wait=True)
    client.delete_doc("d1", wait=True)

    async def first_two() -> list[dict[str, object]]:
        out = []
        async for value in client.asubscribe(
            settings.topics.events, from_beginning=True, timeout_s=20
        ):
            out.append(value)
            if len(out) == 2:
                break
        return out

    events = asyncio.run(first_two())
    assert sorted(e["id"] for e in events) == ["e0", "e1"]
    docs = list(client.subscribe("docs", from_beginning=True, max_records=2, timeout_s=20))
    assert [d["op"] for d in docs] == ["upsert", "delete"]


def _cli(
    settings: Settings, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
        input=None if stdin is None else stdin.decode(),
    )


def test_cli_produce_reports_rate_and_tail_reads_back(settings: Settings, tmp_path: Path) -> None:
    n = 20_000
    path = tmp_path / "events.jsonl"
    with path.open("wb") as f:
        for i in range(n):
            f.write(orjson.dumps({"id": f"e{i}", "features": {"x": i % 7}, "label": i % 2}) + b"\n")
        f.write(b'{"id": "bad", "features": {"x": [1]}}\n')
    done = _cli(settings, "produce", str(path), "--topic", settings.topics.events)
    assert done.returncode == 2, done.stderr  # 2: something was rejected
    assert f"produced {n} records" in done.stderr and "records/s" in done.stderr
    assert "1 rejected" in done.stderr
    tail = _cli(
        settings,
        "tail",
        settings.topics.events,
        "--from-beginning",
        "--max",
        "3",
        "--timeout",
        "20",
    )
    assert tail.returncode == 0, tail.stderr
    lines = [orjson.loads(line) for line in tail.stdout.splitlines()]
    assert len(lines) == 3 and all(line["id"].startswith("e") for line in lines)
    topics = _cli(settings, "topics")
    assert f"{settings.topics.events}\t3 partitions" in topics.stdout


def test_embedded_kafka_keeps_data_and_port_across_restart(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path, broker_settings())
    if broker.resolve_kind() != "kafka":
        pytest.skip("needs Java 17+ (Tansu keeps nothing on disk)")
    bootstrap = broker.start()
    try:
        prod = producer(Settings(), bootstrap)
        from confluent_kafka.admin import NewTopic

        admin = admin_client(Settings(), bootstrap)
        admin.create_topics([NewTopic("keep", 1, 1)])["keep"].result(30)
        prod.produce("keep", b"survives", key=b"k")
        assert prod.flush(30) == 0
        broker.stop()
        assert broker.running() is None
        assert broker.start() == bootstrap
        from confluent_kafka import Consumer

        c = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "g", "auto.offset.reset": "earliest"}
        )
        c.subscribe(["keep"])
        msg = None
        for _ in range(60):
            msg = c.poll(1)
            if msg is not None and msg.error() is None:
                break
        c.close()
        assert msg is not None and msg.value() == b"survives"
    finally:
        broker.stop()


def test_tansu_fallback_starts_and_says_it_keeps_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = LocalBroker(tmp_path, BrokerSettings(kind="tansu"))
    with caplog.at_level("WARNING"):
        bootstrap = broker.start()
    try:
        assert "keeps NOTHING on disk" in caplog.text
        settings = Settings()
        from streams.topics import ensure_topics, topic_specs

        created = ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
        assert "events" in created
    finally:
        broker.stop()
