"""An OpenAI-compatible chat endpoint over the worker's retrieval-augmented answers.

``POST /v1/chat/completions`` answers the last user message the way ``/ask`` does (retrieve,
then the configured generator), with the citations in the message and the retrieved contexts
in an extra ``contexts`` field; ``"stream": true`` gives server-sent events in OpenAI's chunk
format, ending with ``data: [DONE]``. ``GET /v1/models`` lists the serving generator. Any
OpenAI client works::

    from openai import OpenAI

    client = OpenAI(base_url="http://127.0.0.1:6066/v1", api_key="<LIVELEARN_WEB__TOKEN>")
    reply = client.chat.completions.create(
        model="livelearn", messages=[{"role": "user", "content": "What keeps the log?"}]
    )
    print(reply.choices[0].message.content, reply.model_extra["contexts"])

Besides the OpenAI fields, a request may carry ``k``, ``mode`` and ``filter`` (as in the
``queries`` contract, and checked by it). These are pure functions of the request and the
answer; :mod:`streams.app` only registers the routes.

>>> req = parse_request({"model": "livelearn", "messages": [
...     {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why Kafka?"}]})
>>> req.question, req.stream, req.query
('Why Kafka?', False, {'id': 'chat', 'question': 'Why Kafka?'})
>>> split_pieces("Kafka keeps the log. [1]", 2)
['Kafka keeps ', 'the log. ', '[1]']
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streams.exceptions import ContractError, LiveLearnError

__all__ = [
    "ChatRequest",
    "ChatRequestError",
    "ChunkStream",
    "completion",
    "error_body",
    "models_list",
    "parse_request",
    "split_pieces",
    "sse_events",
    "with_citations",
]


class ChatRequestError(LiveLearnError):
    """A chat request that cannot be answered; ``status`` is the HTTP status to give."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


@dataclass(frozen=True)
class ChatRequest:
    """What the worker needs from a chat completion request.

    Attributes
    ----------
    question
        The last user message's text.
    model
        The model the client named (echoed back; the configured generator answers).
    stream
        Whether to answer with server-sent events.
    query
        The ``queries`` record (``id``, ``question`` and ``k``/``mode``/``filter`` when
        given), validated by that contract.
    """

    question: str
    model: str
    stream: bool
    query: dict[str, Any]


