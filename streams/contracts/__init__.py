"""Topic contracts: versioned JSON Schema files, an orjson codec and dead-letter records.

The schema files in ``schemas/`` (``<contract>.v<N>.json``) are the single source of truth for
the code, the README and any client in another language.

Decoding never raises anything but :class:`ContractError`, whose message is the readable reason
that goes into the dead-letter record:

>>> decode("events", b'{"id": "e1", "features": {"x": 1.5}}')
{'id': 'e1', 'features': {'x': 1.5}}
>>> decode("events", b'{"features": {"x": 1.5}}')
Traceback (most recent call last):
...
streams.exceptions.ContractError: events: 'id' is a required property (at $)
>>> decode("events", b'{"id": "e1", "features": {"x": [1]}}')
Traceback (most recent call last):
...
streams.exceptions.ContractError: events: [1] is not of type 'number', 'string' (at $.features.x)
>>> dl = dead_letter("events", 3, 42, b"e1", b"\\xff{", "bad")
>>> (dl["partition"], dl["offset"], dl["key"], dl["raw"], dl["raw_encoding"])
(3, 42, 'e1', '/3s=', 'base64')
"""

from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import fastjsonschema
import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from streams.exceptions import ContractError

__all__ = [
    "CONTRACTS",
    "DOC_ID_MAX_BYTES",
    "FINAL_JOB_STATUSES",
    "INPUT_CONTRACTS",
    "SCHEMA_VERSION",
    "ContractError",
    "Limits",
    "dead_letter",
    "decode",
    "encode",
    "schema",
    "use_wire_format",
    "validate",
]

SCHEMA_VERSION = 1
CONTRACTS = (
    "docs",
    "events",
    "queries",
    "predictions",
    "answers",
    "drift-alerts",
    "training-jobs",
    "model-updates",
    "dlq",
    "style-examples",
    "feedback",
)
#: Contracts whose records come from users; their Kafka key must be the record id when set.
INPUT_CONTRACTS = ("docs", "events", "queries", "style-examples", "feedback")
#: A docs id becomes a Milvus primary key (``<id>#<n>``, at most 512 bytes), but the schema's
#: ``maxLength`` counts characters, and a character takes up to 4 bytes of UTF-8.
DOC_ID_MAX_BYTES = 256
#: The ``model-updates`` statuses that end a training job (``started`` and ``progress`` do not).
FINAL_JOB_STATUSES = ("promoted", "rejected", "failed")


class Limits:
    """Size and meaning limits applied before and after decoding (see ``LimitSettings``).

    A record can be valid JSON Schema and still poison a model: ``1e308`` turns a logistic
    regression's weights into NaN for good, and a thousand feature keys become a thousand
    permanent weights. Those are refused here, with the reason, like any other bad record.

    >>> Limits(max_record_bytes=10).check_raw(b"x" * 11)
    Traceback (most recent call last):
    ...
    streams.exceptions.ContractError: record is 11 bytes, over the 10-byte limit
    >>> Limits().check_value({"id": "e", "features": {"x": 1e308}})
    Traceback (most recent call last):
    ...
    streams.exceptions.ContractError: $.features.x is 1e+308, over the magnitude limit 1e+15
    >>> Limits(max_features=2).check_value({"id": "e", "features": {"a": 1, "b": 2, "c": 3}})
    Traceback (most recent call last):
    ...
    streams.exceptions.ContractError: 'features' has 3 keys, over the 2-key limit
    """

    def __init__(
        self,
        max_record_bytes: int = 2_000_000,
        max_text_chars: int = 1_000_000,
        max_depth: int = 8,
        max_abs_number: float = 1e15,
        max_features: int = 256,
    ) -> None:
        self.max_record_bytes = max_record_bytes
        self.max_text_chars = max_text_chars
        self.max_depth = max_depth
        self.max_abs_number = max_abs_number
        self.max_features = max_features

    def check_raw(self, raw: bytes) -> None:
        if len(raw) > self.max_record_bytes:
            raise ContractError(
                f"record is {len(raw)} bytes, over the {self.max_record_bytes}-byte limit"
            )

    def check_value(self, value: Any) -> None:
        depth = _depth(value, self.max_depth + 1)
        if depth > self.max_depth:
            raise ContractError(f"record nests deeper than {self.max_depth} levels")
        if not isinstance(value, dict):
            return
        for field in ("text", "question"):
            text = value.get(field)
            if isinstance(text, str) and len(text) > self.max_text_chars:
                raise ContractError(
                    f"'{field}' has {len(text)} characters, over the {self.max_text_chars} limit"
                )
        features = value.get("features")
        if isinstance(features, dict) and len(features) > self.max_features:
            raise ContractError(
                f"'features' has {len(features)} keys, over the {self.max_features}-key limit"
            )
        where = _number_over(value, self.max_abs_number, self.max_depth)
        if where is not None:
            raise ContractError(
                f"{where[0]} is {where[1]:g}, over the magnitude limit {self.max_abs_number:g}"
            )


