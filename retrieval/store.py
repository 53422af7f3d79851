"""Chunk vectors in Milvus, over the public :class:`pymilvus.MilvusClient` API.

The same code runs on milvus-lite (``uri`` is a ``.db`` file; one process per file) and on a
Milvus server (``uri`` is ``http://host:19530``). The collection uses Strong consistency, so
a search that follows an acknowledged upsert or delete sees it.

Search modes (:data:`SEARCH_MODES`): ``dense`` (the chunk embeddings), ``sparse`` (BM25 over
the chunk text, computed by Milvus itself from a ``Function(BM25)`` on the ``text`` field) and
``hybrid`` (both searches, fused with RRF or weights by :func:`fuse`). A collection made
with ``bm25=True`` carries the sparse field; one without it (made before, or on a server older
than Milvus 2.5, which has no BM25) answers sparse and hybrid searches from the dense vectors
and says so once in the log.

One module on purpose: every call livelearn makes to Milvus (schema, upsert, delete, dense,
BM25 and hybrid search, reconnects) is here, so the public pymilvus API it relies on is in
one place; filters are in :mod:`retrieval.filters`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np

from retrieval.bm25 import ENGLISH_STOP_WORDS, TermStats
from retrieval.exceptions import (
    CollectionMismatchError,
    InvalidArgumentError,
    VectorStoreError,
    VectorStoreUnavailableError,
)
from retrieval.filters import (
    MetaValue,
    build_filter,
    quote_string,
    truncate_utf8,
)

__all__ = [
    "BM25_ANALYZER",
    "FUSIONS",
    "SEARCH_MODES",
    "ChunkRow",
    "CollectionCatalog",
    "MODEL_PROPERTY",
    "Hit",
    "VectorStore",
    "build_filter",
    "fuse",
    "hybrid_candidates",
    "quote_string",
    "server_supports_bm25",
    "truncate_utf8",
]

log = logging.getLogger(__name__)


ID_MAX_BYTES = 512
TEXT_MAX_BYTES = 65535
LABEL_MAX_BYTES = 2048  # title and source
UPSERT_BATCH = 500  # milvus-lite is ~6x faster in batches of 100-1000 than row by row
PAGE_SIZE = 1000


class _UnimplementedRpcFilter(logging.Filter):
    """milvus-lite's in-process gRPC server does not implement every call the client tries
    (``AllocTimestamp`` at start-up); the client falls back by itself, yet grpc logs each
    such call as an ERROR with a traceback. They are harmless: logged at DEBUG instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, NotImplementedError) and "Method not implemented" in str(exc):
            logging.getLogger(__name__).debug("milvus-lite: %s (not implemented, harmless)",
                                              record.getMessage())  # fmt: skip
            return False
        return True


_GRPC_SERVER_LOG = logging.getLogger("grpc._server")
if not any(isinstance(f, _UnimplementedRpcFilter) for f in _GRPC_SERVER_LOG.filters):
    _GRPC_SERVER_LOG.addFilter(_UnimplementedRpcFilter())
QUERY_LIMIT = 16384  # Milvus caps offset + limit of one query at 16384
METRICS = ("COSINE", "IP", "L2")
COLLECTION_NOT_LOADED = 101  # Milvus's error code, which milvus-lite uses too
FIELDS = ("chunk_id", "doc_id", "n", "text", "title", "source", "meta", "ts")
SPARSE_FIELD = "sparse"
SEARCH_MODES = ("dense", "sparse", "hybrid")
FUSIONS = ("rrf", "weighted")
#: The analyzer of the BM25 field: Milvus's standard tokenizer (Unicode words, so snake_case
#: identifiers such as ``lru_cache`` stay one term and dotted names split into their parts),
#: lower-cased, English stop words removed. No stemmer: milvus-lite has none, and the same
#: terms on milvus-lite and on a server keep the two interchangeable.
BM25_ANALYZER: dict[str, Any] = {
    "tokenizer": "standard",
    "filter": ["lowercase", {"type": "stop", "stop_words": ENGLISH_STOP_WORDS}],
}
BM25_MIN_VERSION = (2, 5)  # Milvus added the BM25 function in 2.5

_T = TypeVar("_T")


def server_supports_bm25(version: str) -> bool | None:
    """Whether a Milvus server of ``version`` has the BM25 function (None: cannot tell).

    Examples
    --------
    >>> server_supports_bm25("milvus_lite-3.2.2"), server_supports_bm25("v2.3.5-lite")
    (True, False)
    >>> server_supports_bm25("v2.5.4"), server_supports_bm25("something else")
    (True, None)
    """
    if version.startswith("milvus_lite"):  # milvus-lite 3.x (the pure-Python one) has it
        return True
    found = re.match(r"v?(\d+)\.(\d+)", version.strip())
    if found is None:
        return None
    return (int(found.group(1)), int(found.group(2))) >= BM25_MIN_VERSION


@dataclass(frozen=True)
class ChunkRow:
    """One row of the collection: a chunk, its vector and its document's attributes.

    Examples
    --------
    >>> row = ChunkRow("a#0", "a", 0, "text", [0.0, 1.0], meta={"lang": "en"})
    >>> row.chunk_id, row.title, row.meta
    ('a#0', '', {'lang': 'en'})
    """

    chunk_id: str
    doc_id: str
    n: int
    text: str
    vector: Sequence[float] | np.ndarray
    title: str = ""
    source: str = ""
    meta: dict[str, MetaValue] = field(default_factory=dict)
    ts: float = 0.0


