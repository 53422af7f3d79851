"""The trigger policy: when to train, what kind of job, over exactly which offsets.

Reasons: *drift* (by default a warning → fine-tune, a drift → retrain), *volume* (N new
labelled records since the last job), *schedule* (an interval), *manual*. Debounced: a
cooldown between jobs, at most one job in flight per model, and a retrain supersedes a
fine-tune that was asked for but has not started. A drift's job that cannot start yet (a
job in flight, the cooldown) waits and starts when it can: the detector signals a change
once, so a dropped signal would leave the model on the old concept. Every decision is
logged with its reason and kept in :attr:`TriggerPolicy.decisions`.

Offsets: a retrain covers the whole history ``[0, next)`` of every partition; a fine-tune
covers ``[last trained, next)``. A job id is derived from (model, kind, offsets), so the same
decision replayed yields the same job (and the trainer trains it once).

>>> policy = TriggerPolicy("m", "events", volume_threshold=100, cooldown_seconds=60)
>>> for off in range(150):
...     policy.observe(0, off, labelled=True)
>>> job = policy.tick(now=1000.0)
>>> job.kind, job.reason, job.data["offsets"]  # nothing serves yet: a retrain, not a fine-tune
('retrain', 'volume', {'0': [0, 150]})
>>> policy.tick(now=1001.0) is None  # a job is in flight
True
>>> policy.job_update(job.job_id, "promoted", "v1", None)
>>> for off in range(150, 300):
...     policy.observe(0, off, labelled=True)
>>> job = policy.tick(now=2000.0)
>>> job.kind, job.data["offsets"], job.base_version
('finetune', {'0': [150, 300]}, 'v1')
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from trainers.drift.label_free import LABEL_FREE_SIGNALS

log = logging.getLogger(__name__)

__all__ = ["JobRequest", "TriggerPolicy"]


@dataclass(frozen=True)
class JobRequest:
    """A training job to run, with the reason it was decided."""

    job_id: str
    kind: str
    reason: str
    data: dict[str, Any]
    base_version: str | None = None
    detail: str = ""

    def to_record(self, model: str) -> dict[str, Any]:
        """The ``training-jobs`` contract value."""
        record: dict[str, Any] = {
            "job_id": self.job_id, "kind": self.kind, "reason": self.reason, "data": self.data,
            "model": model, "ts": time.time(), "detail": self.detail,
        }  # fmt: skip
        if self.base_version is not None:
            record["base_version"] = self.base_version
        return record


@dataclass
class TriggerPolicy:
    """Decides training jobs for one model over one topic.

    Parameters
    ----------
    model, topic
        The model's name and the topic its data comes from.
    volume_threshold
        New labelled records since the last job that trigger a fine-tune (0 = off).
    schedule_seconds
        Interval of scheduled fine-tunes (None = off).
    cooldown_seconds
        Minimum time between two jobs.
    warning_action, drift_action
        What a drift warning / a drift asks for: ``none``, ``finetune`` or ``retrain``.
    data_drift_action
        What a shift of the input distribution alone asks for (alerts are raised anyway).
    label_free_action
        What a label-free signal (predictions' shift, estimated accuracy) asks for.
    drift_min_records
        Labelled records to wait for after a drift signal before its job starts, so that the
        job's data holds enough of the new concept to learn it and to judge it (0 = at once).
    """

    model: str
    topic: str
    volume_threshold: int = 10_000
    schedule_seconds: float | None = None
    cooldown_seconds: float = 300.0
    warning_action: str = "finetune"
    drift_action: str = "retrain"
    data_drift_action: str = "none"
    label_free_action: str = "none"
    drift_min_records: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)
    trained_offsets: dict[int, int] = field(default_factory=dict)
    labelled_since_job: int = 0
    labelled_total: int = 0
    pending_drift: tuple[str, str, int] | None = None  # (kind, detail, labelled_total then)
    _drift_blocked_noted: bool = field(default=False, init=False, repr=False)
    # Where the stream stood when the pending drift was signalled (per partition).
    drift_since: dict[int, int] | None = field(default=None, init=False, repr=False)
    # The last suppression logged: the same one again (every tick of a cooldown) is debug.
    _suppressed: str | None = field(default=None, init=False, repr=False)
    in_flight: JobRequest | None = None
    in_flight_started: bool = False
    last_job_at: float | None = None
    serving_version: str | None = None
    decisions: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    # The latest time seen, and whether ``last_job_at`` is an age waiting to be rebased: a
    # pickled policy holds how long ago the last job started, not a time on the saving
    # worker's clock, so a worker resuming it with its clock off keeps the cooldown and the
    # schedule as they were.
    _now: float = field(default=0.0, init=False, repr=False)
    _rebase: bool = field(default=False, init=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.last_job_at is not None and not self._rebase:
            state["last_job_at"] = self.last_job_at - self._now
            state["_rebase"] = True
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_now", 0.0)  # pickled before: its times stay as they were
        state.setdefault("_rebase", False)
        self.__dict__.update(state)

    def _clock(self, now: float) -> float:
        if self._rebase:
            if self.last_job_at is not None:
                self.last_job_at = now + self.last_job_at
            self._rebase = False
        self._now = max(self._now, now)
        return now

    def observe(self, partition: int, offset: int, labelled: bool) -> None:
        """Record that ``offset`` of ``partition`` was consumed."""
        self.next_offsets[partition] = max(self.next_offsets.get(partition, 0), offset + 1)
        if labelled:
            self.labelled_since_job += 1
            self.labelled_total += 1

    def _decide(self, message: str) -> None:
        self.decisions.append(message)
        log.info("trigger %s: %s", self.model, message)

    def _offsets(self, kind: str) -> dict[str, list[int]]:
        start = {} if kind == "retrain" else self.trained_offsets
        return {str(p): [start.get(p, 0), n] for p, n in sorted(self.next_offsets.items())}

    def _blocked(self, kind: str, now: float) -> str | None:
        """Why a ``kind`` job cannot start now (one in flight, the cooldown), or None."""
        if self.in_flight is not None:
            running = self.in_flight
            if kind == "retrain" and running.kind == "finetune" and not self.in_flight_started:
                return None  # superseded, see _job
            return f"job {running.job_id} in flight"
        if self.last_job_at is not None and now - self.last_job_at < self.cooldown_seconds:
            return f"cooldown ({self.cooldown_seconds - (now - self.last_job_at):.0f} s left)"
        return None

    def _job(self, kind: str, reason: str, detail: str, now: float) -> JobRequest | None:
        blocked = self._blocked(kind, now)
        if blocked is not None:
            why = f"{reason}: {kind} suppressed, {blocked.split(' (')[0]}"
            if getattr(self, "_suppressed", None) == why:
                log.debug("trigger %s: %s: %s suppressed, %s", self.model, reason, kind, blocked)
            else:
                self._suppressed = why
                self._decide(f"{reason}: {kind} suppressed, {blocked}")
            return None
        self._suppressed = None
        if self.in_flight is not None:
            self._decide(f"{reason}: retrain supersedes pending fine-tune {self.in_flight.job_id}")
        if kind == "finetune" and self.serving_version is None:
            # Nothing serves yet, so there is nothing to continue from: the first version
            # is trained from the base weights on everything.
            kind = "retrain"
        offsets = self._offsets(kind)
        if not any(hi > lo for lo, hi in offsets.values()):
            self._decide(f"{reason}: {kind} skipped, no new data")
            return None
        digest = hashlib.sha1(repr((self.model, kind, sorted(offsets.items()))).encode())
        job = JobRequest(
            job_id=f"{kind}-{reason}-{digest.hexdigest()[:12]}", kind=kind, reason=reason,
            data={"topic": self.topic, "offsets": offsets}, base_version=self.serving_version,
            detail=detail,
        )  # fmt: skip
        self.in_flight, self.in_flight_started = job, False
        self.last_job_at = now
        self.labelled_since_job = 0
        self._decide(f"{reason}: {kind} job {job.job_id} over {offsets} ({detail})")
        return job

    def on_drift(
        self, severity: str, detail: str, now: float | None = None, data: bool = False,
        signal: str = "",
    ) -> JobRequest | None:  # fmt: skip
        """A drift signal: start the job its severity (or, for input drift, the
        ``data_drift_action``; for a label-free ``signal``, the ``label_free_action``) calls
        for, if any."""
        action = self.action_for(severity, data, signal)
        if action == "none":
            self._decide(f"drift: {severity} needs no job ({detail})")
            return None
        now = self._clock(time.time() if now is None else now)
        pending = self.pending_drift
        if pending is None or (action == "retrain" and pending[0] != "retrain"):
            self.pending_drift = (action, detail, self.labelled_total)
            self.drift_since = dict(self.next_offsets)
            self._drift_blocked_noted = False
            if self.drift_min_records:
                self._decide(f"drift: {action} starts after {self.drift_min_records} more "
                             f"labelled records ({detail})")  # fmt: skip
        elif self.drift_min_records:
            self._decide(f"drift: {pending[0]} already asked for ({detail})")
        if self.drift_min_records:
            return None
        blocked = self._blocked(self.pending_drift[0], now)  # type: ignore[index]
        if blocked is not None:
            self._decide(f"drift: {action} deferred, {blocked} ({detail})")
            self._drift_blocked_noted = True
            return None
        return self._start_pending_drift(now)

    def _start_pending_drift(self, now: float) -> JobRequest | None:
        """Start the drift job that waited (for data, a running job or the cooldown)."""
        assert self.pending_drift is not None
        kind, detail, at = self.pending_drift
        self.pending_drift = None
        waited = self.labelled_total - at
        if self.drift_min_records:
            detail = f"{detail}; {waited} labelled records since"
        job = self._job(kind, "drift", detail, now)
        if job is not None and kind == "retrain" and self.drift_since:
            # A retrain covers the whole history, most of it from before the change: the
            # trainer is told where the change was noticed, to validate on what came after
            # and to weigh it as much as the history (see trainers.batch.jobs).
            since = {str(p): o for p, o in sorted(self.drift_since.items())}
            job = replace(job, data={**job.data, "since": since})
            self.in_flight = job
        return job

    def action_for(self, severity: str, data: bool = False, signal: str = "") -> str:
        """The job kind a signal asks for (``none``, ``finetune`` or ``retrain``)."""
        if signal in LABEL_FREE_SIGNALS:
            return self.label_free_action
        if data:
            return self.data_drift_action
        return self.drift_action if severity == "drift" else self.warning_action

    def tick(self, now: float | None = None) -> JobRequest | None:
        """Volume and schedule checks; call it after each batch."""
        now = self._clock(time.time() if now is None else now)
        if self.pending_drift is not None:
            kind, _detail, at = self.pending_drift
            if self.labelled_total - at >= self.drift_min_records:
                # A drift is a one-off signal (the online model adapts, its error falls
                # back): a job that cannot start yet waits for its turn, it is not dropped.
                blocked = self._blocked(kind, now)
                if blocked is None:
                    job = self._start_pending_drift(now)
                    if job is not None:
                        return job
                elif not self._drift_blocked_noted:
                    self._decide(f"drift: {kind} waits, {blocked}")
                    self._drift_blocked_noted = True
        if self.volume_threshold and self.labelled_since_job >= self.volume_threshold:
            if self.in_flight is None:
                return self._job(
                    "finetune", "volume", f"{self.labelled_since_job} new labelled records", now
                )
        if self.schedule_seconds and self.in_flight is None:
            since = now - (self.last_job_at if self.last_job_at is not None else 0.0)
            if self.last_job_at is None or since >= self.schedule_seconds:
                if self.last_job_at is None:
                    self.last_job_at = now  # the schedule starts with the service
                    return None
                return self._job("finetune", "schedule", f"every {self.schedule_seconds} s", now)
        return None

    def manual(self, kind: str, now: float | None = None) -> JobRequest | None:
        """A person asked for a job (the cooldown does not apply; one in flight still does)."""
        self.last_job_at = None
        return self._job(kind, "manual", "requested",
                         self._clock(time.time() if now is None else now))  # fmt: skip

    def job_update(self, job_id: str, status: str, version: str | None = None,
                   offsets: dict[str, list[int]] | None = None) -> None:  # fmt: skip
        """Feedback from ``model-updates``: started, or finished (promoted/rejected/failed).

        A promotion moves the trained offsets whichever job it came from (a manual job, or
        one decided before a restart); the in-flight slot is freed by its own job only.
        """
        if status == "promoted":
            self.serving_version = version
            for p, (_lo, hi) in (offsets or {}).items():
                self.trained_offsets[int(p)] = max(self.trained_offsets.get(int(p), 0), hi)
        if self.in_flight is None or self.in_flight.job_id != job_id:
            return
        if status in ("started", "progress"):
            self.in_flight_started = True
            return
        if status == "promoted":
            self.serving_version = version
            for p, (_lo, hi) in (offsets or self.in_flight.data["offsets"]).items():
                self.trained_offsets[int(p)] = hi
        self._decide(f"job {job_id} finished: {status}")
        self.in_flight, self.in_flight_started = None, False
