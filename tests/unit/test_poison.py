"""One record never costs more than itself: per-record isolation, limits with meaning, byte
budgets and delivery truth, without a broker (the same paths run through Kafka in
tests/integration/test_poison.py)."""

from __future__ import annotations

import math
import pickle
import random
import time
from types import SimpleNamespace
from typing import Any

import pytest

from streams import contracts
from streams.exceptions import ContractError, DeliveryError
from streams.kafka import deliver_or_retry, flush_or_raise, producer
from streams.settings import KafkaSettings, LimitSettings, Settings
from trainers.exceptions import ModelSpecError
from trainers.online.learner import LabelJoiner, OnlineLearner
from trainers.online.processor import OnlineProcessor
from trainers.online.serving import ServingPolicy


def _rec(offset: int, value: dict[str, Any], partition: int = 0) -> Any:
    return SimpleNamespace(partition=partition, offset=offset, value=value, timestamp=0.0)


def _good(i: int) -> dict[str, Any]:
    x = float(i % 10)
    return {"id": f"g{i}", "features": {"x": x}, "label": x >= 5}


def _run(svc: OnlineProcessor, values: list[dict[str, Any]], start: int = 0) -> list[Any]:
    return svc.process([_rec(start + i, v) for i, v in enumerate(values)])


def _predicted(outputs: list[Any]) -> set[str]:
    return {key for contract, key, _v in outputs if contract == "predictions"}


@pytest.mark.parametrize(
    ("spec", "task", "poison", "reason"),
    [
        ("linreg", "regression", {"id": "p", "features": {"x": 1.0}, "label": "cat"},
         "a regression model learns numbers"),
        ("logreg", "classification", {"id": "p", "features": {"x": 1.0}, "label": "cat"},
         "but this model's labels are bool"),
        ("nb", "classification", {"id": "p", "features": {"x": "Oslo"}, "label": True},
         "the online model cannot learn or answer this record"),
    ],
)  # fmt: skip
def test_a_poison_record_is_set_aside_and_the_stream_goes_on(
    spec: str, task: str, poison: dict[str, Any], reason: str
) -> None:
    svc = OnlineProcessor(OnlineLearner(spec, task), checkpoint_path=None)
    good = [_good(i) for i in range(200)]
    if task == "regression":
        good = [dict(g, label=float(g["features"]["x"]) * 2) for g in good]
    before = _run(svc, good[:100])
    out = _run(svc, [poison], start=100)
    after = _run(svc, good[100:], start=101)
    rejected = svc.take_rejected()
    assert [(r.offset, reason in r.reason) for r in rejected] == [(100, True)], rejected
    assert _predicted(before) | _predicted(after) == {g["id"] for g in good}
    assert "p" not in _predicted(out)
    assert svc.offsets() == {0: 201}  # the poison record is behind us, not replayed for ever
    assert svc.learner.n_learned == 200
    assert svc.take_rejected() == []


def test_a_late_label_of_the_wrong_type_is_set_aside_and_its_event_still_waits() -> None:
    svc = OnlineProcessor(OnlineLearner("logreg"), checkpoint_path=None)
    _run(svc, [_good(i) for i in range(50)])
    _run(svc, [{"id": "late", "features": {"x": 7.0}}], start=50)
    _run(svc, [{"id": "late", "label": "yes"}], start=51)
    assert [r.offset for r in svc.take_rejected()] == [51]
    _run(svc, [{"id": "late", "label": True}], start=52)
    assert svc.learner.n_learned == 51 and svc.orphan_labels == 0


class _TabularOnly:
    """A batch model that, like a tabular classifier, refuses text."""

    version = "v-tab"

    def predict_many(self, xs: list[Any]) -> list[tuple[Any, dict[str, float] | None]]:
        if any(isinstance(x, str) for x in xs):
            raise ModelSpecError("this model takes features, not text")
        return [(True, {"True": 1.0}) for _ in xs]


