"""A worker whose broker has gone away still stops when asked (faust alone would hang)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from streams.broker import LocalBroker
from streams.kafka import admin_client
from streams.topics import ensure_topics, topic_specs
from tests.conftest import broker_settings, make_settings
from tests.integration.worker import WorkerProcess


def test_sigterm_ends_a_worker_whose_broker_is_gone(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "broker", broker_settings())
    bootstrap = broker.start()
    s = make_settings(tmp_path, bootstrap, partitions=1)
    ensure_topics(admin_client(s, bootstrap), topic_specs(s.topics))
    worker = WorkerProcess(s, tmp_path / "worker.log", {"LIVELEARN_SHUTDOWN_TIMEOUT_S": "5"})
    worker.start()
    try:
        time.sleep(3)  # the learner and the agents are running
    finally:
        broker.stop()
    assert worker.proc is not None
    proc = worker.proc
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)  # without the watchdog this waits for ever
    took = time.monotonic() - started
    worker.stop()
    assert took < 30, took
    log = (tmp_path / "worker.log").read_text(errors="replace").splitlines()
    why = [line for line in log if "Traceback" in line or "Error:" in line or "rash" in line]
    assert code in (0, 70), (code, why[-15:], log[-10:])
