"""A Confluent-compatible Schema Registry: the contracts as JSON Schema subjects, the wire format.

When ``LIVELEARN_SCHEMA_REGISTRY__URL`` is set, :func:`install` registers every topic contract
as the JSON Schema subject ``<topic>-value`` (after setting the subject's compatibility level,
so that an incompatible contract change is refused at registration), and makes
:func:`streams.contracts.decode` accept the Confluent wire format beside plain JSON: a magic
byte ``0``, the 4-byte big-endian schema id, then the JSON. A record whose schema id is not one
registered under a subject of its contract, or whose framing is cut short, is dead-lettered
with the reason. Producers of the SDK and the CLI write the wire format when
``LIVELEARN_SCHEMA_REGISTRY__WIRE_FORMAT=true``.

>>> framed = frame(7, b'{"id": "e1"}')
>>> framed[:5], unframe(framed)
(b'\\x00\\x00\\x00\\x00\\x07', (7, b'{"id": "e1"}'))
>>> unframe(b'{"id": "e1"}') is None  # plain JSON never starts with a zero byte
True
>>> subject_for("events")
'events-value'
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from streams import contracts
from streams.exceptions import ContractError, LiveLearnError
from streams.settings import SchemaRegistrySettings, Settings

log = logging.getLogger(__name__)

__all__ = [
    "IncompatibleSchemaError",
    "MAGIC_BYTE",
    "SchemaIdResolver",
    "SchemaRegistryClient",
    "SchemaRegistryError",
    "frame",
    "install",
    "register_contracts",
    "subject_for",
    "unframe",
]

MAGIC_BYTE = 0
HEADER_BYTES = 5
_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class SchemaRegistryError(LiveLearnError):
    """The registry refused a request or could not be reached; ``status`` is the HTTP status
    (0 when no answer came)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class IncompatibleSchemaError(SchemaRegistryError):
    """A contract change the subject's compatibility level refuses (HTTP 409)."""


def subject_for(topic: str) -> str:
    """The subject of a topic's values (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"


def frame(schema_id: int, payload: bytes) -> bytes:
    """``payload`` in the Confluent wire format for ``schema_id``."""
    if not 0 <= schema_id < 2**32:
        raise ValueError(f"schema id must fit in 4 bytes, got {schema_id}")
    return bytes([MAGIC_BYTE]) + schema_id.to_bytes(4, "big") + payload


def unframe(raw: bytes) -> tuple[int, bytes] | None:
    """``(schema_id, payload)`` of a wire-format record, ``None`` for plain JSON.

    Raises :class:`ContractError` when the record starts with the magic byte but is shorter
    than the 5-byte header.

    >>> unframe(b"\\x00\\x00\\x01")
    Traceback (most recent call last):
    ...
    streams.exceptions.ContractError: wire-format record of 3 bytes, shorter than its 5-byte \