@dataclass(frozen=True)
class Hit:
    """One search result; ``score`` is a similarity, higher is better.

    Examples
    --------
    >>> Hit("a#0", "a", 0, "text", 0.9, "", "", {}).score
    0.9
    """

    chunk_id: str
    doc_id: str
    n: int
    text: str
    score: float
    title: str
    source: str
    meta: dict[str, Any]


def hybrid_candidates(k: int, candidates: int | None = None) -> int:
    """Hits each side of a hybrid search of ``k`` contributes: ``candidates``, or ``2k`` and at
    least 20.

    >>> hybrid_candidates(5), hybrid_candidates(50), hybrid_candidates(5, 8)
    (20, 100, 8)
    """
    return max(candidates or max(2 * k, 20), k)


def fuse(
    dense: Sequence[Hit],
    sparse: Sequence[Hit],
    k: int,
    fusion: str = "rrf",
    dense_weight: float = 0.5,
    rrf_k: int = 60,
) -> list[Hit]:
    """The best ``k`` of two ranked lists of hits (dense and BM25) fused into one, best first.

    ``rrf``: reciprocal rank fusion, ``score = sum 1 / (rrf_k + rank)`` over the lists a hit is
    in. ``weighted``: a convex combination of the two scores, each min-max normalised over its
    own list (BM25 against 0, its natural floor), ``dense_weight`` for the dense side; a hit
    missing from a list gets 0 from it. Ties keep the dense order.

    A document's evidence counts as a whole: the best-scoring chunk of each document takes its
    document's best contribution from each side (the rank of its best chunk there, for RRF),
    even when those come from different chunks (the passage the question paraphrases matched
    by the encoder, its rare terms by BM25 in the next chunk); the document's other chunks keep
    their own scores. On the evaluation (``python -m bench retrieval``) this gave recall@5
    +1.8 to +2.4 points over chunk-by-chunk fusion.

    The fusion is done here rather than by Milvus's ``hybrid_search``: the same arithmetic on
    milvus-lite and on any server, and milvus-lite 3.2 normalises its (negated) BM25 scores
    upside down in its weighted ranker.

    Examples
    --------
    >>> h = lambda c, s: Hit(c, c[0], int(c[-1]), c, s, "", "", {})
    >>> dense = [h("a#0", 0.9), h("b#0", 0.8), h("c#0", 0.1)]
    >>> sparse = [h("c#0", 12.0), h("b#0", 6.0)]
    >>> [x.doc_id for x in fuse(dense, sparse, 3)]
    ['c', 'b', 'a']
    >>> [(x.doc_id, round(x.score, 2)) for x in fuse(dense, sparse, 2, "weighted", 0.7)]
    [('b', 0.76), ('a', 0.7)]

    Document ``b`` matches the encoder in its chunk 0 and BM25 in its chunk 1: its best chunk
    gets both, and ``b`` ranks first.

    >>> dense = [h("a#0", 0.9), h("b#0", 0.85), h("c#0", 0.1)]
    >>> sparse = [h("b#1", 12.0), h("a#0", 5.0)]
    >>> [(x.chunk_id, round(x.score, 2)) for x in fuse(dense, sparse, 3, "weighted", 0.7)]
    [('b#0', 0.96), ('a#0', 0.82), ('b#1', 0.3)]
    """
    if fusion not in FUSIONS:
        raise InvalidArgumentError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    scores: dict[str, float] = {}
    hits: dict[str, Hit] = {}
    per_doc: dict[str, float] = {}  # the document's best contribution, summed over the sides
    for ranked, weight, floor in ((dense, dense_weight, None), (sparse, 1 - dense_weight, 0.0)):
        if not ranked:
            continue
        side: dict[str, float] = {}
        if fusion == "rrf":
            seen_docs: dict[str, int] = {}
            for rank, hit in enumerate(ranked, start=1):
                part = 1.0 / (rrf_k + rank)
                scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + part
                doc_rank = seen_docs.setdefault(hit.doc_id, len(seen_docs) + 1)
                side.setdefault(hit.doc_id, 1.0 / (rrf_k + doc_rank))
                hits.setdefault(hit.chunk_id, hit)
        else:
            values = [h.score for h in ranked]
            lo = min(values) if floor is None else floor
            span = (max(values) - lo) or 1.0
            for hit in ranked:
                part = weight * (hit.score - lo) / span
                scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + part
                side[hit.doc_id] = max(side.get(hit.doc_id, 0.0), part)
                hits.setdefault(hit.chunk_id, hit)
        for doc, part in side.items():
            per_doc[doc] = per_doc.get(doc, 0.0) + part
    best: dict[str, str] = {}  # doc -> its best chunk (the first seen on a tie: dense order)
    for chunk_id, score in scores.items():
        doc = hits[chunk_id].doc_id
        if doc not in best or score > scores[best[doc]]:
            best[doc] = chunk_id
    for doc, chunk_id in best.items():
        scores[chunk_id] = max(scores[chunk_id], per_doc[doc])
    order = sorted(scores, key=lambda c: -scores[c])  # stable: dense hits were seen first
    return [replace(hits[c], score=scores[c]) for c in order[:k]]


def _client_options(uri: str) -> dict[str, Any]:
    """``MilvusClient`` options for ``uri``: a connection of its own on a milvus-lite file.

    pymilvus shares one connection among the clients of a URI and health-checks it (a 5 s
    ``GetVersion``) when a new client joins after 30 s idle; milvus-lite answers from a thread
    of this process, so on a loaded machine (a model loading meanwhile) the check can time
    out, and the failed recovery leaves the new client unable to connect. A dedicated
    connection has no such check.

    >>> _client_options("./data/milvus.db"), _client_options("http://host:19530")
    ({'dedicated': True}, {})
    """
    return {"dedicated": True} if uri.endswith(".db") else {}


