"""The ASGI app (Starlette): the OpenAI-compatible routes around one :class:`Scheduler`.

``create_app(loaded, ...)`` returns the app; ``uvicorn`` serves it (see
:mod:`specdecode.cli.serve`). The model is loaded once, before the app is made; decoders are
built once per method, the default method's at startup, others on their first request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from specdecode.engine import Decoder, build_decoder
from specdecode.errors import SpecDecodeError
from specdecode.registry import list_methods
from specdecode.server.errors import APIError, bad_request, internal
from specdecode.server.metrics import Metrics
from specdecode.server.protocol import Limits, Served, parse_chat, parse_completion, parse_json
from specdecode.server.responses import DONE, Format, sse
from specdecode.server.scheduler import Done, Failed, Job, Piece, Scheduler

logger = logging.getLogger("specdecode.server")


@dataclass
class ServerConfig:
    """The server's settings besides the model (the CLI's ``serve`` options)."""

    method: str = "ar"  # the default decoding method
    options: dict = field(default_factory=dict)  # the default method's options
    limits: Limits = field(default_factory=Limits)
    max_active: int = 8  # generations interleaved at once
    max_queue: int = 64  # requests waiting for a slot; one more gets a 429
    max_body_bytes: int = 4 << 20  # a larger request body gets a 413
    model_id: str | None = None  # the name clients use; None: the model's name


class ServerState:
    """What the routes share: the model, its decoders, the scheduler, the metrics."""

    def __init__(self, loaded, config: ServerConfig, draft=None) -> None:
        self.loaded, self.config, self.draft = loaded, config, draft
        self.served = Served(
            loaded, config.model_id or loaded.name, config.method, config.limits, draft is not None
        )
        self.scheduler = Scheduler(max_active=config.max_active, max_queue=config.max_queue)
        self.metrics = Metrics(self.scheduler)
        self.scheduler._on_step, self.scheduler._on_end = self.metrics.on_step, self.metrics.on_end
        self.decoders: dict[str, Decoder] = {}
        self._building = asyncio.Lock()
        self.started = time.time()
        self.decoders[config.method] = build_decoder(
            config.method, loaded, draft=draft, options=config.options
        )

    async def decoder(self, method: str) -> Decoder:
        """The decoder for ``method`` (default options), built on first use."""
        if method in self.decoders:
            return self.decoders[method]
        async with self._building:
            if method not in self.decoders:
                try:
                    self.decoders[method] = await asyncio.to_thread(
                        build_decoder, method, self.loaded, draft=self.draft
                    )
                except SpecDecodeError as e:
                    raise bad_request(f"specdecode.method: {e}", param="specdecode.method") from None
        return self.decoders[method]


# ---------------------------------------------------------------------------- generation


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _generate(request: Request, chat: bool) -> Response:
    state: ServerState = request.app.state.server
    body = parse_json(await _read_body(request, state.config.max_body_bytes))
    req = parse_chat(body, state.served) if chat else parse_completion(body, state.served)
    job = Job(
        req, await state.decoder(req.method), asyncio.get_running_loop(), "chat" if chat else "completions"
    )
    state.scheduler.submit(job)  # a 429 when the queue is full, a 503 when shutting down
    fmt = Format(chat, state.served.model_id, req.include_usage)
    if req.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return _JobStream(state, job, _stream(state, job, fmt), headers)
    return await _whole(request, state, job, fmt)


async def _whole(request: Request, state: ServerState, job: Job, fmt: Format) -> Response:
    """Wait for the whole answer; a client that goes away cancels the generation."""
    watcher = asyncio.create_task(_watch_disconnect(request, state, job))
    texts: list[str] = []
    try:
        while True:
            event = await job.events.get()
            if isinstance(event, Piece):
                texts.append(event.response.text)
            elif isinstance(event, Done):
                answer = fmt.whole("".join(texts), event.finish_reason, event.tally, job.decoder.method)
                return JSONResponse(answer)
            else:
                raise event.error
    finally:
        watcher.cancel()
        if not job.finished:
            state.scheduler.cancel(job)


async def _watch_disconnect(request: Request, state: ServerState, job: Job) -> None:
    """Cancel ``job`` when the client disconnects (the body has been read: the next message
    the server gives is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            state.scheduler.cancel(job)
            return


class _JobStream(StreamingResponse):
    """A stream of events that cancels its job however it ends: finished, failed, or cut off
    by a client that went away (Starlette then stops iterating the generator, which may be
    left suspended, so its ``finally`` is not enough)."""

    def __init__(self, state: ServerState, job: Job, content, headers: dict) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._state, self._job = state, job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._job.finished:
                self._state.scheduler.cancel(self._job)


async def _stream(state: ServerState, job: Job, fmt: Format):
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``. Starlette
    cancels this generator when the client disconnects; ``finally`` then cancels the job."""
    method = job.decoder.method
    try:
        if fmt.chat:
            yield fmt.chunk(None, role=True)
        while True:
            event = await job.events.get()
            if isinstance(event, Piece):
                yield fmt.chunk(event.response.text)
            elif isinstance(event, Done):
                yield fmt.chunk(None if fmt.chat else "", event.finish_reason)
                if fmt.include_usage:
                    yield fmt.usage_chunk(event.tally, method)
                yield DONE
                return
            elif isinstance(event, Failed):  # the status line is gone: an error event instead
                yield sse(event.error.body())
                yield DONE
                return
    finally:
        if not job.finished:
            state.scheduler.cancel(job)


async def chat_completions(request: Request) -> Response:
    return await _generate(request, chat=True)


async def completions(request: Request) -> Response:
    return await _generate(request, chat=False)


# ---------------------------------------------------------------------------- the rest


def _model_card(state: ServerState) -> dict:
    methods = [m.name for m in list_methods() if not m.needs_draft or state.draft is not None]
    return {
        "id": state.served.model_id,
        "object": "model",
        "created": int(state.started),
        "owned_by": "specdecode",
        "max_model_len": state.loaded.max_context,
        "specdecode": {"default_method": state.config.method, "methods": methods},
    }


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(request.app.state.server)]})


async def model(request: Request) -> Response:
    state: ServerState = request.app.state.server
    name = request.path_params["model"]
    if name != state.served.model_id:
        raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
    return JSONResponse(_model_card(state))


async def health(request: Request) -> Response:
    scheduler = request.app.state.server.scheduler
    status = "draining" if scheduler.draining else "ok" if scheduler.alive else "stopped"
    body = {"status": status, "waiting": scheduler.waiting, "active": scheduler.active}
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


async def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.server.metrics
    return Response(m.render(), media_type=m.content_type)


# ---------------------------------------------------------------------------- errors, app


async def _api_error(request: Request, exc: APIError) -> Response:
    if exc.status >= 400 and exc.status != 499:
        request.app.state.server.metrics.rejected.labels(str(exc.status)).inc()
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    kind = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
    error = APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=kind)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _gone(request: Request, exc: ClientDisconnect) -> Response:
    return Response(status_code=499)  # the client left before its request was read: nobody to answer


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error", exc_info=exc)
    return JSONResponse(internal(f"{type(exc).__name__}: {exc}").body(), status_code=500)


def create_app(loaded, config: ServerConfig | None = None, *, draft=None) -> Starlette:
    """The app serving ``loaded`` (a :class:`specdecode.models.loader.LoadedModel`)."""
    state = ServerState(loaded, config or ServerConfig(), draft)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.scheduler.start()
        try:
            yield
        finally:
            state.scheduler.stop()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    handlers = {
        APIError: _api_error,
        HTTPException: _http_error,
        ClientDisconnect: _gone,
        Exception: _unexpected,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.server = state
    return app
