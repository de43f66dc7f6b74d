"""From a model folder and options to a listening server.

Everything a user can get wrong (the folder, the runtime, the host, the key file, a port in
use) is checked before the server starts, so it fails as one line and exit code 2 rather than
as a log line from a half-started server.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

from slimkit.errors import ConfigError
from slimkit.serve.app import Served, build_app
from slimkit.serve.batcher import BatchOptions


@dataclass
class ServeOptions:
    runtime: str | None = None  # default: the runtime of the model's format
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int | None = None
    api_key_file: Path | None = None
    batch: BatchOptions = field(default_factory=BatchOptions)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


def read_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--api-key-file {path}: cannot be read ({e})") from None
    if len(key) < 16 or any(c.isspace() or not c.isprintable() for c in key):
        raise ConfigError(f"--api-key-file {path}: the key must be one word of at least 16 "
                          f"printable characters")
    return key


def check_options(options: ServeOptions) -> str | None:
    """The API key, once the options are known to be usable; None when none is needed."""
    b = options.batch
    for name, value in (("max-batch", b.max_batch), ("max-queue", b.max_queue),
                        ("max-tokens", b.max_tokens), ("threads", options.threads or 1)):
        if value < 1:
            raise ConfigError(f"--{name} {value}: must be at least 1")
    if b.max_delay < 0:
        raise ConfigError(f"--max-delay-ms {b.max_delay * 1000:g}: must not be negative")
    if not 0 <= options.port <= 65535:
        raise ConfigError(f"--port {options.port}: not a port number")
    key = read_key(options.api_key_file) if options.api_key_file else None
    if key is None and not is_loopback(options.host):
        raise ConfigError(f"--host {options.host}: not a loopback address; serving beyond this "
                          f"machine needs --api-key-file (clients then send "
                          f"Authorization: Bearer <key>)")
    return key


def load_served(model_dir: Path, options: ServeOptions, api_key: str | None) -> Served:
    """The session for an artifact folder or a .onnx file. A folder is never trusted: a torch
    artifact naming code other than slimkit's bundled examples is refused."""
    from slimkit.artifact import is_artifact, load_artifact
    from slimkit.errors import ModelLoadError
    from slimkit.model import load_onnx
    from slimkit.runtimes import RuntimeOptions, get_runtime, runtime_format
    from slimkit.runtimes.base import runtime_for_format

    if model_dir.is_dir() and is_artifact(model_dir):
        model = load_artifact(model_dir, trust_code=False)
    elif model_dir.is_file() and model_dir.suffix == ".onnx":
        model = load_onnx(model_dir)
    else:
        raise ModelLoadError(f"{model_dir}: not an artifact folder (with artifact.json) or a "
                             f".onnx file")
    runtime = options.runtime or runtime_for_format(model.format)
    if runtime_format(runtime) != model.format:
        raise ConfigError(f"--runtime {runtime}: runs {runtime_format(runtime)} models; "
                          f"{model_dir} is {model.format} (try --runtime "
                          f"{runtime_for_format(model.format)})")
    opts = RuntimeOptions(threads=options.threads) if options.threads else RuntimeOptions()
    session = get_runtime(runtime, opts).load(model)
    text = None
    if model.tokenizer:
        from slimkit.serve.text import TextEncoder

        text = TextEncoder(model.tokenizer, list(model.inputs))
    return Served(session, list(model.inputs), str(model_dir), runtime, text, api_key)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a port in use is a one-line error.

    Its protocol is named (IPPROTO_TCP, not 0): asyncio turns Nagle's algorithm off only on
    sockets that say they are TCP, and with it on, every keep-alive response waits ~40 ms for
    the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"--host {host} --port {port}: cannot listen ({e.strerror})") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def serve(model_dir: Path, options: ServeOptions) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn then stops accepting, finishes the requests in
    flight and the app's lifespan answers what is still queued."""
    import uvicorn

    key = check_options(options)
    served = load_served(model_dir, options, key)
    sock = bind(options.host, options.port)
    app = build_app(served, options.batch)
    config = uvicorn.Config(app, log_level="info", access_log=False, lifespan="on")
    host, port = sock.getsockname()[:2]
    print(f"serving {model_dir} on http://{host}:{port} ({served.runtime}, "
          f"max batch {options.batch.max_batch}, max delay "
          f"{options.batch.max_delay * 1000:g} ms)", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
