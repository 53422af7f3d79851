"""The schema registry client and the schema-id check, against answers that are wrong in
meaning: a proxy's HTML page, a list of the wrong shape, a stream of made-up ids. The real
registry (Apicurio) is in tests/integration/test_compat_endpoints.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from streams.exceptions import ContractError
from streams.schema_registry import (
    SchemaIdResolver,
    SchemaRegistryClient,
    SchemaRegistryError,
    frame,
    unframe,
)

ANSWERS: dict[str, tuple[int, bytes]] = {
    "/schemas/ids/1/versions": (200, b'[{"subject": "events-value", "version": 1}]'),
    "/schemas/ids/2/versions": (200, b"<html><body>Bad gateway</body></html>"),
    "/schemas/ids/3/versions": (200, b'{"subject": "events-value"}'),
    "/schemas/ids/4/versions": (200, b'[{"subject": 7}]'),
    "/schemas/ids/5/versions": (500, b'{"error_code": 50001}'),
}


@pytest.fixture(scope="module")
def registry() -> Iterator[tuple[str, list[str]]]:
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(self.path)
            status, body = ANSWERS.get(self.path, (404, b'{"error_code": 40403}'))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()


def test_answers_of_the_wrong_shape_are_registry_errors_not_crashes(
    registry: tuple[str, list[str]],
) -> None:
    client = SchemaRegistryClient(registry[0], timeout_s=5)
    assert client.subjects_of(1) == ["events-value"]
    assert client.subjects_of(404) == []
    with pytest.raises(SchemaRegistryError, match="not JSON"):
        client.subjects_of(2)
    for bad in (3, 4):
        with pytest.raises(SchemaRegistryError, match="not a list"):
            client.subjects_of(bad)
    with pytest.raises(SchemaRegistryError, match="500"):
        client.subjects_of(5)


def test_a_record_whose_id_cannot_be_checked_gets_a_reason(
    registry: tuple[str, list[str]],
) -> None:
    check = SchemaIdResolver(SchemaRegistryClient(registry[0]), {"events": {"events-value"}})
    check("events", 1)
    with pytest.raises(ContractError, match="could not be checked.*not JSON"):
        check("events", 2)
    with pytest.raises(ContractError, match="unknown schema id 77"):
        check("events", 77)


def test_made_up_ids_are_asked_once_and_their_memory_is_bounded(
    registry: tuple[str, list[str]],
) -> None:
    url, asked = registry
    check = SchemaIdResolver(SchemaRegistryClient(url), {"events": {"events-value"}},
                             max_unknown=50)  # fmt: skip
    before = len(asked)
    for schema_id in range(1000, 1200):
        with pytest.raises(ContractError, match="unknown schema id"):
            check("events", schema_id)
    for _ in range(3):  # within the refusal's TTL: no new request
        with pytest.raises(ContractError):
            check("events", 1199)
    assert len(asked) - before == 200
    assert len(check._unknown) == 50  # the newest refusals


def test_wire_format_framing_round_trips_and_plain_json_is_not_framed() -> None:
    body = b'{"id": "e1"}'
    assert unframe(frame(2**32 - 1, body)) == (2**32 - 1, body)
    assert unframe(body) is None
    assert unframe(b"") is None
    assert unframe(frame(7, b"")) == (7, b"")
    with pytest.raises(ContractError, match="shorter than its 5-byte header"):
        unframe(b"\x00\x01")
