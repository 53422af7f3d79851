"""``livelearn up``: the whole system as supervised child processes, until Ctrl-C.

Starts the embedded Kafka unless bootstrap servers are configured, creates the topics, then
runs ``livelearn worker`` (indexer, queries, online learner) and ``livelearn trainer`` as
children and shows a live status table. It behaves like a process supervisor:

* A child that exits is started again after a wait that doubles with each crash
  (``LIVELEARN_SUPERVISOR__RESTART_BACKOFF_S`` up to ``..._RESTART_BACKOFF_MAX_S``, made up
  to ``..._RESTART_JITTER`` shorter at random so that children do not restart in step). Its
  restarts are counted; its log (``<data dir>/logs/<child>.log``) marks each restart.
* A child that crashes more than ``..._MAX_RESTARTS`` times within ``..._CRASH_WINDOW_S`` is
  *failed*: ``up`` prints the last lines of its log, stops everything and exits 1.
* The embedded broker, when ``up`` started it, is supervised the same way (``kafka``): started
  again on the same port with its data on disk, so the children reconnect by themselves.
* Kafka unreachable for ``..._BROKER_LOSS_S``: ``..._ON_BROKER_LOSS=wait`` (the default) keeps
  the children, which reconnect by themselves; ``exit`` stops everything and exits 3.
* Ctrl-C (or SIGTERM), also while a child waits for its restart, stops the children with
  SIGTERM first: each finishes its batch, waits for Kafka's acknowledgements and commits (the
  learner writes its checkpoint), so nothing acknowledged is lost; the embedded broker stops
  last.

The supervisor writes its children's state to ``<data dir>/supervisor.json`` (atomically, about
once a second), which ``livelearn status`` shows from another shell.

The pieces: the restart policy and the children are :mod:`streams.supervisor`; here are the
state file (:class:`SupervisorState`), :class:`KafkaPoller` (the Kafka side of the table, in a
thread, so that a slow broker never delays a restart or a Ctrl-C), :func:`status_table` and
:func:`run_up`, the loop that ties them together.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from streams.broker import LocalBroker
from streams.kafka import admin_client
from streams.settings import Settings, SupervisorSettings
from streams.status import KafkaProblem, Snapshot, try_snapshot
from streams.supervisor import BrokerProcess, ChildSpec, ChildStatus, RestartPolicy, Supervisor
from streams.topics import ensure_topics, topic_specs

__all__ = [
    "console_url",
    "EXIT_BROKER_LOST",
    "EXIT_CHILD_FAILED",
    "KafkaPoller",
    "SupervisorState",
    "read_state",
    "run_up",
    "state_path",
    "status_table",
    "write_state",
]

EXIT_CHILD_FAILED = 1  #: ``up``'s exit code when a child crashed too often
EXIT_BROKER_LOST = 3  #: ... when Kafka was lost and ``on_broker_loss`` is ``exit``


# -- the state file: what `livelearn status` shows from another shell --------------------------


@dataclass(frozen=True)
class SupervisorState:
    """What ``livelearn up`` writes to ``<data dir>/supervisor.json``."""

    pid: int
    bootstrap: str
    started_at: float
    updated_at: float
    children: list[ChildStatus]
    kafka: str = ""  # the last Kafka problem in words ('' when the status could be read)
    stopped: bool = False

    def alive(self) -> bool:
        """Whether the ``livelearn up`` that wrote this still runs."""
        if self.stopped:
            return False
        try:
            os.kill(self.pid, 0)
        except PermissionError:
            return True
        except OSError:
            return False
        return True


def state_path(settings: Settings) -> Path:
    return settings.data_dir / "supervisor.json"


def write_state(path: Path, state: SupervisorState) -> None:
    """Write ``state`` atomically (a reader sees the old file or the new one, never a mix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(asdict(state)))
    os.replace(tmp, path)


