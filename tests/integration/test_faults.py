"""Faults, load and bad input: nothing acknowledged is lost (issue 9).

Each test injects one fault into a running worker (a real ``livelearn worker`` child process,
real Kafka, real milvus-lite) and then checks the outputs exactly: the chunks in Milvus
against the chunker run over the final version of every document, a prediction for every
event id, every label learned once (the learner's checkpoint), every bad record in its
dead-letter topic with a reason, and the consumer groups' committed offsets.

milvus-lite keeps one process per data directory (a file lock), so where the test must read
the collection while a worker runs, or where two workers must share one collection, milvus-lite
runs as a Milvus *server* (``python -m milvus_lite server``, gRPC, the same protocol and the
same ``http://`` URI as a real Milvus): that is also how a Milvus outage is injected, by killing
the server process and starting it again on the same port.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from river import datasets

from streams import status
from streams.broker import LocalBroker, free_port
from streams.kafka import admin_client, producer
from streams.sdk import LiveLearnClient
from streams.settings import ModelSettings, Settings
from streams.topics import ensure_topics, topic_specs
from tests.conftest import broker_settings, make_settings
from tests.integration.helpers import (
    collection_state,
    expected_chunks,
    group_lag,
    stdlib_corpus,
    wait_caught_up,
)
from tests.integration.helpers import wait_checkpoint as _wait_checkpoint
from tests.integration.helpers import wait_predicted as _wait_predicted
from tests.integration.worker import WorkerProcess
from trainers.online.learner import OnlineLearner
from trainers.online.state import load_checkpoint

CHUNK_TOKENS, OVERLAP = 64, 16
ROWS = list(datasets.Phishing())


# -- helpers ------------------------------------------------------------------------------


def _settings(data_dir: Path, bootstrap: str, partitions: int = 3, **models: Any) -> Settings:
    s = make_settings(
        data_dir, bootstrap, partitions=partitions,
        models=ModelSettings(chunk_tokens=CHUNK_TOKENS, chunk_overlap=OVERLAP, **models),
    )  # fmt: skip
    ensure_topics(admin_client(s, bootstrap), topic_specs(s.topics))
    return s


def _expected(docs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return expected_chunks(docs.values(), CHUNK_TOKENS, OVERLAP)


def _committed(settings: Settings, group: str, topic: str) -> int:
    """Records of ``topic`` the group has committed (the sum of its committed offsets)."""
    return sum(status.group_lag(settings, settings.kafka.bootstrap_servers, group, topic)
               .committed.values())  # fmt: skip


def _records(settings: Settings, topic: str, timeout_s: float = 3.0) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the beginning (read until ``timeout_s`` without one)."""
    client = LiveLearnClient(settings)
    return list(client.subscribe(topic, from_beginning=True, timeout_s=timeout_s))


def _dead_letters(settings: Settings, topic: str) -> list[dict[str, Any]]:
    return _records(settings, settings.topics.dlq(topic))


def _wait_logged(worker: WorkerProcess, text: str, times: int = 1, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while worker.log_path.read_text(errors="replace").count(text) < times:
        assert time.monotonic() < deadline, f"{text!r} not logged {times} times by the worker"
        time.sleep(0.5)


class MilvusServer:
    """milvus-lite as a Milvus server process owning ``data_dir``; clients use :attr:`uri`.

    The port is kept across :meth:`kill` and :meth:`start`, as a restarted Milvus keeps its
    address, so clients reconnect to the same URI.
    """

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60) -> MilvusServer:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"milvus-lite server not up: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """kill -9: the server is gone at once, mid-request for whoever is talking to it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # its clean shutdown: flush and unlock
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


@pytest.fixture
def milvus_server(tmp_path: Path) -> Iterator[MilvusServer]:
    server = MilvusServer(tmp_path / "milvus-server", tmp_path / "milvus-server.log").start()
    yield server
    server.stop()


# -- 1. the broker stops and starts under load ---------------------------------------------


