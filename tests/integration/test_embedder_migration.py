"""Embedder migration through a real broker and milvus-lite: a CLI rebuild killed -9 mid-way
and restarted ends exact and switches the alias; the worker's own migration thread swaps
embedder and collection together while queries run; a refused switch changes nothing.

Two tiny BERT encoders built from a config (32-d and 48-d) are the two models.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from retrieval.chunking import TokenChunker
from retrieval.embedding import TextEmbedder
from retrieval.migration import collection_for
from retrieval.store import CollectionCatalog, VectorStore
from streams.kafka import flush_or_raise, producer
from streams.migration_worker import EmbedderMigration
from streams.services import RetrievalServices
from streams.settings import ModelSettings, RetrievalSettings, Settings
from tests.conftest import settings_env
from tests.integration.helpers import stdlib_corpus
from trainers.batch.models import save_tiny_encoder

CHUNK_TOKENS, OVERLAP = 64, 8


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("encoders")
    a = save_tiny_encoder(root / "enc-a", hidden=32, max_positions=128)
    b = save_tiny_encoder(root / "enc-b", hidden=48, max_positions=128)
    return a, b


def _settings(base: Settings, model: str, margin: float = 1.0) -> Settings:
    models = ModelSettings(
        embedding=model, chunk_tokens=CHUNK_TOKENS, chunk_overlap=OVERLAP, learner=False
    )
    retrieval = RetrievalSettings(migration_batch=8, migration_margin=margin, migration_probes=20)
    return base.model_copy(update={"models": models, "retrieval": retrieval})


def _env(s: Settings) -> dict[str, str]:
    env = settings_env(s)
    env["LIVELEARN_RETRIEVAL__MIGRATION_BATCH"] = str(s.retrieval.migration_batch)
    env["LIVELEARN_RETRIEVAL__MIGRATION_MARGIN"] = str(s.retrieval.migration_margin)
    env["LIVELEARN_RETRIEVAL__MIGRATION_PROBES"] = str(s.retrieval.migration_probes)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _story(s: Settings) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """120 docs, 12 updates (half of them to one short sentence: fewer chunks), 10 deletes
    and a record that fails its contract, produced to ``docs``; returns (records, final)."""
    rng = random.Random(16)
    docs = stdlib_corpus(120, min_chars=300)
    records: list[dict[str, Any]] = list(docs)
    for i, d in enumerate(rng.sample(docs, 12)):
        text = d["text"].split(".")[0] + "." if i % 2 else d["text"] + " Revised."
        records.append(dict(d, text=f"UPDATED {i}: {text}"))
    records += [{"id": d["id"], "op": "delete"} for d in rng.sample(docs, 10)]
    p = producer(s, s.kafka.bootstrap_servers)
    for r in records:
        p.produce(s.topics.docs, orjson.dumps(r), key=r["id"].encode())
    p.produce(s.topics.docs, b"{not json", key=b"bad")
    flush_or_raise(p)
    final = {str(r["id"]): r for r in records}
    return records, {k: v for k, v in final.items() if v.get("op") != "delete"}


def _expected(model: str, final: dict[str, dict[str, Any]]) -> dict[str, str]:
    chunker = TokenChunker(TextEmbedder(model).tokenizer, CHUNK_TOKENS, OVERLAP)
    return {c.chunk_id: c.text for d in final.values()
            for c in chunker.chunk(d["id"], d["text"], d.get("title"))}  # fmt: skip


# milvus-lite locks its file for the life of the process that opened it: everything that
# reads or writes the store of the first test runs in a child, like the CLI itself.
_INSPECT = """
import sys, orjson
from retrieval.store import CollectionCatalog, VectorStore
from streams.services import RetrievalServices
from streams.settings import load_settings
uri, alias, wanted, build = sys.argv[1], sys.argv[2], orjson.loads(sys.argv[3]), sys.argv[4]
c = CollectionCatalog(uri)  # open throughout: milvus-lite stops when its last client closes
out = {"serving": {}, "states": {}}
if build or len(sys.argv) > 5:  # index these records, or answer one question, as a worker
    services = RetrievalServices(load_settings())
    services.load()
    if build:
        services.indexer.apply(orjson.loads(open(build, "rb").read()))
    a = services.answerer
    hits = a.search("Return a shallow copy of the list", k=5)
    out["serving"] = {"serving": services.serving.collection,
                      "target": services.migration_target,
                      "dims": [a.store.dim, a.embedder.dim], "hits": len(hits)}
    services.close()
out.update({"target": c.alias_target(alias), "resolve": c.resolve(alias),
            "models": {n: c.model(n) for n, _ in wanted if c.resolve(n)}})
for name, dim in [(n, d) for n, d in wanted if c.resolve(n)]:
    with VectorStore(uri, name, dim=dim, bm25=True) as store:
        rows = store.get(sorted(store.all_chunk_ids()))
        out["states"][name] = {r["chunk_id"]: r["text"] for r in rows}