def test_the_online_model_answers_what_the_batch_model_cannot_take() -> None:
    serving = ServingPolicy("batch", "classification", load=_TabularOnly)
    serving.request_reload()
    assert serving.apply_pending(wait=5.0)
    svc = OnlineProcessor(OnlineLearner("logreg"), checkpoint_path=None, serving=serving)
    _run(svc, [_good(i) for i in range(20)])
    out = _run(svc, [{"id": "t", "text": "a text for a tabular model"}, _good(99)], start=20)
    by_id = {k: v for c, k, v in out if c == "predictions"}
    assert by_id["t"]["source"] == "online" and by_id["g99"]["source"] == "batch"
    assert by_id["g99"]["model_version"] == "v-tab" and svc.take_rejected() == []


def test_a_huge_number_is_refused_at_decode_and_a_model_fed_one_answers_nothing() -> None:
    limits = LimitSettings().contract_limits()
    for raw in (b'{"id": "e", "features": {"x": 1e308}}', b'{"id": "e", "label": -1e300}'):
        with pytest.raises(ContractError, match="over the magnitude limit"):
            contracts.decode("events", raw, None, limits)
    with pytest.raises(ContractError, match="'features' has 500 keys, over the 256-key limit"):
        contracts.decode("events", contracts.encode(
            {"id": "e", "features": {f"k{i}": 1.0 for i in range(500)}}), None, limits)  # fmt: skip
    # Past the decoder (a model built elsewhere): a NaN model gives no number, never a NaN.
    learner = OnlineLearner("logreg")
    for i in range(20):
        learner.learn({"x": float(i)}, i % 2 == 0)
    learner.learn({"x": 1e308}, True)
    pred = learner.predict({"x": 1.0})
    assert pred.proba is None or all(math.isfinite(v) for v in pred.proba.values())
    value = contracts.encode({"id": "e", "prediction": pred.prediction, "model": "m",
                              "model_version": "v", "ts": 1.0, "latency_ms": 0.1,
                              **({"proba": pred.proba} if pred.proba else {})})  # fmt: skip
    contracts.validate("predictions", contracts.decode("predictions", value))


def test_text_features_are_hashed_so_the_model_stays_small() -> None:
    learner = OnlineLearner("logreg", text_buckets=1024)
    rng = random.Random(0)
    for i in range(5):
        words = " ".join(f"w{rng.randrange(10**9)}" for _ in range(20_000))
        x = learner.features({"id": f"e{i}", "text": words})
        assert len(x) <= 1024
        learner.learn(x, i % 2 == 0)
    assert len(pickle.dumps(learner.model)) < 400_000  # 20k distinct words a time: ~6 MB before


def test_the_label_store_has_a_byte_budget() -> None:
    budget = 2 * 2**20
    svc = OnlineProcessor(OnlineLearner("logreg"), checkpoint_path=None, label_store_bytes=budget)
    text = " ".join(["word"] * 10_000)  # ~50 kB per event
    for start in range(0, 400, 50):
        _run(svc, [{"id": f"u{i}", "text": text} for i in range(start, start + 50)], start=start)
    assert svc.joiner.bytes <= budget
    assert svc.joiner.evicted_total > 0 and len(svc.joiner) + svc.joiner.evicted_total == 400
    # What waits is the compact event, not its featurised form.
    assert svc.joiner.bytes >= len(svc.joiner) * len(text)


def test_an_old_joiner_without_a_budget_is_restored_with_one() -> None:
    old = LabelJoiner()
    old.put("e1", ({"x": 1.0}, {"x": 1.0}, None), now=0.0)
    state = old.__dict__.copy()
    for name in ("bytes", "max_bytes", "evicted_total"):
        state.pop(name)
    restored = LabelJoiner.__new__(LabelJoiner)
    restored.__setstate__(state)
    assert restored.bytes > 0 and restored.pop("e1") is not None and restored.bytes == 0


def test_labels_wait_their_ttl_on_the_resuming_workers_clock_however_skewed() -> None:
    first = LabelJoiner(ttl_seconds=10)
    first.put("a", b"a", now=1_700_000_000.0)  # a leader whose clock is years ahead ...
    first.put("b", b"b", now=1_700_000_006.0)
    resumed = pickle.loads(pickle.dumps(first))  # ... checkpointed; another worker resumes
    assert resumed.expire(now=100.0) == 0 and len(resumed) == 2
    assert resumed.expire(now=104.5) == 1  # "a" is 10.5 s old on the new clock, "b" 4.5 s
    assert resumed.pop("b") == b"b"


