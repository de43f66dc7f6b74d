"""The ASGI app: predict, embed, health and metrics over one loaded session.

Every handler answers: a request the server refuses gets its status and one line naming the
reason, an unexpected failure a 500 with one line, so no request can take the server down or
leave a client waiting on a dropped connection.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from slimkit.model import InputSpec
from slimkit.runtimes import Session
from slimkit.serve.batcher import TEXT, Batcher, BatchOptions
from slimkit.serve.errors import BadRequest, RequestError, TooLarge, Unauthorized
from slimkit.serve.metrics import CONTENT_TYPE, Metrics
from slimkit.serve.signature import parse_inputs, plain
from slimkit.serve.text import TextEncoder, pooled

MAX_BODY = 32 * 1024 * 1024
log = logging.getLogger("slimkit.serve")
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Served:
    """What the app serves: the session and what describes it."""

    session: Session
    inputs: list[InputSpec]
    name: str  # shown by /health
    runtime: str
    text: TextEncoder | None = None
    api_key: str | None = None


def build_app(served: Served, options: BatchOptions) -> Starlette:
    """The app; its lifespan starts the batcher and, at shutdown, answers every request
    already queued before the process exits."""
    metrics = Metrics()
    pads = served.text.pads if served.text else {}
    state: dict[str, Batcher] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher = Batcher(served.session.run, options, metrics, pads)
        batcher.start()
        state["batcher"] = app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.close()

    def endpoint(route: str, fn: Handler, auth: bool = True) -> Handler:
        async def handle(request: Request) -> Response:
            try:
                if auth:
                    _check_key(request, served.api_key)
                response = await fn(request)
            except RequestError as e:
                headers = {"Retry-After": "1"} if e.status == 503 else None
                response = JSONResponse({"error": str(e)}, e.status, headers=headers)
            except Exception as e:  # a bug: the client still gets an answer
                log.exception("%s failed", route)
                response = JSONResponse({"error": f"internal error: {type(e).__name__}"}, 500)
            metrics.count(route, response.status_code)
            return response
        return handle

    async def predict(request: Request) -> Response:
        feeds, rows = parse_inputs(await _json(request), served.inputs, options.max_batch)
        key = tuple((n, a.shape[1:], a.dtype.str) for n, a in feeds.items())
        outs = await state["batcher"].submit(feeds, rows, key)
        return _answer({"outputs": [plain(o) for o in outs]})

    async def embed(request: Request) -> Response:
        if served.text is None:
            raise BadRequest("this model has no tokenizer; send token ids to /v1/predict")
        feeds, rows = served.text.encode(await _json(request), options.max_batch)
        outs = await state["batcher"].submit(feeds, rows, TEXT)
        vectors = pooled(outs[0], feeds.get("attention_mask"))
        return _answer({"embeddings": plain(vectors)})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": served.name, "runtime": served.runtime,
                             "inputs": [i.model_dump() for i in served.inputs],
                             "text": served.text is not None, "max_batch": options.max_batch,
                             "replica": os.getpid()})

    async def show_metrics(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    routes = [
        Route("/v1/predict", endpoint("/v1/predict", predict), methods=["POST"]),
        Route("/v1/embed", endpoint("/v1/embed", embed), methods=["POST"]),
        Route("/health", endpoint("/health", health, auth=False), methods=["GET"]),
        Route("/metrics", endpoint("/metrics", show_metrics), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.metrics = metrics
    return app


def _check_key(request: Request, key: str | None) -> None:
    if key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                             key.encode()):
        raise Unauthorized("missing or wrong API key (Authorization: Bearer <key>)")


async def _json(request: Request) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise TooLarge(f"body of {length} bytes; at most {MAX_BODY}")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise TooLarge(f"body of {len(body)} bytes; at most {MAX_BODY}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"malformed JSON ({str(e).splitlines()[0][:120]})") from None


def _answer(doc: dict[str, Any]) -> Response:
    """JSON with NaN already turned into null by `plain`; numpy scalars never reach here."""
    return Response(json.dumps(doc, allow_nan=False), media_type="application/json")


__all__ = ["MAX_BODY", "Served", "build_app"]
