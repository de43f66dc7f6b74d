"""A built model's outputs on a dataset, computed once per (model, runtime, data, evaluation).

`slimkit run` and a search's trials both score quality from these outputs; keeping them in the
cache beside the artifacts means a rerun, a resumed search or another worker never runs the
same model over the same data twice.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from slimkit import __version__
from slimkit.artifact import load_artifact
from slimkit.dataset import Dataset
from slimkit.evaluate import collect_outputs
from slimkit.io import sha256_json
from slimkit.runtimes import RuntimeOptions, get_runtime


def outputs_key(model_key: str, runtime: str, evaluation: dict[str, Any], data: Dataset,
                reference_key: str = "", compile: bool = False) -> str:
    return sha256_json({"model": model_key, "runtime": runtime, "v": __version__,
                        "compile": compile, "eval": evaluation, "data": data.fingerprint(),
                        "reference": reference_key})


def model_outputs(artifact: Path, key: str, runtime: str, data: Dataset, cache_root: Path, *,
                  batch_size: int, output: int = 0, threads: int = 2, compile: bool = False,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The outputs under `key`, from the cache or by running the artifact on `runtime`; a
    cached file is written atomically and read without pickle."""
    cached = cache_root / "metrics" / f"{key}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as z:
            outputs = z["outputs"]
        if progress:
            progress(len(data))
        return outputs
    rt = get_runtime(runtime, RuntimeOptions(threads=threads, compile=compile))
    session = rt.load(load_artifact(artifact, trust_code=True))
    outputs = collect_outputs(session, data, batch_size, output, progress)
    del session
    gc.collect()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez(tmp, outputs=outputs)
    tmp.replace(cached)
    return outputs