def test_broker_restart_under_load(tmp_path: Path) -> None:
    """A test-owned Kafka (data on disk, same port after a restart) is stopped for a while as
    docs and labelled events stream in; the worker reconnects by itself and, in the end,
    Milvus holds exactly the expected chunks, every event has a prediction and every label
    was learned once."""
    broker = LocalBroker(tmp_path, broker_settings())
    bootstrap = broker.start()
    worker: WorkerProcess | None = None
    try:
        s = _settings(tmp_path / "data", bootstrap, checkpoint_every_records=100)
        # The test's own producer waits out the outage however long a loaded machine takes to
        # restart the broker (its records timed out once after the 120 s default); what is
        # tested is the worker, which keeps the default.
        patient = s.kafka.model_copy(update={"delivery_timeout_ms": 600_000})
        client = LiveLearnClient(s.model_copy(update={"kafka": patient}))
        worker = WorkerProcess(s, tmp_path / "worker.log").start()
        docs = stdlib_corpus(120, min_chars=150)
        outage: dict[str, float] = {}

        def restart() -> None:
            started = time.monotonic()
            broker.stop()
            outage["stopped_after"] = time.monotonic() - started
            time.sleep(5)
            assert broker.start() == bootstrap  # the port is kept: clients reconnect to it
            outage["back_at"] = time.monotonic()
            outage["down_s"] = outage["back_at"] - started

        def produce(tick: int) -> None:  # 10 docs/s and 100 events/s
            if tick < len(docs):
                client.produce("docs", docs[tick])
            for i in range(tick * 10, min(len(ROWS), tick * 10 + 10)):
                x, y = ROWS[i]
                client.send_event(f"p{i}", features=x, label=y)

        restarter = threading.Thread(target=restart)
        started = time.monotonic()
        for tick in range(125):  # ~12 s of steady load ...
            if tick == 40:  # ... and once the worker is mid-stream, the broker goes down
                client.flush()
                _wait_predicted(s, {f"p{i}" for i in range(200)})
                restarter.start()
                started = time.monotonic() - tick * 0.1
            produce(tick)
            time.sleep(max(0.0, started + (tick + 1) * 0.1 - time.monotonic()))
        restarter.join(120)
        assert "down_s" in outage, "the broker did not come back"
        client.flush(120)
        wait_caught_up(s, f"{s.kafka.group_prefix}-worker", s.topics.docs, timeout_s=120)
        predicted = _wait_predicted(s, {f"p{i}" for i in range(len(ROWS))})
        _wait_checkpoint(s, len(ROWS))
        caught_up_s = time.monotonic() - outage["back_at"]
        assert worker.proc is not None and worker.proc.poll() is None  # never gave up
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
    state = load_checkpoint(s.data_dir / "online" / f"{s.models.name}.ckpt")
    assert state is not None and sum(state["offsets"].values()) == len(ROWS)
    assert OnlineLearner.restore(state["learner"]).n_learned == len(ROWS)  # each label once
    assert collection_state(s.milvus_uri, s.milvus.collection) == _expected(
        {d["id"]: d for d in docs}
    )
    dupes = sum(len(v) - 1 for v in predicted.values())
    print(
        f"\nbroker restart: down {outage['down_s']:.1f} s (stopping took "
        f"{outage['stopped_after']:.1f} s); everything caught up {caught_up_s:.1f} s after it "
        f"was back; {len(predicted)} events predicted ({dupes} twice), {len(docs)} docs indexed"
    )


# -- 2. Milvus goes away -------------------------------------------------------------------


