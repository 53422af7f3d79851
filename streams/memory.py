"""The worker's memory: glibc's allocator tuned, freed pages handed back, milvus-lite's write
buffer bounded, and the heap profile when asked for (``LIVELEARN_MEMORY__*``).

Why: under a steady stream the worker's Python objects stay flat, but its RSS rose for hours
(``python -m bench soak``). Most of the rise was memory Python had freed and glibc kept: many
threads (faust's, librdkafka's, milvus-lite's gRPC pool, torch's) each get a malloc arena of
their own (up to 8 per core), and the blocks freed in them (decoded batches, tokenizer output,
orjson buffers) are reused only by the same arena and are rarely handed back. Fewer arenas
(``MALLOC_ARENA_MAX``) and a periodic ``malloc_trim`` keep that bounded. The rest was
milvus-lite's memtable, which keeps every upserted row, superseded ones too, until 128 MB of
them: at 5 docs/s that is an hour of growth before the first flush.

:func:`configure_worker_memory` runs first thing in ``livelearn worker``, before any thread
starts (an arena limit set later leaves the arenas already made).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from typing import Any

from streams.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["MallocTrimmer", "configure_worker_memory", "limit_arenas", "malloc_trim"]

#: ``mallopt``'s parameter number for the arena limit (glibc's malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
#: milvus-lite reads its write-buffer budget from this variable when it is imported.
MILVUS_LITE_MEMTABLE_ENV = "MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES"


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_arenas(n: int) -> bool:
    """Cap glibc's malloc arenas at ``n`` (``mallopt(M_ARENA_MAX, n)``); False where that
    cannot be done (not glibc). Threads started afterwards share those arenas.

    >>> limit_arenas(0)  # 0: leave glibc's default
    False
    """
    libc = _libc()
    if n <= 0 or libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_ARENA_MAX, n))


def malloc_trim() -> bool:
    """Hand the pages malloc holds free back to the OS (``malloc_trim(0)``: every arena,
    free pages in the middle of a heap too); True if any memory was released.

    >>> malloc_trim() in (True, False)
    True
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


class MallocTrimmer(threading.Thread):
    """A daemon thread calling :func:`malloc_trim` every ``interval_s`` seconds.

    >>> trimmer = MallocTrimmer(0.01)
    >>> trimmer.start(); trimmer.stop(); trimmer.join(5); trimmer.is_alive()
    False
    """

    def __init__(self, interval_s: float) -> None:
        super().__init__(name="malloc-trim", daemon=True)
        self.interval_s = interval_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            malloc_trim()

    def stop(self) -> None:
        self.stop_event.set()


def bound_milvus_lite_memtable(mb: float) -> bool:
    """Set milvus-lite's memtable budget to ``mb`` (before milvus-lite is imported; a value
    already in ``MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES`` is left as it is). False when it
    could not be applied: milvus-lite was imported already, or the variable was set."""
    if MILVUS_LITE_MEMTABLE_ENV in os.environ:
        return False
    if "milvus_lite.constants" in sys.modules:
        log.warning("milvus-lite already imported: its memtable budget stays as it is")
        return False
    os.environ[MILVUS_LITE_MEMTABLE_ENV] = str(int(mb * 2**20))
    return True


def configure_worker_memory(settings: Settings) -> None:
    """Apply ``settings.memory`` to this process: the arena limit, the trimmer thread,
    milvus-lite's memtable budget and (when asked for) the heap profile.

    >>> configure_worker_memory(Settings(memory={"malloc_arena_max": 0, "malloc_trim_s": 0},
    ...                                  milvus={"uri": "http://milvus:19530"}))
    """
    m = settings.memory
    if limit_arenas(m.malloc_arena_max):
        log.info("malloc arenas limited to %d", m.malloc_arena_max)
    if m.malloc_trim_s > 0:
        MallocTrimmer(m.malloc_trim_s).start()
    if settings.milvus.uri == "":  # milvus-lite in this process
        bound_milvus_lite_memtable(m.milvus_lite_memtable_mb)
    from streams.heap import start_heap_profile

    start_heap_profile(settings.data_dir, m.heap_profile_s, m.heap_profile_frames)
