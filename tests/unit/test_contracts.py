"""Codec, validation and dead-lettering without a broker."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import contracts
from streams.contracts import Limits
from streams.exceptions import ContractError
from streams.processing import RawRecord, decode_batch
from tests.contract_examples import EXAMPLES


@pytest.mark.parametrize("contract", contracts.CONTRACTS)
def test_every_contract_has_a_valid_schema_and_example(contract: str) -> None:
    schema = contracts.schema(contract)
    assert schema["$id"].endswith(f"{contract}.v1.json")
    value = EXAMPLES[contract]
    assert contracts.decode(contract, contracts.encode(value)) == value


@pytest.mark.parametrize(
    ("contract", "raw", "reason"),
    [
        ("events", b'{"id": "e1", "features": {"x": 1}', "not valid JSON"),
        ("events", b'{"features": {"x": 1}}', "'id' is a required property"),
        ("events", b'{"id": 7, "features": {"x": 1}}', "7 is not of type 'string' (at $.id)"),
        ("events", b'{"id": "e1", "features": {"x": {"y": 1}}}', "(at $.features.x)"),
        ("events", b'{"id": "e1"}', "e1"),
        ("events", b"[1, 2]", "expected a JSON object"),
        ("events", b"\xff\xfe{}", "not valid JSON"),
        ("events", b"", "not valid JSON"),
        ("docs", b'{"id": "d1", "op": "upsert"}', "'text' is a required property"),
        ("docs", b'{"id": "d1", "op": "replace", "text": "x"}', "'replace' is not one of"),
        ("docs", b'{"id": "", "op": "delete"}', "should be non-empty"),
        ("docs", b'{"id": "d", "op": "delete", "meta": {"a": [1]}}', "(at $.meta.a)"),
        ("queries", b'{"id": "q", "question": "?", "k": 0}', "less than the minimum"),
    ],
)
def test_bad_records_get_readable_reasons(contract: str, raw: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as err:
        contracts.decode(contract, raw)
    assert reason in str(err.value)
    assert str(err.value).startswith(f"{contract}: ")


def test_key_must_match_id_for_inputs() -> None:
    raw = b'{"id": "e1", "label": 1}'
    assert contracts.decode("events", raw, b"e1")["id"] == "e1"
    assert contracts.decode("events", raw, b"")["id"] == "e1"
    with pytest.raises(ContractError, match="differs from id"):
        contracts.decode("events", raw, b"e2")


def test_limits() -> None:
    limits = Limits(max_record_bytes=100_000, max_text_chars=10, max_depth=3)
    with pytest.raises(ContractError, match="over the 10 limit"):
        contracts.decode(
            "docs", b'{"id": "d", "op": "upsert", "text": "' + b"a" * 11 + b'"}', limits=limits
        )
    nested = {"id": "d", "op": "delete", "meta": {"a": {"b": {"c": 1}}}}
    with pytest.raises(ContractError, match="deeper than 3"):
        contracts.decode("docs", orjson.dumps(nested), limits=limits)
    with pytest.raises(ContractError, match="^docs: record is 100001 bytes, over the 100000"):
        contracts.decode("docs", b" " * 100_001, limits=limits)


def test_a_docs_id_must_fit_a_milvus_key_in_bytes_too() -> None:
    wide = "\U0001f642" * 200  # within maxLength (characters), 800 bytes of UTF-8
    with pytest.raises(ContractError, match="^docs: id is 800 bytes of UTF-8, over the 256"):
        contracts.decode("docs", orjson.dumps({"id": wide, "op": "delete"}))
    accented = "é" * 128  # 256 bytes: still fine
    assert contracts.decode("docs", orjson.dumps({"id": accented, "op": "delete"}))["id"]
    assert contracts.decode("events", orjson.dumps({"id": wide, "label": 1}))["id"] == wide


def test_json_bomb_depth_is_cheap() -> None:
    raw = b"[" * 500 + b"]" * 500
    with pytest.raises(ContractError):
        contracts.decode("events", raw)


def test_dead_letter_keeps_position_and_raw_bytes() -> None:
    dl = contracts.dead_letter("events", 2, 99, b"k", b"\xff" * 10, "bad", max_raw_bytes=4)
    contracts.validate("dlq", dl)
    assert (dl["topic"], dl["partition"], dl["offset"], dl["key"]) == ("events", 2, 99, "k")
    assert base64.b64decode(dl["raw"]) == b"\xff" * 4
    assert dl["raw_truncated"] is True and dl["raw_encoding"] == "base64"
    text = contracts.dead_letter("events", 0, 1, None, b'{"a": 1', "bad")
    assert text["raw"] == '{"a": 1' and text["raw_encoding"] == "utf-8" and text["key"] is None


def test_encode_handles_numpy_and_is_compact() -> None:
    import numpy as np

    assert contracts.encode({"v": np.float32(1.5), "a": np.arange(2)}) == b'{"v":1.5,"a":[0,1]}'


def test_schema_files_are_the_docs_source() -> None:
    # The same file serves code and docs: it is plain JSON Schema, loadable by any tool.
    for contract in contracts.CONTRACTS:
        text = json.dumps(contracts.schema(contract))
        assert "https://json-schema.org/draft/2020-12/schema" in text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _check_batch(contract: str, raws: list[bytes]) -> None:
    batch = [RawRecord(contract, 0, i, None, raw) for i, raw in enumerate(raws)]
    good, bad = decode_batch(contract, batch, f"{contract}.dlq")
    assert len(good) + len(bad) == len(batch)  # nothing dropped
    for dl in bad:
        contracts.validate("dlq", dict(dl.value))
        assert dl.value["error"]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["docs", "events", "queries"]), st.lists(st.binary(max_size=200), max_size=5)
)
def test_random_bytes_never_escape_the_dlq_path(contract: str, raws: list[bytes]) -> None:
    _check_batch(contract, raws)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["docs", "events", "queries"]),
    st.lists(
        json_values
        | st.fixed_dictionaries(
            {"id": st.text(max_size=5) | st.integers()},
            optional={
                "op": st.sampled_from(["upsert", "delete", "x"]),
                "text": json_values,
                "features": json_values,
                "label": json_values,
                "question": json_values,
                "meta": json_values,
            },
        ),
        max_size=5,
    ),
)
def test_random_json_never_escapes_the_dlq_path(contract: str, values: list[object]) -> None:
    _check_batch(contract, [json.dumps(v).encode() for v in values])


def test_final_job_statuses_are_model_updates_statuses() -> None:
    enum = contracts.schema("model-updates")["properties"]["status"]["enum"]
    assert set(contracts.FINAL_JOB_STATUSES) < set(enum)
    assert not {"started", "progress"} & set(contracts.FINAL_JOB_STATUSES)
