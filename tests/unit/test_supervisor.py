"""`livelearn up`'s supervision without Kafka: the restart policy (pure), the Kafka errors in
words, the state file, and the supervisor loop over real (tiny) child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from rich.console import Console

from streams.settings import SupervisorSettings
from streams.status import KafkaProblem, Snapshot, describe_error
from streams.supervisor import (
    Child,
    ChildSpec,
    ChildStatus,
    GiveUp,
    Restart,
    RestartPolicy,
    Supervisor,
    child_command,
)
from streams.up import SupervisorState, read_state, status_table, write_state

ROOT = Path(__file__).resolve().parents[2]

# -- the restart policy -------------------------------------------------------------------


def test_the_wait_doubles_up_to_the_cap() -> None:
    policy = RestartPolicy(base_s=0.5, cap_s=5.0, jitter=0.0)
    assert [policy.delay_s(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert policy.delay_s(10_000) == 5.0  # no overflow however many crashes


def test_jitter_only_shortens_the_wait_and_by_at_most_its_fraction() -> None:
    policy = RestartPolicy(base_s=2.0, cap_s=8.0, jitter=0.25)
    for crashes in (1, 2, 3, 9):
        full = RestartPolicy(base_s=2.0, cap_s=8.0, jitter=0.0).delay_s(crashes)
        waits = [policy.delay_s(crashes, rand / 100) for rand in range(100)]
        assert max(waits) == full and min(waits) >= 0.75 * full
        assert len(set(waits)) == 100  # spread, so two children do not restart in step


def test_crashes_outside_the_window_are_forgotten() -> None:
    policy = RestartPolicy(base_s=1.0, cap_s=60.0, jitter=0.0, window_s=100.0, max_restarts=3)
    assert policy.decide([], now=1000.0) == Restart(1.0, 1)
    assert policy.decide([990.0], now=1000.0) == Restart(2.0, 2)
    assert policy.decide([980.0, 990.0], now=1000.0) == Restart(4.0, 3)
    assert policy.decide([970.0, 980.0, 990.0], now=1000.0) == GiveUp(4)
    # The same crashes long ago: it ran well since, so it starts over.
    assert policy.decide([70.0, 80.0, 90.0], now=1000.0) == Restart(1.0, 1)


def test_max_restarts_zero_fails_on_the_first_crash() -> None:
    assert RestartPolicy(max_restarts=0).decide([], now=5.0) == GiveUp(1)


def test_policy_from_settings() -> None:
    s = SupervisorSettings(restart_backoff_s=2, restart_backoff_max_s=9, restart_jitter=0.1,
                           crash_window_s=50, max_restarts=7)  # fmt: skip
    assert RestartPolicy.from_settings(s) == RestartPolicy(2.0, 9.0, 0.1, 50.0, 7)


# -- Kafka errors in words --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (KafkaError.NOT_LEADER_FOR_PARTITION, "starting"),
        (KafkaError.LEADER_NOT_AVAILABLE, "starting"),
        (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, "starting"),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, "starting"),
        (KafkaError._TRANSPORT, "unreachable"),
        (KafkaError._ALL_BROKERS_DOWN, "unreachable"),
        (KafkaError._TIMED_OUT, "unreachable"),
        (KafkaError.SASL_AUTHENTICATION_FAILED, "denied"),
        (KafkaError.INVALID_CONFIG, "error"),
    ],
)
def test_kafka_errors_are_said_in_words(code: int, state: str) -> None:
    exc = KafkaException(KafkaError(code, "Failed to get watermark offsets: Broker: whatever"))
    problem = describe_error(exc, "localhost:9092")
    assert problem.state == state
    text = str(problem)
    assert "KafkaError{" not in text and text.startswith("Kafka at localhost:9092")
    assert KafkaError(code).name() in text  # the code stays, for a search or a bug report


def test_the_issue_s_error_reads_as_starting() -> None:
    text = "Failed to get watermark offsets: Broker: Not leader for partition"
    err = KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, text)
    text = str(describe_error(KafkaException(err), "127.0.0.1:40000"))
    assert "is starting" in text and "try again" in text


def test_other_errors_keep_their_type_and_message() -> None:
    problem = describe_error(OSError("disk full"), "b:1")
    assert problem.state == "error" and "OSError: disk full" in str(problem)


# -- the state file and the table -------------------------------------------------------------


def test_state_file_round_trip_and_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.json"
    now = time.time()
    children = [
        ChildStatus("worker", "running", 123, 2, now - 65, None, "killed by SIGKILL", "w.log"),
        ChildStatus("trainer", "restarting", None, 0, now - 5, now + 4, "exit code 1", "t.log"),
    ]
    state = SupervisorState(os.getpid(), "b:9092", now - 100, now, children, "")
    write_state(path, state)
    assert read_state(path) == state
    assert state.alive()  # this process wrote it and runs
    assert [p.name for p in tmp_path.iterdir()] == ["supervisor.json"]  # no temporary left
    assert not SupervisorState(os.getpid(), "b", 0, 0, [], stopped=True).alive()
    path.write_text("{not json")
    assert read_state(path) is None
    assert read_state(tmp_path / "missing.json") is None


def test_a_dead_supervisor_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not SupervisorState(proc.pid, "b", 0, 0, []).alive()


def _render(table: object) -> str:
    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text()


def test_table_shows_state_restarts_and_uptime() -> None:
    now = time.time()
    children = [
        ChildStatus("worker", "running", 4242, 1, now - 125, None, "killed by SIGKILL"),
        ChildStatus("trainer", "restarting", None, 3, now - 20, now + 7.2, "exit code 1"),
        ChildStatus("indexer", "failed", None, 5, now - 20, None, "exit code 2"),
    ]
    text = _render(status_table(Snapshot("b:9092"), "b:9092", children))
    assert "running, pid 4242, up 2m05s, restarts 1" in text
    assert "restarting in 7 s (exit code 1), restarts 3" in text
    assert "failed (exit code 2), restarts 5" in text
    assert "serving version" in text


def test_table_says_what_is_wrong_with_kafka() -> None:
    problem = KafkaProblem("starting", "b:9092", "NOT_LEADER_FOR_PARTITION")
    text = _render(status_table(problem, "b:9092", [ChildStatus("worker", "running", 1)]))
    assert "is starting" in text and "process worker" in text and "KafkaError" not in text


# -- the supervisor over real processes ---------------------------------------------------------


def _spec(tmp_path: Path, name: str, code: str) -> ChildSpec:
    return ChildSpec(name, [], {}, tmp_path / f"{name}.log", argv=[sys.executable, "-c", code])


def _tick_until(sup: Supervisor, done: object, timeout_s: float = 30.0) -> list[str]:
    events: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, events
        events += sup.tick()
        time.sleep(0.02)
    return events


def test_a_crashing_child_is_restarted_with_backoff_then_failed(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "crasher", "print('boom', flush=True); raise SystemExit(4)")
    policy = RestartPolicy(base_s=0.2, cap_s=0.4, jitter=0.0, window_s=60, max_restarts=3)
    sup = Supervisor([spec], policy)
    sup.start()
    started = time.monotonic()
    events = _tick_until(sup, sup.failed)
    took = time.monotonic() - started
    assert took >= 0.2 + 0.4 + 0.4  # waited 0.2, 0.4, 0.4 (the cap) between the starts
    (status,) = sup.statuses()
    assert (status.state, status.restarts, status.last_exit) == ("failed", 3, "exit code 4")
    exits = [e.split(";")[0] for e in events if "exited" in e]
    assert exits == ["crasher exited (exit code 4)"] * 3
    message = sup.failure_message("crasher")
    assert message == events[-1]
    assert "crashed 4 times within 60 s (last: exit code 4)" in message
    assert message.rstrip().endswith("boom")  # the end of its log
    log = spec.log.read_text()
    assert log.count("boom") == 4 and log.count("--- livelearn up: crasher restart") == 3


def test_a_child_killed_by_a_signal_comes_back_and_is_counted(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "sleeper", "import time; time.sleep(600)")
    sup = Supervisor([spec], RestartPolicy(base_s=0.1, jitter=0.0))
    sup.start()
    try:
        (first,) = sup.statuses()
        assert first.state == "running" and first.pid is not None
        os.kill(first.pid, 9)
        _tick_until(sup, lambda: sup.statuses()[0].restarts == 1)
        (again,) = sup.statuses()
        assert again.state == "running" and again.pid not in (None, first.pid)
        assert again.last_exit == "killed by SIGKILL"
    finally:
        sup.stop(timeout_s=10)
    assert sup.statuses()[0].state == "stopped"


def test_stop_while_a_child_waits_for_its_restart_starts_nothing(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "once", "raise SystemExit(1)")
    other = _spec(tmp_path, "steady", "import time; time.sleep(600)")
    sup = Supervisor([spec, other], RestartPolicy(base_s=30.0, jitter=0.0))
    sup.start()
    _tick_until(sup, lambda: sup.statuses()[0].state == "restarting")
    steady_pid = sup.statuses()[1].pid
    assert steady_pid is not None
    started = time.monotonic()
    sup.stop(timeout_s=10)
    assert time.monotonic() - started < 10  # no waiting out the 30 s backoff
    assert [s.state for s in sup.statuses()] == ["stopped", "stopped"]
    assert sup.tick() == []  # a stopped supervisor starts nothing again
    with pytest.raises(ProcessLookupError):
        os.kill(steady_pid, 0)
    assert spec.log.read_text().count("--- livelearn up: once") == 1


def test_children_are_not_shadowed_by_the_working_directory(tmp_path: Path) -> None:
    """`python -m streams` from a folder holding a `streams.py` would run that file; the
    children run with ``-P`` (and the package's folder on PYTHONPATH when needed)."""
    (tmp_path / "streams.py").write_text("raise SystemExit('the wrong streams')\n")
    assert child_command(["worker"])[1:4] == ["-P", "-m", "streams"]
    cwd = os.getcwd()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)  # as a checkout run without installing would have it
    os.chdir(tmp_path)
    try:
        child = Child(["config", "--markdown"], env, tmp_path / "config.log")
        assert child.proc.wait(120) == 0, (tmp_path / "config.log").read_text()
        child.stop()
    finally:
        os.chdir(cwd)
    out = (tmp_path / "config.log").read_text()
    assert "LIVELEARN_SUPERVISOR__MAX_RESTARTS" in out and "wrong streams" not in out