def _number_over(value: Any, max_abs: float, cap: int) -> tuple[str, float] | None:
    """``(path, number)`` of the first number whose magnitude is over ``max_abs``, else None.

    Level by level like :func:`_depth`, with no work per scalar beyond a type test and a
    comparison; the path is worked out only for a record that fails. Bools are not numbers.

    >>> _number_over({"a": [1, {"b": -2e20}], "c": True}, 1e15, 8)
    ('$.a[1].b', -2e+20)
    """
    level = [value] if isinstance(value, (dict, list)) else []
    found = False
    for _ in range(cap + 1):
        if not level or found:
            break
        inner = []
        for container in level:
            for v in container.values() if isinstance(container, dict) else container:
                t = type(v)
                if t is float or t is int:
                    if not -max_abs <= v <= max_abs:
                        found = True
                        break
                elif t is dict or t is list:
                    inner.append(v)
        level = inner
    return _first_number_over("$", value, max_abs) if found else None


def _first_number_over(path: str, value: Any, max_abs: float) -> tuple[str, float] | None:
    if isinstance(value, dict):
        items: Any = ((f"{path}.{k}", v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        t = type(value)
        if (t is float or t is int) and not -max_abs <= value <= max_abs:
            return path, float(value)
        return None
    for where, v in items:
        hit = _first_number_over(where, v, max_abs)
        if hit is not None:
            return hit
    return None


DEFAULT_LIMITS = Limits()


def _depth(value: Any, cap: int) -> int:
    """Nesting depth of a JSON value, counting stops at ``cap`` (so it is cheap on bombs).

    Level by level over the containers only: on every record's path, so no call per scalar.

    >>> _depth({"id": "e1", "features": {"x": 1, "tags": ["a", {"b": []}]}}, 10), _depth(3, 10)
    (5, 0)
    >>> _depth([[[[[]]]]], 3)
    3
    """
    depth = 0
    level = [value] if isinstance(value, (dict, list)) else []
    while level and depth < cap:
        depth += 1
        inner = []
        for container in level:
            for v in container.values() if isinstance(container, dict) else container:
                if isinstance(v, (dict, list)):
                    inner.append(v)
        level = inner
    return depth


@functools.cache
def schema(contract: str, version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema of ``contract`` (e.g. ``"docs"``), as a dict."""
    if contract not in CONTRACTS:
        raise ContractError(f"unknown contract {contract!r}; known: {', '.join(CONTRACTS)}")
    text = (
        resources.files("streams.contracts")
        .joinpath("schemas", f"{contract}.v{version}.json")
        .read_text(encoding="utf-8")
    )
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def _validator(contract: str) -> Draft202012Validator:
    s = schema(contract)
    Draft202012Validator.check_schema(s)
    return Draft202012Validator(s)


@functools.cache
def _fast(contract: str) -> Any:
    # Compiled to Python code: ~20x faster than jsonschema on the valid path, which is
    # almost every record. jsonschema explains the rare failure in readable terms.
    return fastjsonschema.compile(schema(contract))


def _path(error: Any) -> str:
    parts = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return "$" + parts


def validate(contract: str, value: Any) -> dict[str, Any]:
    """Check ``value`` against the contract; return it, or raise :class:`ContractError`."""
    if not isinstance(value, dict):
        raise ContractError(f"{contract}: expected a JSON object, got {type(value).__name__}")
    try:
        _fast(contract)(value)
        return value
    except fastjsonschema.JsonSchemaException:
        pass
    validator = _validator(contract)
    error = best_match(validator.iter_errors(value))
    if error is not None:
        message = error.message
        if len(message) > 300:
            message = message[:300] + "..."
        raise ContractError(f"{contract}: {message} (at {_path(error)})")
    return value


#: Checks a wire-format record's schema id for a contract (raises ContractError); set by
#: :func:`streams.schema_registry.install` when a registry is configured.
_wire_check: Callable[[str, int], None] | None = None


def use_wire_format(check: Callable[[str, int], None] | None) -> None:
    """Accept Confluent wire-format records (magic byte 0, 4-byte schema id, JSON) whose
    schema id ``check(contract, id)`` accepts; ``None`` refuses them again."""
    global _wire_check
    _wire_check = check


def _strip_wire_header(contract: str, raw: bytes) -> bytes:
    """The JSON of a wire-format record, its schema id checked; plain JSON unchanged.

    >>> _strip_wire_header("events", b"\\x00\\x00\\x00\\x00\\x01{}")
    Traceback (most recent call last):
    ...
    streams.exceptions.ContractError: wire-format record (schema id 1) but no schema registry \
is configured (set LIVELEARN_SCHEMA_REGISTRY__URL)
    """
    if not raw or raw[0] != 0:  # JSON never starts with a zero byte
        return raw
    if len(raw) < 5:
        raise ContractError(
            f"wire-format record of {len(raw)} bytes, shorter than its 5-byte header "
            "(magic byte 0 + 4-byte schema id)"
        )
    schema_id = int.from_bytes(raw[1:5], "big")
    check = _wire_check
    if check is None:
        raise ContractError(
            f"wire-format record (schema id {schema_id}) but no schema registry is "
            "configured (set LIVELEARN_SCHEMA_REGISTRY__URL)"
        )
    check(contract, schema_id)
    return raw[5:]


def decode(
    contract: str, raw: bytes | None, key: bytes | None = None, limits: Limits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Bytes from Kafka → a validated dict. Anything wrong raises :class:`ContractError`.

    Plain JSON and the Schema Registry wire format are both read (see
    :mod:`streams.schema_registry`)."""
    if raw is None:
        raise ContractError(f"{contract}: empty record (null value)")
    try:
        limits.check_raw(raw)
        raw = _strip_wire_header(contract, raw)
        value = orjson.loads(raw)
        limits.check_value(value)
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"{contract}: not valid JSON: {exc}") from None
    except ContractError as exc:  # every reason names its contract, as the others do
        raise ContractError(f"{contract}: {exc}") from None
    validate(contract, value)
    if contract == "docs" and len(value["id"].encode("utf-8")) > DOC_ID_MAX_BYTES:
        raise ContractError(
            f"docs: id is {len(value['id'].encode('utf-8'))} bytes of UTF-8, over the "
            f"{DOC_ID_MAX_BYTES}-byte limit (at $.id)"
        )
    if key is not None and contract in INPUT_CONTRACTS:
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError:
            raise ContractError(f"{contract}: key is not valid UTF-8") from None
        if key_text and key_text != value["id"]:
            raise ContractError(
                f"{contract}: key {key_text[:80]!r} differs from id {value['id'][:80]!r}; "
                "produce with key = id"
            )
    return value


def encode(value: Mapping[str, Any]) -> bytes:
    """A dict → compact UTF-8 JSON bytes (orjson; numpy scalars and arrays allowed)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def encode_checked(contract: str, value: Mapping[str, Any]) -> bytes:
    """Validate against the contract, then encode: what producers of this package use."""
    validate(contract, dict(value))
    return encode(value)


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes | None,
    error: str,
    max_raw_bytes: int = 64_000,
    now: float | None = None,
) -> dict[str, Any]:
    """The dead-letter record for a message that failed: where it was, what it was, why.

    ``raw`` is kept as text when it is valid UTF-8, else base64; it is cut at
    ``max_raw_bytes`` (``raw_truncated`` says so) so a 10 MB record cannot clog the DLQ.
    """
    data = raw or b""
    truncated = len(data) > max_raw_bytes
    data = data[:max_raw_bytes]
    try:
        raw_text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        raw_text, encoding = base64.b64encode(data).decode("ascii"), "base64"
    key_text: str | None
    if key is None:
        key_text = None
    else:
        try:
            key_text = key.decode("utf-8")
        except UnicodeDecodeError:
            key_text = base64.b64encode(key).decode("ascii")
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key_text,
        "raw": raw_text,
        "raw_encoding": encoding,
        "raw_truncated": truncated,
        "error": error,
        "ts": time.time() if now is None else now,
    }