def read_state(path: Path) -> SupervisorState | None:
    """The state last written by ``livelearn up``, None when there is none (or not ours).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "supervisor.json"
    >>> children = [ChildStatus("worker", "running", pid=12)]
    >>> write_state(path, SupervisorState(1, "b:9092", 0.0, 1.0, children))
    >>> read_state(path).children[0].state
    'running'
    """
    try:
        raw: dict[str, Any] = orjson.loads(path.read_bytes())
        children = [ChildStatus(**c) for c in raw.pop("children")]
        return SupervisorState(children=children, **raw)
    except (OSError, ValueError, TypeError, KeyError):
        return None


# -- the Kafka side of the table, in a thread -------------------------------------------------


class KafkaPoller:
    """Reads topics, lag, versions and alerts every ``every_s`` seconds in a thread.

    :attr:`latest` is the last :class:`~streams.status.Snapshot` or
    :class:`~streams.status.KafkaProblem`; :meth:`unreachable_s` is how long no broker has
    answered (0 while one does, even if it is still starting).
    """

    def __init__(self, settings: Settings, bootstrap: str, every_s: float = 5.0) -> None:
        self.settings, self.bootstrap, self.every_s = settings, bootstrap, every_s
        self.latest: Snapshot | KafkaProblem | None = None
        self._answered = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-status", daemon=True)

    def start(self) -> KafkaPoller:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            result = try_snapshot(self.settings, self.bootstrap, last=3)
            if not (isinstance(result, KafkaProblem) and result.state == "unreachable"):
                self._answered = time.monotonic()
            self.latest = result
            self._stop.wait(self.every_s)

    def unreachable_s(self) -> float:
        latest = self.latest
        if isinstance(latest, KafkaProblem) and latest.state == "unreachable":
            return time.monotonic() - self._answered
        return 0.0

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask the thread to stop and wait for it (a daemon: one stuck on a lost broker does
        not hold ``up`` for longer than ``timeout_s``)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)


def status_table(
    kafka: Snapshot | KafkaProblem | None, bootstrap: str,
    children: Sequence[ChildStatus] = (), note: str = "", kafka_note: str = "reading ...",
) -> Table:  # fmt: skip
    """Processes, topics, lag, model versions and the last alerts, as one rich table
    (``kafka_note`` stands for the Kafka rows when ``kafka`` is None)."""
    now = time.time()
    table = Table(title=f"livelearn at {bootstrap}", caption=note or None, expand=False)
    table.add_column("what")
    table.add_column("state")
    for child in children:
        table.add_row(f"process {child.name}", child.describe(now))
    if kafka is None:
        table.add_row("kafka", kafka_note)
        return table
    if isinstance(kafka, KafkaProblem):
        table.add_row("kafka", str(kafka))
        return table
    for name, (parts, records) in kafka.topics.items():
        table.add_row(f"topic {name}", f"{records} records, {parts} partitions")
    for lag in kafka.lags:
        behind = "no commit yet" if lag.lag is None else f"{lag.lag} behind"
        table.add_row(f"group {lag.group}", f"{behind} on {lag.topic}")
    table.add_row("serving version", kafka.serving or "none yet (the online model answers)")
    for v in kafka.versions:
        table.add_row(f"version {v['version']}", f"{v['status']} {v['kind']} {v['metrics']}")
    for a in kafka.alerts:
        table.add_row(f"alert {a.get('detector')}",
                      f"{a.get('severity')} {a.get('signal')} value {a.get('value', 0):.3f} "
                      f"action {a.get('action')}")  # fmt: skip
    for u in kafka.updates:
        table.add_row(f"update {u.get('kind')}", f"{u.get('status')} {u.get('model_version')}")
    return table


# -- the loop ---------------------------------------------------------------------------------


def _child_specs(settings: Settings, bootstrap: str, trainer: bool) -> list[ChildSpec]:
    env = dict(os.environ, LIVELEARN_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
               LIVELEARN_DATA_DIR=str(settings.data_dir))  # fmt: skip
    logs = settings.data_dir / "logs"
    specs = [ChildSpec("worker", ["worker"], env, logs / "worker.log")]
    if trainer:
        port = settings.metrics_port + 1 if settings.metrics_port else 0
        specs.append(ChildSpec("trainer", ["trainer"], dict(env, LIVELEARN_METRICS_PORT=str(port)),
                               logs / "trainer.log"))  # fmt: skip
    return specs


