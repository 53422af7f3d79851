"""The OpenAI-style endpoint's request check: bodies that are valid JSON but wrong in meaning
get a clear 400 reason, never a crash or a silent default (the HTTP side is in
tests/integration/test_compat_endpoints.py)."""

from __future__ import annotations

from typing import Any

import pytest

from streams.chat_api import ChatRequestError, parse_request, split_pieces, with_citations

USER = [{"role": "user", "content": "What does Kafka keep?"}]


@pytest.mark.parametrize(
    ("body", "reason", "param"),
    [
        (["not", "an", "object"], "must be a JSON object", None),
        ({"messages": "What is Kafka?"}, "non-empty list", "messages"),
        ({"messages": ["What is Kafka?"]}, "object with role and content", "messages"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "no user message", "messages"),
        ({"messages": [{"role": "user", "content": "   "}]}, "empty", "messages"),
        ({"messages": [{"role": "user", "content": 42}]}, "string or a list", "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "string or a list",
            "messages",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "empty",
            "messages",
        ),
        ({"messages": USER, "stream": "yes"}, "stream must be true or false", "stream"),
        ({"messages": USER, "n": 2}, "only n=1", "n"),
        ({"messages": USER, "n": True}, "only n=1", "n"),
        ({"messages": USER, "n": 1.0}, "only n=1", "n"),
        ({"messages": USER, "model": ["a"]}, "model must be a string", "model"),
        ({"messages": USER, "k": 0}, "less than the minimum of 1", "messages"),
        ({"messages": USER, "k": 1e308}, "greater than the maximum of 100", "messages"),
        ({"messages": USER, "k": True}, "is not of type 'integer'", "messages"),
        ({"messages": USER, "k": "5"}, "is not of type 'integer'", "messages"),
        ({"messages": USER, "mode": "keyword"}, "is not one of", "messages"),
        ({"messages": USER, "filter": "title"}, "is not of type 'object'", "messages"),
        ({"messages": USER, "filter": {"author": "x"}}, "Additional properties", "messages"),
        ({"messages": USER, "filter": {"meta": {"a b": "x"}}}, "does not match", "messages"),
        ({"messages": USER, "filter": {"meta": {"lang": None}}}, "is not of type", "messages"),
    ],
)
def test_wrong_bodies_are_refused_with_their_reason(
    body: Any, reason: str, param: str | None
) -> None:
    with pytest.raises(ChatRequestError, match=reason) as refused:
        parse_request(body)
    assert refused.value.status == 400
    assert refused.value.param == param


def test_the_last_user_message_is_the_question_and_options_reach_the_query() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What does "},
                    {"type": "text", "text": "Kafka keep?"},
                ],
            },
        ],
        "stream": True,
        "k": 3,
        "mode": "dense",
        "filter": {"source": "wiki", "meta": {"lang": "en"}},
        "temperature": 1e308,  # ignored: decoding is the configured generator's
        "max_tokens": -1,
    }
    req = parse_request(body)
    assert req.question == "What does Kafka keep?"
    assert (req.model, req.stream) == ("gpt-4o", True)
    assert req.query == {
        "id": "chat",
        "question": "What does Kafka keep?",
        "k": 3,
        "mode": "dense",
        "filter": {"source": "wiki", "meta": {"lang": "en"}},
    }


def test_null_options_mean_the_defaults() -> None:
    req = parse_request({"messages": USER, "k": None, "mode": None, "filter": None})
    assert req.query == {"id": "chat", "question": "What does Kafka keep?"}


def test_citations_name_only_the_cited_contexts_and_stream_pieces_rebuild_the_answer() -> None:
    contexts = [{"doc_id": "kafka-log", "title": "kafka"}, {"doc_id": "raft", "title": ""}]
    text = with_citations("Kafka keeps an append-only log of records [1].", contexts)
    assert text == "Kafka keeps an append-only log of records [1].\nSources: [1] kafka-log"
    uncited = with_citations("Kafka keeps a log.", contexts)
    assert uncited.endswith("Sources: [1] kafka-log, [2] raft")
    pieces = split_pieces(text)
    assert "".join(pieces) == text and len(pieces) > 2
