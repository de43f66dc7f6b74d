"""Servers started in-process on a free port, over models exported by slimkit's own pipeline,
and a stdlib HTTP client, so the tests speak HTTP to uvicorn exactly as a client would."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from slimkit.serve.app import build_app
from slimkit.serve.batcher import BatchOptions
from slimkit.serve.server import ServeOptions, bind, load_served

Reply = tuple[int, Any, dict[str, str]]


@pytest.fixture(scope="session")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests.models:tiny_mlp (16 features in, 8 out) as an ONNX artifact folder."""
    from slimkit.api import export

    return export("tests.models:tiny_mlp", "onnx", tmp_path_factory.mktemp("mlp") / "best")


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path) -> Path:
    """A two-layer BERT with MiniLM's vocabulary and tokenizer, as an ONNX artifact folder."""
    from slimkit.api import export
    from tests.models import tiny_bert

    model = tiny_bert(vocab=30522)
    model.tokenizer = str(minilm_path)
    return export(model, "onnx", tmp_path_factory.mktemp("bert") / "best")


class Server:
    def __init__(self, url: str, app: Any, uv: Any, thread: threading.Thread) -> None:
        self.url, self.app, self.uv, self.thread = url, app, uv, thread

    def stop(self, timeout: float = 30.0) -> None:
        self.uv.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"


@contextmanager
def running(model_dir: Path, batch: BatchOptions | None = None,
            api_key: str | None = None) -> Iterator[Server]:
    import uvicorn

    served = load_served(model_dir, ServeOptions(threads=1), api_key)
    app = build_app(served, batch or BatchOptions())
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    server = Server(f"http://127.0.0.1:{port}", app, uv, thread)
    try:
        yield server
    finally:
        if thread.is_alive():
            server.stop()
        sock.close()


@pytest.fixture
def serve_model() -> Callable[..., Any]:
    return running


def call(url: str, doc: Any = None, *, raw: bytes | None = None, method: str | None = None,
         headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
    """Status, parsed body (text when not JSON) and headers; HTTP errors are replies too."""
    data = raw if raw is not None else (json.dumps(doc).encode() if doc is not None else None)
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, body, hdrs = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        status, body, hdrs = e.code, e.read(), dict(e.headers)
    try:
        return status, json.loads(body), hdrs
    except ValueError:
        return status, body.decode(), hdrs


@pytest.fixture
def http() -> Callable[..., Reply]:
    return call
