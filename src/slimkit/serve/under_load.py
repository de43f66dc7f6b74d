"""A built candidate behind `slimkit serve` and under load, for a recipe's `loadtest` section
and `benchmarks/serving.py`.

The server is the real command in a child process on a free loopback port, so the figures are
those of what a user would deploy (its own event loop, batcher and runtime threads), and a
server that dies costs the run one candidate's figures, not the run. Requests carry the run's
own data rows, one per request, in turn: a constant body would let a runtime's caches flatter
the result.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from slimkit.config import LoadSpec
from slimkit.data import Dataset
from slimkit.errors import SlimkitError
from slimkit.results import ServedLevel
from slimkit.serve.loadtest import Level, Target, run_level

START_SECONDS = 180.0  # a big model's load and first compile
ROWS = 512  # distinct request bodies; requests cycle through them


class ServeFailed(SlimkitError):
    """The server would not start or answer; the message ends with its last output."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(artifact: Path, log: Path, *, max_batch: int = 32, max_delay_ms: float = 0.0,
            threads: int | None = None) -> Iterator[int]:
    """`slimkit serve ARTIFACT` on 127.0.0.1 until /health answers; SIGTERM afterwards (it
    answers what it accepted, then exits). Yields the port."""
    port = free_port()
    cmd = [sys.executable, "-m", "slimkit.cli", "serve", str(artifact), "--port", str(port),
           "--max-batch", str(max_batch), "--max-delay-ms", f"{max_delay_ms:g}"]
    if threads:
        cmd += ["--threads", str(threads)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(proc, port, log)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        if proc.poll() is not None:
            tail = " ".join(log.read_text(errors="replace").split()[-40:])
            raise ServeFailed(f"slimkit serve exited with {proc.returncode}: {tail[-300:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ServeFailed(f"slimkit serve did not answer /health within "
                              f"{START_SECONDS:g} s (its output: {log})")
        time.sleep(0.2)


def row_bodies(data: Dataset, limit: int = ROWS) -> list[bytes]:
    """One /v1/predict body per data row: every input's row, as the server's signature
    expects it."""
    n = min(len(data), limit)
    return [json.dumps({"inputs": {k: v[i:i + 1].tolist() for k, v in data.inputs.items()}}
                       ).encode() for i in range(n)]


def put_under_load(artifact: Path, data: Dataset, spec: LoadSpec, threads: int, log: Path,
                   progress: Callable[[str], None] | None = None) -> list[ServedLevel]:
    """Serve the artifact and measure each of the spec's concurrency levels, after a short
    warm-up level whose figures are dropped; the levels as results.json keeps them."""
    bodies = row_bodies(data)
    with serving(artifact, log, max_batch=spec.max_batch, max_delay_ms=spec.max_delay_ms,
                 threads=threads) as port:
        target = Target("http", "127.0.0.1", port, "/v1/predict", bodies[0],
                        {"Content-Type": "application/json"}, bodies)
        run_level(target, min(max(spec.concurrency), 8), 4 * spec.max_batch,
                  min(spec.duration, 3.0))
        levels = []
        for c in spec.concurrency:
            levels.append(run_level(target, c, spec.requests, spec.duration))
            if progress:
                progress(f"concurrency {c}: {levels[-1].throughput:.1f} req/s")
    return [served_level(lv, spec.dollars_per_hour) for lv in levels]


def served_level(lv: Level, dollars_per_hour: float) -> ServedLevel:
    def ms(q: float) -> float | None:
        return lv.percentile(q) * 1e3 if lv.latencies else None

    cost = lv.cost_per_million(dollars_per_hour)
    return ServedLevel(concurrency=lv.concurrency, requests=lv.requests, errors=lv.errors,
                       seconds=lv.seconds, throughput=lv.throughput, p50_ms=ms(50),
                       p90_ms=ms(90), p99_ms=ms(99),
                       dollars_per_million=cost if math.isfinite(cost) else None,
                       first_error=lv.error_example or None)
