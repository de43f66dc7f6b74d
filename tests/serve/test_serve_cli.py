"""`slimkit serve` and `slimkit loadtest` from the command line, and the API key: what must
not start or send does not, with one line and exit code 2."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from slimkit.cli import app
from slimkit.serve.loadtest import LoadOptions, loadtest, render

KEY = "k3y-for-tests-0123456789"


def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_non_loopback_host_without_a_key_is_refused(mlp_dir: Path) -> None:
    res = _cli("serve", str(mlp_dir), "--host", "0.0.0.0", "--port", "0")
    assert res.exit_code == 2
    assert "--api-key-file" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(("args", "words"), [
    (["--max-batch", "0"], "--max-batch 0"),
    (["--max-delay-ms", "-1"], "--max-delay-ms"),
    (["--runtime", "openvino"], "--runtime openvino"),
    (["--runtime", "tensorflow"], "unknown runtime"),
    (["--api-key-file", "/nonexistent/key"], "cannot be read"),
])
def test_serve_option_errors(mlp_dir: Path, args: list[str], words: str) -> None:
    res = _cli("serve", str(mlp_dir), "--port", "0", *args)
    assert res.exit_code == 2, res.output
    assert words in res.output and len(res.output.strip().splitlines()) == 1


def test_serve_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    res = _cli("serve", str(tmp_path), "--port", "0")
    assert res.exit_code == 2 and "not an artifact folder" in res.output


def test_api_key_is_required_when_set(mlp_dir: Path, serve_model: Any, http: Any) -> None:
    body = {"inputs": {"x": [0.0] * 16}}
    with serve_model(mlp_dir, api_key=KEY) as s:
        missing = http(s.url + "/v1/predict", body)
        wrong = http(s.url + "/v1/predict", body, headers={"Authorization": "Bearer nope"})
        right = http(s.url + "/v1/predict", body, headers={"Authorization": f"Bearer {KEY}"})
        health = http(s.url + "/health")
        metrics = http(s.url + "/metrics")
    assert (missing[0], wrong[0], right[0], health[0], metrics[0]) == (401, 401, 200, 200, 401)


def test_loadtest_against_a_running_server(mlp_dir: Path, serve_model: Any,
                                           tmp_path: Path) -> None:
    payload = tmp_path / "rows.json"
    payload.write_text(json.dumps({"inputs": {"x": [[0.5] * 16] * 2}}))
    with serve_model(mlp_dir) as s:
        levels = loadtest(s.url, LoadOptions(concurrency=[1, 4], requests=40, duration=30))
        from_file = loadtest(s.url + "/v1/predict",
                             LoadOptions(concurrency=[2], requests=10, payload=payload))
        res = _cli("loadtest", s.url, "--concurrency", "2", "--requests", "10",
                   "--dollars-per-hour", "1.5")
    for lv in [*levels, *from_file]:
        assert lv.errors == 0, lv.error_example
        assert lv.throughput > 0 and len(lv.latencies) == lv.requests
        assert 0 < lv.percentile(50) <= lv.percentile(90) <= lv.percentile(99) < 30
        assert math.isfinite(lv.cost_per_million(1.0)) and lv.cost_per_million(1.0) > 0
    assert [lv.requests for lv in levels] == [40, 40]
    assert res.exit_code == 0, res.output
    table = render(levels, 1.5).splitlines()
    assert "p99 ms" in table[0] and "$/1M req" in table[0] and len(table) == 3
    assert "$/1M req" in res.output


@pytest.mark.parametrize(("args", "words"), [
    (["http://10.1.2.3:8000"], "--allow-host 10.1.2.3"),
    (["http://example.com/v1/predict"], "--allow-host example.com"),
    (["ftp://127.0.0.1"], "not an http"),
    (["http://127.0.0.1:1", "--concurrency", "0"], "--concurrency 0"),
    (["http://127.0.0.1:1", "--concurrency", "a,b"], "--concurrency"),
    (["http://127.0.0.1:1", "--requests", "0"], "--requests 0"),
    (["http://127.0.0.1:1", "--duration", "0"], "--duration 0"),
    (["http://127.0.0.1:1"], "no slimkit server answers"),
])
def test_loadtest_refusals(args: list[str], words: str) -> None:
    res = _cli("loadtest", *args)
    assert res.exit_code == 2, res.output
    assert words in res.output and "Traceback" not in res.output


def test_a_port_in_use_is_one_line(mlp_dir: Path) -> None:
    from slimkit.serve.server import bind

    taken = bind("127.0.0.1", 0)
    try:
        port = str(taken.getsockname()[1])
        assert taken.proto == socket.IPPROTO_TCP  # so asyncio turns Nagle off per connection
        res = _cli("serve", str(mlp_dir), "--port", port)
    finally:
        taken.close()
    assert res.exit_code == 2 and "cannot listen" in res.output