header (magic byte 0 + 4-byte schema id)
    """
    if not raw or raw[0] != MAGIC_BYTE:
        return None
    if len(raw) < HEADER_BYTES:
        raise ContractError(
            f"wire-format record of {len(raw)} bytes, shorter than its {HEADER_BYTES}-byte "
            "header (magic byte 0 + 4-byte schema id)"
        )
    return int.from_bytes(raw[1:HEADER_BYTES], "big"), raw[HEADER_BYTES:]


class SchemaRegistryClient:
    """The few calls of the Confluent Schema Registry API that livelearn needs (stdlib HTTP).

    Parameters
    ----------
    url
        Base URL of the API (for Apicurio Registry: ``http://host:8080/apis/ccompat/v7``).
    username, password
        Basic auth, when the registry asks for it.
    timeout_s
        Timeout of one request.

    Examples
    --------
    >>> c = SchemaRegistryClient("http://registry:8081/", "u", "p")
    >>> c.url, c._headers()["Authorization"]
    ('http://registry:8081', 'Basic dTpw')
    """

    def __init__(
        self, url: str, username: str = "", password: str = "", timeout_s: float = 5.0
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._auth = (
            "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
            if username or password
            else None
        )

    @classmethod
    def from_settings(cls, s: SchemaRegistrySettings) -> SchemaRegistryClient:
        return cls(s.url, s.username, s.password.get_secret_value(), s.timeout_s)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": _CONTENT_TYPE, "Content-Type": _CONTENT_TYPE}
        if self._auth:
            headers["Authorization"] = self._auth
        return headers

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers=self._headers()
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                text = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            cls = IncompatibleSchemaError if exc.code == 409 else SchemaRegistryError
            message = f"schema registry: {method} {path} → {exc.code}: {detail}"
            raise cls(message, exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise SchemaRegistryError(
                f"schema registry at {self.url} unreachable: {exc}; check "
                "LIVELEARN_SCHEMA_REGISTRY__URL"
            ) from None
        try:
            return json.loads(text) if text else None
        except ValueError:  # a proxy's HTML page, a truncated answer
            raise SchemaRegistryError(
                f"schema registry: {method} {path} answered {len(text)} bytes that are not "
                f"JSON: {text[:80]!r}"
            ) from None

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set ``subject``'s compatibility level (BACKWARD, FULL, NONE, ...)."""
        self._request("PUT", f"/config/{_q(subject)}", {"compatibility": level})

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` (JSON Schema) under ``subject``; its id (the same id again for
        an unchanged schema). Raises :class:`IncompatibleSchemaError` when refused."""
        body = {"schemaType": "JSON", "schema": json.dumps(schema, sort_keys=True)}
        answer = self._request("POST", f"/subjects/{_q(subject)}/versions", body)
        return int(answer["id"])

    def latest_id(self, subject: str) -> int:
        """The schema id of ``subject``'s latest version."""
        return int(self._request("GET", f"/subjects/{_q(subject)}/versions/latest")["id"])

    def subjects_of(self, schema_id: int) -> list[str]:
        """The subjects that have a version with ``schema_id`` (empty when it is unknown)."""
        try:
            versions = self._request("GET", f"/schemas/ids/{int(schema_id)}/versions")
        except SchemaRegistryError as exc:
            if exc.status == 404:
                return []
            raise
        if not isinstance(versions, list) or not all(
            isinstance(v, dict) and isinstance(v.get("subject"), str) for v in versions
        ):
            raise SchemaRegistryError(
                f"schema registry: the versions of schema id {schema_id} are not a list of "
                f"{{subject, version}}: {str(versions)[:120]}"
            )
        return [v["subject"] for v in versions]


def _q(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


class SchemaIdResolver:
    """Decides whether a wire-format record's schema id belongs to its contract.

    An id is accepted when the registry lists it under a subject of a topic of the record's
    contract; answers are cached (refusals for ``negative_ttl_s``, so a stream of bad ids does
    not hammer the registry). The refusals kept are at most ``max_unknown`` (the oldest go
    first): a stream of random ids must not grow the worker's memory.

    >>> r = SchemaIdResolver(None, {"events": {"events-value"}})
    >>> r.remember(3, ["events-value"])
    >>> r("events", 3) is None
    True
    >>> r("docs", 3)
    Traceback (most recent call last):
    ...
    streams.exceptions.ContractError: schema id 3 is registered under events-value, not under \
a subject of docs (expected one of: none)
    """

    def __init__(
        self,
        client: SchemaRegistryClient | None,
        subjects: Mapping[str, set[str]],
        negative_ttl_s: float = 30.0,
        max_unknown: int = 4096,
    ) -> None:
        self.client = client
        self.subjects = {c: set(s) for c, s in subjects.items()}
        self.negative_ttl_s = negative_ttl_s
        self.max_unknown = max_unknown
        self._known: dict[int, list[str]] = {}
        self._unknown: OrderedDict[int, float] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, schema_id: int, subjects: list[str]) -> None:
        with self._lock:
            known = self._known.setdefault(schema_id, [])
            known.extend(s for s in subjects if s not in known)

    def _subjects_of(self, schema_id: int) -> list[str]:
        with self._lock:
            if schema_id in self._known:
                return self._known[schema_id]
            if time.monotonic() - self._unknown.get(schema_id, -1e18) < self.negative_ttl_s:
                return []
        if self.client is None:
            return []
        try:
            found = self.client.subjects_of(schema_id)
        except SchemaRegistryError as exc:
            raise ContractError(f"schema id {schema_id} could not be checked: {exc}") from None
        with self._lock:
            if found:
                self._known[schema_id] = found
            else:
                self._unknown[schema_id] = time.monotonic()
                self._unknown.move_to_end(schema_id)
                while len(self._unknown) > self.max_unknown:
                    self._unknown.popitem(last=False)
        return found

    def __call__(self, contract: str, schema_id: int) -> None:
        found = self._subjects_of(schema_id)
        wanted = self.subjects.get(contract, set())
        if not found:
            raise ContractError(f"unknown schema id {schema_id}: not in the schema registry")
        if not wanted.intersection(found):
            raise ContractError(
                f"schema id {schema_id} is registered under {', '.join(sorted(found))}, not "
                f"under a subject of {contract} (expected one of: "
                f"{', '.join(sorted(wanted)) or 'none'})"
            )


DIALECTS = {
    "2020-12": "https://json-schema.org/draft/2020-12/schema",
    "draft-07": "http://json-schema.org/draft-07/schema#",
}
#: Keywords of JSON Schema 2019-09/2020-12 that draft-07 does not know.
_NEWER_KEYWORDS = frozenset(
    "$defs $anchor $dynamicRef $dynamicAnchor $recursiveRef prefixItems unevaluatedItems "
    "unevaluatedProperties dependentRequired dependentSchemas minContains maxContains".split()
)


def registry_schema(contract: str, dialect: str = "2020-12") -> dict[str, Any]:
    """The contract's schema as registered: the file's, declared in ``dialect``.

    >>> registry_schema("events", "draft-07")["$schema"]
    'http://json-schema.org/draft-07/schema#'
    >>> all(not _newer_keywords(contracts.schema(c)) for c in contracts.CONTRACTS)
    True
    """
    schema = dict(contracts.schema(contract))
    if dialect != "2020-12":
        newer = _newer_keywords(schema)
        if newer:
            raise SchemaRegistryError(
                f"contract {contract!r} uses {', '.join(sorted(newer))}, unknown to {dialect}"
            )
    schema["$schema"] = DIALECTS[dialect]
    return schema


def _newer_keywords(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = set(_NEWER_KEYWORDS.intersection(value))
        for v in value.values():
            found |= _newer_keywords(v)
        return found
    if isinstance(value, list):
        return set().union(*(_newer_keywords(v) for v in value)) if value else set()
    return set()


def register_contracts(
    client: SchemaRegistryClient, settings: Settings
) -> dict[str, tuple[str, int]]:
    """Set the compatibility level of each topic's subject and register its contract there.

    Returns ``{contract: (subject, schema id)}``. Raises :class:`IncompatibleSchemaError`
    (naming the subject) when a contract changed in a way the level refuses.
    """
    level, dialect = settings.schema_registry.compatibility, settings.schema_registry.dialect
    ids: dict[str, tuple[str, int]] = {}
    for contract, topic in settings.topics.by_contract().items():
        subject = subject_for(topic)
        client.set_compatibility(subject, level)
        try:
            schema = registry_schema(contract, dialect)
            ids[contract] = (subject, client.register(subject, schema))
        except IncompatibleSchemaError as exc:
            raise IncompatibleSchemaError(
                f"contract {contract!r} v{contracts.SCHEMA_VERSION} is incompatible with "
                f"what {subject} holds under {level} compatibility: {exc}",
                exc.status,
            ) from None
    return ids


def install(settings: Settings, register: bool = True) -> SchemaRegistryClient | None:
    """In this process: register the contracts (when ``register``) and let
    :func:`streams.contracts.decode` read the wire format. ``None`` when no registry is
    configured. An incompatible contract raises; an unreachable registry is logged, and wire
    records are then checked when it answers (dead-lettered with the reason until then)."""
    s = settings.schema_registry
    if not s.url:
        return None
    client = SchemaRegistryClient.from_settings(s)
    subjects = {c: {subject_for(t)} for c, t in settings.topics.by_contract().items()}
    resolver = SchemaIdResolver(client, subjects)
    if register:
        try:
            for _contract, (subject, schema_id) in register_contracts(client, settings).items():
                resolver.remember(schema_id, [subject])
        except IncompatibleSchemaError:
            raise
        except SchemaRegistryError as exc:
            log.error("contracts not registered: %s", exc)
    contracts.use_wire_format(resolver)
    return client


class WireEncoder:
    """What SDK and CLI producers put in front of a record: the wire-format header of the
    latest schema of the topic's subject, looked up once per topic.

    Parameters
    ----------
    client
        The registry; the subject must have been registered (the worker does it at start).
    """

    def __init__(self, client: SchemaRegistryClient) -> None:
        self.client = client
        self._ids: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> WireEncoder | None:
        """An encoder when the settings ask for the wire format, else ``None``."""
        s = settings.schema_registry
        if not s.wire_format:
            return None
        if not s.url:
            raise SchemaRegistryError(
                "LIVELEARN_SCHEMA_REGISTRY__WIRE_FORMAT needs LIVELEARN_SCHEMA_REGISTRY__URL"
            )
        return cls(SchemaRegistryClient.from_settings(s))

    def __call__(self, topic: str, payload: bytes) -> bytes:
        schema_id = self._ids.get(topic)
        if schema_id is None:
            schema_id = self._ids[topic] = self.client.latest_id(subject_for(topic))
        return frame(schema_id, payload)