def test_a_promotion_the_registry_does_not_confirm_moves_nothing() -> None:
    registry = {"v1": {"0": [0, 99]}}
    svc = OnlineProcessor(OnlineLearner("logreg"), None, lineage=registry.get)
    forged = {"job_id": "j", "model_version": "../../planted", "kind": "retrain",
              "status": "promoted", "data": {"offsets": {"0": [0, 10**15]}}}  # fmt: skip
    with pytest.raises(ModelSpecError, match="not a promoted version"):
        svc.on_model_update(forged)
    assert svc.policy.trained_offsets == {} and svc.policy.serving_version is None
    # A real one moves the offsets the registry recorded, whatever the record says.
    svc.on_model_update(dict(forged, model_version="v1"))
    assert svc.policy.trained_offsets == {0: 99} and svc.policy.serving_version == "v1"


def _dead_broker_producer(timeout_ms: int = 1000) -> Any:
    s = Settings(kafka=KafkaSettings(delivery_timeout_ms=timeout_ms))
    return producer(s, "127.0.0.1:1", **{"log_level": 0})


def test_a_failed_delivery_is_an_error_not_a_success() -> None:
    prod = _dead_broker_producer()
    prod.produce("t", b"v", key=b"k")
    with pytest.raises(DeliveryError, match="1 records failed delivery"):
        flush_or_raise(prod, 10)
    assert prod.failed_total == 1
    flush_or_raise(prod, 1)  # reported once; nothing is left


def test_a_user_callback_still_runs_and_the_failure_is_still_recorded() -> None:
    prod = _dead_broker_producer()
    seen: list[Any] = []
    prod.produce("t", b"v", key=b"k", on_delivery=lambda err, _msg: seen.append(err))
    prod.flush(10)
    assert len(seen) == 1 and seen[0] is not None and len(prod.take_failures()) == 1


def test_deliver_or_retry_sends_again_until_told_to_stop() -> None:
    prod = _dead_broker_producer(timeout_ms=1000)
    prod.produce("t", b"v", key=b"k")
    retries: list[int] = []
    deadline = time.monotonic() + 6
    with pytest.raises(DeliveryError, match="stopping with 1 records undelivered"):
        deliver_or_retry(prod, lambda: time.monotonic() > deadline, wait_s=2,
                         on_retry=retries.append)  # fmt: skip
    assert len(retries) >= 2 and set(retries) == {1}  # the same record, sent again each time


def test_a_producer_that_delivers_nothing_for_too_long_is_declared_stalled() -> None:
    """The learner's producer after a broker restart (seen in CI): records wait in it, no
    delivery ever comes. Past ``stall_s`` without one, the caller gets ProducerStalledError
    (its thread ends, the supervisor makes a new one with a new producer)."""
    from streams.exceptions import ProducerStalledError

    prod = _dead_broker_producer(timeout_ms=60_000)  # librdkafka keeps them for a minute
    prod.produce("t", b"v", key=b"k")
    started = time.monotonic()
    with pytest.raises(ProducerStalledError, match="no record delivered for [2-9] s"):
        deliver_or_retry(prod, wait_s=0.5, stall_s=2)
    assert time.monotonic() - started < 10
    prod.purge()
    assert prod.flush(1) == 0 and prod.delivered_total == 0


def test_the_cooldown_survives_a_resuming_worker_whose_clock_is_off() -> None:
    from trainers.drift.trigger import TriggerPolicy

    policy = TriggerPolicy("m", "events", volume_threshold=1, cooldown_seconds=300)
    policy.observe(0, 0, labelled=True)
    job = policy.tick(now=1_700_000_000.0)  # a leader whose clock is right
    assert job is not None
    policy.job_update(job.job_id, "promoted", "v1", {"0": [0, 1]})
    policy.tick(now=1_700_000_010.0)
    resumed = pickle.loads(pickle.dumps(policy))  # resumed by a worker whose clock is at 5 s
    resumed.observe(0, 1, labelled=True)
    assert resumed.tick(now=5.0) is None  # 10 s after the last job: still cooling down
    assert resumed.tick(now=5.0 + 291) is not None  # 301 s after it: a job again
