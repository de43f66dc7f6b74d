"""`slimkit serve --replicas N`, on this machine and on a local Ray cluster: every replica
answers, answers match the model's own, and SIGTERM stops the whole group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from slimkit.cli import app
from slimkit.serve.server import ServeOptions, load_served
from slimkit.serve.under_load import free_port
from tests.serve.conftest import call


def _start(model_dir: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimkit.cli", "serve", str(model_dir), "--port", str(port),
         *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _replicas_seen(url: str, proc: subprocess.Popen[str], want: int, limit: float) -> set[int]:
    """Ask /health until `want` different replicas have answered."""
    seen: set[int] = set()
    deadline = time.monotonic() + limit
    while len(seen) < want:
        assert proc.poll() is None, (proc.stdout.read() if proc.stdout else "")[-3000:]
        assert time.monotonic() < deadline, f"only replicas {seen} answered in {limit:g} s"
        try:
            status, doc, _ = call(url + "/health", timeout=5)
        except OSError:  # not listening yet
            time.sleep(0.5)
            continue
        if status == 200:
            seen.add(doc["replica"])
        else:
            time.sleep(0.2)
    return seen


def _stop(proc: subprocess.Popen[str], limit: float) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the server did not stop on SIGTERM") from None
    return out


def _predictions_match(url: str, mlp_dir: Path) -> None:
    rows = np.random.default_rng(0).normal(size=(24, 16)).astype(np.float32)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(
            lambda r: call(url + "/v1/predict", {"inputs": {"x": [r.tolist()]}}), rows))
    assert all(status == 200 for status, _, _ in replies), replies[:2]
    got = np.array([doc["outputs"][0][0] for _, doc, _ in replies], dtype=np.float32)
    want = load_served(mlp_dir, ServeOptions(threads=1), None).session.run({"x": rows})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_two_local_replicas_answer_and_stop_together(mlp_dir: Path) -> None:
    proc, url = _start(mlp_dir, "--replicas", "2")
    try:
        assert len(_replicas_seen(url, proc, 2, 120)) == 2
        _predictions_match(url, mlp_dir)
    finally:
        out = _stop(proc, 60)
    assert proc.returncode == 0, out[-3000:]
    assert "2 replicas of 1 threads" in out


@pytest.mark.slow
def test_ray_serve_replicas_on_a_local_cluster(mlp_dir: Path) -> None:
    proc, url = _start(mlp_dir, "--ray", "--replicas", "2", "--threads", "1")
    try:
        assert len(_replicas_seen(url, proc, 2, 300)) == 2
        _predictions_match(url, mlp_dir)
        status, text, _ = call(url + "/metrics")
        assert status == 200 and "slimkit_requests_total" in text
    finally:
        out = _stop(proc, 120)
    assert proc.returncode == 0, out[-3000:]


@pytest.mark.parametrize(("args", "words"), [
    (["--replicas", "0"], "--replicas 0"),
    (["--ray-address", "auto"], "only with --ray"),
])
def test_replica_option_errors(mlp_dir: Path, args: list[str], words: str) -> None:
    res: Any = CliRunner().invoke(app, ["serve", str(mlp_dir), "--port", "0", *args])
    assert res.exit_code == 2, res.output
    assert words in res.output and len(res.output.strip().splitlines()) == 1
