"""The worker's own threads beside the faust agents (the learner loop, the predictor replica).

A :class:`ThreadSupervisor` knows each thread by name with the factory that makes it: it
starts them, starts again one that died (a Kafka error the loop did not expect, the broker
restarting under it: a new one resumes from the checkpoint, as another worker taking over
would), stops and joins them at shutdown, and says how each is doing for ``/healthz``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from streams import metrics

log = logging.getLogger(__name__)

__all__ = ["ThreadSupervisor", "WorkerThread"]


class WorkerThread(Protocol):
    """What the supervisor needs of a thread (:class:`streams.learner_worker.LearnerLoop`)."""

    name: str
    #: Set by :meth:`stop`: a thread that ends after it was asked to is not started again.
    stop_event: threading.Event
    #: What the thread died of (None while it runs, or after a clean stop).
    error: BaseException | None

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


@dataclass
class _Slot:
    make: Callable[[], WorkerThread]
    thread: WorkerThread | None = None
    restarts: int = 0


class ThreadSupervisor:
    """Named threads, each made by its factory: started, restarted when they die, stopped.

    >>> import threading, time
    >>> class Once(threading.Thread):
    ...     def __init__(self):
    ...         super().__init__(daemon=True)
    ...         self.stop_event, self.error = threading.Event(), None
    ...     def run(self):
    ...         self.error = RuntimeError("broker gone")  # dies at once
    ...     def stop(self):
    ...         self.stop_event.set()
    >>> threads = ThreadSupervisor()
    >>> threads.add("learner", Once)
    >>> threads.start()
    >>> while threads.health()["learner"]["alive"]:
    ...     time.sleep(0.01)
    >>> threads.watch()  # dead without being asked to stop: started again
    ['learner']
    >>> threads.health()["learner"]["restarts"]
    1
    >>> threads.stop(timeout_s=5)
    >>> threads.watch(), threads.health()["learner"]["stopped"]
    ([], True)
    """

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def add(self, name: str, make: Callable[[], WorkerThread]) -> None:
        """Register ``name``; :meth:`start` starts it."""
        if name in self._slots:
            raise ValueError(f"a thread named {name!r} is registered already")
        self._slots[name] = _Slot(make)

    def start(self) -> None:
        """Start every registered thread that has not started yet."""
        for slot in self._slots.values():
            if slot.thread is None:
                slot.thread = self._spawn(slot)

    def watch(self) -> list[str]:
        """Start again each thread that died without being asked to stop; their names."""
        restarted = []
        for name, slot in self._slots.items():
            thread = slot.thread
            if thread is None or thread.is_alive() or thread.stop_event.is_set():
                continue
            metrics.RETRIES.labels(name).inc()
            log.error("the %s thread died (%r); starting it again", name, thread.error)
            slot.restarts += 1
            slot.thread = self._spawn(slot)
            restarted.append(name)
        return restarted

    def stop(self, timeout_s: float = 60.0) -> None:
        """Ask every thread to stop, then wait up to ``timeout_s`` for each (blocking: call
        it off the event loop)."""
        threads = [slot.thread for slot in self._slots.values() if slot.thread is not None]
        for thread in threads:
            thread.stop()
        for thread in threads:
            thread.join(timeout_s)

    def health(self) -> dict[str, dict[str, Any]]:
        """Each thread: alive, stopped (asked to), restarts so far, the error it last died of."""
        out: dict[str, dict[str, Any]] = {}
        for name, slot in self._slots.items():
            t = slot.thread
            out[name] = {
                "alive": bool(t is not None and t.is_alive()),
                "stopped": bool(t is not None and t.stop_event.is_set()),
                "restarts": slot.restarts,
                "error": repr(t.error) if t is not None and t.error is not None else None,
            }
        return out

    @staticmethod
    def _spawn(slot: _Slot) -> WorkerThread:
        thread = slot.make()
        thread.start()
        return thread
