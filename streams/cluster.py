"""A local Apache Kafka cluster: N KRaft nodes from the embedded broker's cached jars.

Every node is a combined broker and controller (``process.roles=broker,controller``); the
first three are the controller quorum's voters (three voters: the quorum survives one node's
loss), the others are brokers only. Topics default to replication 3 with
``min.insync.replicas=2`` (the broker defaults here, as in the Strimzi manifest): a record
acknowledged to an ``acks=all`` producer is on two disks at least, and one node may be down
without stopping writes. Heaps are small (``-Xmx384m`` by default) so that three nodes fit a
2-core, 24 GiB machine beside the workers.

Each node keeps its data under ``<data_dir>/cluster/node-<id>`` and its ports across restarts,
so clients reconnect to the same addresses. The cluster is for tests and for trying
replication on one machine; it is not a way to get more throughput out of one machine (all
nodes share its disk and cores).

Run it by hand with ``livelearn broker up --brokers 3`` / ``livelearn broker down``, or::

    cluster = LocalCluster(Path(".livelearn"), BrokerSettings(), brokers=3)
    bootstrap = cluster.start()   # "127.0.0.1:<p1>,127.0.0.1:<p2>,127.0.0.1:<p3>"
    cluster.kill(cluster.leader("events", 0))   # kill -9 one node
    cluster.start_node(2)
    cluster.wait_in_sync()
    cluster.stop()

Workers and tools must create topics with ``LIVELEARN_TOPICS__REPLICATION=3``: a topic made
with replication 1 cannot meet the cluster's ``min.insync.replicas=2`` (its writes fail).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.broker import _LOG4J, LocalBroker, _port_free, free_port, java_major_version
from streams.exceptions import BrokerError
from streams.settings import BrokerSettings
from streams.topics import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

__all__ = ["ClusterState", "LocalCluster", "NodeState", "random_cluster_id"]

#: Controller quorum voters: three survive the loss of one, more would only cost CPU here.
MAX_VOTERS = 3

_NODE_PROPERTIES = """\
process.roles={roles}
node.id={node_id}
controller.quorum.voters={voters}
listeners={listeners}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}
num.partitions=1
default.replication.factor={replication}
min.insync.replicas={min_isr}
unclean.leader.election.enable=false
auto.create.topics.enable=false
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=6
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=5000
message.max.bytes={max_bytes}
replica.fetch.max.bytes={max_bytes}
# A killed node is fenced (its partitions get new leaders) after 6 s, not 9, and a replica
# that stops fetching leaves the ISR after 10 s, not 30: faults are over sooner in tests.
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
replica.lag.time.max.ms=10000
num.network.threads=2
num.io.threads=4
background.threads=4
num.recovery.threads.per.data.dir=1
"""


@dataclass(frozen=True)
class NodeState:
    """One node of the cluster: its id, process and ports."""

    node_id: int
    pid: int
    port: int
    controller_port: int

    def alive(self) -> bool:
        if self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class ClusterState:
    """What ``broker up --brokers N`` leaves behind so that other commands find the cluster."""

    cluster_id: str
    bootstrap: str
    nodes: tuple[NodeState, ...]

    def alive(self) -> bool:
        return any(n.alive() for n in self.nodes)


def random_cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` makes one (16 random bytes, URL-safe
    base64 without padding, never starting with '-'), without starting a JVM for it.

    >>> len(random_cluster_id()), random_cluster_id() != random_cluster_id()
    (22, True)
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class LocalCluster:
    """``brokers`` Apache Kafka nodes (KRaft) under ``data_dir/cluster``.

    Parameters
    ----------
    data_dir
        The livelearn data directory; the cluster uses ``data_dir/cluster``.
    settings
        Broker settings (Kafka version, jar cache, readiness timeout); their ``heap`` is the
        single broker's, the cluster's nodes use ``heap`` below.
    brokers
        Number of nodes (1-9); the first three are controller voters.
    heap
        JVM heap of each node.
    replication, min_insync_replicas
        The broker defaults for new topics (capped at ``brokers``).

    Examples
    --------
    >>> import tempfile
    >>> cluster = LocalCluster(Path(tempfile.mkdtemp()), BrokerSettings(), brokers=3)
    >>> [n for n in cluster.node_ids], cluster.voters
    ([1, 2, 3], [1, 2, 3])
    >>> cluster.replication, cluster.min_insync_replicas
    (3, 2)
    >>> cluster.running() is None
    True
    """

    def __init__(
        self,
        data_dir: Path,
        settings: BrokerSettings | None = None,
        brokers: int = 3,
        heap: str = "384m",
        replication: int = 3,
        min_insync_replicas: int = 2,
    ) -> None:
        if not 1 <= brokers <= 9:
            raise BrokerError(f"a local cluster has 1 to 9 brokers, not {brokers}")
        self.settings = settings or BrokerSettings()
        self.root = Path(data_dir).resolve() / "cluster"
        self.node_ids = list(range(1, brokers + 1))
        self.voters = self.node_ids[:MAX_VOTERS]
        self.heap = heap
        self.replication = min(replication, brokers)
        self.min_insync_replicas = max(1, min(min_insync_replicas, self.replication - 1 or 1))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._ports: dict[int, tuple[int, int]] = {}
        self._cluster_id = ""

    # -- state -----------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def state(self) -> ClusterState | None:
        """The cluster recorded by the last start, whether or not it still runs."""
        try:
            raw = orjson.loads(self.state_file.read_bytes())
            nodes = tuple(NodeState(**n) for n in raw.pop("nodes"))
            return ClusterState(nodes=nodes, **raw)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def running(self) -> ClusterState | None:
        """The recorded cluster if any of its nodes is alive."""
        state = self.state()
        return state if state is not None and state.alive() else None

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self._ports[n][0]}" for n in self.node_ids)

    def node_dir(self, node_id: int) -> Path:
        return self.root / f"node-{node_id}"

    def _write_state(self) -> None:
        nodes = [
            NodeState(n, self.procs[n].pid if n in self.procs else -1, *self._ports[n])
            for n in self.node_ids
        ]
        state = ClusterState(self._cluster_id, self.bootstrap, tuple(nodes))
        raw = asdict(state)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(raw))
        tmp.replace(self.state_file)

    # -- start / stop ----------------------------------------------------------------------
    def start(self) -> str:
        """Start every node (or reuse a running cluster) and return the bootstrap list."""
        running = self.running()
        if running is not None:
            self._adopt(running)
            self.wait_ready()
            return running.bootstrap
        major = java_major_version()
        if major is None or major < 17:
            raise BrokerError(f"a Kafka cluster needs Java 17+, found {major or 'no java'}")
        self.root.mkdir(parents=True, exist_ok=True)
        self._assign_ports(self.state())
        self._cluster_id = self._load_cluster_id()
        self._format(self.node_ids)
        for node in self.node_ids:
            self.procs[node] = self._launch(node)
        self._write_state()
        try:
            self.wait_ready()
        except BrokerError:
            self.stop()
            raise
        log.info("Kafka cluster of %d nodes ready at %s", len(self.node_ids), self.bootstrap)
        return self.bootstrap

    def _adopt(self, state: ClusterState) -> None:
        self._cluster_id = state.cluster_id
        self.node_ids = [n.node_id for n in state.nodes]
        self.voters = self.node_ids[:MAX_VOTERS]
        self._ports = {n.node_id: (n.port, n.controller_port) for n in state.nodes}

    def _assign_ports(self, previous: ClusterState | None) -> None:
        old = {n.node_id: (n.port, n.controller_port) for n in previous.nodes} if previous else {}
        taken: set[int] = set()
        for node in self.node_ids:
            ports = []
            for want in old.get(node, (0, 0)):
                port = want if want and want not in taken and _port_free(want) else 0
                while not port or port in taken:
                    port = free_port()
                taken.add(port)
                ports.append(port)
            self._ports[node] = (ports[0], ports[1])

    def _load_cluster_id(self) -> str:
        path = self.root / "cluster_id"
        if path.exists():
            return path.read_text().strip()
        cluster_id = random_cluster_id()
        path.write_text(cluster_id)
        return cluster_id

    def _classpath(self) -> str:
        return f"{LocalBroker(self.root.parent, self.settings).fetch_jars()}/*"

    def _properties(self, node: int) -> Path:
        port, controller_port = self._ports[node]
        voters = ",".join(f"{v}@127.0.0.1:{self._ports[v][1]}" for v in self.voters)
        is_voter = node in self.voters
        listeners = f"PLAINTEXT://127.0.0.1:{port}"
        if is_voter:
            listeners += f",CONTROLLER://127.0.0.1:{controller_port}"
        props = self.node_dir(node) / "server.properties"
        props.write_text(
            _NODE_PROPERTIES.format(
                roles="broker,controller" if is_voter else "broker",
                node_id=node,
                voters=voters,
                listeners=listeners,
                port=port,
                log_dir=self.node_dir(node) / "kafka",
                replication=self.replication,
                min_isr=self.min_insync_replicas,
                max_bytes=MAX_MESSAGE_BYTES,
            )
        )
        return props

    def _format(self, nodes: list[int]) -> None:
        """Format the log dirs of ``nodes`` that have none yet, all at once (a JVM each)."""
        todo = [n for n in nodes if not (self.node_dir(n) / "kafka" / "meta.properties").exists()]
        java = shutil.which("java") or "java"
        log4j = self.root / "log4j.properties"
        log4j.write_text(_LOG4J.format(log=self.root / "tools.log"))
        running = {}
        for node in todo:
            self.node_dir(node).mkdir(parents=True, exist_ok=True)
            props = self._properties(node)
            running[node] = subprocess.Popen(
                [java, f"-Dlog4j.configuration=file:{log4j}", "-cp", self._classpath(),
                 "kafka.tools.StorageTool", "format", "-t", self._cluster_id, "-c", str(props),
                 "--ignore-formatted"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
        for node, proc in running.items():
            out, _ = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise BrokerError(f"formatting node {node} failed: {out.decode()[-1000:]}")

    def _launch(self, node: int) -> subprocess.Popen[bytes]:
        home = self.node_dir(node)
        home.mkdir(parents=True, exist_ok=True)
        props = self._properties(node)
        self._format([node])
        java = shutil.which("java") or "java"
        out = open(home / "kafka.stdout", "ab")  # noqa: SIM115 - owned by the child
        log4j = home / "log4j.properties"
        log4j.write_text(_LOG4J.format(log=home / "kafka.log"))
        return subprocess.Popen(
            [java, f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
             "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
             f"-Dlog4j.configuration=file:{log4j}", "-cp", self._classpath(),
             "kafka.Kafka", str(props)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until every node is registered with the cluster (metadata lists them all)."""
        self._wait(lambda md: len(md.brokers) >= len(self._live()), timeout_s, "all nodes up")

    def _live(self) -> list[int]:
        return [n for n, p in self.procs.items() if p.poll() is None] or self.node_ids

    def _wait(self, ok: Any, timeout_s: float | None, what: str) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 2000, "log_level": 0}
        )
        deadline = time.monotonic() + (timeout_s or self.settings.start_timeout_s)
        last: Exception | None = None
        while time.monotonic() < deadline:
            for node, proc in self.procs.items():
                if proc.poll() is not None and proc.returncode not in (-9, -15, 143):
                    raise BrokerError(
                        f"node {node} exited with code {proc.returncode}; see "
                        f"{self.node_dir(node) / 'kafka.log'}"
                    )
            try:
                if ok(admin.list_topics(timeout=2)):
                    return
            except Exception as exc:  # librdkafka raises while the cluster boots
                last = exc
            time.sleep(0.3)
        raise BrokerError(f"Kafka cluster at {self.bootstrap}: not {what} ({last})")

    def wait_in_sync(self, timeout_s: float = 120.0, topics: list[str] | None = None) -> None:
        """Block until every partition (of ``topics``, default all) has its whole replica set
        in sync and a leader: a node that came back has caught up."""

        def ok(md: Any) -> bool:
            if topics is not None and not set(topics) <= set(md.topics):
                return False
            for name, topic in md.topics.items():
                if topics is not None and name not in topics:
                    continue
                if not topic.partitions or topic.error is not None:
                    return False
                for part in topic.partitions.values():
                    if part.leader < 0 or set(part.isrs) != set(part.replicas):
                        return False
            return len(md.brokers) == len(self.node_ids)

        self._wait(ok, timeout_s, "in sync")

    def wait_fenced(self, node: int, timeout_s: float = 60.0) -> None:
        """Block until the cluster has given up on ``node``: it is out of the brokers' list
        and out of every partition's in-sync set (after a kill, once its session expires)."""

        def ok(md: Any) -> bool:
            if node in md.brokers:
                return False
            return all(
                node not in part.isrs and part.leader != node
                for topic in md.topics.values()
                for part in topic.partitions.values()
            )

        self._wait(ok, timeout_s, f"rid of node {node}")

    def leader(
        self, topic: str, partition: int = 0, timeout_s: float = 30.0, not_on: int = -1
    ) -> int:
        """The node that leads ``topic``'s ``partition`` now (waits while it has none, or
        while it is still ``not_on``: a killed leader's partitions move once it is fenced)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(Exception):  # the metadata of a topic still being made
                md = admin.list_topics(topic, timeout=5).topics[topic]
                part = md.partitions.get(partition)
                if part is not None and part.leader >= 0 and part.leader != not_on:
                    return int(part.leader)
            if time.monotonic() > deadline:
                raise BrokerError(f"{topic}[{partition}] has no leader after {timeout_s:.0f} s")
            time.sleep(0.2)

    # -- one node --------------------------------------------------------------------------
    def kill(self, node: int) -> None:
        """kill -9 one node: no controlled shutdown, its leaderships move after fencing."""
        proc = self.procs.get(node)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    def stop_node(self, node: int, timeout_s: float = 60.0) -> None:
        """Stop one node cleanly (controlled shutdown: it hands its leaderships over)."""
        proc = self.procs.get(node)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill(node)

    def start_node(self, node: int) -> None:
        """Start one stopped node again on its ports (it formats its dir if that was wiped)."""
        proc = self.procs.get(node)
        if proc is not None and proc.poll() is None:
            return
        self.procs[node] = self._launch(node)
        self._write_state()

    def wipe(self, node: int) -> None:
        """Remove a stopped node's disk data (its partitions' logs and metadata log).

        Wait for :meth:`wait_fenced` first: a node that comes back empty before the cluster
        noticed it was gone is still in the in-sync sets, and may lead with an empty log."""
        proc = self.procs.get(node)
        if proc is not None and proc.poll() is None:
            raise BrokerError(f"node {node} is running; stop or kill it before wiping its data")
        shutil.rmtree(self.node_dir(node) / "kafka", ignore_errors=True)

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop every node (SIGTERM, then SIGKILL); the data stays on disk."""
        if not self.procs:
            state = self.running()
            if state is None:
                return False
            for n in state.nodes:
                if n.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(n.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while any(n.alive() for n in state.nodes) and time.monotonic() < deadline:
                time.sleep(0.2)
            for n in state.nodes:
                if n.alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(n.pid, signal.SIGKILL)
            return True
        for proc in self.procs.values():  # all at once: a node alone cannot finish shutting down
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(node)
        self.procs.clear()
        return True
