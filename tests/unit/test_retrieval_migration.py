"""The pure parts of an embedder migration (naming, probes, recall, decision, replay progress)
and the alias switch on milvus-lite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from retrieval.exceptions import InvalidArgumentError
from retrieval.migration import (
    ProbeSet,
    ReplayProgress,
    collection_for,
    decide,
    probe_query,
    recall_at_k,
)
from retrieval.store import CollectionCatalog, VectorStore
from streams.migration_worker import Serving, resolve_serving


def test_collection_names_are_valid_distinct_and_bounded() -> None:
    names = {
        collection_for("livelearn_chunks", m, d)
        for m, d in [("a/b", 32), ("c/b", 32), ("a/b", 48), ("Ümlaut model.v2", 8)]
    }
    assert len(names) == 4
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) for n in names)
    assert len(collection_for("c" * 250, "m" * 300, 384)) <= 255
    assert collection_for("c", "x/y", 4) == collection_for("c", "x/y", 4)  # deterministic


def test_probe_questions_follow_updates_and_deletes() -> None:
    probes = ProbeSet(size=3, capacity=3)
    probes.observe({"id": "a", "op": "upsert", "text": "First one. Second one."})
    probes.observe({"id": "b", "op": "upsert", "title": "B", "text": "x"})
    probes.observe({"id": "c", "op": "upsert", "text": ""})  # nothing to ask
    probes.observe({"id": "a", "op": "upsert", "title": "A v2", "text": "y"})
    probes.observe({"id": "d", "op": "upsert", "title": "D"})
    probes.observe({"id": "e", "op": "upsert", "title": "E"})  # over capacity: not held
    probes.observe({"id": "b", "op": "delete"})
    assert probes.sample() == [("A v2", "a"), ("D", "d")]
    assert probe_query({"id": "x", "text": "  many   spaces here. Then more"}) == (
        "many spaces here."
    )


def test_probe_sample_is_spread_over_the_documents() -> None:
    probes = ProbeSet(size=4, capacity=100)
    for i in range(100):
        probes.observe({"id": f"d{i}", "title": f"t{i}"})
    assert [d for _, d in probes.sample()] == ["d0", "d25", "d50", "d75"]


def test_recall_and_decision() -> None:
    assert recall_at_k([["a"], ["x", "y", "z", "w", "v", "b"]], ["a", "b"], k=5) == 0.5
    with pytest.raises(ValueError):
        recall_at_k([["a"]], ["a", "b"])
    assert decide(0.9, 0.88, margin=0.02).switch
    refused = decide(0.9, 0.87, margin=0.02)
    assert not refused.switch and "below" in refused.reason
    assert decide(0.5, 0.6, margin=0.0).switch  # better is always fine
    assert not decide(0.5, 0.6, margin=-0.2).switch  # a negative margin asks for a gain


def test_replay_progress_resumes_from_commits_and_counts_from_the_low_watermark() -> None:
    p = ReplayProgress({0: 5, 1: 0}, {0: 15, 1: 10}, {0: 15})  # partition 0 done before a crash
    assert (p.done, p.total, p.caught_up) == (10, 20, False)
    p.advance(1, 9)
    assert p.caught_up and p.fraction == 1.0
    assert ReplayProgress({}, {}).fraction == 1.0 and ReplayProgress({}, {}).caught_up


def test_alias_switch_and_serving_resolution_on_milvus_lite(tmp_path: Path) -> None:
    uri = str(tmp_path / "m.db")
    catalog = CollectionCatalog(uri)
    try:
        assert resolve_serving(catalog, "chunks", "m-a") == Serving("chunks", "m-a")  # none yet
        old = VectorStore(uri, "chunks", dim=2)
        new = VectorStore(uri, "chunks__b", dim=3)
        catalog.set_model("chunks__b", "m-b")
        assert resolve_serving(catalog, "chunks", "m-a") == Serving("chunks", "m-a")
        with pytest.raises(InvalidArgumentError):
            catalog.point_alias("chunks", "chunks__b")  # a collection has the alias's name
        catalog.point_alias("chunks", "chunks__b", rename_to="chunks__a")
        assert resolve_serving(catalog, "chunks", "m-a") == Serving("chunks__b", "m-b")
        catalog.point_alias("chunks", "chunks__a")  # an existing alias: altered
        assert catalog.alias_target("chunks") == "chunks__a"
        assert not catalog.is_collection("chunks") and catalog.resolve("nothing") is None
        old.close()
        new.close()
    finally:
        catalog.close()
