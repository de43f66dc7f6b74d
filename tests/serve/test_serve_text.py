"""/v1/embed on a small BERT with MiniLM's tokenizer: one vector per text, and a text's vector
does not depend on the longer texts its batch was padded for."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.serve.batcher import BatchOptions

TEXTS = ["short", "a somewhat longer sentence about serving models on a CPU",
         "batching pads every text to the longest one in its batch, and only to that"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embed_returns_one_vector_per_text(bert_dir: Path, serve_model: Any, http: Any) -> None:
    with serve_model(bert_dir) as s:
        health = http(s.url + "/health")[1]
        status, doc, _ = http(s.url + "/v1/embed", {"texts": TEXTS})
        alone = [http(s.url + "/v1/embed", {"texts": [t]})[1]["embeddings"][0] for t in TEXTS]
        bad = [http(s.url + "/v1/embed", body)[0] for body in
               ({"texts": []}, {"texts": "one"}, {"texts": [1, 2]}, {"text": ["x"]})]
        ids = http(s.url + "/v1/predict", {"inputs": {"input_ids": [[101, 2460, 102]],
                                                      "attention_mask": [[1, 1, 1]]}})
    assert health["text"] is True
    assert status == 200
    vectors = np.asarray(doc["embeddings"])
    assert vectors.shape == (3, 32) and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert _cosines(vectors, np.asarray(alone)).min() > 0.9999
    assert bad == [400] * 4
    assert ids[0] == 200 and np.asarray(ids[1]["outputs"][0]).shape == (1, 32)


def test_concurrent_texts_are_padded_per_batch(bert_dir: Path, serve_model: Any,
                                               http: Any) -> None:
    texts = [t * (1 + i % 3) for i, t in enumerate(TEXTS * 3)]
    results: list[Any] = [None] * len(texts)
    barrier = threading.Barrier(len(texts))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = http(s.url + "/v1/embed", {"texts": [texts[i]]})

    with serve_model(bert_dir, BatchOptions(max_batch=32, max_delay=0.2)) as s:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        alone = np.asarray([http(s.url + "/v1/embed", {"texts": [t]})[1]["embeddings"][0]
                            for t in texts])
        rows = s.app.state.metrics.batch_size
    assert all(r[0] == 200 for r in results)
    merged = np.asarray([r[1]["embeddings"][0] for r in results])
    assert _cosines(merged, alone).min() > 0.9999
    assert rows.counts[0] < sum(rows.counts), "no text batch held more than one request"


def test_token_budget_bounds_text_batches(bert_dir: Path, serve_model: Any, http: Any) -> None:
    """A budget smaller than any two texts together: every batch is one request."""
    opts = BatchOptions(max_batch=32, max_delay=0.1, max_tokens=8)
    results: list[int] = []

    def one() -> None:
        results.append(http(s.url + "/v1/embed", {"texts": [TEXTS[1]]})[0])

    with serve_model(bert_dir, opts) as s:
        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        hist = s.app.state.metrics.batch_size
    assert results == [200] * 6
    assert hist.counts[0] == sum(hist.counts) == 6
