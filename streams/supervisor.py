"""Process supervision for ``livelearn up``: when to restart, the children, their table.

The pieces (the ``up`` command that runs them is :mod:`streams.up`):

* :class:`RestartPolicy` (pure): a child that exits is started again after a wait that
  doubles with each crash within a window, made up to a fraction shorter at random so that
  children do not restart in step; more than ``max_restarts`` crashes within the window and
  it is *failed*;
* :class:`Child` (a ``livelearn <command>`` child process, ``python -P`` so that a
  ``streams.py`` in the working directory cannot stand in for the package, with its own log)
  and :class:`BrokerProcess` (the embedded broker, supervised the same way);
* :class:`Supervisor`: the children and their restarts, one :meth:`Supervisor.tick` at a
  time, and :class:`ChildStatus`, one child as the status table shows it.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import streams
from streams.broker import LocalBroker
from streams.exceptions import BrokerError
from streams.settings import SupervisorSettings

__all__ = [
    "BrokerProcess",
    "Child",
    "ChildSpec",
    "ChildStatus",
    "GiveUp",
    "Process",
    "Restart",
    "RestartPolicy",
    "Supervisor",
    "child_command",
    "child_env",
    "exit_reason",
    "tail",
]

# -- the policy: pure ------------------------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    """Start the child again in ``delay_s`` seconds; ``crashes`` within the window so far."""

    delay_s: float
    crashes: int


@dataclass(frozen=True)
class GiveUp:
    """The child crashed ``crashes`` times within the window: it is failed."""

    crashes: int


@dataclass(frozen=True)
class RestartPolicy:
    """When a crashed child is started again, and when it counts as failed.

    The wait doubles with each crash within ``window_s`` (``base_s``, 2 ``base_s``, 4 ...) up
    to ``cap_s``, and is made up to ``jitter`` (a fraction) shorter at random; crashes older
    than the window are forgotten, so a child that ran well for a while starts over at
    ``base_s``. More than ``max_restarts`` crashes within the window: give up.

    >>> policy = RestartPolicy(base_s=1, cap_s=10, jitter=0, window_s=60, max_restarts=3)
    >>> [policy.delay_s(n) for n in range(1, 7)]
    [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    >>> policy.decide([], now=100.0)  # the first crash
    Restart(delay_s=1.0, crashes=1)
    >>> policy.decide([10.0, 20.0, 90.0, 95.0], now=100.0)  # 10 and 20 are out of the window
    Restart(delay_s=4.0, crashes=3)
    >>> policy.decide([50.0, 60.0, 70.0], now=100.0)  # a 4th crash within 60 s: failed
    GiveUp(crashes=4)
    >>> RestartPolicy(base_s=4, jitter=0.25).delay_s(1, rand=1.0)  # at most 25% shorter
    3.0
    """

    base_s: float = 1.0
    cap_s: float = 60.0
    jitter: float = 0.2
    window_s: float = 300.0
    max_restarts: int = 5

    @classmethod
    def from_settings(cls, s: SupervisorSettings) -> RestartPolicy:
        return cls(s.restart_backoff_s, s.restart_backoff_max_s, s.restart_jitter,
                   s.crash_window_s, s.max_restarts)  # fmt: skip

    def delay_s(self, crashes: int, rand: float = 0.0) -> float:
        """The wait after the ``crashes``-th crash in the window; ``rand`` in [0, 1) spreads it."""
        doubled = self.base_s * 2.0 ** min(max(crashes - 1, 0), 62)
        return min(self.cap_s, doubled) * (1.0 - self.jitter * rand)

    def decide(
        self, crash_times: Sequence[float], now: float, rand: float = 0.0
    ) -> Restart | GiveUp:
        """What to do about a crash at ``now``, given the times of the earlier ones."""
        crashes = 1 + sum(1 for t in crash_times if now - t <= self.window_s)
        if crashes > self.max_restarts:
            return GiveUp(crashes)
        return Restart(self.delay_s(crashes, rand), crashes)


# -- one child process -------------------------------------------------------------------------


def child_command(args: Sequence[str]) -> list[str]:
    """``python -P -m streams <args>``: ``-P`` keeps the working directory off ``sys.path``, so
    a ``streams.py`` (or ``trainers/``) there cannot stand in for the package."""
    return [sys.executable, "-P", "-m", "streams", *args]


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env``, plus the folder this ``streams`` package was imported from on ``PYTHONPATH``
    when ``-P`` would otherwise lose it (``python -m streams`` run from a source checkout)."""
    out = dict(env)
    root = str(Path(streams.__file__).resolve().parent.parent)
    # Without -P (sys.flags.safe_path), sys.path[0] is the working or script directory: -P drops it.
    kept = sys.path if sys.flags.safe_path else sys.path[1:]
    if not any(p and Path(p).resolve() == Path(root) for p in kept):
        out["PYTHONPATH"] = os.pathsep.join(p for p in (root, out.get("PYTHONPATH", "")) if p)
    return out


class Child:
    """A ``livelearn <command>`` child process (``argv`` overrides it) with its own log file.

    >>> import sys, tempfile
    >>> log = Path(tempfile.mkdtemp()) / "hello.log"
    >>> child = Child(["hello"], {}, log, argv=[sys.executable, "-c", "print('hi')"])
    >>> child.proc.wait(30), child.stop(), log.read_text()
    (0, 0, 'hi\\n')
    >>> child.exit_reason()
    'exit code 0'
    """

    def __init__(
        self, args: list[str], env: Mapping[str, str], log: Path, argv: list[str] | None = None
    ) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.log_path = log
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            argv or child_command(args), env=child_env(env), stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_reason(self) -> str:
        """``exit code N`` or ``killed by SIGNAME`` (empty while it runs)."""
        return exit_reason(self.proc.poll())

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (clean shutdown), then SIGKILL after ``timeout_s``; the exit code."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:  # it exited between poll() and killpg()
                self.proc.wait(10)
        else:  # it died by itself: what it started in its session must not outlive it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        return self.proc.returncode


def exit_reason(code: int | None) -> str:
    """How a process ended, from its return code ('' while it runs).

    >>> exit_reason(None), exit_reason(1), exit_reason(-9)
    ('', 'exit code 1', 'killed by SIGKILL')
    """
    if code is None:
        return ""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Process(Protocol):
    """What the supervisor needs of a running thing (:class:`Child`, :class:`BrokerProcess`)."""

    proc: subprocess.Popen[bytes]

    def alive(self) -> bool: ...

    def exit_reason(self) -> str: ...

    def stop(self, timeout_s: float = 60.0) -> int | None: ...


class BrokerProcess:
    """The embedded broker that ``up`` started, supervised like a child: starting it again
    keeps its port and its data on disk, so the children reconnect by themselves."""

    def __init__(self, broker: LocalBroker) -> None:
        self.broker = broker
        broker.start()  # waits until it answers (reuses it when it already runs)
        if broker.proc is None:
            raise BrokerError("the embedded broker runs, but not as a process of this one")
        self.proc = broker.proc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_reason(self) -> str:
        return exit_reason(self.proc.poll())

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (a clean shutdown), then SIGKILL; the exit code."""
        if self.proc.poll() is None:
            self.broker.stop(min(timeout_s, 30.0))
        self.broker.proc = None
        return self.proc.poll()


def tail(path: Path, lines: int = 20, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of a (log) file, '' when there is none."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


# -- the supervisor: children and their restarts ----------------------------------------------

ChildState = Literal["running", "restarting", "failed", "stopped"]


@dataclass(frozen=True)
class ChildSpec:
    """What to run: ``livelearn <args>`` (or ``argv``, or ``start()``) with ``env``, logging to
    ``log`` (where each run's first line is marked, unless ``mark_log`` is false)."""

    name: str
    args: list[str]
    env: Mapping[str, str]
    log: Path
    argv: list[str] | None = None
    start: Callable[[], Process] | None = None
    mark_log: bool = True


@dataclass(frozen=True)
class ChildStatus:
    """One child as the status table and ``supervisor.json`` show it (wall-clock times)."""

    name: str
    state: ChildState
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None  # when the current (or last) process started
    restart_at: float | None = None  # state "restarting": when it starts again
    last_exit: str = ""  # how the last process ended, e.g. "killed by SIGKILL"
    log: str = ""

    def describe(self, now: float) -> str:
        """``running, pid 12, up 3m05s, restarts 1`` / ``restarting in 4 s (...)`` / ..."""
        restarts = f"restarts {self.restarts}"
        if self.state == "running":
            up = _duration(now - (self.started_at or now))
            return f"running, pid {self.pid}, up {up}, {restarts}"
        if self.state == "restarting":
            wait = max(0.0, (self.restart_at or now) - now)
            return f"restarting in {wait:.0f} s ({self.last_exit}), {restarts}"
        if self.state == "failed":
            return f"failed ({self.last_exit}), {restarts}"
        return f"stopped ({self.last_exit or 'by livelearn up'}), {restarts}"


def _duration(seconds: float) -> str:
    """``12s``, ``3m05s``, ``2h07m``.

    >>> _duration(12.4), _duration(185), _duration(7620)
    ('12s', '3m05s', '2h07m')
    """
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class _Slot:
    """A child's process and history (monotonic times, for the decisions)."""

    spec: ChildSpec
    child: Process | None = None
    state: ChildState = "stopped"
    restarts: int = 0
    crashes: list[float] = field(default_factory=list)
    started_wall: float | None = None
    restart_mono: float | None = None
    restart_wall: float | None = None
    last_exit: str = ""


class Supervisor:
    """Runs children and restarts those that exit, as :class:`RestartPolicy` says.

    The loop calls :meth:`tick` a few times a second; it returns what happened, in words.
    Nothing here blocks longer than starting a process (the embedded broker's: until it
    answers), so a signal is acted on at the next tick.

    >>> import sys, tempfile
    >>> log = Path(tempfile.mkdtemp()) / "crash.log"
    >>> spec = ChildSpec("crash", [], {}, log, argv=[sys.executable, "-c", "raise SystemExit(3)"])
    >>> sup = Supervisor([spec], RestartPolicy(base_s=0.1, jitter=0, max_restarts=1))
    >>> sup.start()  # what went wrong starting them: nothing
    []
    >>> while not sup.failed():
    ...     events = sup.tick()
    ...     time.sleep(0.05)
    >>> [(c.state, c.restarts, c.last_exit) for c in sup.statuses()]
    [('failed', 1, 'exit code 3')]
    >>> print(sup.failure_message("crash"))  # doctest: +ELLIPSIS
    crash failed: it crashed 2 times within 300 s (last: exit code 3); the end of .../crash.log:
    --- livelearn up: crash start at ... ---
    --- livelearn up: crash restart 1 (after exit code 3) at ... ---
    """

    def __init__(
        self, specs: Sequence[ChildSpec], policy: RestartPolicy,
        rand: Callable[[], float] | None = None,
    ) -> None:  # fmt: skip
        self.policy = policy
        self.rand = rand or random.random
        self.slots = {spec.name: _Slot(spec) for spec in specs}

    def start(self) -> list[str]:
        """Start every child, in order; what went wrong, in words (those are restarting)."""
        events = []
        for slot in self.slots.values():
            failed = self._spawn(slot, "start")
            if failed:
                events.append(self._on_exit(slot, failed, time.monotonic()))
        return events

    def _spawn(self, slot: _Slot, why: str) -> str:
        """Start ``slot``'s process; '' or, if it could not start, why (a crash, then)."""
        spec = slot.spec
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        if spec.mark_log:
            with spec.log.open("ab") as log:  # marks where each run's lines begin
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                log.write(f"--- livelearn up: {spec.name} {why} at {stamp} ---\n".encode())
        slot.restart_mono = slot.restart_wall = None
        slot.state, slot.started_wall = "running", time.time()
        try:
            if spec.start is not None:
                slot.child = spec.start()
            else:
                slot.child = Child(spec.args, spec.env, spec.log, argv=spec.argv)
        except Exception as exc:  # e.g. a broker that does not come up: counted as a crash
            slot.child = None
            return f"could not start: {exc}"
        return ""

    def _on_exit(self, slot: _Slot, reason: str, now: float) -> str:
        """Record a crash and decide: restarting (when) or failed; what happened, in words."""
        slot.last_exit = reason
        decision = self.policy.decide(slot.crashes, now, self.rand())
        slot.crashes = [t for t in slot.crashes if now - t <= self.policy.window_s] + [now]
        if isinstance(decision, GiveUp):
            slot.state = "failed"
            return self.failure_message(slot.spec.name)
        slot.state = "restarting"
        slot.restart_mono = now + decision.delay_s
        slot.restart_wall = time.time() + decision.delay_s
        return (f"{slot.spec.name} exited ({reason}); restart {slot.restarts + 1} in "
                f"{decision.delay_s:.1f} s")  # fmt: skip

    def tick(self) -> list[str]:
        """Notice exits, decide, start the children whose wait is over; what happened."""
        events: list[str] = []
        for slot in self.slots.values():
            now = time.monotonic()
            if slot.state == "running" and slot.child is not None and not slot.child.alive():
                reason = slot.child.exit_reason()
                slot.child.stop()  # closes its log
                events.append(self._on_exit(slot, reason, now))
            elif slot.state == "restarting" and now >= (slot.restart_mono or now):
                slot.restarts += 1
                failed = self._spawn(slot, f"restart {slot.restarts} (after {slot.last_exit})")
                if failed:
                    events.append(self._on_exit(slot, failed, time.monotonic()))
                    continue
                pid = slot.child.proc.pid if slot.child else None
                events.append(f"{slot.spec.name} restarted (pid {pid}, restart {slot.restarts})")
        return events

    def failed(self) -> list[str]:
        """Names of the children that crashed too often."""
        return [name for name, slot in self.slots.items() if slot.state == "failed"]

    def failure_message(self, name: str, lines: int = 20) -> str:
        """Why ``name`` failed, with the last ``lines`` lines of its log."""
        slot = self.slots[name]
        n = len([t for t in slot.crashes if slot.crashes[-1] - t <= self.policy.window_s])
        return (f"{name} failed: it crashed {n} times within {self.policy.window_s:.0f} s "
                f"(last: {slot.last_exit}); the end of {slot.spec.log}:\n"
                f"{tail(slot.spec.log, lines)}")  # fmt: skip

    def statuses(self) -> list[ChildStatus]:
        out = []
        for name, slot in self.slots.items():
            running = slot.state == "running" and slot.child is not None
            out.append(ChildStatus(
                name, slot.state, slot.child.proc.pid if running and slot.child else None,
                slot.restarts, slot.started_wall, slot.restart_wall, slot.last_exit,
                str(slot.spec.log),
            ))  # fmt: skip
        return out

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop every child (SIGTERM, then SIGKILL after ``timeout_s``), last started first;
        a child waiting for its restart is not started again."""
        for slot in reversed(list(self.slots.values())):
            if slot.state == "running" and slot.child is not None:
                died = slot.child.exit_reason()  # '' while it runs
                slot.child.stop(timeout_s)
                slot.last_exit = died or "stopped by livelearn up"
            slot.state = "stopped" if slot.state != "failed" else "failed"
            slot.restart_mono = slot.restart_wall = None
