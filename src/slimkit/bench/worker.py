"""The serving process of one candidate during a benchmark.

Each turn of a candidate is a process of its own, so its peak memory is its own and no
allocator or thread-pool state leaks between candidates. Only one worker lives at a time.
"""

from __future__ import annotations

import os
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

MAX_RUNS = 5000  # a series never runs more often than this to reach its minimum time


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc (VmRSS now, VmHWM its peak).

    getrusage's ru_maxrss is not used: Linux carries it across fork and exec, so a worker
    would report its parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6  # kB (KiB) to MB, as sizes are
    return float("nan")


def serve(conn: Connection, artifact: str, runtime: str, threads: int, inputs: str,
          batch_size: int, warmup: int, compile_: bool = False, *, trust_code: bool) -> None:
    """Serve one candidate. `trust_code` has no default: the parent decides whether the
    artifact's record may name code to run, and says so."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import numpy as np

        from slimkit.artifact import load_artifact
        from slimkit.runtimes import RuntimeOptions, get_runtime

        rss_start = _status_mb("VmRSS")
        t0 = time.perf_counter()
        rt = get_runtime(runtime, RuntimeOptions(threads=threads, compile=compile_))
        session = rt.load(load_artifact(Path(artifact), trust_code=trust_code))
        load_seconds = time.perf_counter() - t0
        with np.load(inputs, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        n = len(next(iter(arrays.values())))
        singles = [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(min(n, 32))]
        batches = [{k: v[i : i + batch_size] for k, v in arrays.items()}
                   for i in range(0, max(1, n - batch_size + 1), batch_size)]
        for i in range(warmup):
            session.run(singles[i % len(singles)])
            session.run(batches[i % len(batches)])
        conn.send(("ready", {"load_seconds": load_seconds, "rss_start_mb": rss_start,
                             "rss_loaded_mb": _status_mb("VmRSS"), "describe": rt.describe()}))
        cursor = 0
        while True:
            cmd, count, min_seconds = conn.recv()
            if cmd == "stop":
                break
            pool = singles if cmd == "latency" else batches
            session.run(pool[cursor % len(pool)])  # untimed: a new shape pays extra once
            times: list[float] = []
            # at least `count` runs and `min_seconds` of them (within a bound on the count)
            while len(times) < count or (sum(times) < min_seconds and len(times) < MAX_RUNS):
                feeds = pool[cursor % len(pool)]
                cursor += 1
                t = time.perf_counter()
                session.run(feeds)
                times.append(time.perf_counter() - t)
            items = len(next(iter(pool[0].values())))
            conn.send(("times", {"times": times, "items": items}))
        conn.send(("done", {"peak_rss_mb": _status_mb("VmHWM")}))
    except Exception as e:  # reported to the parent, which marks this candidate failed
        msg: Any = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        conn.send(("error", {"message": msg, "traceback": traceback.format_exc()}))
    finally:
        conn.close()
