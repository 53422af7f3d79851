"""Poison through the real broker: records valid by the contract but wrong in meaning, forged
control records, and outputs Kafka refuses for a while. Nothing stops, nothing is lost."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from streams import contracts
from streams.kafka import admin_client, producer
from streams.sdk import LiveLearnClient
from streams.settings import Settings
from streams.trainer_worker import TrainerWorker, manual_job
from tests.integration.test_serving import ROWS, _settings
from tests.integration.worker import WorkerProcess
from trainers.online.learner import OnlineLearner
from trainers.online.state import load_checkpoint


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _collect(client: LiveLearnClient, topic: str, want: set[str], timeout_s: float,
             key: str = "id") -> list[dict[str, Any]]:  # fmt: skip
    """Records of ``topic`` until every id in ``want`` was seen (or the time is up)."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not want <= seen:
        out = list(client.subscribe(topic, from_beginning=True, timeout_s=3))
        seen = {str(r.get(key)) for r in out}
    return out


def _raw_events(s: Settings, values: list[dict[str, Any]]) -> None:
    prod = producer(s, s.kafka.bootstrap_servers)
    for v in values:
        prod.produce(s.topics.events, orjson.dumps(v), key=v["id"].encode())
    assert prod.flush(30) == 0 and prod.take_failures() == []


def test_poison_records_cost_only_themselves(tmp_path: Path, kafka_bootstrap: str) -> None:
    s = _settings(tmp_path, kafka_bootstrap, serving="batch", text_buckets=1024)
    client = LiveLearnClient(s)
    trainer = TrainerWorker(s, kafka_bootstrap, {"epochs": 4, "batch_size": 32, "seed": 1})
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    good_ids = [f"g{i}" for i in range(600)]
    try:
        _raw_events(s, [{"id": good_ids[i], "features": x, "label": y, "ts": 1.7e9 + i}
                        for i, (x, y) in enumerate(ROWS[:300])])  # fmt: skip
        job = manual_job(s, kafka_bootstrap, "retrain")
        client.produce("training-jobs", job, wait=True)
        final: list[dict[str, Any]] = []
        deadline = time.monotonic() + 240
        while not final and time.monotonic() < deadline:  # "started" comes first
            updates = _collect(client, "model-updates", {job["job_id"]}, 30, key="job_id")
            final = [u for u in updates if u["job_id"] == job["job_id"]
                     and u["status"] in contracts.FINAL_JOB_STATUSES]  # fmt: skip
        assert final and final[-1]["status"] == "promoted", final
        # Wait until the promoted tabular model answers events.
        deadline = time.monotonic() + 90
        probe = 0
        while time.monotonic() < deadline:
            client.send_event(f"probe{probe}", features=ROWS[0][0], wait=True)
            got = _collect(client, "predictions", {f"probe{probe}"}, 20)
            if any(p["id"] == f"probe{probe}" and p["source"] == "batch" for p in got):
                break
            probe += 1
        else:
            raise AssertionError("the batch model never served")

        x0 = ROWS[0][0]
        words = " ".join(f"word{i}" for i in range(50_000))
        poison = [
            {"id": "string-label", "features": x0, "label": "cat"},
            {"id": "huge-number", "features": dict(x0, empty_server_form_handler=1e308)},
            {"id": "fifty-thousand-words", "text": words, "label": True},
            {"id": "five-hundred-keys", "features": {f"k{i}": float(i) for i in range(500)}},
            {"id": "text-to-tabular", "text": "a short text for a model of features"},
        ]
        _raw_events(s, poison)
        _raw_events(s, [{"id": good_ids[i], "features": x, "label": y, "ts": 1.7e9 + i}
                        for i, (x, y) in enumerate(ROWS[300:600], 300)])  # fmt: skip

        handled = {"fifty-thousand-words", "text-to-tabular"}
        preds = _collect(client, "predictions", set(good_ids) | handled, 180)
        dead = _collect(
            client,
            s.topics.dlq(s.topics.events),
            {"string-label", "huge-number", "five-hundred-keys"},
            60,
            key="key",
        )
    finally:
        worker.stop()
        trainer.stop()
        thread.join(30)

    by_id = {p["id"]: p for p in preds}
    assert set(good_ids) | handled <= set(by_id), set(good_ids) - set(by_id)
    for p in preds:  # every output is finite and valid against its contract
        contracts.validate("predictions", p)
        assert _finite(p), p
    assert by_id["text-to-tabular"]["source"] == "online"  # the batch model cannot take text
    assert by_id["g599"]["source"] == "batch"  # and still answers the events after it
    reasons = {d["key"]: d["error"] for d in dead}
    assert "this model's labels are bool" in reasons["string-label"]
    assert "over the magnitude limit" in reasons["huge-number"]
    assert "500 keys, over the 256-key limit" in reasons["five-hundred-keys"]
    assert set(reasons) == {"string-label", "huge-number", "five-hundred-keys"}

    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "thread died" not in log and "loop crashed" not in log  # no restart, no loop
    state = load_checkpoint(s.data_dir / "online" / f"{s.models.name}.ckpt")
    assert state is not None
    learner = OnlineLearner.restore(state["learner"])
    assert learner.n_learned == 600 + 1  # the good labels and the long text's, once each
    assert state["offsets"] == {0: 600 + len(poison) + probe + 1}
    # 50,000 distinct words became at most 1,024 hashed text weights beside the features.
    assert len(learner.model["LogisticRegression"].weights) <= 1024 + len(x0)


