"""The house-style check, the generator's rolling signals and the feedback router."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams import contracts
from trainers.batch.style import (
    AdherenceWindow,
    RetrievalWindow,
    StyleCheck,
    feedback_doc_id,
    route_feedback,
)

LABELLED = Path(__file__).resolve().parents[1] / "data" / "feedback_routes.json"


def _labelled() -> tuple[dict[str, dict], list[dict]]:
    data = json.loads(LABELLED.read_text())
    return data["answers"], data["feedback"]


def test_router_accuracy_on_the_labelled_set() -> None:
    answers, feedback = _labelled()
    labels = [f["label"] for f in feedback]
    assert len(feedback) >= 60
    assert labels.count("knowledge") >= 20 and labels.count("style") >= 20
    wrong = []
    for f in feedback:
        record = {k: v for k, v in f.items() if k != "label"}
        contracts.validate("feedback", record)  # the set is made of valid feedback records
        routed = route_feedback(record, answers[f["answer_id"]])
        if routed.route != f["label"]:
            wrong.append((f["id"], f["label"], routed.route, routed.reason))
    accuracy = 1 - len(wrong) / len(feedback)
    assert accuracy >= 0.9, wrong


def test_routes_carry_valid_records_and_reasons() -> None:
    answers, feedback = _labelled()
    for f in feedback:
        record = {k: v for k, v in f.items() if k != "label"}
        routed = route_feedback(record, answers[f["answer_id"]])
        assert routed.reason
        if routed.route == "neither":
            assert routed.record is None and routed.topic is None
        else:
            assert routed.topic in ("docs", "style-examples")
            contracts.validate(routed.topic, dict(routed.record or {}))


def test_a_style_route_keeps_the_contexts_doc_ids() -> None:
    answer = {"id": "q1", "question": "What keeps the log?", "answer": "Kafka. [1]",
              "contexts": [{"doc_id": "kafka", "chunk": 0, "score": 0.9,
                            "text": "Kafka keeps an ordered log of records."}]}  # fmt: skip
    routed = route_feedback({"id": "f1", "answer_id": "q1",
                             "preferred_answer": "Summary: Kafka keeps an ordered log. [1]"},
                            answer)  # fmt: skip
    assert routed.route == "style"
    assert (routed.record or {})["contexts"] == [
        {"doc_id": "kafka", "text": "Kafka keeps an ordered log of records."}]  # fmt: skip
    contracts.validate("style-examples", dict(routed.record or {}))


def test_a_replayed_knowledge_feedback_is_the_same_upsert() -> None:
    answers, feedback = _labelled()
    f = next(x for x in feedback if x["label"] == "knowledge")
    record = {k: v for k, v in f.items() if k != "label"}
    first = route_feedback(record, answers[f["answer_id"]])
    again = route_feedback(dict(record), answers[f["answer_id"]])
    assert first.record == again.record
    assert first.record is not None and first.record["id"] == feedback_doc_id(f["id"])


def test_an_unknown_answer_makes_every_fact_new() -> None:
    routed = route_feedback(
        {"id": "f", "answer_id": "gone", "preferred_answer": "Kafka keeps an ordered log."}, None
    )
    assert routed.route == "knowledge"


def test_style_check_parts() -> None:
    check = StyleCheck(r"\[\d+\]", ("Summary:", "Sources:"), 10, 60)
    assert check.adheres("Summary: Kafka keeps logs [1]\nSources: [1] kafka")
    assert check.failures("Sources: x Summary: y [1]") == ["missing section Sources:"]
    assert "more than 60" in check.failures("Summary: " + "x" * 80 + " [1] Sources:")[0]
    with pytest.raises(ValueError, match="not a regex"):
        StyleCheck("(")
    with pytest.raises(ValueError, match="below min_chars"):
        StyleCheck(min_chars=5, max_chars=2)


def test_adherence_window_alerts_once_per_slump_and_rearms() -> None:
    w = AdherenceWindow(StyleCheck(sections=("Summary:",)), window=10, min_samples=5, threshold=0.6)
    alerts = [w.update("Summary: ok") for _ in range(10)]
    assert not any(alerts)
    alerts = [w.update("plain") for _ in range(10)]
    fired = [a for a in alerts if a is not None]
    assert len(fired) == 1 and fired[0].signal == "style" and fired[0].action == "finetune"
    contracts.validate("drift-alerts", fired[0].to_alert("generator", "v1", 1.7e9))
    for _ in range(10):
        w.update("Summary: back")
    again = [w.update("plain") for _ in range(10)]
    assert sum(a is not None for a in again) == 1


def test_no_style_configured_means_no_signal() -> None:
    w = AdherenceWindow(StyleCheck(), window=2, min_samples=1, threshold=1.0)
    assert all(w.update("anything") is None for _ in range(5))


def test_knowledge_gap_asks_for_documents() -> None:
    w = RetrievalWindow(min_score=0.5, max_share=0.3, window=10, min_samples=10)
    signals = [w.update(s) for s in [0.9] * 5 + [0.1] * 5]
    fired = [s for s in signals if s is not None]
    assert len(fired) == 1 and fired[0].signal == "knowledge-gap" and fired[0].action == "none"
    contracts.validate("drift-alerts", fired[0].to_alert("generator", "base", 1.7e9))