def _text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or a list of ``{"type": "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(t, str) for t in parts):
            return "".join(str(t) for t in parts)
    raise ChatRequestError("message content must be a string or a list of text parts", "messages")


def parse_request(body: Any) -> ChatRequest:
    """Check a decoded request body; raises :class:`ChatRequestError` with the reason.

    >>> parse_request({"messages": []})
    Traceback (most recent call last):
    ...
    streams.chat_api.ChatRequestError: messages must be a non-empty list of messages
    >>> parse_request({"messages": [{"role": "user", "content": "q"}], "k": 500}).query
    Traceback (most recent call last):
    ...
    streams.chat_api.ChatRequestError: queries: 500 is greater than the maximum of 100 (at $.k)
    """
    from streams.contracts import validate

    if not isinstance(body, dict):
        raise ChatRequestError("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatRequestError("messages must be a non-empty list of messages", "messages")
    if not all(isinstance(m, dict) for m in messages):
        raise ChatRequestError("each message must be an object with role and content", "messages")
    users = [m for m in messages if m.get("role") == "user"]
    if not users:
        raise ChatRequestError("no user message to answer", "messages")
    question = _text_of(users[-1].get("content")).strip()
    if not question:
        raise ChatRequestError("the last user message is empty", "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ChatRequestError(f"stream must be true or false, got {stream!r}", "stream")
    n = body.get("n", 1)
    if type(n) is not int or n != 1:  # True == 1, 1.0 == 1: neither is a count
        raise ChatRequestError(f"only n=1 is served, got {n!r}", "n")
    model = body.get("model", "livelearn")
    if not isinstance(model, str):
        raise ChatRequestError("model must be a string", "model")
    query: dict[str, Any] = {"id": "chat", "question": question}
    for field in ("k", "mode", "filter"):
        if field in body and body[field] is not None:
            query[field] = body[field]
    try:
        validate("queries", query)
    except ContractError as exc:
        raise ChatRequestError(str(exc), "messages") from None
    return ChatRequest(question, model, stream, query)


def with_citations(answer: str, contexts: Sequence[Mapping[str, Any]]) -> str:
    """The answer with a ``Sources:`` line naming the doc of each context it cites (``[i]``),
    or of every context when it cites none; unchanged when it has one already.

    >>> ctx = [{"doc_id": "kafka"}, {"doc_id": "milvus"}]
    >>> with_citations("Kafka keeps the log [1].", ctx)
    'Kafka keeps the log [1].\\nSources: [1] kafka'
    >>> with_citations("Nothing found.", [])
    'Nothing found.'
    """
    if not contexts or "Sources:" in answer:
        return answer
    cited = [i for i in range(len(contexts)) if f"[{i + 1}]" in answer] or range(len(contexts))
    sources = ", ".join(f"[{i + 1}] {contexts[i]['doc_id']}" for i in cited)
    return f"{answer}\nSources: {sources}"


def _new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(
    req: ChatRequest,
    answer: Mapping[str, Any],
    model: str,
    completion_id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """The ``chat.completion`` object for an ``answers``-shaped ``answer`` (answer, contexts).

    >>> r = completion(parse_request({"messages": [{"role": "user", "content": "q"}]}),
    ...                {"answer": "A [1]", "contexts": [{"doc_id": "d"}]}, "extractive", "c1", 0)
    >>> r["choices"][0]["message"], r["contexts"]
    ({'role': 'assistant', 'content': 'A [1]\\nSources: [1] d'}, [{'doc_id': 'd'}])
    """
    contexts = list(answer.get("contexts") or [])
    return {
        "id": completion_id or _new_id(),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": with_citations(str(answer["answer"]), contexts),
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "contexts": contexts,
    }


def split_pieces(text: str, words: int = 4) -> list[str]:
    """``text`` in pieces of ``words`` words (whitespace kept, so they join back to it)."""
    tokens = text.split(" ")
    pieces = [" ".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]
    return [p + " " for p in pieces[:-1]] + pieces[-1:] if pieces else []


def _event(value: Any) -> bytes:
    return b"data: " + orjson.dumps(value) + b"\n\n"


class ChunkStream:
    """The server-sent events of one streamed answer, made piece by piece: a role chunk
    (:meth:`start`), one chunk per piece (:meth:`piece`), then the citations, a final chunk
    with ``finish_reason`` and the ``contexts``, and ``[DONE]`` (:meth:`finish`).

    >>> s = ChunkStream("m", "c1", 0)
    >>> s.piece("A ")
    b'data: {"id":"c1","object":"chat.completion.chunk","created":0,"model":"m","choices":\
[{"index":0,"delta":{"content":"A "},"finish_reason":null,"logprobs":null}]}\\n\\n'
    >>> s.finish([{"doc_id": "d"}])[-1]
    b'data: [DONE]\\n\\n'
    """

    def __init__(
        self, model: str, completion_id: str | None = None, created: int | None = None
    ) -> None:
        self.model = model
        self.id = completion_id or _new_id()
        self.created = int(time.time()) if created is None else created
        self.text = ""

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [choice], **extra}  # fmt: skip
        return _event(body)

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def piece(self, text: str) -> bytes:
        self.text += text
        return self._chunk({"content": text})

    def finish(self, contexts: Sequence[Mapping[str, Any]]) -> list[bytes]:
        events = []
        tail = with_citations(self.text, contexts)[len(self.text) :]
        if tail:
            events.append(self._chunk({"content": tail}))
        events.append(self._chunk({}, "stop", contexts=list(contexts)))
        events.append(b"data: [DONE]\n\n")
        return events


def sse_events(
    pieces: Iterable[str],
    contexts: Sequence[Mapping[str, Any]],
    model: str,
    completion_id: str | None = None,
    created: int | None = None,
) -> Iterator[bytes]:
    """All the events of a streamed answer whose pieces are at hand (see :class:`ChunkStream`).

    >>> events = list(sse_events(["A ", "[1]"], [{"doc_id": "d"}], "m", "c1", 0))
    >>> len(events), orjson.loads(events[-3][6:])["choices"][0]["delta"]
    (6, {'content': '\\nSources: [1] d'})
    """
    stream = ChunkStream(model, completion_id, created)
    yield stream.start()
    for piece in pieces:
        if piece:
            yield stream.piece(piece)
    yield from stream.finish(contexts)


def models_list(model: str, version: str) -> dict[str, Any]:
    """The ``GET /v1/models`` answer: the serving generator.

    >>> models_list("extractive", "extractive")["data"][0]["id"]
    'extractive'
    """
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": "livelearn",
             "version": version}
        ],
    }  # fmt: skip