def _topic_config(s: Settings, topics: list[str], name: str, value: str | None) -> None:
    """Set (or, with None, remove) one config of ``topics`` on the broker."""
    admin = admin_client(s, s.kafka.bootstrap_servers)
    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    resources = [
        ConfigResource(ConfigResource.Type.TOPIC, t, incremental_configs=[
            ConfigEntry(name, value or "", incremental_operation=op)])
        for t in topics
    ]  # fmt: skip
    for future in admin.incremental_alter_configs(resources).values():
        future.result(30)


def _refuse_writes(s: Settings, topics: list[str], refuse: bool) -> None:
    """Make the broker refuse every write to ``topics`` (INVALID_TIMESTAMP: a record may be
    at most 0 ms older than the broker's clock), or take that back. Nothing refused is
    written, so a record sent again is in the topic once."""
    _topic_config(s, topics, "message.timestamp.before.max.ms", "0" if refuse else None)


def test_outputs_kafka_refuses_are_sent_again_and_land_exactly_once(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    s = _settings(tmp_path, kafka_bootstrap, serving="online")
    client = LiveLearnClient(s)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    outputs = [s.topics.predictions, s.topics.answers]
    try:
        for i, (x, y) in enumerate(ROWS[:50]):
            client.send_event(f"warm{i}", features=x, label=y)
        client.flush()
        _collect(client, "predictions", {"warm49"}, 90)
        _refuse_writes(s, outputs, True)
        events = [f"e{i}" for i in range(200)]
        for i, (x, y) in enumerate(ROWS[50:250]):
            client.send_event(events[i], features=x, label=y)
        queries = [f"q{i}" for i in range(10)]
        for q in queries:
            client.produce("queries", {"id": q, "question": "what does compaction keep?"})
        client.flush()
        time.sleep(15)
        during = {p["id"] for p in client.subscribe("predictions", from_beginning=True,
                                                     timeout_s=3)}  # fmt: skip
        assert not during & set(events)  # nothing got through the outage
        _refuse_writes(s, outputs, False)
        preds = _collect(client, "predictions", set(events), 120)
        answers = _collect(client, "answers", set(queries), 120)
    finally:
        worker.stop()
    counts = Counter(p["id"] for p in preds if p["id"] in set(events))
    assert set(counts) == set(events) and set(counts.values()) == {1}, counts.most_common(3)
    answered = Counter(a["id"] for a in answers)
    assert set(answered) == set(queries) and set(answered.values()) == {1}, answered
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "failed delivery" in log and "sending them again" in log  # refused, then resent
    assert "thread died" not in log
    state = load_checkpoint(s.data_dir / "online" / f"{s.models.name}.ckpt")
    assert state is not None and state["offsets"] == {0: 250}


def test_a_forged_promotion_is_dead_lettered_and_moves_nothing(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    s = _settings(tmp_path, kafka_bootstrap, serving="online")
    client = LiveLearnClient(s)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    try:
        for i, (x, y) in enumerate(ROWS[:100]):
            client.send_event(f"a{i}", features=x, label=y)
        client.flush()
        _collect(client, "predictions", {"a99"}, 90)
        forged = {"job_id": "forged", "model_version": "../../planted", "kind": "retrain",
                  "status": "promoted", "metrics": {}, "baseline_metrics": None,
                  "artifact": None, "data": {"topic": s.topics.events,
                                             "offsets": {"0": [0, 10**15]}},
                  "ts": time.time(), "model": s.models.name}  # fmt: skip
        prod = producer(s, s.kafka.bootstrap_servers)
        prod.produce(s.topics.model_updates, orjson.dumps(forged), key=b"forged")
        prod.produce(s.topics.model_updates, b'{"job_id": 7, "status": "promoted"}', key=b"x")
        assert prod.flush(30) == 0 and prod.take_failures() == []
        dead = _collect(client, s.topics.dlq(s.topics.model_updates), {"forged", "x"}, 60,
                        key="key")  # fmt: skip
        for i, (x, y) in enumerate(ROWS[100:200], 100):  # the learner goes on
            client.send_event(f"a{i}", features=x, label=y)
        client.flush()
        _collect(client, "predictions", {"a199"}, 90)
    finally:
        worker.stop()
    reasons = {d["key"]: d["error"] for d in dead}
    assert "not a promoted version" in reasons["forged"]
    assert reasons["x"].startswith("model-updates: ")
    state = load_checkpoint(s.data_dir / "online" / f"{s.models.name}.ckpt")
    assert state is not None
    assert state["policy"].trained_offsets == {} and state["policy"].serving_version is None
    assert state["offsets"] == {0: 200}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_unlabelled_large_texts_stay_within_the_byte_budget(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """40k events with ~1 kB texts and no labels, in chunks of 10k: the label store keeps at
    most its budget (8 MB here, full after ~7k events; the texts alone are ~44 MB), the
    checkpoint carries the budget and not the stream, and once the store is full the worker's
    memory stops growing: the second 20k events add under 64 MB to its RSS, the whole run
    under 512 MB. (It was 100k events and 32 MB, ~3.7 min in CI: the same shape, 4× cheaper;
    the steady stream's own growth is checked by ``test_memory_growth.py``.)"""
    budget_mb = 8
    s = _settings(tmp_path, kafka_bootstrap, serving="online", label_store_mb=float(budget_mb))
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    words = [f"term{i}" for i in range(5000)]
    prod = producer(s, s.kafka.bootstrap_servers)
    ckpt_path = s.data_dir / "online" / f"{s.models.name}.ckpt"
    rss: dict[int, float] = {}
    state: dict[str, Any] | None = None
    n, chunk = 40_000, 10_000
    try:
        prod.produce(s.topics.events, orjson.dumps({"id": "warm", "features": {"x": 1.0}}),
                     key=b"warm")  # fmt: skip
        prod.flush(30)
        _collect(LiveLearnClient(s), "predictions", {"warm"}, 90)
        assert worker.proc is not None
        rss[0] = _rss_mb(worker.proc.pid)
        for start in range(0, n, chunk):
            for i in range(start, start + chunk):
                text = " ".join(words[(i * 7 + j * 13) % 5000] for j in range(150))
                value = orjson.dumps({"id": f"u{i}", "text": text})
                while True:
                    try:
                        prod.produce(s.topics.events, value, key=f"u{i}".encode())
                        break
                    except BufferError:
                        prod.poll(0.1)
            assert prod.flush(60) == 0 and prod.take_failures() == []
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:  # let the learner catch up with the chunk
                state = load_checkpoint(ckpt_path)
                if state is not None and state["offsets"].get(0) == start + chunk + 1:
                    break
                time.sleep(1)
            assert state is not None and state["offsets"].get(0) == start + chunk + 1
            rss[start + chunk] = _rss_mb(worker.proc.pid)
    finally:
        worker.stop()
    joiner = state["joiner"]
    assert joiner.bytes <= budget_mb * 2**20 and joiner.evicted_total > 0
    assert len(joiner) + joiner.evicted_total == n + 1
    assert ckpt_path.stat().st_size < 40 * 2**20  # the budget, not the stream
    growth = {k: round(v - rss[0]) for k, v in rss.items()}
    assert rss[n] - rss[n // 2] < 64, growth
    assert rss[n] - rss[0] < 512, growth


def test_a_batch_whose_outputs_cannot_be_delivered_is_not_acknowledged(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """faust's take_events acknowledges a batch whatever its body did, and the worker commits
    what is acknowledged every second. A batch whose answers Kafka refuses for good (over the
    topic's size limit) must stay uncommitted, for a worker to answer once that is mended."""
    s = _settings(tmp_path, kafka_bootstrap, serving="online")
    client = LiveLearnClient(s)
    worker = WorkerProcess(s, tmp_path / "worker1.log").start()
    queries = [f"q{i}" for i in range(5)]
    try:
        client.produce("queries", {"id": "warm", "question": "anyone there?"}, wait=True)
        _collect(client, "answers", {"warm"}, 90)
        _topic_config(s, [s.topics.answers], "max.message.bytes", "64")  # no answer fits
        for q in queries:
            client.produce("queries", {"id": q, "question": "what does compaction keep?"})
        client.flush()
        deadline = time.monotonic() + 60
        log1 = tmp_path / "worker1.log"
        while "a retry cannot succeed" not in log1.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the answers were never refused"
            time.sleep(0.5)
        time.sleep(5)  # several commit intervals of the worker
    finally:
        worker.stop()
    _topic_config(s, [s.topics.answers], "max.message.bytes", None)
    worker = WorkerProcess(s, tmp_path / "worker2.log").start()
    try:
        answers = _collect(client, "answers", set(queries), 120)
    finally:
        worker.stop()
    assert set(queries) <= {a["id"] for a in answers}  # processed again, not lost
