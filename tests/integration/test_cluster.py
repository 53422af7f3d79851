"""A three-node Kafka cluster under steady load: nodes killed, restarted and wiped (issue 19).

One :class:`streams.cluster.LocalCluster` (three combined broker+controller nodes, topics at
replication 3 and ``min.insync.replicas=2``) for the module. A real ``livelearn worker`` (docs
agent and learner) and a real ``livelearn trainer`` run against it while a producer thread
sends documents and labelled events at a steady rate; meanwhile, in sequence:

1. a node leading a partition of ``events`` and one of ``docs`` is killed (kill -9); it comes
   back after its leaderships moved (once it was fenced);
2. a rolling restart of all three nodes (a clean stop, a start, the replicas back in sync);
3. one node is killed, its disk data removed, and it rejoins empty and catches up.

Then: every record the producer had acknowledged is in its topic, exactly once; every event
was predicted; every label was learned once (the learner's checkpoint); the collection holds
exactly the chunks of the documents; the worker and the trainer never stopped, and the
trainer finished a job asked for after the faults.
"""

from __future__ import annotations

import os
import signal
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

from streams import contracts, topics
from streams.cluster import LocalCluster
from streams.kafka import admin_client, deliver_or_retry, producer
from streams.lease import Lease
from streams.sdk import LiveLearnClient
from streams.settings import ModelSettings, Settings, TriggerSettings
from streams.topics import ensure_topics, topic_specs
from streams.trainer_worker import manual_job
from tests.conftest import broker_settings, make_settings, settings_env
from tests.integration.helpers import (
    collection_state,
    expected_chunks,
    stdlib_corpus,
    wait_caught_up,
    wait_checkpoint,
    wait_job_final,
    wait_predicted,
)
from tests.integration.worker import WorkerProcess
from trainers.online.learner import OnlineLearner
from trainers.online.state import load_checkpoint

CHUNK_TOKENS, OVERLAP = 64, 16
ROWS = list(datasets.Phishing())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    nodes = LocalCluster(tmp_path_factory.mktemp("cluster"), broker_settings(), brokers=3)
    nodes.start()
    try:
        yield nodes
    finally:
        # All at once, no node can finish a controlled shutdown (the quorum goes with them):
        # a short wait, then kill -9; the data is a temporary folder's.
        nodes.stop(timeout_s=10)


