"""The batcher's two choices: when to wait for company, and which texts share a batch."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.serve.batcher import TEXT, Batcher, BatchOptions, Job
from slimkit.serve.metrics import Metrics

ROW = [0.25] * 16


def test_a_lone_client_does_not_wait_for_company(mlp_dir: Path, serve_model: Any,
                                                 http: Any) -> None:
    """With a one-second delay, one request after another still answers at once: the delay is
    spent only after a batch that merged requests."""
    with serve_model(mlp_dir, BatchOptions(max_batch=32, max_delay=1.0)) as s:
        start = time.perf_counter()
        replies = [http(s.url + "/v1/predict", {"inputs": {"x": [ROW]}}) for _ in range(5)]
        took = time.perf_counter() - start
    assert [r[0] for r in replies] == [200] * 5
    assert took < 2.0, f"5 sequential requests took {took:.2f} s with a 1 s delay"


def _text_job(loop: asyncio.AbstractEventLoop, width: int, rows: int = 1) -> Job:
    ids = np.ones((rows, width), dtype=np.int64)
    return Job({"input_ids": ids, "attention_mask": ids}, rows, TEXT, loop.create_future())


def test_text_batches_take_the_nearest_lengths() -> None:
    """The oldest text leads; texts near its length join, a long one waits for its own batch
    instead of padding the short ones to its length."""
    loop = asyncio.new_event_loop()
    try:
        b = Batcher(lambda feeds: [], BatchOptions(max_batch=4), Metrics())
        widths = [10, 200, 12, 11, 190, 9, 10]
        b._pending.extend(_text_job(loop, w) for w in widths)
        batch, full = b._select()
        assert sorted(j.width for j in batch) == [9, 10, 10, 11]  # nearest first, 4 rows
        assert full
        for job in batch:
            b._pending.remove(job)
        batch, _ = b._select()
        assert [j.width for j in batch] == [200, 190]  # 12 would be mostly padding
        b._pending.clear()
        b._pending.extend(_text_job(loop, w) for w in (10, 20, 16))
        batch, full = b._select()
        assert [j.width for j in batch] == [10, 16] and not full  # 10 + 20: a quarter padding
    finally:
        loop.close()