#: Serve a milvus-lite file from a child process (:mod:`retrieval.lite_server`) instead of
#: threads of this one; set by the worker from ``LIVELEARN_MILVUS__LITE_PROCESS``.
lite_process = False


def _connect(uri: str, token: str | None) -> tuple[Any, str | None]:
    """A ``MilvusClient`` for ``uri``, and the milvus-lite path to release when it closes
    (``None``: nothing to release)."""
    from pymilvus import MilvusClient

    if lite_process and uri.endswith(".db"):
        from retrieval.lite_server import lite_uri, release

        served = lite_uri(uri)
        try:
            return MilvusClient(uri=served, token=token or "", **_client_options(uri)), uri
        except BaseException:
            release(uri)
            raise
    if uri.endswith(".db"):
        start_arrow_pools()
    return MilvusClient(uri=uri, token=token or "", **_client_options(uri)), None


@functools.cache
def start_arrow_pools() -> None:
    """Start the threads of Arrow's pools now: write and read a tiny Parquet file, once a process.

    milvus-lite writes and reads its segments with pyarrow, whose pools start their threads
    (3 on a 2-core machine) at the first segment flush, minutes into a stream at a small
    memtable budget; started with the store instead, a worker's thread count is flat from its
    start, and a count that rises later means a thread made again and again.

    >>> start_arrow_pools()
    """
    import tempfile

    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # milvus-lite without pyarrow: nothing of Arrow's to start
        return
    with tempfile.TemporaryDirectory(prefix="livelearn-arrow-") as folder:
        path = os.path.join(folder, "warm.parquet")
        pq.write_table(pa.table({"id": [1, 2]}), path)
        pq.read_table(path)


def _disconnect(client: Any, lite: str | None) -> None:
    client.close()
    if lite is not None:
        from retrieval.lite_server import release

        release(lite)


def default_index_type(uri: str) -> str:
    """The vector index a new collection gets: ``FLAT`` (exact) on a milvus-lite file,
    ``AUTOINDEX`` on a server.

    milvus-lite builds an approximate index for a sealed segment in the background, once rows
    are flushed: on 3,000 random unit vectors its top 10 shared 74% with the exact top 10,
    and none of 20 top-20 lists was exact, where an exact scan of that many rows takes about
    7 ms. A server's AUTOINDEX is tuned for recall and meant for collections a scan is too
    slow for.

    >>> default_index_type("./data/milvus.db"), default_index_type("http://host:19530")
    ('FLAT', 'AUTOINDEX')
    """
    return "FLAT" if uri.endswith(".db") else "AUTOINDEX"