def test_milvus_outage_commits_nothing_unwritten(
    tmp_path: Path, kafka_bootstrap: str, milvus_server: MilvusServer
) -> None:
    """The Milvus server is killed (kill -9) mid-stream and comes back 10 s later on the same
    address: meanwhile the docs group commits nothing past what was written before, nothing is
    dead-lettered, a question asked then is answered once Milvus is back, and the collection
    ends up exactly right."""
    s = _settings(tmp_path, kafka_bootstrap, learner=False)
    group = f"{s.kafka.group_prefix}-worker"
    client = LiveLearnClient(s)
    env = {"LIVELEARN_MILVUS__URI": milvus_server.uri}
    worker = WorkerProcess(s, tmp_path / "worker.log", env).start()
    docs = stdlib_corpus(140, min_chars=150)
    before, during = docs[:70], docs[70:]
    final = {d["id"]: d for d in docs}
    try:
        for d in before:
            client.produce("docs", d)
        for d in before[:10]:  # an update and a delete before the outage, to be kept as they are
            final[d["id"]] = dict(d, text=f"REVISED: {d['text'][:200]}")
            client.produce("docs", final[d["id"]])
        client.delete_doc(before[10]["id"])
        del final[before[10]["id"]]
        client.flush()
        wait_caught_up(s, group, s.topics.docs)
        written = _committed(s, group, s.topics.docs)  # caught up: all of it is in Milvus

        milvus_server.kill()
        killed = time.monotonic()
        for d in during:
            client.produce("docs", d)
        client.flush()
        question = {"id": "q-outage", "question": during[0]["text"][:100], "k": 1}
        client.produce("queries", question, wait=True)
        committed, lags = [], []
        while time.monotonic() - killed < 10:
            committed.append(_committed(s, group, s.topics.docs))
            lags.append(group_lag(s, group, s.topics.docs))
            time.sleep(0.5)
        # Nothing can be written while Milvus is down, so nothing after `written` is committed.
        assert max(committed) <= written, (committed, written)
        assert min(lags) >= len(during), lags

        milvus_server.start()
        restarted = time.monotonic()
        wait_caught_up(s, group, s.topics.docs, timeout_s=120)
        recovered_s = time.monotonic() - restarted
        answers = [
            a for a in client.subscribe("answers", from_beginning=True, timeout_s=60, max_records=1)
        ]
        assert [a["id"] for a in answers] == ["q-outage"] and answers[0]["contexts"]
        # A server, read live. Once, in a CI run, the first read right after the catch-up
        # missed 196 of 363 chunks (some written before the outage, some after) that the
        # collection's files held at the end: read again for up to 30 s, and report it.
        expected, first_missing = _expected(final), None
        deadline = time.monotonic() + 30
        while (state := collection_state(milvus_server.uri, s.milvus.collection)) != expected:
            if first_missing is None:
                first_missing = len(set(expected) - set(state))
            if time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        worker.stop()
    missing = sorted(set(expected) - set(state))
    assert state == expected, (
        f"{len(missing)} chunks missing (e.g. {missing[:3]}), "
        f"{len(set(state) - set(expected))} extra, "
        f"{sum(state[k] != expected[k] for k in set(state) & set(expected))} stale; "
        f"dead letters: {len(_dead_letters(s, s.topics.docs))}"
    )
    assert _dead_letters(s, s.topics.docs) == [] and _dead_letters(s, s.topics.queries) == []
    retries = worker.log_path.read_text(errors="replace").count("retrying in")
    assert retries > 0
    print(
        f"\nmilvus outage: 10 s down, committed held at {max(committed)}/{written} records, "
        f"lag {min(lags)}..{max(lags)}; caught up {recovered_s:.1f} s after the restart; "
        f"{retries} retries logged; first read after the catch-up: "
        f"{'exact' if first_missing is None else f'{first_missing} chunks missing'}"
    )


_HOLD_LOCK = """
import sys, time
from milvus_lite.db import MilvusLite
db = MilvusLite(sys.argv[1])
print("locked", flush=True)
time.sleep(3600)
"""


def test_milvus_lite_file_held_by_another_process(tmp_path: Path, kafka_bootstrap: str) -> None:
    """The embedded setup (a milvus-lite file): another process holds the file's lock when
    the worker starts. The worker waits with backoff, commits and dead-letters nothing, and
    indexes everything once the lock is released."""
    s = _settings(tmp_path, kafka_bootstrap, learner=False)
    group = f"{s.kafka.group_prefix}-worker"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, s.milvus_uri], stdout=subprocess.PIPE
    )
    worker: WorkerProcess | None = None
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        worker = WorkerProcess(s, tmp_path / "worker.log").start()
        client = LiveLearnClient(s)
        docs = stdlib_corpus(40, min_chars=150)
        for d in docs:
            client.produce("docs", d)
        client.flush()
        _wait_logged(worker, "vector store unavailable", times=3)  # tried, backed off, tried
        assert group_lag(s, group, s.topics.docs) in (-1, len(docs))  # nothing committed
        holder.kill()
        holder.wait(10)
        wait_caught_up(s, group, s.topics.docs, timeout_s=120)
    finally:
        holder.kill()
        if worker is not None:
            worker.stop()
    assert _dead_letters(s, s.topics.docs) == []
    assert collection_state(s.milvus_uri, s.milvus.collection) == _expected(
        {d["id"]: d for d in docs}
    )


# -- 3. workers join and leave the group ---------------------------------------------------


