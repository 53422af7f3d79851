"""milvus-lite in a child process (``LIVELEARN_MILVUS__LITE_PROCESS``): the same file and API,
shared by the stores of a process, stopped with the last of them, and gone with its parent."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import retrieval.store
from retrieval import lite_server
from retrieval.store import ChunkRow, CollectionCatalog, VectorStore


@pytest.fixture
def process_mode() -> Iterator[None]:
    retrieval.store.lite_process = True
    try:
        yield
    finally:
        retrieval.store.lite_process = False


def _server_pids() -> set[int]:
    return {proc.pid for proc, _port, _refs in lite_server._servers.values()}


def test_stores_share_one_server_process_and_the_last_stops_it(
    tmp_path: Path, process_mode: None
) -> None:
    path = str(tmp_path / "m.db")
    store = VectorStore(path, dim=2)
    catalog = CollectionCatalog(path)
    (pid,) = _server_pids()
    assert psutil.Process(pid).cmdline()[-3] == path
    store.upsert([ChunkRow("a#0", "a", 0, "alpha", [1.0, 0.0])])
    assert [h.doc_id for h in store.search([1.0, 0.0], k=1)] == ["a"]
    assert catalog.is_collection("livelearn_chunks")
    store.close()
    assert psutil.pid_exists(pid)  # the catalog still uses it
    catalog.close()
    assert not lite_server._servers
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    # The same file opens again, in-process this time: the rows were flushed to it.
    retrieval.store.lite_process = False
    with VectorStore(path, dim=2) as again:
        assert again.count() == 1


_CHILD = """
import sys, time
import retrieval.store
from retrieval import lite_server
from retrieval.store import VectorStore
retrieval.store.lite_process = True
store = VectorStore(sys.argv[1], dim=2)
print([p.pid for p, _port, _refs in lite_server._servers.values()][0], flush=True)
time.sleep(600)
"""


def test_the_server_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    path = str(tmp_path / "k.db")
    parent = subprocess.Popen([sys.executable, "-c", _CHILD, path], stdout=subprocess.PIPE,
                              cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert parent.stdout is not None
    server = int(parent.stdout.readline())
    parent.kill()  # kill -9: no atexit, no close
    parent.wait(10)
    deadline = time.monotonic() + 20
    while psutil.pid_exists(server) and time.monotonic() < deadline:
        try:
            if psutil.Process(server).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    assert not psutil.pid_exists(server) or psutil.Process(server).status() == "zombie"
    with VectorStore(path, dim=2) as store:  # the file is free again
        assert store.count() == 0
