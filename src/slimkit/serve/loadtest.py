"""A bounded load generator for a running server: per concurrency level, throughput, latency
percentiles, errors and what a million requests cost at an hourly price.

Clients are threads with one keep-alive connection each (stdlib `http.client`): the GIL is
released while a thread waits on its socket, which is where a client of a model server spends
its time, and no HTTP library is needed. Every level stops at a request count or a time limit,
whichever comes first, and only loopback hosts are sent to unless a host is named explicitly.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from slimkit.errors import ConfigError
from slimkit.serve.server import is_loopback

MAX_REQUESTS = 1_000_000
MAX_SECONDS = 3600.0
_TIMEOUT = 60.0  # per request: a hung server shows as errors, not as a hung load test


@dataclass
class LoadOptions:
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    requests: int = 1000  # per level
    duration: float = 30.0  # seconds per level
    payload: Path | None = None
    allow_hosts: list[str] = field(default_factory=list)
    api_key: str | None = None
    dollars_per_hour: float | None = None


@dataclass
class Level:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]  # seconds, successful requests only
    error_example: str = ""

    @property
    def throughput(self) -> float:
        return (self.requests - self.errors) / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def cost_per_million(self, dollars_per_hour: float) -> float:
        rate = self.throughput * 3600.0
        return dollars_per_hour / rate * 1e6 if rate > 0 else float("inf")


@dataclass
class Target:
    """Where load goes. With `bodies`, requests take them in turn (real rows, each request
    the next), else every request sends `body`."""

    scheme: str
    host: str
    port: int
    path: str
    body: bytes
    headers: dict[str, str]
    bodies: list[bytes] = field(default_factory=list)
    _turn: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def next_body(self) -> bytes:
        return self.bodies[next(self._turn) % len(self.bodies)] if self.bodies else self.body

    def connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=_TIMEOUT)


def check(url: str, options: LoadOptions) -> tuple[str, str, int, str]:
    """The URL's parts, or a ConfigError for a URL or option that cannot be used."""
    for c in options.concurrency:
        if not 1 <= c <= 1024:
            raise ConfigError(f"--concurrency {c}: must be between 1 and 1024")
    if not 1 <= options.requests <= MAX_REQUESTS:
        raise ConfigError(f"--requests {options.requests}: must be between 1 and {MAX_REQUESTS}")
    if not 0 < options.duration <= MAX_SECONDS:
        raise ConfigError(f"--duration {options.duration:g}: must be in (0, {MAX_SECONDS:g}] s")
    if options.dollars_per_hour is not None and options.dollars_per_hour < 0:
        raise ConfigError("--dollars-per-hour: must not be negative")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url}: not an http:// or https:// URL")
    host = parts.hostname
    if not is_loopback(host) and host not in options.allow_hosts:
        raise ConfigError(f"{url}: {host} is not this machine; name it with --allow-host {host} "
                          f"to send load there")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"{url}: not a valid port") from None
    return parts.scheme, host, port, parts.path.rstrip("/")


def target(url: str, options: LoadOptions) -> Target:
    """Where to send and what: the payload file, or one row built from the server's own
    input signature (GET /health) when none is given."""
    scheme, host, port, path = check(url, options)
    headers = {"Content-Type": "application/json"}
    if options.api_key:
        headers["Authorization"] = f"Bearer {options.api_key}"
    probe = Target(scheme, host, port, path, b"", headers)
    if options.payload is not None:
        try:
            body = options.payload.read_bytes()
            json.loads(body)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--payload {options.payload}: not a readable JSON file ({e})"
                              ) from None
        return Target(scheme, host, port, path or "/v1/predict", body, headers)
    info = _health(probe)
    if info.get("text"):
        doc: dict[str, Any] = {"texts": ["a short sentence to embed, as a client would send"]}
        return Target(scheme, host, port, path or "/v1/embed", json.dumps(doc).encode(), headers)
    row = {i["name"]: _zeros(i["shape"][1:], i["dtype"]) for i in info.get("inputs", [])}
    body = json.dumps({"inputs": row}).encode()
    return Target(scheme, host, port, path or "/v1/predict", body, headers)


def _health(t: Target) -> dict[str, Any]:
    conn = t.connect()
    try:
        conn.request("GET", "/health", headers=t.headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise ConfigError(f"GET /health answered {resp.status}; give --payload")
        return json.loads(data)
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise ConfigError(f"{t.host}:{t.port}: no slimkit server answers ({e})") from None
    finally:
        conn.close()


def _zeros(shape: list[int | str], dtype: str) -> Any:
    dims = [d if isinstance(d, int) else 8 for d in shape]
    kind = int if dtype.startswith(("int", "uint", "bool")) else float
    return np.zeros(dims).astype(kind).tolist()


def run_level(t: Target, concurrency: int, requests: int, duration: float) -> Level:
    """`concurrency` clients sending until `requests` are sent or `duration` has passed."""
    lock = threading.Lock()
    sent = [0]
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + duration

    def take() -> bool:
        with lock:
            if sent[0] >= requests or time.perf_counter() >= stop_at:
                return False
            sent[0] += 1
            return True

    def client() -> None:
        conn = t.connect()
        try:
            while take():
                start = time.perf_counter()
                try:
                    conn.request("POST", t.path, body=t.next_body(), headers=t.headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    ok = resp.status == 200
                    why = "" if ok else f"{resp.status} {data[:120].decode(errors='replace')}"
                except (OSError, http.client.HTTPException) as e:
                    conn.close()
                    conn = t.connect()
                    ok, why = False, f"{type(e).__name__}: {e}"
                took = time.perf_counter() - start
                with lock:
                    if ok:
                        latencies.append(took)
                    else:
                        errors.append(why)
        finally:
            conn.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    seconds = time.perf_counter() - start
    return Level(concurrency, sent[0], len(errors), seconds, latencies,
                 errors[0] if errors else "")


def loadtest(url: str, options: LoadOptions) -> list[Level]:
    t = target(url, options)
    return [run_level(t, c, options.requests, options.duration) for c in options.concurrency]


def render(levels: list[Level], dollars_per_hour: float | None) -> str:
    head = f"{'concurrency':>11} {'requests':>8} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} " \
           f"{'p99 ms':>8} {'errors':>6}"
    if dollars_per_hour is not None:
        head += f" {'$/1M req':>10}"
    lines = [head]
    for lv in levels:
        row = (f"{lv.concurrency:>11} {lv.requests:>8} {lv.throughput:>9.1f} "
               f"{lv.percentile(50) * 1e3:>8.2f} {lv.percentile(90) * 1e3:>8.2f} "
               f"{lv.percentile(99) * 1e3:>8.2f} {lv.errors:>6}")
        if dollars_per_hour is not None:
            row += f" {lv.cost_per_million(dollars_per_hour):>10.4f}"
        lines.append(row)
    for lv in levels:
        if lv.error_example:
            lines.append(f"first error at concurrency {lv.concurrency}: {lv.error_example}")
    return "\n".join(lines)