class SteadyLoad:
    """Docs and labelled events at a steady rate from a thread, through an idempotent
    ``acks=all`` producer; remembers which records Kafka acknowledged."""

    def __init__(self, settings: Settings, docs: list[dict[str, Any]], events_per_s: int) -> None:
        self.settings = settings
        self.docs = docs
        self.events_per_s = events_per_s
        self.prod = producer(settings, settings.kafka.bootstrap_servers)
        self.acked: dict[str, list[str]] = {"docs": [], "events": []}
        self.sent = {"docs": 0, "events": 0}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _send(self, contract: str, value: dict[str, Any]) -> None:
        topic = self.settings.topics.by_contract()[contract]

        def done(err: Any, msg: Any) -> None:
            if err is None:
                self.acked[contract].append(msg.key().decode())

        payload = contracts.encode_checked(contract, value)
        while True:
            try:
                self.prod.produce(topic, payload, key=value["id"].encode(), on_delivery=done)
                break
            except BufferError:
                self.prod.poll(0.05)
        self.sent[contract] += 1
        self.prod.poll(0)

    def _run(self) -> None:
        tick, started = 0, time.monotonic()
        while not self.stop.is_set():  # ticks of 0.1 s
            if tick % 5 == 0 and tick // 5 < len(self.docs):
                self._send("docs", self.docs[tick // 5])
            for i in range(tick * self.events_per_s // 10, (tick + 1) * self.events_per_s // 10):
                x, y = ROWS[i % len(ROWS)]
                self._send("events", {"id": f"e{i}", "features": x, "label": y, "ts": time.time()})
            tick += 1
            time.sleep(max(0.0, started + tick * 0.1 - time.monotonic()))

    def start(self) -> SteadyLoad:
        self.thread.start()
        return self

    def finish(self) -> None:
        """Stop producing and wait until Kafka acknowledged everything (resending failures)."""
        self.stop.set()
        self.thread.join(30)
        deliver_or_retry(self.prod, wait_s=5)


def _topic_keys(settings: Settings, topic: str) -> list[str]:
    client = LiveLearnClient(settings)
    return [r["id"] for r in client.subscribe(topic, from_beginning=True, timeout_s=5)]


def _leader_of_both(cluster: LocalCluster, events: str, docs: str, partitions: int) -> int:
    """A node that leads a partition of ``events`` and one of ``docs`` (the first such)."""
    leads = [{cluster.leader(topic, p) for p in range(partitions)} for topic in (events, docs)]
    both = sorted(leads[0] & leads[1])
    return both[0] if both else cluster.leader(events, 0)


def _mark(what: str, t0: float) -> float:
    took = time.monotonic() - t0
    print(f"\n  {took:6.1f} s  {what}", end="", flush=True)
    return took


def _wait_held(lease: Lease, timeout_s: float = 20) -> float:
    """Seconds until ``lease`` is held (``timeout_s`` at most; the caller checks it is)."""
    t0 = time.monotonic()
    while not lease.poll() and time.monotonic() - t0 < timeout_s:
        time.sleep(0.1)
    return round(time.monotonic() - t0, 1)


def _hold_ten_leases(s: Settings, bootstrap: str, prefix: str) -> list[float]:
    """Ten leases, each on a lease topic created just then; seconds until each was held."""
    took: list[float] = []
    for trial in range(10):
        lease = Lease(s, bootstrap, f"{prefix}{trial}")
        try:
            took.append(_wait_held(lease))
            assert lease.held, f"lease {trial} not held after 20 s (rejoins: {lease.rejoins})"
        finally:
            lease.close()
    return took


def _lease_settings(cluster: LocalCluster, tmp_path: Path) -> Settings:
    s = make_settings(tmp_path, cluster.bootstrap, partitions=3)
    return s.model_copy(update={"topics": s.topics.model_copy(update={"replication": 3})})


@pytest.mark.timeout(300)
def test_a_lease_nobody_was_given_is_taken_and_two_workers_share_it(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no settling after a topic's creation, one lease in four or five was held by
    nobody for good (the group's leader had assigned on metadata from a node that did not
    know the topic yet): the orphan check has each of ten held within 20 s. Then a second
    worker joins a held lease: exactly one of the two holds it, and neither rejoins."""
    monkeypatch.setattr(topics, "SETTLE_S", 0.0)
    s = _lease_settings(cluster, tmp_path)
    took = _hold_ten_leases(s, cluster.bootstrap, "orphan")
    holder = Lease(s, cluster.bootstrap, "shared")
    standby: Lease | None = None
    try:
        _wait_held(holder)
        assert holder.held
        before = holder.rejoins  # its own topic was just created unsettled: it may have had to
        standby = Lease(s, cluster.bootstrap, "shared")
        t0 = time.monotonic()
        held: list[tuple[bool, bool]] = []
        # Three orphan checks, then until the join's rebalance has settled: the range
        # assignor may hand the partition to the newcomer (a handover, not a rejoin).
        while time.monotonic() - t0 < 3 * Lease.ORPHAN_CHECK_S + 2 or (
            held[-1].count(True) != 1 and time.monotonic() - t0 < 60
        ):
            held.append((holder.poll(), standby.poll()))
            time.sleep(0.1)
        assert held[-1].count(True) == 1, held[-5:]  # exactly one learner
        assert (holder.rejoins - before, standby.rejoins) == (0, 0)
    finally:
        holder.close()
        if standby is not None:
            standby.close()
    print(f"\nleases held after (s), no settling: {sorted(took)}")


@pytest.mark.timeout(300)
def test_topics_created_on_a_cluster_are_known_to_every_node_before_use(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other half: ``ensure_topics`` lets a cluster's nodes learn of new topics before it
    returns, so a subscriber is given its partitions at its first join. Ten leases with the
    orphan check off are each held within 20 s."""
    monkeypatch.setattr(Lease, "ORPHAN_CHECK_S", 1e9)
    took = _hold_ten_leases(_lease_settings(cluster, tmp_path), cluster.bootstrap, "settled")
    assert max(took) < 5, took  # at the first join, not after a session timeout
    print(f"\nleases held after (s), settled: {sorted(took)}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kills_rolling_restart_and_a_wiped_node_under_load(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    base = make_settings(
        tmp_path / "data", cluster.bootstrap, partitions=3,
        models=ModelSettings(chunk_tokens=CHUNK_TOKENS, chunk_overlap=OVERLAP,
                             checkpoint_every_records=200),
        trigger=TriggerSettings(volume_threshold=0),  # only the jobs the test asks for
    )  # fmt: skip
    s = base.model_copy(update={"topics": base.topics.model_copy(update={"replication": 3})})
    ensure_topics(admin_client(s, cluster.bootstrap), topic_specs(s.topics))
    docs = stdlib_corpus(120, min_chars=150)
    client = LiveLearnClient(s)
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    trainer_log = (tmp_path / "trainer.log").open("ab")
    trainer = subprocess.Popen(
        [sys.executable, "-m", "streams", "trainer", "--set", "epochs=2"],
        # Small jobs: the newest 1,000 events, so that a job takes seconds on a busy machine.
        env={**settings_env(s), "LIVELEARN_LIMITS__MAX_TRAIN_RECORDS": "1000"},
        stdout=trainer_log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    timeline: dict[str, float] = {}
    load = SteadyLoad(s, docs, events_per_s=40)
    try:
        load.start()
        t0 = time.monotonic()
        wait_predicted(s, {f"e{i}" for i in range(100)})  # the worker is mid-stream
        _mark("first 100 events predicted", t0)

        # 1. kill -9 a node that leads a partition of events and one of docs; its leaderships
        # move once it is fenced; it comes back with its data and catches up.
        victim = _leader_of_both(cluster, s.topics.events, s.topics.docs, s.topics.partitions)
        cluster.kill(victim)
        cluster.wait_fenced(victim)
        _mark(f"node {victim} killed and fenced", t0)
        cluster.start_node(victim)
        cluster.wait_in_sync()
        timeline["kills"] = _mark("leaders killed and back", t0)

        # 2. a rolling restart of every node, each back in sync before the next one stops.
        job = manual_job(s, cluster.bootstrap, "retrain")
        client.produce("training-jobs", job, wait=True)
        for node in cluster.node_ids:
            cluster.stop_node(node)
            _mark(f"node {node} stopped", t0)
            cluster.start_node(node)
            cluster.wait_in_sync()
        timeline["rolling"] = _mark("rolling restart", t0)

        # 3. a node loses its disk and rejoins empty (its replicas are rebuilt from the others).
        wiped = cluster.leader(s.topics.events, 1)
        cluster.kill(wiped)
        cluster.wait_fenced(wiped)  # a disk is not replaced within a session timeout
        cluster.wipe(wiped)
        cluster.start_node(wiped)
        cluster.wait_in_sync()
        timeline["wipe"] = _mark("wiped node back in sync", t0)

        load.finish()
        timeline["load_s"] = _mark("load acknowledged", t0)
        n_events, n_docs = load.sent["events"], load.sent["docs"]
        assert len(load.acked["events"]) == n_events and len(load.acked["docs"]) == n_docs

        late = manual_job(s, cluster.bootstrap, "retrain")  # asked after all the faults
        client.produce("training-jobs", late, wait=True)
        wait_caught_up(s, f"{s.kafka.group_prefix}-worker", s.topics.docs, timeout_s=120)
        _mark("docs caught up", t0)
        predicted = wait_predicted(s, set(load.acked["events"]), timeout_s=120)
        wait_checkpoint(s, n_events, timeout_s=120)
        _mark("events predicted and learned", t0)
        updates = [wait_job_final(client, j["job_id"], 180) for j in (job, late)]
        _mark("jobs finished", t0)
        assert worker.proc is not None and worker.proc.poll() is None  # never gave up
        assert trainer.poll() is None
    finally:
        load.stop.set()
        worker.stop()
        os.killpg(trainer.pid, signal.SIGTERM)
        trainer.wait(60)
        trainer_log.close()
    # No acknowledged record lost, none written twice (idempotent producer).
    for contract in ("docs", "events"):
        keys = _topic_keys(s, s.topics.by_contract()[contract])
        assert sorted(keys) == sorted(load.acked[contract]), contract
    state = load_checkpoint(s.data_dir / "online" / f"{s.models.name}.ckpt")
    assert state is not None and sum(state["offsets"].values()) == n_events
    assert OnlineLearner.restore(state["learner"]).n_learned == n_events  # each label once
    assert set(predicted) == {f"e{i}" for i in range(n_events)}
    final = {d["id"]: d for d in docs[:n_docs]}
    assert collection_state(s.milvus_uri, s.milvus.collection) == expected_chunks(
        final.values(), CHUNK_TOKENS, OVERLAP
    )
    assert all(u["status"] in ("promoted", "rejected") for u in updates), updates
    dupes = sum(len(v) - 1 for v in predicted.values())
    print(
        f"\ncluster faults: {n_events} events, {n_docs} docs under load; node {victim} killed "
        f"and back at "
        f"{timeline['kills']:.0f} s, rolling restart at {timeline['rolling']:.0f} s, wiped node "
        f"{wiped} back in sync at {timeline['wipe']:.0f} s; {dupes} predictions sent twice; "
        f"jobs {[u['status'] for u in updates]}"
    )


def test_topics_are_replicated_with_min_insync_two(cluster: LocalCluster, tmp_path: Path) -> None:
    """What the cluster makes: replication 3 everywhere, min.insync.replicas 2 by default,
    and an acks=all write refused (not lost) while only one replica is left."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ConfigResource

    base = make_settings(tmp_path, cluster.bootstrap, partitions=1)
    s = base.model_copy(update={"topics": base.topics.model_copy(update={"replication": 3})})
    admin = admin_client(s, cluster.bootstrap)
    ensure_topics(admin, topic_specs(s.topics))
    cluster.wait_in_sync(topics=[s.topics.events])
    replicas: list[int] = []
    for _ in range(50):  # the node asked may learn of the new topic a moment later
        md = admin.list_topics(s.topics.events, timeout=10).topics[s.topics.events]
        replicas = [len(p.replicas) for p in md.partitions.values()]
        if replicas:
            break
        time.sleep(0.2)
    assert replicas == [3]
    resource = ConfigResource("topic", s.topics.events)
    for _ in range(50):  # a node may not know the new topic for a moment
        try:
            configs = admin.describe_configs([resource])[resource].result(timeout=10)
            break
        except KafkaException:
            time.sleep(0.2)
    assert configs["min.insync.replicas"].value == "2"
    node = ConfigResource("broker", str(cluster.node_ids[0]))
    broker = admin.describe_configs([node])[node].result(timeout=10)
    assert broker["offsets.topic.replication.factor"].value == "3"  # group offsets too
    assert broker["default.replication.factor"].value == "3"
    # Two of three nodes down: the survivor cannot take an acks=all write (it is refused with
    # NOT_ENOUGH_REPLICAS or times out), and once a node is back it goes through.
    leader = cluster.leader(s.topics.events, 0)
    others = [n for n in cluster.node_ids if n != leader]
    cluster.kill(others[0])
    cluster.kill(others[1])
    try:
        prod = producer(s, cluster.bootstrap, **{"message.timeout.ms": 8000})
        errors: list[str] = []
        prod.produce(
            s.topics.events,
            orjson.dumps({"id": "x", "features": {"a": 1}}),
            key=b"x",
            on_delivery=lambda err, msg: errors.append(str(err)),
        )
        prod.flush(20)
        assert errors and errors[0] != "None", errors
    finally:
        cluster.start_node(others[0])
        cluster.start_node(others[1])
        cluster.wait_in_sync()