def _is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the server could not be reached (worth retrying).

    >>> from pymilvus.client.types import Status
    >>> from pymilvus.exceptions import MilvusException
    >>> _is_unavailable(MilvusException(Status.CONNECT_FAILED, "Fail connecting to server"))
    True
    >>> _is_unavailable(MilvusException(Status.ILLEGAL_ARGUMENT, "bad filter"))
    False
    """
    from pymilvus.client.types import Status
    from pymilvus.exceptions import (
        ConnectError,
        ConnectionNotExistException,
        MilvusException,
        MilvusUnavailableException,
    )

    if isinstance(
        exc,
        ConnectError
        | ConnectionNotExistException
        | MilvusUnavailableException
        | ConnectionError
        | TimeoutError,
    ):
        return True
    # A server that went away mid-session: pymilvus tries to reconnect once, then raises a
    # plain MilvusException with this code (the client reconnects by itself once it is back).
    if isinstance(exc, MilvusException) and exc.code == Status.CONNECT_FAILED:
        return True
    code = getattr(exc, "code", None)
    name = getattr(code() if callable(code) else code, "name", "")
    return name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # grpc.RpcError


def _is_not_loaded(exc: BaseException) -> bool:
    """Whether ``exc`` says the collection is not loaded (Milvus's ErrCollectionNotLoaded).

    >>> from pymilvus.exceptions import MilvusException
    >>> _is_not_loaded(MilvusException(101, "collection is in state 'released'"))
    True
    """
    from pymilvus.exceptions import MilvusException

    return isinstance(exc, MilvusException) and exc.code == COLLECTION_NOT_LOADED


class VectorStore:
    """The chunk collection in Milvus (milvus-lite file or server).

    The collection is created on first use with an explicit schema and a vector index, then
    loaded. An existing collection with another dimension or metric is refused.

    Parameters
    ----------
    uri
        A milvus-lite file (``"./data/milvus.db"``) or a server URI (``"http://host:19530"``).
    collection
        Collection name.
    dim
        Vector length (384 for all-MiniLM-L6-v2).
    metric
        ``"COSINE"``, ``"IP"`` or ``"L2"``; scores are similarities for all three (for L2,
        the negated distance).
    token
        Server token (``"user:password"`` or an API key); unused by milvus-lite.
    index_type
        Milvus index type for the vector field of a new collection (default:
        :func:`default_index_type`, exact on milvus-lite).
    bm25
        Give a new collection a BM25 sparse field computed from ``text`` (needs Milvus 2.5+ or
        milvus-lite; on an older server the collection is made without it, with a warning).
        An existing collection is used as it is: :attr:`bm25` says whether it has the field.
    global_bm25
        Where this process is the collection's one writer (a milvus-lite file), keep BM25
        statistics over the whole collection and rescore sparse candidates with them
        (:mod:`retrieval.bm25`: milvus-lite scores each segment with its own, which ranks
        fresh chunks far down); a server's BM25 is used as it is.

    Examples
    --------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> store = VectorStore(os.path.join(folder, "doctest.db"), dim=2)
    >>> store.upsert([ChunkRow("a#0", "a", 0, "east", [1.0, 0.0]),
    ...               ChunkRow("b#0", "b", 0, "north", [0.0, 1.0])])
    2
    >>> [(h.chunk_id, round(h.score, 2)) for h in store.search([0.9, 0.1], k=1)]
    [('a#0', 0.99)]
    >>> store.delete_doc("a"); store.count()
    1
    >>> store.close()

    With ``bm25=True``, text searches and hybrid ones:

    >>> store = VectorStore(os.path.join(folder, "bm25.db"), dim=2, bm25=True)
    >>> store.upsert([ChunkRow("a#0", "a", 0, "Kafka keeps an ordered log", [1.0, 0.0]),
    ...               ChunkRow("b#0", "b", 0, "Milvus stores vectors", [0.0, 1.0])])
    2
    >>> [h.doc_id for h in store.search(text="which log is ordered?", k=1, mode="sparse")]
    ['a']
    >>> [h.doc_id for h in store.search([0.1, 0.9], k=2, text="ordered log", mode="hybrid")]
    ['a', 'b']
    >>> store.close()
    >>> import shutil; shutil.rmtree(folder)
    """

    def __init__(
        self,
        uri: str,
        collection: str = "livelearn_chunks",
        dim: int = 384,
        metric: str = "COSINE",
        token: str | None = None,
        index_type: str | None = None,
        bm25: bool = False,
        global_bm25: bool = True,
    ) -> None:
        metric = metric.upper()
        if metric not in METRICS:
            raise InvalidArgumentError(f"metric must be one of {METRICS}, got {metric!r}")
        if dim < 1:
            raise InvalidArgumentError(f"dim must be >= 1, got {dim}")
        self.uri = uri
        self.collection = collection
        self.dim = dim
        self.metric = metric
        self.index_type = index_type or default_index_type(uri)
        self.want_bm25 = bm25
        #: Whether the collection has the BM25 sparse field (set once it is opened).
        self.bm25 = False
        self._warned: set[str] = set()
        #: Whether this process is the collection's one writer (a milvus-lite file: its lock
        #: admits one process), so that :attr:`generation` sees every change.
        self.single_writer = uri.endswith(".db")
        self._generation = 0
        self._writing = 0
        self._generation_lock = threading.Lock()
        try:
            self._client, self._lite = _connect(uri, token)
        except Exception as exc:
            raise VectorStoreUnavailableError(
                f"cannot open Milvus at {uri!r}: {exc}; check that the server is up (or, for "
                "milvus-lite, that the folder exists and no other process holds the file)"
            ) from exc
        #: Collection-wide BM25 statistics the sparse candidates are rescored with (see
        #: :mod:`retrieval.bm25`), where milvus-lite's per-segment ones skew fresh chunks.
        self.term_stats: TermStats | None = None
        try:
            self._ensure_collection()
            if global_bm25 and self.bm25 and self.single_writer:
                self.term_stats = self._build_term_stats()
        except BaseException:
            _disconnect(self._client, self._lite)  # milvus-lite holds its file till then
            raise

    def __repr__(self) -> str:
        return (
            f"VectorStore({self.uri!r}, collection={self.collection!r}, dim={self.dim}, "
            f"metric={self.metric!r})"
        )

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------

    @property
    def generation(self) -> int | None:
        """A number that changes with every write to the collection through this store
        (upsert, delete, flush), or ``None`` while one is under way or when other processes
        may write too (a Milvus server): a search result tagged with it is still the answer
        while it is unchanged (:class:`~retrieval.cache.ResultCache`).

        >>> import tempfile, os
        >>> with VectorStore(os.path.join(tempfile.mkdtemp(), "g.db"), dim=2) as store:
        ...     before = store.generation
        ...     _ = store.upsert([ChunkRow("a#0", "a", 0, "alpha", [1.0, 0.0])])
        ...     before is not None and store.generation not in (None, before)
        True
        """
        if not self.single_writer or self._writing:
            return None
        return self._generation

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Around a write: :attr:`generation` is ``None`` during it and new after it."""
        with self._generation_lock:
            self._writing += 1
            self._generation += 1
        try:
            yield
        finally:
            with self._generation_lock:
                self._writing -= 1
                self._generation += 1

    def _call(self, what: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a client call, turning its errors into retrieval errors.

        A collection found released is loaded again and the call retried once: a restarted
        milvus-lite server forgets which collections were loaded (and on a Milvus server an
        operator may release one), which is no reason to fail the records at hand.
        """
        try:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not _is_not_loaded(exc):
                    raise
                self._client.load_collection(self.collection)
                return fn(*args, **kwargs)
        except Exception as exc:
            if _is_unavailable(exc):
                raise VectorStoreUnavailableError(
                    f"Milvus at {self.uri!r} is unavailable during {what}: {exc}; retry later"
                ) from exc
            raise VectorStoreError(
                f"Milvus {what} on collection {self.collection!r} failed: {exc}"
            ) from exc

    def _ensure_collection(self) -> None:
        c = self._client
        if self._call("has_collection", c.has_collection, self.collection):
            self._check_existing()
        else:
            self._call("create_collection", self._create)
        self._call("load_collection", c.load_collection, self.collection)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _server_has_bm25(self) -> bool | None:
        try:
            version = str(self._client.get_server_version())
        except Exception:  # not every server answers: then creating the field decides
            return None
        supported = server_supports_bm25(version)
        if supported is False:
            self._warn_once(
                "server",
                "Milvus at %s is %s, older than 2.5: it has no BM25; collection %r is made "
                "without the sparse field and sparse/hybrid searches fall back to dense",
                self.uri, version, self.collection,
            )  # fmt: skip
        return supported

    def _create(self) -> None:
        if self.want_bm25 and self._server_has_bm25() is not False:
            try:
                self._create_with(bm25=True)
                self.bm25 = True
                return
            except Exception as exc:
                if _is_unavailable(exc):
                    raise
                self._warn_once(
                    "server",
                    "Milvus at %s refused a collection with a BM25 field (%s); collection %r "
                    "is made without it and sparse/hybrid searches fall back to dense",
                    self.uri, exc, self.collection,
                )  # fmt: skip
                if self._client.has_collection(self.collection):
                    self._client.drop_collection(self.collection)
        self._create_with(bm25=False)

    def _create_with(self, bm25: bool) -> None:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_BYTES)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=ID_MAX_BYTES)
        schema.add_field("n", DataType.INT64)
        if bm25:
            schema.add_field(
                "text", DataType.VARCHAR, max_length=TEXT_MAX_BYTES,
                enable_analyzer=True, analyzer_params=BM25_ANALYZER,
            )  # fmt: skip
        else:
            schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX_BYTES)
        schema.add_field("title", DataType.VARCHAR, max_length=LABEL_MAX_BYTES)
        schema.add_field("source", DataType.VARCHAR, max_length=LABEL_MAX_BYTES)
        schema.add_field("meta", DataType.JSON)
        schema.add_field("ts", DataType.DOUBLE)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        index = self._client.prepare_index_params()
        index.add_index(field_name="vector", index_type=self.index_type, metric_type=self.metric)
        if bm25:
            schema.add_field(SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR)
            schema.add_function(
                Function(
                    name="text_bm25",
                    function_type=FunctionType.BM25,
                    input_field_names=["text"],
                    output_field_names=[SPARSE_FIELD],
                )
            )
            index.add_index(
                field_name=SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25"
            )
        self._client.create_collection(
            self.collection, schema=schema, index_params=index, consistency_level="Strong"
        )

    def _check_existing(self) -> None:
        c = self._client
        info = self._call("describe_collection", c.describe_collection, self.collection)
        fields = {f["name"]: f for f in info.get("fields", [])}
        how = (
            f"use another collection name, or drop the old one (MilvusClient({self.uri!r})"
            f".drop_collection({self.collection!r})) and re-index"
        )
        vector = fields.get("vector")
        if vector is None or set(FIELDS) - set(fields):
            raise CollectionMismatchError(
                f"collection {self.collection!r} exists with another schema (fields "
                f"{sorted(fields)}); {how}"
            )
        self.bm25 = SPARSE_FIELD in fields
        if self.want_bm25 and not self.bm25:
            self._warn_once(
                "collection",
                "collection %r was made without the BM25 field: sparse and hybrid searches "
                "fall back to dense; index into a new collection to have them",
                self.collection,
            )
        found_dim = int(vector.get("params", {}).get("dim", -1))
        if found_dim != self.dim:
            raise CollectionMismatchError(
                f"collection {self.collection!r} holds {found_dim}-d vectors but dim={self.dim} "
                f"was asked for (a different embedding model?); {how}"
            )
        indexes = self._call("list_indexes", c.list_indexes, self.collection, "vector")
        for name in indexes:
            desc = self._call("describe_index", c.describe_index, self.collection, name)
            found = str(desc.get("metric_type", "")).upper()
            if found and found != self.metric:
                raise CollectionMismatchError(
                    f"collection {self.collection!r} is indexed with metric {found} but "
                    f"metric={self.metric!r} was asked for; {how}"
                )
        if not indexes:  # created elsewhere without an index: add ours so it can load
            index = c.prepare_index_params()
            index.add_index(
                field_name="vector", index_type=self.index_type, metric_type=self.metric
            )
            self._call("create_index", c.create_index, self.collection, index)

    def _entity(self, row: ChunkRow) -> dict[str, Any]:
        if len(row.chunk_id.encode("utf-8")) > ID_MAX_BYTES:
            raise InvalidArgumentError(
                f"chunk id {row.chunk_id[:60]!r}... is longer than {ID_MAX_BYTES} bytes; "
                "use shorter document ids"
            )
        vector = np.asarray(row.vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise InvalidArgumentError(
                f"chunk {row.chunk_id!r} has a {vector.shape[0]}-d vector, the collection "
                f"holds {self.dim}-d ones; embed with the model the collection was built with"
            )
        return {
            "chunk_id": row.chunk_id,
            "doc_id": truncate_utf8(row.doc_id, ID_MAX_BYTES),
            "n": int(row.n),
            "text": truncate_utf8(row.text, TEXT_MAX_BYTES),
            "title": truncate_utf8(row.title or "", LABEL_MAX_BYTES),
            "source": truncate_utf8(row.source or "", LABEL_MAX_BYTES),
            "meta": dict(row.meta or {}),
            "ts": float(row.ts or 0.0),
            "vector": vector.tolist(),
        }

    # -- writes ---------------------------------------------------------------------------

    def upsert(self, rows: Sequence[ChunkRow], batch_size: int = UPSERT_BATCH) -> int:
        """Insert or replace ``rows`` by chunk id, in batches; returns the rows written.

        Within ``rows`` the last row for a chunk id wins. Text longer than 65535 UTF-8 bytes
        is truncated at a character boundary.
        """
        entities = list({row.chunk_id: self._entity(row) for row in rows}.values())
        stats = self.term_stats
        with self._changing():
            for i in range(0, len(entities), batch_size):
                part = entities[i : i + batch_size]
                replaced = self._texts([e["chunk_id"] for e in part]) if stats else []
                self._call("upsert", self._client.upsert, self.collection, part)
                if stats is not None:
                    stats.remove(replaced)
                    stats.add(e["text"] for e in part)
        return len(entities)

    def _texts(self, chunk_ids: Sequence[str]) -> list[str]:
        """The stored texts of those of ``chunk_ids`` that exist."""
        rows = self._call(
            "get", self._client.get, self.collection, ids=list(chunk_ids), output_fields=["text"]
        )
        return [str(r["text"]) for r in rows]

    def delete_chunks(self, chunk_ids: Iterable[str]) -> None:
        """Remove chunks by id; unknown ids are ignored."""
        ids = list(dict.fromkeys(chunk_ids))
        stats = self.term_stats
        with self._changing():
            for i in range(0, len(ids), UPSERT_BATCH):
                part = ids[i : i + UPSERT_BATCH]
                gone = self._texts(part) if stats else []
                self._call("delete", self._client.delete, self.collection, ids=part)
                if stats is not None:
                    stats.remove(gone)

    def delete_doc(self, doc_id: str) -> None:
        """Remove every chunk of ``doc_id``."""
        expr = f"doc_id == {quote_string(doc_id)}"
        stats = self.term_stats
        with self._changing():
            gone = [str(r["text"]) for r in self._query_all(expr, ["text"])] if stats else []
            self._call("delete", self._client.delete, self.collection, filter=expr)
            if stats is not None:
                stats.remove(gone)

    # -- reads ----------------------------------------------------------------------------

    def _query_all(self, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        """Every row matching ``expr``: one query when it fits, else paged with an iterator."""
        return [row for page in self._pages(expr, fields) for row in page]

    def _pages(self, expr: str, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        """The rows matching ``expr`` a page at a time (one query when they fit)."""
        rows: list[dict[str, Any]] = self._call(
            "query",
            self._client.query,
            self.collection,
            filter=expr,
            output_fields=fields,
            limit=QUERY_LIMIT,
        )
        if len(rows) < QUERY_LIMIT:
            yield [dict(r) for r in rows]
            return
        del rows
        it = self._call(
            "query_iterator",
            self._client.query_iterator,
            self.collection,
            batch_size=PAGE_SIZE,
            filter=expr,
            output_fields=fields,
        )
        try:
            while page := self._call("query_iterator", it.next):
                yield list(page)
        finally:
            it.close()

    def _build_term_stats(self) -> TermStats:
        """BM25 statistics over every stored chunk, read a page at a time."""
        started = time.perf_counter()
        stats = TermStats()
        for page in self._pages("", ["text"]):
            stats.add(str(r["text"]) for r in page)
        log.info("BM25 statistics of %r: %d chunks, %d terms, in %.1f s", self.collection,
                 stats.chunks, len(stats.df), time.perf_counter() - started)  # fmt: skip
        return stats

    def chunk_ids_for_doc(self, doc_id: str) -> set[str]:
        """Ids of the chunks stored for ``doc_id``."""
        rows = self._query_all(f"doc_id == {quote_string(doc_id)}", ["chunk_id"])
        return {r["chunk_id"] for r in rows}

    def chunk_ids_for_docs(self, doc_ids: Iterable[str]) -> dict[str, set[str]]:
        """Ids of the stored chunks of each of ``doc_ids`` (one query per 100 docs)."""
        ids = list(dict.fromkeys(doc_ids))
        out: dict[str, set[str]] = {d: set() for d in ids}
        for i in range(0, len(ids), 100):
            quoted = ", ".join(quote_string(d) for d in ids[i : i + 100])
            for r in self._query_all(f"doc_id in [{quoted}]", ["chunk_id", "doc_id"]):
                out.setdefault(r["doc_id"], set()).add(r["chunk_id"])
        return out

    def get(self, chunk_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Stored rows (all fields but the vector) for ``chunk_ids``; missing ids are skipped.

        Rows come back in the order of ``chunk_ids``.
        """
        ids = list(dict.fromkeys(chunk_ids))
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), PAGE_SIZE):
            rows = self._call(
                "get",
                self._client.get,
                self.collection,
                ids=ids[i : i + PAGE_SIZE],
                output_fields=list(FIELDS),
            )
            found.update({r["chunk_id"]: dict(r) for r in rows})
        return [found[c] for c in ids if c in found]

    def all_chunk_ids(self) -> set[str]:
        """Ids of every stored chunk."""
        return {r["chunk_id"] for r in self._query_all("", ["chunk_id"])}

    def count(self) -> int:
        """Number of stored chunks."""
        rows = self._call(
            "count", self._client.query, self.collection, filter="", output_fields=["count(*)"]
        )
        return int(rows[0]["count(*)"])

    def search_mode(self, mode: str) -> str:
        """The mode a search asked for in ``mode`` runs in: ``dense`` without the BM25 field.

        >>> import tempfile, os
        >>> with VectorStore(os.path.join(tempfile.mkdtemp(), "m.db"), dim=2) as store:
        ...     store.search_mode("hybrid")
        'dense'
        """
        if mode not in SEARCH_MODES:
            raise InvalidArgumentError(f"search mode must be one of {SEARCH_MODES}, got {mode!r}")
        if mode != "dense" and not self.bm25:
            self._warn_once(
                "fallback",
                "collection %r has no BM25 field: %s searches run as dense ones",
                self.collection, mode,
            )  # fmt: skip
            return "dense"
        return mode

    def search(
        self,
        vector: Sequence[float] | np.ndarray | None = None,
        k: int = 5,
        filter: str | None = None,
        *,
        text: str | None = None,
        mode: str = "dense",
        fusion: str = "rrf",
        dense_weight: float = 0.5,
        candidates: int | None = None,
        rrf_k: int = 60,
    ) -> list[Hit]:
        """The ``k`` best chunks for a query, best first.

        Parameters
        ----------
        vector
            Query vector of length ``dim`` (``dense`` and ``hybrid``, and whenever the
            collection has no BM25 field).
        k
            Number of hits wanted (>= 1).
        filter
            Optional Milvus boolean expression, e.g. from :meth:`build_filter`.
        text
            The query's text, for BM25 (``sparse`` and ``hybrid``).
        mode
            ``"dense"``, ``"sparse"`` or ``"hybrid"`` (see :meth:`search_mode`).
        fusion
            ``"rrf"`` (reciprocal rank fusion, constant ``rrf_k``) or ``"weighted"`` (min-max
            normalised scores, ``dense_weight`` for the dense side, the rest for BM25); see
            :func:`fuse`.
        candidates
            Hits each side of a hybrid search contributes before fusion (default
            ``max(2 * k, 20)``).

        Returns
        -------
        list of Hit
            Scores are similarities (dense), BM25 scores (sparse) or fused scores (hybrid).
        """
        if k < 1:
            raise InvalidArgumentError(f"k must be >= 1, got {k}")
        if fusion not in FUSIONS:
            raise InvalidArgumentError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if not 0.0 <= dense_weight <= 1.0:
            raise InvalidArgumentError(f"dense_weight must be within [0, 1], got {dense_weight}")
        mode = self.search_mode(mode)
        if mode != "dense" and not (text and text.strip()):
            raise InvalidArgumentError(f"a {mode} search needs the query's text")
        query = self._query_vector(vector) if mode != "sparse" else None
        if mode == "dense":
            return self._search_one(query, text, k, filter, mode)
        limit = hybrid_candidates(k, candidates)
        if mode == "sparse":
            found = self._search_one(None, text, limit, filter, "sparse")
            return self.rescore_sparse([str(text)], None, [found], k)[0][:k]
        dense = self._search_one(query, None, limit, filter, "dense")
        sparse = self._search_one(None, text, limit, filter, "sparse")
        sparse = self.rescore_sparse([str(text)], [dense], [sparse], limit)[0]
        return fuse(dense, sparse, k, fusion, dense_weight, rrf_k)

    def rescore_sparse(
        self,
        texts: Sequence[str],
        dense: Sequence[Sequence[Hit]] | None,
        sparse: Sequence[Sequence[Hit]],
        limit: int,
    ) -> list[list[Hit]]:
        """Each query's BM25 list ranked again with the collection-wide statistics, over its
        BM25 hits and, when given, its dense hits (a fresh chunk that milvus-lite's segment
        statistics left out of the BM25 list is found there); unchanged without
        :attr:`term_stats` (a Milvus server). Used by every hybrid and sparse search.

        >>> import tempfile, os
        >>> with VectorStore(os.path.join(tempfile.mkdtemp(), "r.db"), dim=2, bm25=True) as s:
        ...     _ = s.upsert([ChunkRow("a#0", "a", 0, "Kafka keeps an ordered log", [1.0, 0.0]),
        ...                   ChunkRow("b#0", "b", 0, "Milvus stores vectors", [0.0, 1.0])])
        ...     dense = s.search([1.0, 0.0], k=2)
        ...     [h.doc_id for h in s.rescore_sparse(["ordered log"], [dense], [[]], 5)[0]]
        ['a']
        """
        stats = self.term_stats
        if stats is None:
            return [list(hits) for hits in sparse]
        pools = dense if dense is not None else [[] for _ in sparse]
        return [
            stats.rescore(text, [*found, *pool], limit)
            for text, found, pool in zip(texts, sparse, pools, strict=True)
        ]

    def search_many(
        self,
        vectors: Sequence[Sequence[float] | np.ndarray] | None,
        texts: Sequence[str] | None,
        k: int = 5,
        filter: str | None = None,
        mode: str = "dense",
    ) -> list[list[Hit]]:
        """One ``dense`` or ``sparse`` search for several queries in one call (Milvus searches
        them together: 16 queries cost ~4 single searches); hits per query, in order.

        >>> import tempfile, os
        >>> with VectorStore(os.path.join(tempfile.mkdtemp(), "m.db"), dim=2) as store:
        ...     _ = store.upsert([ChunkRow("a#0", "a", 0, "alpha", [1.0, 0.0]),
        ...                       ChunkRow("b#0", "b", 0, "beta", [0.0, 1.0])])
        ...     hits = store.search_many([[0.0, 1.0], [1.0, 0.1]], None, k=1)
        >>> [h[0].doc_id for h in hits]
        ['b', 'a']
        """
        if k < 1:
            raise InvalidArgumentError(f"k must be >= 1, got {k}")
        if mode not in ("dense", "sparse"):
            raise InvalidArgumentError(f"search_many runs dense or sparse, got {mode!r}")
        if mode == "dense":
            if vectors is None:
                raise InvalidArgumentError("a dense search needs the query vectors")
            data: list[Any] = [self._query_vector(v).tolist() for v in vectors]
        else:
            if texts is None or not all(t and t.strip() for t in texts):
                raise InvalidArgumentError("a sparse search needs each query's text")
            data = list(texts)
        if not data:
            return []
        result = self._call(
            "search",
            self._client.search,
            self.collection,
            data=data,
            anns_field="vector" if mode == "dense" else SPARSE_FIELD,
            limit=k,
            filter=filter or "",
            output_fields=[f for f in FIELDS if f != "chunk_id"],
            search_params={"metric_type": self.metric if mode == "dense" else "BM25"},
        )
        found = [[self._hit(r, mode) for r in hits] for hits in (result or [])]
        return found + [[] for _ in range(len(data) - len(found))]

    def _search_one(
        self,
        query: np.ndarray | None,
        text: str | None,
        k: int,
        filter: str | None,
        mode: str,
    ) -> list[Hit]:
        vectors = [query] if query is not None else None
        return self.search_many(vectors, [text] if text else None, k, filter, mode)[0]

    def _query_vector(self, vector: Sequence[float] | np.ndarray | None) -> np.ndarray:
        if vector is None:
            raise InvalidArgumentError("a dense search needs the query vector")
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise InvalidArgumentError(
                f"query vector has {query.shape[0]} dimensions, the collection holds {self.dim}"
            )
        return query

    def _hit(self, r: Mapping[str, Any], mode: str) -> Hit:
        e = r["entity"]
        score = float(r["distance"])
        if mode == "dense" and self.metric == "L2":
            score = -score
        elif mode == "sparse":
            score = abs(score)  # milvus-lite returns BM25 scores negated (best still first)
        return Hit(
            chunk_id=str(r.get("chunk_id", r.get("id"))),
            doc_id=e["doc_id"],
            n=int(e["n"]),
            text=e["text"],
            score=score,
            title=e.get("title", ""),
            source=e.get("source", ""),
            meta=dict(e.get("meta") or {}),
        )

    @staticmethod
    def build_filter(
        title: str | None = None,
        source: str | None = None,
        meta: Mapping[str, MetaValue] | None = None,
    ) -> str:
        """Same as the module-level :func:`build_filter`."""
        return build_filter(title=title, source=source, meta=meta)

    def flush(self) -> None:
        """Write the rows buffered in memory to a segment of their own. Searches scan buffered
        rows one by one and build BM25 over them per search; a flushed segment has its
        indexes (on milvus-lite, 1,500 buffered chunks: hybrid p50 ~1.8 s before, ~14 ms
        after, under load)."""
        with self._changing():
            self._call("flush", self._client.flush, self.collection)

    def close(self) -> None:
        """Release the client (milvus-lite flushes and unlocks its file)."""
        _disconnect(self._client, self._lite)