def _steady_load(
    client: LiveLearnClient, docs: list[dict[str, Any]], questions: list[dict[str, Any]],
    seconds: float,
) -> threading.Thread:  # fmt: skip
    """Produce ``docs`` and ``questions`` evenly over ``seconds`` in a background thread."""

    def run() -> None:
        items: list[tuple[str, dict[str, Any]]] = [("docs", d) for d in docs]
        items += [("queries", q) for q in questions]
        random.Random(5).shuffle(items)
        started = time.monotonic()
        for i, (contract, value) in enumerate(items):
            client.produce(contract, value)
            time.sleep(max(0.0, started + (i + 1) * seconds / len(items) - time.monotonic()))
        client.flush(60)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_workers_join_and_leave_mid_stream(
    tmp_path: Path, kafka_bootstrap: str, milvus_server: MilvusServer
) -> None:
    """A second worker joins the group mid-stream and later leaves (SIGTERM). Both index into
    one collection (a Milvus server; a milvus-lite file would allow one worker only). After
    each change the group's lag reaches 0 on docs and queries (no partition stuck), every
    question is answered, the answers to a replayed question are the same, and the
    collection holds exactly the expected chunks: no lost, half-written or stale document."""
    s = _settings(tmp_path, kafka_bootstrap, learner=False)
    group = f"{s.kafka.group_prefix}-worker"
    client = LiveLearnClient(s)
    # An exact index: a server's default (AUTOINDEX, HNSW here) is approximate, and a question
    # answered once from the write buffer and once from an indexed segment may differ.
    env = {"LIVELEARN_MILVUS__URI": milvus_server.uri, "LIVELEARN_MILVUS__INDEX_TYPE": "FLAT"}
    corpus = stdlib_corpus(140, min_chars=150)
    # The questions are about the "base" docs, indexed before any membership change and
    # filtered on, so that an answer given twice (a replay after a rebalance) must be equal.
    base = [dict(d, source="base") for d in corpus[:30]]
    live = [dict(d, source="live") for d in corpus[30:]]
    rng = random.Random(9)
    # Dense search: BM25's term statistics are collection-wide and the collection grows between
    # a question's first answer and its replay, so a hybrid answer's scores may move (CI saw it).
    questions = [
        {"id": f"q{i}", "question": rng.choice(base)["text"][:120], "k": 2,
         "filter": {"source": "base"}, "mode": "dense"}
        for i in range(40)
    ]  # fmt: skip
    first = WorkerProcess(s, tmp_path / "worker-a.log", env).start()
    second = WorkerProcess(s, tmp_path / "worker-b.log", env)
    settled: list[float] = []

    def settle() -> None:  # the lag of every partition reaches 0: none is stuck
        started = time.monotonic()
        for topic in (s.topics.docs, s.topics.queries):
            wait_caught_up(s, group, topic, timeout_s=120)
        settled.append(time.monotonic() - started)

    try:
        for d in base:
            client.produce("docs", d)
        client.flush()
        wait_caught_up(s, group, s.topics.docs)

        load = _steady_load(client, live[:60], questions[:20], seconds=12)
        second.start()  # joins while the load runs: a rebalance mid-stream
        load.join()
        settle()
        load = _steady_load(client, live[60:], questions[20:], seconds=10)
        time.sleep(3)
        second.stop()  # leaves mid-stream: its partitions go back to the first worker
        load.join()
        settle()
        state = collection_state(milvus_server.uri, s.milvus.collection)
    finally:
        second.stop()
        first.stop()
    # The second worker was given partitions of docs (faust logs its assignment as a table).
    assigned = re.search(
        rf"\| {re.escape(s.topics.docs)} +\| \{{\d", second.log_path.read_text(errors="replace")
    )
    assert assigned, "the second worker never got a docs partition"
    assert state == _expected({d["id"]: d for d in base + live})
    answers: dict[str, list[dict[str, Any]]] = {}
    for answer in _records(s, s.topics.answers):
        answer.pop("latency_ms")
        answers.setdefault(answer["id"], []).append(answer)
    assert set(answers) == {q["id"] for q in questions}
    different = [(same[0], a) for same in answers.values() for a in same[1:]
                 if not _same_answer(a, same[0])]  # fmt: skip
    assert not different, f"a replayed answer differs: {different[:2]}"
    assert _dead_letters(s, s.topics.docs) == [] and _dead_letters(s, s.topics.queries) == []
    replays = sum(len(v) - 1 for v in answers.values())
    print(
        f"\nrebalances: {len(base) + len(live)} docs, {len(questions)} questions, "
        f"{replays} answers replayed; lag 0 on every partition {settled[0]:.1f} s after the "
        f"load with the join ended, {settled[1]:.1f} s after the one with the leave"
    )


