"""`livelearn up` runs the services, `livelearn status` shows them, Ctrl-C loses nothing; a
child that dies is started again, one that keeps dying fails `up` with the end of its log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from river import datasets

from streams.broker import LocalBroker, free_port
from streams.kafka import admin_client
from streams.sdk import LiveLearnClient
from streams.settings import Settings
from streams.supervisor import ChildStatus
from streams.topics import ensure_topics, topic_specs
from streams.up import SupervisorState, read_state, state_path
from tests.conftest import broker_settings, make_settings, settings_env
from tests.integration.helpers import (
    collection_state,
    expected_chunks,
    stdlib_corpus,
    wait_caught_up,
    wait_checkpoint,
    wait_predicted,
)
from trainers.online.learner import OnlineLearner
from trainers.online.state import load_checkpoint


def test_up_status_and_a_clean_ctrl_c(settings: Settings, tmp_path: Path) -> None:
    env = settings_env(settings)
    env.update(LIVELEARN_WEB_PORT=str(free_port()), LIVELEARN_TRIGGER__VOLUME_THRESHOLD="0")
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "streams", "up", "--no-trainer"], env=env,
                          stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    client = LiveLearnClient(settings)
    rows = list(datasets.Phishing())[:300]
    try:
        for i, (x, y) in enumerate(rows):
            client.send_event(f"p{i}", features=x, label=y)
        client.flush()
        seen: set[str] = set()
        deadline = time.monotonic() + 180
        while len(seen) < len(rows) and time.monotonic() < deadline:
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            seen |= {p["id"] for p in client.subscribe("predictions", True, timeout_s=2)}
        assert len(seen) == len(rows)
        out = subprocess.run(
            [sys.executable, "-m", "streams", "status"], env=env, capture_output=True,
            text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        assert f"topic {settings.topics.events}" in out and "300 records" in out
        assert f"group {settings.kafka.group_prefix}-worker" in out
        assert "serving version" in out and "none yet" in out
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        code = up.wait(120)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert "stopped" in (tmp_path / "up.log").read_text()
    console = f"live console: http://127.0.0.1:{env['LIVELEARN_WEB_PORT']}/"
    assert console in (tmp_path / "up.log").read_text()  # `up` says where the console is
    # The learner wrote its checkpoint on the way out: every event learned, none twice.
    state = load_checkpoint(settings.data_dir / "online" / f"{settings.models.name}.ckpt")
    assert state is not None and sum(state["offsets"].values()) == len(rows)


# -- supervision: a child that dies is started again -------------------------------------------


def _livelearn() -> list[str]:
    """The ``livelearn`` console script next to this interpreter, else ``python -P -m``."""
    script = Path(sys.executable).with_name("livelearn")
    return [str(script)] if script.exists() else [sys.executable, "-P", "-m", "streams"]


class Up:
    """``livelearn up --no-trainer`` as a child of the test, its output in ``up.log``."""

    def __init__(self, settings: Settings, tmp_path: Path, cwd: Path | None = None,
                 **env: str) -> None:  # fmt: skip
        self.settings = settings
        self.env = settings_env(settings)
        self.web_port = free_port()
        self.env.update(LIVELEARN_WEB_PORT=str(self.web_port), COLUMNS="200",
                        LIVELEARN_TRIGGER__VOLUME_THRESHOLD="0", **env)  # fmt: skip
        self.log_path = tmp_path / "up.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*_livelearn(), "up", "--no-trainer"], env=self.env, stdout=self.log,
            stderr=subprocess.STDOUT, cwd=cwd,
        )  # fmt: skip

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def state(self) -> SupervisorState | None:
        return read_state(state_path(self.settings))

    def child(self, name: str, timeout_s: float = 60, **want: object) -> ChildStatus:
        """The status of child ``name`` once every field in ``want`` has the wanted value."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()[-3000:]
            state = self.state()
            if state is not None:
                last = next((c for c in state.children if c.name == name), None)
                if last is not None and all(getattr(last, k) == v for k, v in want.items()):
                    return last
            time.sleep(0.1)
        raise AssertionError(f"{name} never {want}: {last}")

    def worker(self, timeout_s: float = 60, **want: object) -> ChildStatus:
        return self.child("worker", timeout_s, **want)

    def healthy(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/healthz", timeout=5)
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"worker not healthy: {self.output()[-3000:]}")

    def status(self) -> str:
        return subprocess.run([*_livelearn(), "status"], env=self.env, capture_output=True,
                              text=True, timeout=120, check=True).stdout  # fmt: skip

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout_s)
        self.log.close()
        return code