#: Collection property naming the embedding model a collection's vectors come from.
MODEL_PROPERTY = "livelearn.embedding_model"


class CollectionCatalog:
    """Collections and aliases of one Milvus (names, the model a collection was built with,
    the alias switch), over the public ``MilvusClient`` API; used by embedder migrations.

    Parameters
    ----------
    uri, token
        As for :class:`VectorStore`.

    Examples
    --------
    >>> import tempfile, os
    >>> uri = os.path.join(tempfile.mkdtemp(), "catalog.db")
    >>> catalog = CollectionCatalog(uri)
    >>> a, b = VectorStore(uri, "chunks", dim=2), VectorStore(uri, "chunks__b", dim=3)
    >>> catalog.set_model("chunks", "model-a")
    >>> catalog.resolve("chunks"), catalog.model("chunks")
    ('chunks', 'model-a')
    >>> catalog.point_alias("chunks", "chunks__b", rename_to="chunks__a")
    >>> catalog.resolve("chunks"), catalog.model("chunks__a")
    ('chunks__b', 'model-a')
    >>> a.close(); b.close(); catalog.close()

    milvus-lite stops its in-process server when its last client closes, and a client opened
    right after may find it gone: keep one open while the next one opens.
    """

    def __init__(self, uri: str, token: str | None = None) -> None:
        try:
            self._client, self._lite = _connect(uri, token)
        except Exception as exc:
            raise VectorStoreUnavailableError(f"cannot open Milvus at {uri!r}: {exc}") from exc

    def __enter__(self) -> CollectionCatalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def alias_target(self, alias: str) -> str | None:
        """The collection ``alias`` points to (None: no such alias)."""
        aliases = self._client.list_aliases().get("aliases", [])
        if alias not in aliases:
            return None
        return str(self._client.describe_alias(alias)["collection_name"])

    def is_collection(self, name: str) -> bool:
        """Whether a collection (not an alias) is called ``name``."""
        return name in self._client.list_collections()

    def resolve(self, name: str) -> str | None:
        """The collection ``name`` means: an alias's target, the collection itself, or None."""
        target = self.alias_target(name)
        if target is not None:
            return target
        return name if self.is_collection(name) else None

    def model(self, collection: str) -> str | None:
        """The embedding model recorded on ``collection`` (None: not recorded)."""
        props = self._client.describe_collection(collection).get("properties") or {}
        value = props.get(MODEL_PROPERTY)
        return str(value) if value else None

    def set_model(self, collection: str, model: str) -> None:
        """Record the embedding model ``collection``'s vectors come from."""
        self._client.alter_collection_properties(collection, {MODEL_PROPERTY: model})

    def drop(self, collection: str) -> None:
        """Drop ``collection`` (nothing when there is none)."""
        if self.is_collection(collection):
            self._client.drop_collection(collection)

    def point_alias(self, alias: str, collection: str, rename_to: str | None = None) -> None:
        """Make ``alias`` point to ``collection``.

        An existing alias is altered (one call: atomic for every reader). A *collection*
        named ``alias`` (the layout before any migration) is first renamed ``rename_to``, then
        the alias is created: two calls, so a reader that opens the name between them finds
        nothing; the worker itself never does (it holds collection names, not the alias).
        """
        if self.alias_target(alias) is not None:
            self._client.alter_alias(collection, alias)
            return
        if self.is_collection(alias):
            if not rename_to:
                raise InvalidArgumentError(
                    f"a collection is called {alias!r}: name what to rename it to"
                )
            self._client.rename_collection(alias, rename_to)
        self._client.create_alias(collection, alias)

    def close(self) -> None:
        _disconnect(self._client, self._lite)
