"""The webhook sink: ``drift-alerts`` and ``model-updates`` records POSTed to an HTTP endpoint.

Off unless ``LIVELEARN_WEBHOOK__URL`` is set; then every worker runs one :class:`WebhookLoop`
thread in the consumer group ``<prefix>-webhook`` (so each record is sent by one worker).
Slack, Mattermost or Teams incoming webhooks take ``LIVELEARN_WEBHOOK__FORMAT=slack``
(``{"text": "..."}``); anything else gets the record itself as JSON.

A record is tried up to ``max_tries`` times, waiting ``backoff_s``, then twice as long each
time (at most ``backoff_max_s``; a ``Retry-After`` header is honoured within that bound) after
a connection error, a timeout, HTTP 408, 429 or 5xx. Any other answer (HTTP 4xx: the endpoint
will refuse it again), a record that is not JSON, and a record still refused after the last
try go to ``<topic>.dlq`` with the reason. Offsets are committed only once each record of the
batch was delivered or its dead letter acknowledged by Kafka: a worker that stops mid-retry
sends the record again after a restart (at-least-once; the endpoint may see a duplicate).

What a record becomes (pure, no network):

>>> alert = {"alert_id": "a1", "ts": 1.0, "model": "default", "model_version": "v3",
...          "detector": "adwin", "signal": "error_rate", "value": 0.41, "threshold": 0.2,
...          "severity": "drift", "action": "retrain"}
>>> print(slack_text("drift-alerts", alert))
:rotating_light: drift on default (v3): adwin error_rate = 0.41 (threshold 0.2); action: retrain
>>> classify(503), classify(429), classify(404), classify(204)
('retry', 'retry', 'refused', 'delivered')
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from streams import contracts, metrics
from streams.exceptions import DeliveryError
from streams.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "Attempt", "WebhookLoop", "classify", "payload", "register_webhook", "slack_text",
    "worst_case_s",
]  # fmt: skip

Outcome = Literal["delivered", "retry", "refused"]


def classify(status: int) -> Outcome:
    """What an HTTP status means for a record: delivered (2xx), worth another try (408,
    429, 5xx) or refused for good (any other)."""
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "refused"


def slack_text(topic_kind: str, record: Mapping[str, Any]) -> str:
    """One line for a chat channel, for a ``drift-alerts`` or ``model-updates`` record."""
    r = record
    if topic_kind == "drift-alerts":
        icon = ":rotating_light:" if r.get("severity") == "drift" else ":warning:"
        return (f"{icon} {r.get('severity')} on {r.get('model')} ({r.get('model_version')}): "
                f"{r.get('detector')} {r.get('signal')} = {r.get('value')} "
                f"(threshold {r.get('threshold')}); action: {r.get('action')}")  # fmt: skip
    icon = {"promoted": ":rocket:", "rejected": ":no_entry:", "failed": ":x:"}.get(
        str(r.get("status")), ":gear:"
    )
    text = (f"{icon} {r.get('kind')} job {r.get('job_id')} {r.get('status')}: "
            f"{r.get('model_version') or 'no version'}")  # fmt: skip
    if r.get("metrics"):
        text += f"; candidate {orjson.dumps(r['metrics']).decode()}"
    if r.get("baseline_metrics"):
        text += f" vs serving {orjson.dumps(r['baseline_metrics']).decode()}"
    return text


def payload(fmt: str, topic_kind: str, record: Mapping[str, Any]) -> bytes:
    """The request body: the record as JSON, or Slack's ``{"text": ...}``.

    >>> payload("slack", "model-updates", {"kind": "retrain", "job_id": "j1",
    ...         "status": "promoted", "model_version": "v2"})
    b'{"text":":rocket: retrain job j1 promoted: v2"}'
    """
    if fmt == "slack":
        return orjson.dumps({"text": slack_text(topic_kind, record)})
    return orjson.dumps({"topic": topic_kind, "record": record})


@dataclass(frozen=True)
class Attempt:
    """The result of one request: what it means, and why (for the log and the dead letter)."""

    outcome: Outcome
    detail: str
    retry_after_s: float | None = None


def post(url: str, body: bytes, timeout_s: float, authorization: str = "") -> Attempt:
    """POST ``body`` as JSON to ``url``; never raises."""
    headers = {"Content-Type": "application/json", "User-Agent": "livelearn-webhook"}
    if authorization:
        headers["Authorization"] = authorization
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            resp.read()
            return Attempt(classify(resp.status), f"HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
        return Attempt(classify(exc.code), f"HTTP {exc.code} {exc.reason}", retry_after)
    except (OSError, ValueError) as exc:  # refused, reset, timed out, bad URL
        return Attempt("retry", f"{type(exc).__name__}: {exc}")
    finally:
        metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


def worst_case_s(w: Any) -> float:
    """The longest one record can take: every try timing out, every backoff waited.

    >>> from streams.settings import WebhookSettings
    >>> worst_case_s(WebhookSettings())  # 6 tries of 5 s, waits of 0.5, 1, 2, 4 and 8 s
    45.5
    """
    waits = sum(min(w.backoff_s * 2**i, w.backoff_max_s) for i in range(w.max_tries - 1))
    return float(w.max_tries * w.timeout_s + waits)


class WebhookLoop(threading.Thread):
    """Consume ``drift-alerts`` and ``model-updates``; POST each record; commit after.

    ``send`` is the request (``post`` by default): the tests' servers are real HTTP servers,
    this only lets a caller wrap it.
    """

    def __init__(self, settings: Settings, bootstrap: str,
                 send: Callable[[str, bytes, float, str], Attempt] = post) -> None:  # fmt: skip
        super().__init__(name="webhook", daemon=True)
        self.settings, self.bootstrap, self.send = settings, bootstrap, send
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        t = settings.topics
        self.kinds = {t.drift_alerts: "drift-alerts", t.model_updates: "model-updates"}

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the worker's watchdog starts a new one
            self.error = exc
            log.exception("webhook sink stopped")

    def _run(self) -> None:
        from streams.kafka import consumer, producer

        s = self.settings
        worst_s = worst_case_s(s.webhook)
        # A batch must be handled within max.poll.interval.ms, or the group drops this member
        # and the commit fails: small batches when an endpoint may keep us retrying.
        size = max(1, min(50, int(60 / worst_s)))
        poll_ms = min(86_400_000, max(300_000, int((size * worst_s + 60) * 1000)))
        c = consumer(s, self.bootstrap, f"{s.kafka.group_prefix}-webhook",
                     **{"max.poll.interval.ms": poll_ms})  # fmt: skip
        prod = producer(s, self.bootstrap)
        c.subscribe(list(self.kinds))
        try:
            while not self.stop_event.is_set():
                batch = [m for m in c.consume(size, 0.5) if m.error() is None]
                if not batch:
                    continue
                done = self._handle(batch, prod)
                if done:
                    self._commit(c, done)
                if len(done) < len(batch):  # stopping mid-batch: the rest comes again
                    return
        finally:
            c.close()

    def _handle(self, batch: list[Any], prod: Any) -> list[Any]:
        """Deliver or dead-letter each message in order; the ones handled (all, unless a
        stop came first), once their dead letters are durable."""
        from streams.kafka import deliver_or_retry, produce_or_wait

        done: list[Any] = []
        dead = 0
        for m in batch:
            result, reason = self._deliver(m)
            if result == "stopped":
                break  # stopped while retrying: not handled, not committed
            if result == "dead":
                topic = self.settings.topics.dlq(m.topic())
                value = contracts.dead_letter(
                    m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                    f"webhook: {reason}", self.settings.limits.dlq_raw_bytes,
                )  # fmt: skip
                produce_or_wait(prod, topic, contracts.encode(value), m.key())
                metrics.DEAD_LETTERS.labels(m.topic()).inc()
                metrics.WEBHOOK_DELIVERIES.labels(m.topic(), "dead_lettered").inc()
                log.warning("webhook: %s@%d dead-lettered: %s", m.topic(), m.offset(), reason)
                dead += 1
            done.append(m)
        if dead:
            try:
                deliver_or_retry(prod, self.stop_event.is_set)
            except DeliveryError as exc:
                log.warning("webhook: dead letters not acknowledged (%s): not committing", exc)
                return []
        return done

    def _deliver(self, m: Any) -> tuple[Literal["delivered", "dead", "stopped"], str]:
        """Send one record, trying again with backoff: delivered, dead (with the reason its
        dead letter gives) or stopped (a stop came while waiting to try again)."""
        kind = self.kinds.get(m.topic(), m.topic())
        try:
            record = orjson.loads(m.value() or b"null")
        except orjson.JSONDecodeError as exc:
            return "dead", f"not valid JSON: {exc}"
        if not isinstance(record, dict):
            return "dead", f"not a JSON object: {type(record).__name__}"
        w = self.settings.webhook
        body = payload(w.format, kind, record)
        delay, tries = w.backoff_s, 0
        while True:
            tries += 1
            attempt = self.send(w.url.get_secret_value(), body, w.timeout_s,
                                w.authorization.get_secret_value())  # fmt: skip
            if attempt.outcome == "delivered":
                metrics.WEBHOOK_DELIVERIES.labels(m.topic(), "delivered").inc()
                return "delivered", attempt.detail
            if attempt.outcome == "refused":
                return "dead", f"refused by the endpoint ({attempt.detail})"
            if tries >= w.max_tries:
                return "dead", f"not delivered after {tries} tries (last: {attempt.detail})"
            wait = min(max(delay, attempt.retry_after_s or 0.0), w.backoff_max_s)
            log.info("webhook: %s@%d: %s; try %d in %.2f s", m.topic(), m.offset(),
                     attempt.detail, tries + 1, wait)  # fmt: skip
            metrics.WEBHOOK_RETRIES.labels(m.topic()).inc()
            if self.stop_event.wait(wait):
                return "stopped", attempt.detail
            delay = min(2 * delay, w.backoff_max_s)

    @staticmethod
    def _commit(c: Any, done: list[Any]) -> None:
        from confluent_kafka import TopicPartition

        last: dict[tuple[str, int], int] = {}
        for m in done:
            last[(m.topic(), m.partition())] = m.offset()
        c.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()],
                 asynchronous=False)  # fmt: skip


def register_webhook(app: Any, settings: Settings, bootstrap: str) -> None:
    """Run a :class:`WebhookLoop` beside the faust agents when a webhook URL is set (a thread
    that dies is started again, like the learner's)."""
    if not settings.webhook.url.get_secret_value():
        return
    box: list[WebhookLoop] = []

    @app.task
    async def start_webhook() -> None:
        box.append(WebhookLoop(settings, bootstrap))
        box[0].start()

    @app.timer(interval=5.0)
    async def watch_webhook() -> None:
        if box and not box[0].is_alive() and not box[0].stop_event.is_set():
            metrics.RETRIES.labels("webhook").inc()
            log.error("the webhook thread died (%r); starting it again", box[0].error)
            box[0] = WebhookLoop(settings, bootstrap)
            box[0].start()

    @app.on_before_shutdown.connect
    async def stop_webhook(app: Any, **kwargs: Any) -> None:
        import asyncio

        for loop in box:
            loop.stop()
            await asyncio.get_running_loop().run_in_executor(None, loop.join, 30)