def test_kill9_of_the_worker_under_load_through_up(settings: Settings, tmp_path: Path) -> None:
    """`livelearn up`, started from a folder holding a `streams.py` (which must not shadow the
    package), under a steady load of docs and labelled events: the worker is killed (-9) mid-
    stream. It comes back alone, the learner resumes from its checkpoint, every event is
    predicted, no label is learned twice and the collection is exact."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    (cwd / "streams.py").write_text("raise SystemExit('a streams.py of the working directory')\n")
    up = Up(settings, tmp_path, cwd, LIVELEARN_MODELS__CHECKPOINT_EVERY_RECORDS="250",
            LIVELEARN_SUPERVISOR__RESTART_BACKOFF_S="1")  # fmt: skip
    client = LiveLearnClient(settings)
    docs = stdlib_corpus(120, min_chars=150)
    rows = list(datasets.Phishing())
    try:
        up.healthy()
        first = up.worker(state="running")
        assert first.restarts == 0 and first.pid is not None

        def produce(tick: int) -> None:  # 10 docs/s and 100 events/s
            if tick < len(docs):
                client.produce("docs", docs[tick])
            for i in range(tick * 10, min(len(rows), tick * 10 + 10)):
                x, y = rows[i]
                client.send_event(f"p{i}", features=x, label=y)

        started = time.monotonic()
        killed_at = 0.0
        for tick in range(125):  # ~12 s of steady load ...
            if tick == 30:  # ... the learner has checkpointed ...
                client.flush()
                wait_predicted(settings, {f"p{i}" for i in range(200)})
                wait_checkpoint(settings, 100)
                started = time.monotonic() - tick * 0.1
            if tick == 45:  # ... and 1.5 s later, mid-stream, between checkpoints: kill -9
                os.kill(first.pid, signal.SIGKILL)
                killed_at = time.monotonic()
            produce(tick)
            time.sleep(max(0.0, started + (tick + 1) * 0.1 - time.monotonic()))
        client.flush(120)
        again = up.worker(timeout_s=120, state="running", restarts=1)
        assert again.pid != first.pid and again.last_exit == "killed by SIGKILL"
        up.healthy()
        back_s = time.monotonic() - killed_at
        predicted = wait_predicted(settings, {f"p{i}" for i in range(len(rows))}, timeout_s=180)
        wait_caught_up(settings, f"{settings.kafka.group_prefix}-worker", settings.topics.docs)
        wait_checkpoint(settings, len(rows), timeout_s=120)
        out = up.status()  # from another shell
        worker_row = next(line for line in out.splitlines() if "process worker" in line)
        assert "running" in worker_row and "restarts 1" in worker_row, out
        assert up.proc.poll() is None  # `up` itself never stopped
    finally:
        code = up.stop()
    assert code == 0, up.output()[-3000:]
    output = up.output()
    assert "worker exited (killed by SIGKILL); restart 1 in" in output and "stopped" in output
    # The restarted worker resumed from the checkpoint written before the kill.
    log = (settings.data_dir / "logs" / "worker.log").read_text(errors="replace")
    after = log[log.index("--- livelearn up: worker restart 1 (after killed by SIGKILL)") :]
    assert re.search(r"resumed \S+ from checkpoint at offsets \{\d", after), after[-3000:]
    assert "a streams.py of the working directory" not in log + output
    state = load_checkpoint(settings.data_dir / "online" / f"{settings.models.name}.ckpt")
    assert state is not None and sum(state["offsets"].values()) == len(rows)
    assert OnlineLearner.restore(state["learner"]).n_learned == len(rows)  # each label once
    m = settings.models
    assert collection_state(settings.milvus_uri, settings.milvus.collection) == expected_chunks(
        docs, m.chunk_tokens, m.chunk_overlap
    )
    final = up.state()
    assert final is not None and final.stopped and not final.alive()
    dupes = sum(len(v) - 1 for v in predicted.values())
    print(
        f"\nup, kill -9 of the worker: back and healthy {back_s:.1f} s after the kill; "
        f"{len(predicted)} events predicted ({dupes} twice: replayed after the checkpoint), "
        f"{len(docs)} docs indexed"
    )


def test_a_worker_that_keeps_crashing_fails_up_with_the_end_of_its_log(
    settings: Settings, tmp_path: Path
) -> None:
    """More crashes within the window than the restarts allowed: `up` says which child
    failed, how, and shows the end of its log; it stops everything and exits 1."""
    up = Up(settings, tmp_path, LIVELEARN_SUPERVISOR__MAX_RESTARTS="1",
            LIVELEARN_SUPERVISOR__RESTART_BACKOFF_S="0.5")  # fmt: skip
    try:
        for restarts in (0, 1):
            worker = up.worker(state="running", restarts=restarts)
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
        code = up.proc.wait(120)
    finally:
        up.stop()
    output = up.output()
    assert code == 1, output[-3000:]
    assert "worker failed: it crashed 2 times within 300 s (last: killed by SIGKILL)" in output
    assert "--- livelearn up: worker restart 1 (after killed by SIGKILL)" in output  # its log
    state = up.state()
    assert state is not None and state.stopped
    assert [(c.name, c.state, c.restarts) for c in state.children] == [("worker", "failed", 1)]


def test_sigterm_while_the_worker_waits_for_its_restart(settings: Settings, tmp_path: Path) -> None:
    """SIGTERM during a restart's backoff stops everything at once and cleanly (exit 0); the
    worker is not started again."""
    up = Up(settings, tmp_path, LIVELEARN_SUPERVISOR__RESTART_BACKOFF_S="120",
            LIVELEARN_SUPERVISOR__RESTART_BACKOFF_MAX_S="300")  # fmt: skip
    try:
        worker = up.worker(state="running")
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        waiting = up.worker(state="restarting")
        assert waiting.restart_at is not None and waiting.restart_at - time.time() > 60
        asked = time.monotonic()
        code = up.stop(signal.SIGTERM, timeout_s=60)
        took = time.monotonic() - asked
    finally:
        up.stop()
    assert code == 0 and took < 30, up.output()[-3000:]
    assert "stopped" in up.output()
    state = up.state()
    assert state is not None and state.stopped
    assert [(c.state, c.restarts) for c in state.children] == [("stopped", 0)]
    log = (settings.data_dir / "logs" / "worker.log").read_text(errors="replace")
    assert log.count("--- livelearn up: worker") == 1  # started once, never again


def test_kafka_lost_exits_3_when_so_set(tmp_path: Path) -> None:
    """`LIVELEARN_SUPERVISOR__ON_BROKER_LOSS=exit`: the cluster `up` uses stops answering for
    longer than `..._BROKER_LOSS_S`; `up` says so, stops its children and exits 3."""
    broker = LocalBroker(tmp_path / "cluster", broker_settings())
    bootstrap = broker.start()
    try:
        s = make_settings(tmp_path / "data", bootstrap)
        ensure_topics(admin_client(s, bootstrap), topic_specs(s.topics))
        loss = {
            "LIVELEARN_SUPERVISOR__ON_BROKER_LOSS": "exit",
            "LIVELEARN_SUPERVISOR__BROKER_LOSS_S": "5",
            "LIVELEARN_SHUTDOWN_TIMEOUT_S": "10",
        }
        up = Up(s, tmp_path, **loss)
        try:
            up.healthy()
            assert "process worker" in up.status()
            broker.stop()
            lost_at = time.monotonic()
            code = up.proc.wait(180)
            took = time.monotonic() - lost_at
        finally:
            up.stop(signal.SIGKILL)
    finally:
        broker.stop()
    output = up.output()
    assert code == 3, output[-3000:]
    assert "Kafka lost" in output and "is unreachable" in output and "KafkaError{" not in output
    state = up.state()
    assert state is not None and state.stopped and state.children[0].state == "stopped"
    print(f"\nup, Kafka lost: exited 3 after {took:.1f} s (children stopped)")


def test_the_embedded_broker_killed_under_up_comes_back(tmp_path: Path) -> None:
    """With no Kafka configured `up` starts the embedded broker and supervises it like its
    children: killed (-9), it is started again on the same port with its data, the worker
    reconnects, every event is predicted and every label learned once."""
    s = make_settings(tmp_path / "data", "")  # no bootstrap servers: the embedded broker
    up = Up(s, tmp_path, LIVELEARN_SUPERVISOR__RESTART_BACKOFF_S="1",
            LIVELEARN_MODELS__CHECKPOINT_EVERY_RECORDS="100")  # fmt: skip
    rows = list(datasets.Phishing())[:600]
    try:
        up.healthy()
        kafka = up.child("kafka", state="running")
        assert kafka.pid is not None
        client = LiveLearnClient(s)  # finds the broker `up` started (its state file)
        for i, (x, y) in enumerate(rows[:300]):
            client.send_event(f"p{i}", features=x, label=y)
        client.flush()
        wait_predicted(s, {f"p{i}" for i in range(300)})
        os.kill(kafka.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        again = up.child("kafka", timeout_s=180, state="running", restarts=1)
        assert again.pid != kafka.pid and again.last_exit == "killed by SIGKILL"
        back_s = time.monotonic() - killed_at
        for i, (x, y) in enumerate(rows[300:], 300):
            client.send_event(f"p{i}", features=x, label=y)
        client.flush(120)
        predicted = wait_predicted(s, {f"p{i}" for i in range(len(rows))}, timeout_s=180)
        wait_checkpoint(s, len(rows), timeout_s=120)
        out = up.status()
        kafka_row = next(line for line in out.splitlines() if "process kafka" in line)
        assert "running" in kafka_row and "restarts 1" in kafka_row, out
        worker_restarts = up.child("worker").restarts
    finally:
        code = up.stop()
    assert code == 0, up.output()[-3000:]
    assert "kafka exited (killed by SIGKILL); restart 1 in" in up.output()
    state = load_checkpoint(s.data_dir / "online" / f"{s.models.name}.ckpt")
    assert state is not None and sum(state["offsets"].values()) == len(rows)
    assert OnlineLearner.restore(state["learner"]).n_learned == len(rows)  # each label once
    assert LocalBroker(s.data_dir).running() is None  # `up` stopped the broker it started
    print(f"\nup, kill -9 of the embedded broker: back {back_s:.1f} s after the kill; "
          f"{len(predicted)} events predicted; worker restarts {worker_restarts}")  # fmt: skip
