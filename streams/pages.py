"""The worker's HTTP pages on faust's web server (``LIVELEARN_WEB_PORT``).

``GET /search?q=...&k=5`` and ``GET /ask?q=...``, both with optional ``mode``, ``title``,
``source`` and ``meta`` (a JSON object), validated like a ``queries`` record (HTTP 400 with the
reason), behind the :class:`RequestGuard` (bearer token, request size); ``GET /healthz`` (no
token: liveness probes), which also says how the worker's threads are doing.
"""

from __future__ import annotations

import time
from typing import Any

from streams import metrics
from streams.handlers import query_filter
from streams.services import WorkerServices
from streams.threads import ThreadSupervisor

__all__ = ["RequestGuard", "http_query", "register_pages"]


def http_query(params: Any) -> dict[str, Any]:
    """A ``queries`` record from the query string of ``/search`` or ``/ask``, validated by the
    same contract (so the same filters, modes and bounds of ``k``); raises ``ContractError``
    with the reason. Parameters: ``q``, ``k``, ``mode``, ``title``, ``source`` and ``meta``
    (a JSON object, ``{"year": 2024}``).

    >>> http_query({"q": "log", "k": "3", "source": "man", "meta": '{"year": 2024}'})
    {'id': 'http', 'question': 'log', 'k': 3, 'filter': {'source': 'man', 'meta': {'year': 2024}}}
    >>> http_query({"q": "log", "k": "500"})
    Traceback (most recent call last):
    ...
    streams.exceptions.ContractError: queries: 500 is greater than the maximum of 100 (at $.k)
    """
    import orjson

    from streams.contracts import ContractError, validate

    record: dict[str, Any] = {"id": "http", "question": params.get("q", "")}
    if not record["question"]:
        raise ContractError("missing q (the question)")
    if "k" in params:
        try:
            record["k"] = int(params["k"])
        except ValueError:
            raise ContractError(
                f"k must be an integer from 1 to 100, got {params['k']!r}"
            ) from None
    if "mode" in params:
        record["mode"] = params["mode"]
    filt: dict[str, Any] = {f: params[f] for f in ("title", "source") if f in params}
    if "meta" in params:
        try:
            filt["meta"] = orjson.loads(params["meta"])
        except orjson.JSONDecodeError:
            raise ContractError(f"meta must be a JSON object, got {params['meta']!r}") from None
    if filt:
        record["filter"] = filt
    return validate("queries", record)


class RequestGuard:
    """The checks every HTTP request passes first: the bearer token (when one is set) and
    the request's size. ``check`` gives ``(status, reason)`` for a refused request.

    >>> from types import SimpleNamespace as Req
    >>> guard = RequestGuard("s3cret", max_bytes=100)
    >>> guard.check(Req(headers={}, query_string="q=x", content_length=None))
    (401, 'missing or wrong bearer token (Authorization: Bearer <token>)')
    >>> ok = {"Authorization": "Bearer s3cret"}
    >>> guard.check(Req(headers=ok, query_string="q=" + "x" * 200, content_length=None))
    (413, 'request of 202 bytes, over the 100-byte limit')
    >>> guard.check(Req(headers=ok, query_string="q=x", content_length=None)) is None
    True
    """

    def __init__(self, token: str, max_bytes: int) -> None:
        self._expected = f"Bearer {token}".encode() if token else None
        self.max_bytes = max_bytes

    def check(self, request: Any) -> tuple[int, str] | None:
        import hmac

        if self._expected is not None:
            given = (request.headers.get("Authorization") or "").encode()
            if not hmac.compare_digest(given, self._expected):
                return 401, "missing or wrong bearer token (Authorization: Bearer <token>)"
        size = len(request.query_string or "") + (request.content_length or 0)
        if size > self.max_bytes:
            return 413, f"request of {size} bytes, over the {self.max_bytes}-byte limit"
        return None


def register_pages(app: Any, services: WorkerServices, threads: ThreadSupervisor) -> RequestGuard:
    """``/healthz``, ``/search`` and ``/ask`` on the faust ``app``; returns their request guard
    (the other pages use the same one)."""
    from retrieval.exceptions import InvalidArgumentError, VectorStoreUnavailableError
    from streams.contracts import ContractError

    s = services.settings
    guard = RequestGuard(s.web.token.get_secret_value(), s.web.max_request_bytes)
    retrieval = services.retrieval

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"ok": True, "threads": threads.health()})

    async def run_query(web: Any, request: Any, ask: bool) -> Any:
        refused = guard.check(request)
        if refused is not None:
            return web.json({"error": refused[1]}, status=refused[0])
        try:
            q = http_query(request.query)
        except ContractError as exc:
            return web.json({"error": str(exc)}, status=400)

        def ask_call() -> Any:
            expr = query_filter(retrieval, q)
            a = retrieval.answerer
            return a.answer(q["question"], q.get("k"), expr, q.get("mode")).to_record()

        started = time.perf_counter()
        try:
            if ask:
                result = await retrieval.run_query(ask_call)
            else:
                hits = await retrieval.search(q)
                result = {"q": q["question"], "hits": [h.__dict__ for h in hits]}
            metrics.SEARCH_SECONDS.labels("ask" if ask else "search").observe(
                time.perf_counter() - started
            )
            return web.json(result)
        except InvalidArgumentError as exc:
            return web.json({"error": str(exc)}, status=400)
        except VectorStoreUnavailableError as exc:
            return web.json({"error": str(exc)}, status=503)

    @app.page("/search")
    async def search(web: Any, request: Any) -> Any:
        return await run_query(web, request, ask=False)

    @app.page("/ask")
    async def ask(web: Any, request: Any) -> Any:
        return await run_query(web, request, ask=True)

    return guard