def test_a_child_that_cannot_start_counts_as_a_crash(tmp_path: Path) -> None:
    """E.g. an embedded broker that does not come up: restarted with backoff, then failed."""
    tries: list[float] = []

    def start() -> Child:
        tries.append(time.monotonic())
        raise RuntimeError("the broker did not start; see its log")

    spec = ChildSpec("kafka", [], {}, tmp_path / "kafka.log", start=start, mark_log=False)
    sup = Supervisor([spec], RestartPolicy(base_s=0.1, jitter=0.0, max_restarts=2))
    events = sup.start()
    assert events == ["kafka exited (could not start: the broker did not start; see its log); "
                      "restart 1 in 0.1 s"]  # fmt: skip
    events += _tick_until(sup, sup.failed)
    assert len(tries) == 3 and tries[2] - tries[1] >= 0.2  # 0.1 s, then 0.2 s
    assert "kafka failed: it crashed 3 times" in events[-1]
    assert not spec.log.exists()  # mark_log=False: a log that is not ours stays untouched


def test_what_a_dead_child_started_does_not_outlive_it(tmp_path: Path) -> None:
    code = "import subprocess; print(subprocess.Popen(['sleep', '600']).pid, flush=True)"
    child = Child([], {}, tmp_path / "c.log", argv=[sys.executable, "-c", code])
    assert child.proc.wait(60) == 0
    grandchild = int((tmp_path / "c.log").read_text().split()[0])
    os.kill(grandchild, 0)  # still there, in the child's session
    child.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            return
        # Reaped by init once killed; until then it is a zombie (or not yet signalled).
        try:
            stat = Path(f"/proc/{grandchild}/stat").read_text()
        except FileNotFoundError:
            return
        if stat.split(")")[-1].split()[0] == "Z":
            return
        time.sleep(0.05)
    raise AssertionError("the grandchild still runs")
