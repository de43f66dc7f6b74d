"""The server over HTTP: batching merges concurrent requests, bad requests are refused alone,
overload is refused quickly, metrics parse, and shutdown answers every accepted request."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from slimkit.serve.batcher import BatchOptions

ROW = [0.25] * 16


def _together(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """`fn(i)` from n threads released at once, so their requests reach the server together."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request hung"
    return results


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _batch_counts(metrics_text: str) -> tuple[float, float, float]:
    """(batches, rows, batches of one row) from the batch-size histogram."""
    fam = _families(metrics_text)["slimkit_batch_size"]
    values = {(s.name, s.labels.get("le")): s.value for s in fam.samples}
    return (values[("slimkit_batch_size_count", None)], values[("slimkit_batch_size_sum", None)],
            values[("slimkit_batch_size_bucket", "1")])


def test_concurrent_requests_are_merged(mlp_dir: Path, serve_model: Any, http: Any) -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((16, 16)).astype(np.float32)
    with serve_model(mlp_dir, BatchOptions(max_batch=32, max_delay=0.2)) as s:
        alone = [http(s.url + "/v1/predict", {"inputs": {"x": r.tolist()}}) for r in rows[:2]]
        replies = _together(16, lambda i: http(s.url + "/v1/predict",
                                               {"inputs": {"x": rows[i].tolist()}}))
        metrics = http(s.url + "/metrics")[1]
    assert [r[0] for r in replies] == [200] * 16
    for i in range(2):  # a row's answer does not depend on the batch it ran in
        np.testing.assert_allclose(replies[i][1]["outputs"][0], alone[i][1]["outputs"][0],
                                   rtol=1e-4, atol=1e-5)
    assert all(np.asarray(r[1]["outputs"][0]).shape == (1, 8) for r in replies)
    batches, total, single = _batch_counts(metrics)
    assert total == 18
    assert single < batches, "every batch held one row: nothing was merged"
    assert batches < 18


def test_many_rows_in_one_request(mlp_dir: Path, serve_model: Any, http: Any) -> None:
    with serve_model(mlp_dir, BatchOptions(max_batch=4)) as s:
        ok = http(s.url + "/v1/predict", {"inputs": {"x": [ROW] * 4}})
        too_many = http(s.url + "/v1/predict", {"inputs": {"x": [ROW] * 5}})
    assert ok[0] == 200 and np.asarray(ok[1]["outputs"][0]).shape == (4, 8)
    assert too_many[0] == 400 and "5 rows" in too_many[1]["error"]


BAD = [
    ({"inputs": {"image": [ROW]}}, "unknown input 'image'"),
    ({"inputs": {"x": [0.0] * 15}}, "axis 1 must be 16"),
    ({"inputs": {"x": [[ROW]]}}, "3 dimensions"),
    ({"inputs": {"x": ["a"] * 16}}, "not numbers"),
    ({"inputs": {"x": [ROW, [0.0] * 3]}}, "rectangular"),
    ({"inputs": {"x": [[None] * 16]}}, "not numbers"),
    ({"inputs": {}}, "missing input 'x'"),
    ({"rows": [ROW]}, '{"inputs"'),
    ([ROW], '{"inputs"'),
    (b'{"inputs": {"x": [0.25,', "malformed JSON"),
    (b"\xff\xfe", "malformed JSON"),
]


def test_bad_requests_get_400_and_the_next_succeeds(mlp_dir: Path, serve_model: Any,
                                                    http: Any) -> None:
    with serve_model(mlp_dir) as s:
        for body, words in BAD:
            raw = body if isinstance(body, bytes) else None
            status, doc, _ = http(s.url + "/v1/predict", None if raw else body, raw=raw)
            assert status == 400, (body, doc)
            assert words in doc["error"] and "\n" not in doc["error"], doc
            good = http(s.url + "/v1/predict", {"inputs": {"x": ROW}})
            assert good[0] == 200
        embed = http(s.url + "/v1/embed", {"texts": ["no tokenizer here"]})
        assert embed[0] == 400 and "no tokenizer" in embed[1]["error"]
        metrics = _families(http(s.url + "/metrics")[1])
    errors = {tuple(sorted(x.labels.items())): x.value
              for x in metrics["slimkit_errors"].samples}
    assert errors[(("route", "/v1/predict"), ("status", "400"))] == len(BAD)


def test_overload_gets_503_not_a_hang(mlp_dir: Path, serve_model: Any, http: Any) -> None:
    # two queued rows never fill a batch of 4, so the worker holds them for 0.5 s: the queue
    # stays full while the other requests arrive
    opts = BatchOptions(max_batch=4, max_delay=0.5, max_queue=2)
    with serve_model(mlp_dir, opts) as s:
        start = time.perf_counter()
        replies = _together(16, lambda i: http(s.url + "/v1/predict", {"inputs": {"x": ROW}}))
        took = time.perf_counter() - start
        after = http(s.url + "/v1/predict", {"inputs": {"x": ROW}})
    statuses = [r[0] for r in replies]
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) >= 8 and statuses.count(200) >= 1
    assert all(r[2].get("retry-after") == "1" for r in replies if r[0] == 503)
    assert all("queue is full" in r[1]["error"] for r in replies if r[0] == 503)
    assert took < 20
    assert after[0] == 200


def test_metrics_are_prometheus_text(mlp_dir: Path, serve_model: Any, http: Any) -> None:
    with serve_model(mlp_dir) as s:
        http(s.url + "/v1/predict", {"inputs": {"x": [ROW] * 3}})
        http(s.url + "/v1/predict", {"inputs": {"x": [1]}})
        http(s.url + "/health")
        status, text, headers = http(s.url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = _families(text)
    assert {n: f.type for n, f in fams.items()} == {
        "slimkit_requests": "counter", "slimkit_errors": "counter",
        "slimkit_batch_size": "histogram", "slimkit_queue_seconds": "histogram",
        "slimkit_inference_seconds": "histogram"}
    req = {(x.labels["route"], x.labels["status"]): x.value
           for x in fams["slimkit_requests"].samples}
    assert req == {("/v1/predict", "200"): 1, ("/v1/predict", "400"): 1, ("/health", "200"): 1}
    assert _batch_counts(text) == (1, 3, 0)
    for line in text.splitlines():  # strict: every line a comment or `name{labels} value`
        assert line.startswith("# ") or len(line.rsplit(" ", 1)) == 2, line


def test_shutdown_during_load_answers_every_accepted_request(mlp_dir: Path, serve_model: Any,
                                                             http: Any) -> None:
    opts = BatchOptions(max_batch=64, max_delay=0.3)
    replies: list[tuple[int, float]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                status = http(s.url + "/v1/predict", {"inputs": {"x": ROW}}, timeout=30)[0]
            except (OSError, HTTPException) as e:  # refused or closed unread
                failures.append(type(e).__name__)
                return
            replies.append((status, time.perf_counter()))

    with serve_model(mlp_dir, opts) as s:
        clients = [threading.Thread(target=client) for _ in range(12)]
        for t in clients:
            t.start()
        time.sleep(1.0)
        stopped_at = time.perf_counter()
        s.stop()
        stop.set()
        for t in clients:
            t.join(60)
        batcher = s.app.state.batcher
    assert not any(t.is_alive() for t in clients)
    assert {st for st, _ in replies} <= {200, 503}
    ok = [t for st, t in replies if st == 200]
    assert batcher.admitted == batcher.answered == len(ok)
    assert any(t > stopped_at for t in ok), "no request was in flight at shutdown"
