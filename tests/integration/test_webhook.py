"""The webhook sink against real HTTP servers started here, on real Kafka.

Three endpoints: one that fails the first requests (HTTP 503) and then takes them, one that
always fails (HTTP 500) and one that refuses (HTTP 400). Records are delivered after retries,
dead-lettered after the last try or at once when refused, and the group's offsets move only
after each record was delivered or dead-lettered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from streams import metrics
from streams.kafka import flush_or_raise, producer
from streams.settings import SecretStr, Settings, WebhookSettings
from streams.webhook_loop import WebhookLoop
from tests.integration.helpers import group_lag


class Endpoint:
    """A local HTTP server answering ``fail_first`` requests with ``fail_status``, then 200
    (``fail_first=-1``: always fails); it keeps every body it received."""

    def __init__(self, fail_first: int, fail_status: int = 503) -> None:
        self.fail_first, self.fail_status = fail_first, fail_status
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(body)
                failing = endpoint.fail_first < 0 or len(endpoint.requests) <= endpoint.fail_first
                self.send_response(endpoint.fail_status if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if not failing:
                    endpoint.accepted.append(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints() -> Iterator[list[Endpoint]]:
    made: list[Endpoint] = []
    yield made
    for e in made:
        e.close()


def _with_webhook(settings: Settings, url: str, **kw: Any) -> Settings:
    hook = WebhookSettings(url=SecretStr(url), backoff_s=0.05, backoff_max_s=0.2, **kw)
    return settings.model_copy(update={"webhook": hook})


def _alert(i: int, severity: str = "drift") -> dict[str, Any]:
    return {"alert_id": f"a{i}", "ts": time.time(), "model": "default", "model_version": "v1",
            "detector": "adwin", "signal": "error_rate", "value": 0.4, "threshold": 0.2,
            "severity": severity, "action": "retrain"}  # fmt: skip


def _update(job: str) -> dict[str, Any]:
    return {"job_id": job, "model_version": f"{job}-v", "kind": "retrain", "status": "promoted",
            "metrics": {"accuracy": 0.9}, "baseline_metrics": {"accuracy": 0.7}, "artifact": "",
            "data": {}, "ts": time.time()}  # fmt: skip


def _produce(settings: Settings, records: list[tuple[str, bytes]]) -> None:
    p = producer(settings, settings.kafka.bootstrap_servers)
    for topic, value in records:
        p.produce(topic, value, key=b"k")
    flush_or_raise(p)


def _read_all(
    settings: Settings, topic: str, n: int, timeout_s: float = 30
) -> list[dict[str, Any]]:
    from streams.kafka import consumer

    c = consumer(settings, settings.kafka.bootstrap_servers, None)
    c.subscribe([topic])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            out += [orjson.loads(m.value()) for m in c.consume(10, 0.5) if m.error() is None]
    finally:
        c.close()
    return out


def _wait(cond: Any, timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _caught_up(settings: Settings, topics: list[str]) -> bool:
    group = f"{settings.kafka.group_prefix}-webhook"
    return all(group_lag(settings, group, t) == 0 for t in topics)


def test_flaky_endpoint_gets_every_record_after_retries_in_slack_format(
    settings: Settings, endpoints: list[Endpoint]
) -> None:
    flaky = Endpoint(fail_first=3)
    endpoints.append(flaky)
    s = _with_webhook(settings, flaky.url, format="slack")
    t = s.topics

    def retries() -> float:  # the first record consumed (of either topic) met the failures
        return sum(metrics.WEBHOOK_RETRIES.labels(x)._value.get() for x in t.by_contract().values())

    retries_before = retries()
    _produce(s, [(t.drift_alerts, orjson.dumps(_alert(1))),
                 (t.drift_alerts, orjson.dumps(_alert(2, "warning"))),
                 (t.model_updates, orjson.dumps(_update("j1")))])  # fmt: skip
    loop = WebhookLoop(s, s.kafka.bootstrap_servers)
    loop.start()
    try:
        _wait(lambda: len(flaky.accepted) == 3, what="three deliveries")
        _wait(lambda: _caught_up(s, [t.drift_alerts, t.model_updates]), what="the commit")
    finally:
        loop.stop()
        loop.join(30)
    assert loop.error is None
    texts = sorted(body["text"] for body in flaky.accepted)
    assert set(flaky.accepted[0]) == {"text"}  # Slack's incoming-webhook body
    assert any(x.startswith(":rotating_light: drift on default (v1): adwin") for x in texts)
    assert any(x.startswith(":warning: warning on default") for x in texts)
    assert any("retrain job j1 promoted: j1-v" in x for x in texts)
    assert len(flaky.requests) == 6  # 3 failed tries, then each record once
    assert retries() - retries_before == 3
    assert _read_all(s, t.dlq(t.drift_alerts), 1, timeout_s=3) == []


def test_failing_endpoint_dead_letters_after_the_last_try_and_commits(
    settings: Settings, endpoints: list[Endpoint]
) -> None:
    down, refusing = Endpoint(fail_first=-1, fail_status=500), Endpoint(-1, fail_status=400)
    endpoints += [down, refusing]
    s = _with_webhook(settings, down.url, max_tries=3)
    t = s.topics
    _produce(s, [(t.drift_alerts, orjson.dumps(_alert(1))), (t.model_updates, b"{not json")])
    loop = WebhookLoop(s, s.kafka.bootstrap_servers)
    loop.start()
    try:
        dead_alerts = _read_all(s, t.dlq(t.drift_alerts), 1)
        dead_updates = _read_all(s, t.dlq(t.model_updates), 1)
        _wait(lambda: _caught_up(s, [t.drift_alerts, t.model_updates]), what="the commit")
    finally:
        loop.stop()
        loop.join(30)
    assert len(down.requests) == 3 and down.requests[0]["topic"] == "drift-alerts"
    assert down.requests[0]["record"]["alert_id"] == "a1"
    (alert,) = dead_alerts
    assert alert["topic"] == t.drift_alerts and alert["offset"] == 0
    assert (
        alert["error"]
        == "webhook: not delivered after 3 tries (last: HTTP 500 Internal Server Error)"
    )
    assert orjson.loads(alert["raw"])["alert_id"] == "a1"
    (update,) = dead_updates
    assert update["error"].startswith("webhook: not valid JSON") and update["raw"] == "{not json"

    # An endpoint that refuses (HTTP 400) is not tried again: dead-lettered on the first try.
    s2 = _with_webhook(settings, refusing.url, max_tries=5)
    _produce(s2, [(t.drift_alerts, orjson.dumps(_alert(2)))])
    loop = WebhookLoop(s2, s2.kafka.bootstrap_servers)
    loop.start()
    try:
        dead = _read_all(s2, t.dlq(t.drift_alerts), 2)
        _wait(lambda: _caught_up(s2, [t.drift_alerts]), what="the commit")
    finally:
        loop.stop()
        loop.join(30)
    assert len(refusing.requests) == 1
    assert dead[-1]["error"] == "webhook: refused by the endpoint (HTTP 400 Bad Request)"


def test_offsets_do_not_move_while_a_record_is_undelivered(
    settings: Settings, endpoints: list[Endpoint]
) -> None:
    down = Endpoint(fail_first=-1)
    endpoints.append(down)
    s = _with_webhook(settings, down.url, max_tries=1000)
    t = s.topics
    _produce(s, [(t.drift_alerts, orjson.dumps(_alert(7)))])
    loop = WebhookLoop(s, s.kafka.bootstrap_servers)
    loop.start()
    _wait(lambda: len(down.requests) >= 3, what="retries")
    loop.stop()
    loop.join(30)
    assert not loop.is_alive() and loop.error is None
    group = f"{s.kafka.group_prefix}-webhook"
    assert group_lag(s, group, t.drift_alerts) != 0  # not committed: nothing was delivered
    # The endpoint recovers; a new loop (a restarted worker) delivers the record.
    up = Endpoint(fail_first=0)
    endpoints.append(up)
    s2 = _with_webhook(settings, up.url)
    loop = WebhookLoop(s2, s2.kafka.bootstrap_servers)
    loop.start()
    try:
        _wait(lambda: len(up.accepted) == 1, what="the delivery after the restart")
        _wait(lambda: _caught_up(s2, [t.drift_alerts]), what="the commit")
    finally:
        loop.stop()
        loop.join(30)
    assert up.accepted[0]["record"]["alert_id"] == "a7"
