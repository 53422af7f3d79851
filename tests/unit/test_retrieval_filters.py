"""Filters, modes and k: the queries contract, the filter builder and /search, /ask agree."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.exceptions import InvalidArgumentError
from retrieval.store import build_filter
from streams.contracts import ContractError, validate
from streams.pages import http_query


def _query(**filt: Any) -> dict[str, Any]:
    return {"id": "q", "question": "?", "filter": filt}


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"year": None}, "None is not of type"),  # the builder has no null literal
        ({'k"] == 1 or meta["x': 1}, "does not match"),  # keys the builder refuses
        ({"": 1}, "does not match"),
        ({"k": [1]}, "is not of type"),
    ],
)
def test_the_contract_refuses_what_the_builder_refuses(meta: dict[str, Any], reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        validate("queries", _query(meta=meta))
    with pytest.raises(InvalidArgumentError):
        build_filter(meta=meta)


def test_modes_and_k_bounds_in_the_contract() -> None:
    for mode in ("dense", "sparse", "hybrid"):
        validate("queries", {"id": "q", "question": "?", "mode": mode, "k": 100})
    with pytest.raises(ContractError, match="is not one of"):
        validate("queries", {"id": "q", "question": "?", "mode": "fuzzy"})
    with pytest.raises(ContractError, match="greater than the maximum of 100"):
        validate("queries", {"id": "q", "question": "?", "k": 101})


scalars = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
keys = st.text(min_size=0, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    meta=st.dictionaries(keys, scalars, max_size=4),
    title=st.one_of(st.none(), st.text(max_size=20)),
)
def test_every_filter_the_contract_accepts_builds(meta: dict[str, Any], title: str | None) -> None:
    record = _query(meta=meta, **({"title": title} if title is not None else {}))
    try:
        validate("queries", record)
    except ContractError:
        return
    filt = record["filter"]
    expr = build_filter(title=filt.get("title"), source=filt.get("source"), meta=filt["meta"])
    assert isinstance(expr, str)
    assert all(math.isfinite(v) for v in meta.values() if isinstance(v, float))


def test_http_query_builds_a_validated_record() -> None:
    q = http_query({"q": "log", "k": "7", "mode": "sparse", "title": "T", "meta": '{"a.b": true}'})
    assert q == {
        "id": "http", "question": "log", "k": 7, "mode": "sparse",
        "filter": {"title": "T", "meta": {"a.b": True}},
    }  # fmt: skip
    assert http_query({"q": "log"}) == {"id": "http", "question": "log"}


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({}, "missing q"),
        ({"q": "x", "k": "0"}, "less than the minimum of 1"),
        ({"q": "x", "k": "101"}, "greater than the maximum of 100"),
        ({"q": "x", "k": "ten"}, "k must be an integer from 1 to 100"),
        ({"q": "x", "mode": "fuzzy"}, "is not one of"),
        ({"q": "x", "meta": "{not json"}, "meta must be a JSON object"),
        ({"q": "x", "meta": "[1]"}, "is not of type 'object'"),
        ({"q": "x", "meta": '{"y": null}'}, "None is not of type"),
    ],
)
def test_http_query_refuses_with_a_reason(params: dict[str, str], reason: str) -> None:
    with pytest.raises(ContractError, match=reason):
        http_query(params)