def error_body(message: str, param: str | None = None, kind: str = "invalid_request_error") -> Any:
    """OpenAI's error shape, which its clients turn into their exceptions.

    >>> error_body("no user message", "messages")["error"]["type"]
    'invalid_request_error'
    """
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def answer_pieces(generator: Any, question: str, contexts: Sequence[Any]) -> Iterator[str]:
    """The generator's answer in pieces: as it generates when it can stream
    (``generate_stream``), else its whole answer cut in pieces of a few words."""
    stream = getattr(generator, "generate_stream", None)
    if callable(stream):
        yield from stream(question, contexts)
    else:
        yield from split_pieces(generator.generate(question, contexts))


def register(
    app: Any,
    guard: Any,
    answerer: Any,
    run: Any,
    query_filter: Any,
    model_info: Any,
) -> None:
    """Add ``/v1/chat/completions`` and ``/v1/models`` to a faust ``app``.

    ``guard`` is the worker's :class:`~streams.app.RequestGuard` (token and size limit);
    ``answerer()`` gives the serving :class:`~retrieval.answering.QueryAnswerer`; ``run`` runs
    a function on the retrieval thread (where every model call happens); ``query_filter``
    turns a ``queries`` record into a store filter; ``model_info()`` gives (name, version).
    """
    import asyncio

    from aiohttp import web as aioweb
    from faust.web import View

    from retrieval.exceptions import InvalidArgumentError, VectorStoreUnavailableError

    def refuse(view: View, status: int, message: str, param: str | None = None) -> Any:
        kind = "invalid_request_error" if status < 500 else "service_unavailable"
        if status == 401:
            kind = "authentication_error"
        return view.json(error_body(message, param, kind), status=status)

    def retrieve(q: dict[str, Any]) -> tuple[Any, list[Any]]:
        from retrieval.answering import Context

        a = answerer()
        hits = a.search(q["question"], q.get("k"), query_filter(q), q.get("mode"))
        return a.generator, [Context.from_hit(h) for h in hits]

    class ChatCompletions(View):
        async def post(self, request: Any, **kwargs: Any) -> Any:
            refused = guard.check(request)
            if refused is not None:
                return refuse(self, *refused)
            try:
                req = parse_request(orjson.loads(await request.read()))
            except orjson.JSONDecodeError as exc:
                return refuse(self, 400, f"the request body is not valid JSON: {exc}")
            except ChatRequestError as exc:
                return refuse(self, exc.status, str(exc), exc.param)
            name, _version = model_info()
            try:
                if not req.stream:

                    def call() -> dict[str, Any]:
                        generator, contexts = retrieve(req.query)
                        text = generator.generate(req.question, contexts)
                        return {"answer": text, "contexts": [c.__dict__ for c in contexts]}

                    return self.json(completion(req, await run(call), name))
                return await self._stream(request, req, name)
            except InvalidArgumentError as exc:
                return refuse(self, 400, str(exc))
            except VectorStoreUnavailableError as exc:
                return refuse(self, 503, str(exc))

        async def _stream(self, request: Any, req: ChatRequest, name: str) -> Any:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            done = object()

            def produce() -> list[dict[str, Any]]:
                # On the query thread: each piece goes to the response as it is made.
                generator, contexts = retrieve(req.query)
                try:
                    for piece in answer_pieces(generator, req.question, contexts):
                        loop.call_soon_threadsafe(queue.put_nowait, piece)
                finally:
                    loop.call_soon_threadsafe(queue.put_nowait, done)
                return [c.__dict__ for c in contexts]

            job = asyncio.ensure_future(run(produce))
            first = await queue.get()  # an error before the first piece is a plain error
            if first is done:
                await job  # raises what the retrieval raised
            response = aioweb.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            events = ChunkStream(name)
            await response.write(events.start())
            item = first
            while item is not done:
                await response.write(events.piece(item))
                item = await queue.get()
            for event in events.finish(await job):
                await response.write(event)
            await response.write_eof()
            return response

    class Models(View):
        async def get(self, request: Any, **kwargs: Any) -> Any:
            refused = guard.check(request)
            if refused is not None:
                return refuse(self, *refused)
            return self.json(models_list(*model_info()))

    app.page("/v1/chat/completions")(ChatCompletions)
    app.page("/v1/models")(Models)