def _exit_code(
    supervisor: Supervisor, poller: KafkaPoller, policy: SupervisorSettings, console: Console
) -> int:
    """Why ``up`` must stop now (a child failed, Kafka lost), said on ``console``; 0: it goes on."""
    if supervisor.failed():
        console.print("[red]a child keeps crashing[/]: stopping everything")
        return EXIT_CHILD_FAILED
    lost_s = poller.unreachable_s()
    if policy.on_broker_loss == "exit" and lost_s >= policy.broker_loss_s:
        console.print(f"[red]Kafka lost[/]: {escape(str(poller.latest))} for {lost_s:.0f} s; "
                      "stopping everything")  # fmt: skip
        return EXIT_BROKER_LOST
    return 0


def console_url(settings: Settings) -> str:
    """Where the worker's live console answers (:mod:`streams.console`).

    >>> console_url(Settings(web_port=6066))
    'http://127.0.0.1:6066/'
    """
    host = settings.web.host if settings.web.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.web_port}/"


def run_up(settings: Settings, trainer: bool = True, refresh_s: float = 5.0,
           console: Console | None = None) -> int:  # fmt: skip
    """Run until Ctrl-C/SIGTERM (0), a child failed (1) or Kafka was lost (3, if so set)."""
    console = console or Console()
    broker: LocalBroker | None = None
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        broker = LocalBroker(settings.data_dir, settings.broker)
        already = broker.running() is not None
        with console.status("starting the embedded Kafka ..."):
            bootstrap = broker.start()
        if already:
            broker = None  # someone else's broker (`livelearn broker up`): leave it running
    ensure_topics(admin_client(settings, bootstrap), topic_specs(settings.topics))
    policy = settings.supervisor
    specs = _child_specs(settings, bootstrap, trainer)
    if broker is not None:  # ours: supervised too, started first and stopped last
        own, state = broker, broker.state()
        log = Path(state.log_file) if state is not None else own.root / "kafka.log"
        specs.insert(0, ChildSpec("kafka", [], {}, log, start=lambda: BrokerProcess(own),
                                  mark_log=False))  # fmt: skip
    supervisor = Supervisor(specs, RestartPolicy.from_settings(policy))
    poller = KafkaPoller(settings, bootstrap, refresh_s)
    state_file, started = state_path(settings), time.time()
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:  # also during a restart or the stop
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def save(stopped: bool = False) -> None:
        latest = poller.latest
        kafka = str(latest) if isinstance(latest, KafkaProblem) else ""
        write_state(state_file, SupervisorState(os.getpid(), bootstrap, started, time.time(),
                                                supervisor.statuses(), kafka, stopped))  # fmt: skip

    code = 0
    try:
        for event in supervisor.start():
            console.print(event, markup=False, highlight=False)
        poller.start()
        logs = settings.data_dir / "logs"
        console.print(f"[green]✓[/] Kafka at {bootstrap}; worker HTTP :{settings.web_port}; "
                      f"logs in {logs}; Ctrl-C stops everything cleanly")  # fmt: skip
        console.print(f"[green]✓[/] live console: {console_url(settings)}")
        with Live(console=console, refresh_per_second=1) as live:
            while not stopping:
                for event in supervisor.tick():
                    console.print(event, markup=False, highlight=False)
                save()
                live.update(status_table(poller.latest, bootstrap, supervisor.statuses()))
                code = _exit_code(supervisor, poller, policy, console)
                if code:
                    break
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline and not stopping:
                    time.sleep(0.1)
    finally:
        with console.status("stopping: the services finish their batches and commit ..."):
            poller.stop(timeout_s=0)  # no new snapshot while the children stop
            supervisor.stop()
            poller.stop()
            save(stopped=True)
            if broker is not None:
                broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        console.print("[green]✓[/] stopped")
    return code