c.close()
sys.stdout.buffer.write(orjson.dumps(out))
"""


def _child(s: Settings, script: str, *args: str) -> Any:
    out = subprocess.run([sys.executable, "-c", script, *args], env=_env(s),
                         capture_output=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
    return orjson.loads(out.stdout) if out.stdout.strip() else None


def _inspect(s: Settings, *wanted: tuple[str, int], build: str = "", serve: bool = False) -> Any:
    """Aliases, models and rows (of the ``(collection, dim)`` in ``wanted``), read in a child;
    first ``build`` (index a records file) or ``serve`` (answer a question) as a worker."""
    args = [s.milvus_uri, s.milvus.collection, orjson.dumps(wanted).decode(), build]
    return _child(s, _INSPECT, *args, *(["serve"] if serve else []))


def _state(uri: str, collection: str, dim: int) -> dict[str, str]:
    with VectorStore(uri, collection, dim=dim, bm25=True) as store:
        return {r["chunk_id"]: r["text"] for r in store.get(sorted(store.all_chunk_ids()))}


def _migrate(s: Settings, kill_at: float | None = None, timeout_s: float = 120) -> Any:
    """``livelearn embedder migrate`` in a child; with ``kill_at``, kill -9 it once that share
    of the replay is done (and before the end). Returns (returncode, output lines)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "embedder", "migrate"], env=_env(s),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if kill_at is not None and line.startswith("progress "):
                done, total = map(int, line.split()[1:3])
                if total and kill_at * total <= done < total:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            assert time.monotonic() < deadline, "\n".join(lines[-40:])
        return proc.wait(timeout_s), lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.slow  # five child processes (each loads torch): ~60 s idle, ~200 s under load
def test_migration_killed_mid_rebuild_then_resumed_ends_exact_and_switches(
    settings: Settings, encoders: tuple[str, str], tmp_path: Path
) -> None:
    model_a, model_b = encoders
    s_a, s_b = _settings(settings, model_a), _settings(settings, model_b)
    alias = settings.milvus.collection
    records, final = _story(settings)

    # The collection served today, built with model A (as the worker's docs agent would).
    (tmp_path / "records.json").write_bytes(orjson.dumps(records))
    seen = _inspect(s_a, (alias, 32), build=str(tmp_path / "records.json"))
    expected_a, expected_b = _expected(model_a, final), _expected(model_b, final)
    new, keep_a = collection_for(alias, model_b, 48), collection_for(alias, model_a, 32)
    assert seen["states"][alias] == expected_a

    # 1. The rebuild for model B, killed -9 part-way.
    code, lines = _migrate(s_b, kill_at=0.3)
    assert code == -signal.SIGKILL, "\n".join(lines[-20:])
    seen = _inspect(s_b, (alias, 32), (new, 48), serve=True)
    assert seen["target"] is None and seen["resolve"] == alias
    assert seen["models"] == {alias: model_a, new: model_b}
    assert seen["states"][alias] == expected_a
    assert 0 < len(seen["states"][new]) < len(expected_b)
    # Meanwhile a worker configured for B answers from A's collection, with A's model.
    assert seen["serving"] == {"serving": alias, "target": model_b, "dims": [32, 32], "hits": 5}

    # 2. The restart continues from the group's commits and switches the alias.
    code, lines = _migrate(s_b)
    assert code == 0, "\n".join(lines[-40:])
    result = orjson.loads(next(x for x in lines if x.startswith("{")))
    assert result["switched"] is True and result["probes"] == 20
    assert result["records"] < len(records)  # it continued, it did not start over
    seen = _inspect(s_b, (alias, 48), (keep_a, 32))
    assert seen["target"] == new and seen["models"][keep_a] == model_a
    assert seen["states"][alias] == expected_b  # same ids, latest texts, deletes honoured
    assert seen["states"][keep_a] == expected_a  # the old one is kept (a way back)


def test_worker_migration_swaps_model_and_collection_together_under_queries(
    settings: Settings, encoders: tuple[str, str]
) -> None:
    model_a, model_b = encoders
    alias, uri = settings.milvus.collection, settings.milvus_uri
    records, final = _story(settings)
    services = RetrievalServices(_settings(settings, model_a))
    services.load()
    services.indexer.apply(records)
    services.close()

    new = collection_for(alias, model_b, 48)
    services = RetrievalServices(_settings(settings, model_b))
    services.load()
    seen: list[tuple[str, int, int]] = []
    try:
        assert services.migration_target == model_b
        services.start_migration(settings.kafka.bootstrap_servers)
        assert services._migration is not None

        def probe() -> tuple[str, int, int]:
            a = services.answerer
            hits = a.search("Return a shallow copy of the list", k=5)
            assert len(hits) == 5
            return a.store.collection, a.embedder.dim, a.store.dim

        while services._migration.is_alive():
            seen.append(services.executor.submit(probe).result())
            time.sleep(0.02)
        seen.append(services.executor.submit(probe).result())

        # A refused switch changes nothing (the new model would have to beat the old by 1.0).
        back = EmbedderMigration(
            _settings(settings, model_a, margin=-1.0), settings.kafka.bootstrap_servers,
            model_a, services.serving, services.answerer,
            run_store=lambda fn, *args: services.executor.submit(fn, *args).result(),
        ).run()  # fmt: skip
        assert not back.switched and back.probes == 20 and "below" in back.reason
        assert services.executor.submit(probe).result() == (new, 48, 48)
    finally:
        catalog = CollectionCatalog(uri)  # milvus-lite stops when its last client closes
        services.close()
    assert set(seen) == {(alias, 32, 32), (new, 48, 48)}, set(seen)
    first_new = next(i for i, x in enumerate(seen) if x[0] == new)
    assert all(x[0] == new for x in seen[first_new:])  # switched once, never back
    assert catalog.alias_target(alias) == new
    assert _state(uri, alias, 48) == _expected(model_b, final)
    catalog.close()
