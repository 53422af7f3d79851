"""milvus-lite in a child process of its own, for a local ``.db`` path.

milvus-lite 3.x is pure Python: ``MilvusClient("x.db")`` starts its gRPC server *in the
calling process*, as threads, so every search and upsert runs Python under the caller's GIL
(with one engine thread per collection). In the worker that is the thread the query path and
the indexer wait for, and it competes with them for the GIL. :func:`lite_uri` runs the same
server (``milvus_lite.adapter.grpc.server``, the code ``python -m milvus_lite server`` runs)
in a child process that owns the data directory, and returns its ``http://127.0.0.1:<port>``
URI: the same files, the same public pymilvus API, its Python on a core of its own.

The child exits with its parent (it watches the parent's pid), so a killed worker does not
leave the data directory locked; it is stopped when the last store using it is released.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from retrieval.exceptions import VectorStoreError

__all__ = ["lite_uri", "release"]

_lock = threading.Lock()
_servers: dict[str, tuple[subprocess.Popen[bytes], int, int]] = {}  # path → (proc, port, refs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def lite_uri(path: str, timeout_s: float = 60.0) -> str:
    """The URI of a milvus-lite server process owning ``path`` (started on first use, shared
    by every store of this process on the same path; :func:`release` each use)."""
    key = os.path.abspath(path)
    with _lock:
        found = _servers.get(key)
        if found is not None and found[0].poll() is None:
            proc, port, refs = found
            _servers[key] = (proc, port, refs + 1)
            return f"http://127.0.0.1:{port}"
        port = _free_port()
        log = Path(key).parent / f".{Path(key).name}.server.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "retrieval.lite_server", key, str(port), str(os.getpid())],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-1500:]
                raise VectorStoreError(f"milvus-lite server for {path!r} exited: {tail}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    proc.kill()
                    raise VectorStoreError(
                        f"milvus-lite server for {path!r} not up after {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.05)
        _servers[key] = (proc, port, 1)
        return f"http://127.0.0.1:{port}"


def release(path: str) -> None:
    """One use of ``path``'s server is over; the last one stops it (it flushes and unlocks
    the data directory)."""
    key = os.path.abspath(path)
    with _lock:
        found = _servers.get(key)
        if found is None:
            return
        proc, port, refs = found
        if refs > 1:
            _servers[key] = (proc, port, refs - 1)
            return
        del _servers[key]
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _serve(data_dir: str, port: int, parent: int) -> None:
    import signal

    from milvus_lite.adapter.grpc.server import run_server

    def watch() -> None:  # the parent gone (kill -9 included): exit, unlocking the files
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    threading.Thread(target=watch, daemon=True).start()
    with contextlib.suppress(KeyboardInterrupt):
        run_server(data_dir, host="127.0.0.1", port=port)


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
