"""Meeting other tools where they are: a real Schema Registry (Apicurio, Confluent-compatible
API) and the OpenAI Python client against the worker's ``/v1`` endpoints.

One registry and one worker serve the whole module: the worker registers the contracts at
start, reads wire-format and plain JSON records, and answers chat completions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest

from streams import contracts
from streams.kafka import admin_client, flush_or_raise, producer
from streams.schema_registry import (
    IncompatibleSchemaError,
    SchemaRegistryClient,
    frame,
    register_contracts,
    subject_for,
)
from streams.sdk import LiveLearnClient
from streams.settings import SchemaRegistrySettings, Settings
from streams.topics import ensure_topics, topic_specs
from tests.conftest import make_settings
from tests.integration.helpers import wait_predicted
from tests.integration.registry import ApicurioRegistry
from tests.integration.worker import WorkerProcess

openai = pytest.importorskip("openai")

TOKEN = "chat-s3cret"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApicurioRegistry]:
    r = ApicurioRegistry(tmp_path_factory.mktemp("registry") / "registry.log").start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def env_settings(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, registry: ApicurioRegistry
) -> Settings:
    s = make_settings(
        tmp_path_factory.mktemp("compat"), kafka_bootstrap,
        schema_registry=SchemaRegistrySettings(url=registry.url, dialect="draft-07"),
    )  # fmt: skip
    ensure_topics(admin_client(s, kafka_bootstrap), topic_specs(s.topics))
    return s


@pytest.fixture(scope="module")
def worker(env_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    env = {
        "LIVELEARN_SCHEMA_REGISTRY__URL": env_settings.schema_registry.url,
        # Apicurio 2.x checks compatibility with a draft-07 validator (everit).
        "LIVELEARN_SCHEMA_REGISTRY__DIALECT": "draft-07",
        "LIVELEARN_WEB__TOKEN": TOKEN,
        "LIVELEARN_WEB__MAX_REQUEST_BYTES": "4096",
    }
    w = WorkerProcess(env_settings, tmp_path_factory.mktemp("w") / "worker.log", env).start()
    yield w
    w.stop()


def wire_settings(s: Settings) -> Settings:
    return s.model_copy(
        update={"schema_registry": s.schema_registry.model_copy(update={"wire_format": True})}
    )  # fmt: skip


def test_contracts_are_subjects_and_an_incompatible_change_is_refused(
    env_settings: Settings, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = SchemaRegistryClient(env_settings.schema_registry.url)
    topics = env_settings.topics.by_contract()
    ids = {c: client.latest_id(subject_for(t)) for c, t in topics.items()}  # the worker's
    assert len(set(ids.values())) == len(ids)  # one schema per contract
    again = register_contracts(client, env_settings)  # unchanged contracts: same ids
    assert {c: i for c, (_s, i) in again.items()} == ids
    assert client._request("GET", f"/config/{subject_for(topics['events'])}") == {
        "compatibilityLevel": "BACKWARD"
    }
    original = contracts.schema

    def changed(contract: str, version: int = 1) -> dict[str, Any]:
        s = original(contract, version)
        if contract != "events":
            return s
        return {**s, "properties": {**s["properties"], "id": {"type": "integer"}}}

    monkeypatch.setattr(contracts, "schema", changed)
    with pytest.raises(IncompatibleSchemaError, match="contract 'events' v1 is incompatible"):
        register_contracts(client, env_settings)
    assert client.latest_id(subject_for(topics["events"])) == ids["events"]  # still v1


def test_agents_read_wire_format_and_plain_json_and_dead_letter_bad_framing(
    env_settings: Settings, worker: Any
) -> None:
    s = env_settings
    with LiveLearnClient(wire_settings(s)) as wire, LiveLearnClient(s) as plain:
        for i in range(5):
            wire.send_event(f"w{i}", features={"x": float(i)})
            plain.send_event(f"p{i}", features={"x": float(i)})
        wire.flush()
        plain.flush()
    events_id = SchemaRegistryClient(s.schema_registry.url).latest_id(subject_for(s.topics.events))
    docs_id = SchemaRegistryClient(s.schema_registry.url).latest_id(subject_for(s.topics.docs))
    prod = producer(s, s.kafka.bootstrap_servers)
    body = b'{"id": "bad1", "features": {"x": 1.0}}'
    prod.produce(s.topics.events, frame(999_999, body), key=b"bad1")
    prod.produce(s.topics.events, b"\x00\x00\x01", key=b"bad2")
    prod.produce(s.topics.events, frame(docs_id, body), key=b"bad1")  # another topic's schema
    flush_or_raise(prod, 30)
    assert events_id != docs_id
    seen = wait_predicted(s, {f"w{i}" for i in range(5)} | {f"p{i}" for i in range(5)})
    assert "bad1" not in seen
    with closing(LiveLearnClient(s)) as c:
        dead = list(c.subscribe(s.topics.dlq(s.topics.events), True, timeout_s=60, max_records=3))
    reasons = sorted(d["error"] for d in dead)
    assert len(reasons) == 3, reasons
    assert any("unknown schema id 999999" in r for r in reasons)
    assert any("shorter than its 5-byte header" in r for r in reasons)
    assert any(f"schema id {docs_id} is registered under" in r for r in reasons)


def _chat(base: str, key: str = TOKEN) -> Any:
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)


def test_openai_client_gets_cited_answers_streamed_or_not(
    env_settings: Settings, worker: Any
) -> None:
    s = env_settings
    with LiveLearnClient(wire_settings(s)) as ll:  # the docs agent reads the wire format too
        ll.upsert_doc("kafka-log", "Kafka keeps an append-only log of records in partitions.",
                      title="kafka", wait=True)  # fmt: skip
    client = _chat(f"http://127.0.0.1:{worker.web_port}/v1")
    question = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What does Kafka keep in partitions?"}]  # fmt: skip
    deadline = time.monotonic() + 120
    while True:  # until the doc is indexed
        reply = client.chat.completions.create(model="livelearn", messages=question)
        contexts = (reply.model_extra or {}).get("contexts") or []
        if any(c["doc_id"] == "kafka-log" for c in contexts) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [c["doc_id"] for c in contexts] == ["kafka-log"], contexts
    content = reply.choices[0].message.content or ""
    assert "append-only log" in content and "[1]" in content
    assert "Sources: [1] kafka-log" in content
    assert reply.choices[0].finish_reason == "stop" and reply.model == "extractive"

    chunks = list(client.chat.completions.create(model="livelearn", messages=question,
                                                 stream=True))  # fmt: skip
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == content
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 2
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [c["doc_id"] for c in (chunks[-1].model_extra or {})["contexts"]] == ["kafka-log"]

    assert [m.id for m in client.models.list()] == ["extractive"]


def test_chat_endpoint_has_the_same_auth_and_limits(worker: Any) -> None:
    base = f"http://127.0.0.1:{worker.web_port}/v1"
    user = [{"role": "user", "content": "What is Kafka?"}]
    with pytest.raises(openai.AuthenticationError):
        _chat(base, "wrong").chat.completions.create(model="x", messages=user)
    with pytest.raises(openai.AuthenticationError):
        _chat(base, "wrong").models.list()
    client = _chat(base)
    with pytest.raises(openai.BadRequestError, match="no user message"):
        client.chat.completions.create(model="x", messages=[{"role": "system", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="greater than the maximum"):
        client.chat.completions.create(model="x", messages=user, extra_body={"k": 500})
    with pytest.raises(openai.APIStatusError) as too_big:
        client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "x" * 5000}]
        )
    assert too_big.value.status_code == 413