def _same_answer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same answer and contexts; scores equal up to float noise (the question embedded in a
    batch of other length pads differently, which moves the last digits)."""

    def key(answer: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(c["doc_id"], c["chunk"], c["text"]) for c in answer["contexts"]]

    return (
        a["answer"] == b["answer"]
        and key(a) == key(b)
        and all(
            abs(x["score"] - y["score"]) < 1e-4
            for x, y in zip(a["contexts"], b["contexts"], strict=True)
        )
    )


# -- 4. bad input under load ---------------------------------------------------------------

TEN_MB = 10 * 1024 * 1024
PAIRS = 3  # rounds of clean events, each followed by a round with garbage


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _bad_docs() -> list[tuple[bytes, bytes | None]]:
    """(key, value) of records that break the docs contract in every way we know of."""
    good = orjson.dumps({"id": "cut", "op": "upsert", "text": "a complete sentence " * 20})
    wide = "\U0001f642" * 200  # 200 characters (within the schema) but 800 bytes of UTF-8
    return [
        (b"m", b'{"id": "m", "op": "upsert", "text": }'),  # malformed
        (b"cut", good[: len(good) // 2]),  # truncated
        (b"12", b'{"id": 12, "op": "upsert", "text": "numbers are not ids"}'),
        (b"t", b'{"id": "t", "op": "upsert", "text": 42}'),
        (b"op", b'{"id": "op", "op": "rename", "text": "no such op"}'),
        (b"anon", b'{"op": "upsert", "text": "who am I?"}'),  # no id
        (b"empty", b'{"id": "empty", "op": "upsert"}'),  # an upsert without text
        (b"huge", orjson.dumps({"id": "huge", "op": "upsert", "text": "x" * TEN_MB})),
        (b"bin", b'{"id": "bin", "op": "upsert", "text": "\xff\xfe\xfd"}'),  # not UTF-8
        (b"deep", orjson.dumps({"id": "deep", "op": "upsert", "text": "t", "meta": _nested(12)})),
        (b"bomb", b"[" * 5000 + b"]" * 5000),  # nesting past the JSON parser's limit
        (b"list", b'["id", "op", "text"]'),  # JSON, but not an object
        (wide.encode(), orjson.dumps({"id": wide, "op": "upsert", "text": "a valid doc?"})),
        (b"tomb", None),  # a tombstone: no value at all
        (b"other", orjson.dumps({"id": "mismatch", "op": "upsert", "text": "key != id"})),
    ]


def _bad_events() -> list[tuple[bytes, bytes | None]]:
    """(key, value) of records that break the events contract in every way we know of."""
    good = orjson.dumps({"id": "cut", "features": {"x": 1.5, "y": 2.5}, "label": True})
    return [
        (b"m", b'{"id": "m", "features": {"x": }'),
        (b"cut", good[: len(good) // 2]),
        (b"12", b'{"id": 12, "features": {"x": 1}}'),
        (b"list", b'{"id": "list", "features": {"x": [1, 2]}}'),
        (b"obj", b'{"id": "obj", "features": {"x": 1}, "label": {"y": true}}'),
        (b"anon", b'{"features": {"x": 1}}'),
        (b"nothing", b'{"id": "nothing"}'),  # neither features, text nor label
        (b"huge", orjson.dumps({"id": "huge", "text": "x" * TEN_MB})),
        (b"bin", b'{"id": "bin", "text": "\xc3\x28"}'),
        (b"deep", orjson.dumps({"id": "deep", "features": _nested(12)})),
        (b"bomb", b"{" * 3000),
        (b"nan", b'{"id": "nan", "features": {"x": NaN}}'),
        (b"inf", b'{"id": "inf", "features": {"x": 1e999}}'),
        (b"tomb", None),
        (b"other", orjson.dumps({"id": "mismatch", "features": {"x": 1}})),
    ]


class _RawProducer:
    """Produces raw bytes and remembers where each record landed."""

    def __init__(self, settings: Settings) -> None:
        self.prod = producer(settings, settings.kafka.bootstrap_servers)
        self.landed: dict[tuple[str, int, int], bytes | None] = {}
        self.errors: list[str] = []

    def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                self.errors.append(str(err))
            else:
                self.landed[(topic, msg.partition(), msg.offset())] = key

        while True:
            try:
                self.prod.produce(topic, value, key=key, on_delivery=done)
                break
            except BufferError:
                self.prod.poll(0.05)
        self.prod.poll(0)

    def flush(self) -> None:
        assert self.prod.flush(60) == 0 and self.errors == [], self.errors


def _mixed(
    good: list[tuple[bytes, bytes]], bad: list[tuple[bytes, bytes | None]], seed: int
) -> list[tuple[bytes, bytes | None]]:
    """``good`` in order, with ``bad`` scattered among them."""
    out: list[tuple[bytes, bytes | None]] = list(good)
    rng = random.Random(seed)
    for rec in bad:
        out.insert(rng.randrange(len(out) + 1), rec)
    return out


def _good_events(prefix: str, n: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        x, y = ROWS[i % len(ROWS)]
        key = f"{prefix}{i}"
        out.append((key.encode(), orjson.dumps({"id": key, "features": x, "label": y})))
    return out


def _median_pair(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """The median ``(clean, garbage)`` pair by how far garbage exceeds 1.5x clean."""
    return sorted(pairs, key=lambda cg: cg[1] - 1.5 * cg[0])[len(pairs) // 2]


def test_bad_input_under_load_is_dead_lettered_and_costs_the_good_records_little(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """Malformed and truncated JSON, wrong types, missing ids, a 10 MB text, invalid UTF-8,
    nesting bombs, tombstones and more, mixed at ~10% into a stream of good docs and events
    (and valid events whose numeric feature turns into a string):
    each bad record lands in its dead-letter topic with a reason, every good one is processed
    (indexed exactly / predicted and learned once), none takes the slow record-by-record path,
    and the good records take at most 1.5x the time of the same number of good records alone
    (plus half a second for events, two seconds for docs: fixed costs and timing resolution)."""
    s = _settings(tmp_path, kafka_bootstrap, partitions=1)  # one partition: a known order
    group = f"{s.kafka.group_prefix}-worker"
    raw = _RawProducer(s)
    bad_docs, bad_events = _bad_docs(), _bad_events()
    # Events, produced before the worker starts so that the learner meets them as a backlog
    # at full speed: a warm-up, then clean rounds alternating with rounds with ~10% garbage
    # (a slow moment of this shared machine hits both kinds alike).
    n = 4000
    # Valid, but not what the model saw so far: a numeric feature arrives as a string.
    warm = _good_events("w", 500) + [
        (b"odd%d" % i, orjson.dumps({"id": f"odd{i}", "label": y,
                                     "features": {**x, next(iter(x)): "not a number"}}))
        for i, (x, y) in enumerate(ROWS[:10])
    ]  # fmt: skip
    rounds: list[tuple[str, list[tuple[bytes, bytes]]]] = [("warm", warm)]
    for key, value in warm:
        raw.send(s.topics.events, key, value)
    expected_bad = 0
    for r in range(2 * PAIRS):
        kind = "garbage" if r % 2 else "clean"
        good = _good_events(f"r{r}-", n)
        records: list[tuple[bytes, bytes | None]] = list(good)
        if kind == "garbage":
            # ~10%: every kind over and over, but one 10 MB record per round
            junk = [(b"%s-%d-%d" % (k, r, j), v) for j in range(n // 10 // 14)
                    for k, v in bad_events if k != b"huge" or j == 0]  # fmt: skip
            records = _mixed(good, junk, seed=r)
            expected_bad += len(junk)
        rounds.append((kind, good))
        for key, value in records:
            raw.send(s.topics.events, key, value)
    raw.flush()
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    try:
        predicted = _wait_predicted(s, {k.decode() for _, good in rounds for k, _ in good})
        # When the last record of each round was predicted (its micro-batch began).
        ends = [max(min(p["ts"] for p in predicted[k.decode()]) for k, _ in good)
                for _, good in rounds]  # fmt: skip
        took = [ends[i] - ends[i - 1] for i in range(1, len(rounds))]  # clean, garbage, ...
        ratios = sorted(
            garbage / clean for clean, garbage in zip(took[::2], took[1::2], strict=True)
        )

        # Docs: the same texts again and again under other ids, clean rounds alternating
        # with rounds with every bad doc mixed in (the 10 MB one in the first only).
        corpus = stdlib_corpus(60, min_chars=150)
        docs: dict[str, dict[str, Any]] = {}
        docs_took: list[tuple[float, float]] = []  # (clean, garbage) per pair
        clean_s = 0.0
        for r in range(-1, 2 * PAIRS):
            kind = "warm" if r < 0 else "garbage" if r % 2 else "clean"
            batch = [dict(d, id=f"{kind}{r}:{d['id']}") for d in (corpus[:10] if r < 0
                                                                 else corpus)]  # fmt: skip
            docs.update((d["id"], d) for d in batch)
            records = [(d["id"].encode(), orjson.dumps(d)) for d in batch]
            if kind == "garbage":
                junk = [(k, v) for k, v in bad_docs if k != b"huge" or r == 1]
                records = _mixed(records, junk, seed=r)  # type: ignore[arg-type]
            started = time.time()
            for key, value in records:
                raw.send(s.topics.docs, key, value)
            raw.flush()
            wait_caught_up(s, group, s.topics.docs)
            if kind == "clean":
                clean_s = time.time() - started
            elif kind == "garbage":
                docs_took.append((clean_s, time.time() - started))
        _wait_checkpoint(s, len(warm) + 2 * PAIRS * n + expected_bad)
    finally:
        worker.stop()

    print(
        f"\nbad input: events {PAIRS}x{n} good in {sum(took[::2]):.2f} s clean vs "
        f"{sum(took[1::2]):.2f} s with {expected_bad} bad mixed in (per pair x"
        f"{', x'.join(f'{r:.2f}' for r in ratios)}); docs {PAIRS}x{len(corpus)} in "
        f"{sum(c for c, _ in docs_took):.1f} s clean vs {sum(g for _, g in docs_took):.1f} s "
        f"with {len(bad_docs)} bad (per pair "
        f"{', '.join(f'{c:.1f}/{g:.1f} s' for c, g in docs_took)})"
    )
    # Every bad record is dead-lettered with its reason, and only the bad ones.
    for topic, bad in ((s.topics.docs, bad_docs), (s.topics.events, bad_events)):
        dead = _dead_letters(s, topic)
        where = {(d["topic"], d["partition"], d["offset"]) for d in dead}
        landed_bad = {
            place for place, key in raw.landed.items()
            if place[0] == topic and any(key is not None and key.startswith(k) for k, _ in bad)
        }  # fmt: skip
        assert len(dead) == len(where) == len(landed_bad), (topic, len(dead), len(landed_bad))
        assert where == landed_bad
        assert all(d["error"].startswith(f"{'docs' if topic == s.topics.docs else 'events'}: ")
                   for d in dead), {d["error"] for d in dead}  # fmt: skip
        assert not [d for d in dead if "processing failed" in d["error"]]  # decoding caught all
        huge = [d for d in dead if d["key"] and d["key"].startswith("huge")]
        assert huge and all(d["raw_truncated"] and "over the" in d["error"] for d in huge)
    log = worker.log_path.read_text(errors="replace")
    assert "record by record" not in log and "learner loop crashed" not in log

    # Every good record was processed: docs indexed exactly, events predicted and learned once.
    assert collection_state(s.milvus_uri, s.milvus.collection) == _expected(docs)
    state = load_checkpoint(s.data_dir / "online" / f"{s.models.name}.ckpt")
    assert state is not None
    assert OnlineLearner.restore(state["learner"]).n_learned == len(warm) + 2 * PAIRS * n

    # The median pair: a slow moment of the machine during one round does not decide. Plus
    # half a second: a round's garbage has a fixed cost (its 10 MB record read, refused and
    # dead-lettered; ~390 dead letters delivered) that does not shrink with a faster
    # machine, where a round of 4,000 good events takes ~0.5 s (x0.94, x1.76, x1.99 once in
    # CI on a 2-core Xeon: +0.0, +0.4, +0.6 s).
    clean, garbage = _median_pair(list(zip(took[::2], took[1::2], strict=True)))
    assert garbage <= 1.5 * clean + 0.5, took
    # Commits come once a second: each docs figure is known to within about a second. The
    # median pair again: one round that a busy moment of the machine doubled (12 s against
    # 5.6 s once, under the whole suite; 2.9 against 2.9 s alone) does not decide.
    clean_s, garbage_s = _median_pair(docs_took)
    assert garbage_s <= 1.5 * clean_s + 2.0, docs_took
