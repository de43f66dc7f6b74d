"""A LiteRT artifact behind the server: merged requests answer what the interpreter answers
for each row alone."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimkit.artifact import load_artifact
from slimkit.runtimes import RuntimeOptions, get_runtime
from slimkit.serve.batcher import BatchOptions


@pytest.fixture(scope="module")
def litert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slimkit.api import export

    return export("tests.models:tiny_mlp", "litert", tmp_path_factory.mktemp("tfl") / "best")


def test_a_litert_artifact_is_served(litert_dir: Path, serve_model: Any, http: Any) -> None:
    rows = np.random.default_rng(1).standard_normal((12, 16)).astype(np.float32)
    session = get_runtime("litert", RuntimeOptions(threads=1)).load(load_artifact(litert_dir))
    want = np.concatenate([session.run({"x": r[None]})[0] for r in rows])
    replies: list[Any] = [None] * len(rows)
    barrier = threading.Barrier(len(rows))

    def one(i: int) -> None:
        barrier.wait()
        replies[i] = http(s.url + "/v1/predict", {"inputs": {"x": [rows[i].tolist()]}})

    with serve_model(litert_dir, BatchOptions(max_batch=8)) as s:
        health = http(s.url + "/health")[1]
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(rows))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert health["runtime"] == "litert"
    assert [r[0] for r in replies] == [200] * len(rows)
    got = np.concatenate([np.asarray(r[1]["outputs"][0], dtype=np.float32) for r in replies])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
