"""``livelearn up``: the whole system as child processes, until Ctrl-C.

Starts the embedded Kafka unless bootstrap servers are configured, creates the topics, then
runs ``livelearn worker`` (indexer, queries, online learner) and ``livelearn trainer`` as
children and shows a live status table. Ctrl-C (or SIGTERM) stops the children with SIGTERM
first: each finishes its batch, waits for Kafka's acknowledgements and commits (the learner
writes its checkpoint), so nothing acknowledged is lost; the embedded broker stops last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from streams.broker import LocalBroker
from streams.kafka import admin_client
from streams.settings import Settings
from streams.topics import ensure_topics, topic_specs

__all__ = ["Child", "run_up", "status_table"]


class Child:
    """A ``python -m streams <command>`` child process with its own log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.log_path = log
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams", *args], env=env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (clean shutdown), then SIGKILL after ``timeout_s``; the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


def status_table(settings: Settings, bootstrap: str, children: list[Child] | None = None) -> Table:
    """Topics, lag, model versions and the last alerts, as one rich table."""
    from streams.status import snapshot

    snap = snapshot(settings, bootstrap, last=3)
    table = Table(title=f"livelearn at {bootstrap}", show_lines=False, expand=False)
    table.add_column("what")
    table.add_column("state")
    for child in children or []:
        state = "running" if child.alive() else f"exited ({child.proc.returncode})"
        table.add_row(f"process {child.args[0]}", f"{state} pid {child.proc.pid}")
    for name, (parts, records) in snap.topics.items():
        table.add_row(f"topic {name}", f"{records} records, {parts} partitions")
    for lag in snap.lags:
        behind = "no commit yet" if lag.lag is None else f"{lag.lag} behind"
        table.add_row(f"group {lag.group}", f"{behind} on {lag.topic}")
    table.add_row("serving version", snap.serving or "none yet (the online model answers)")
    for v in snap.versions:
        table.add_row(f"version {v['version']}", f"{v['status']} {v['kind']} {v['metrics']}")
    for a in snap.alerts:
        table.add_row(f"alert {a.get('detector')}",
                      f"{a.get('severity')} {a.get('signal')} value {a.get('value', 0):.3f} "
                      f"action {a.get('action')}")  # fmt: skip
    for u in snap.updates:
        table.add_row(f"update {u.get('kind')}", f"{u.get('status')} {u.get('model_version')}")
    return table


def run_up(settings: Settings, trainer: bool = True, refresh_s: float = 5.0,
           console: Console | None = None) -> int:  # fmt: skip
    """Run until Ctrl-C/SIGTERM or until a child dies; returns the exit code."""
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
    env = dict(os.environ, LIVELEARN_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
               LIVELEARN_DATA_DIR=str(settings.data_dir))  # fmt: skip
    logs = settings.data_dir / "logs"
    children = [Child(["worker"], env, logs / "worker.log")]
    if trainer:
        port = settings.metrics_port + 1 if settings.metrics_port else 0
        children.append(Child(["trainer"], dict(env, LIVELEARN_METRICS_PORT=str(port)),
                              logs / "trainer.log"))  # fmt: skip
    console.print(f"[green]✓[/] Kafka at {bootstrap}; worker HTTP :{settings.web_port}; logs in "
                  f"{logs}; Ctrl-C stops everything cleanly")  # fmt: skip
    stopping: list[int] = []

    def on_term(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        with Live(console=console, refresh_per_second=1) as live:
            while not stopping:
                dead = [c for c in children if not c.alive()]
                if dead:
                    console.print(f"[red]{dead[0].args[0]} exited[/]; see {dead[0].log_path}")
                    code = 1
                    break
                try:
                    live.update(status_table(settings, bootstrap, children))
                except Exception as exc:  # status is best effort; the services go on
                    live.update(f"status unavailable: {exc}")
                deadline = time.monotonic() + refresh_s
                while time.monotonic() < deadline and not stopping:
                    time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        with console.status("stopping: the services finish their batches and commit ..."):
            for child in reversed(children):
                child.stop()
            if broker is not None:
                broker.stop()
        console.print("[green]✓[/] stopped")
    return code
