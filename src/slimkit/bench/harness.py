"""Latency, throughput and memory, measured as ratios against a baseline in one run.

The method (see BENCHMARKING.md): each candidate serves from its own process; the parent walks
the candidates in interleaved rounds (A B C, B C A, ...) so slow drifts of a shared machine hit
all of them alike; the reported ratio is the median of the per-round ratios, not a ratio of
medians taken at different times.

Every turn of every round runs in a fresh process that loads the candidate, warms up, measures
and exits, so no other serving process exists while one is timed. Keeping all candidates loaded
and frozen (SIGSTOP) between turns was tried first: a candidate's throughput still depended on
which processes had been loaded after it (torch fp32 on the digits CNN: 2.5k vs 6k items/s), so
each turn now starts from a clean process, at the price of one model load per turn.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slimkit.bench.worker import serve
from slimkit.data import Dataset


class BenchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int = Field(2, gt=0, description="intra-op threads for every runtime")
    batch_size: int = Field(32, gt=0, description="serving batch for throughput")
    rounds: int = Field(5, gt=0, description="interleaved rounds over all candidates")
    warmup: int = Field(3, ge=0, description="discarded runs per candidate after loading")
    latency_runs: int = Field(20, gt=0, description="batch-1 requests per candidate per round")
    throughput_runs: int = Field(3, gt=0, description="serving batches per candidate per round")
    min_seconds: float = Field(0.25, ge=0, description="each timed series runs at least this "
                               "long, so a small model's figure is not a few ms of noise")
    timeout_s: float = Field(600, gt=0, description="longest wait for one worker reply")


@dataclass
class Target:
    """One candidate to time. `trust_code` lets its worker call the factories the artifact's
    record names: true for artifacts slimkit built from the user's own recipe or command, false
    for a folder from elsewhere (see `slimkit.artifact.load_artifact`)."""

    name: str
    artifact: Path
    runtime: str
    compile: bool = False
    trust_code: bool = False


class _Worker:
    def __init__(self, target: Target, inputs: Path, opts: BenchOptions) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=serve,
            args=(child, str(target.artifact), target.runtime, opts.threads, str(inputs),
                  opts.batch_size, opts.warmup, target.compile),
            kwargs={"trust_code": target.trust_code},
            daemon=True,
        )
        self.proc.start()
        child.close()
        self.timeout = opts.timeout_s
        self.min_seconds = opts.min_seconds

    def ask(self, cmd: str, count: int = 0) -> tuple[str, dict[str, Any]]:
        if cmd:
            self.conn.send((cmd, count, self.min_seconds))
        if not self.conn.poll(self.timeout):
            raise TimeoutError(f"no reply to {cmd or 'start'} within {self.timeout:.0f} s")
        try:
            return self.conn.recv()
        except EOFError:
            raise RuntimeError(f"worker died (exit code {self.proc.exitcode})") from None

    def close(self) -> None:
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def run_benchmark(targets: list[Target], data: Dataset, opts: BenchOptions,
                  baseline: str | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Benchmark `targets`; ratios are against `baseline` (default: the first target)."""
    baseline = baseline or targets[0].name
    results: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
    lat: dict[str, list[list[float]]] = {t.name: [] for t in targets}
    thr: dict[str, list[float]] = {t.name: [] for t in targets}
    loads: dict[str, list[float]] = {t.name: [] for t in targets}
    peaks: dict[str, list[float]] = {t.name: [] for t in targets}
    n = min(len(data), max(opts.batch_size * 4, 32))
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, **data.slice(0, n))
        for r in range(opts.rounds):
            live = [t for t in targets if "error" not in results[t.name]]
            k = r % max(len(live), 1)
            for t in live[k:] + live[:k]:
                if progress:
                    progress(f"round {r + 1}/{opts.rounds}: {t.name}")
                measured = _measure(t, inputs, opts)
                if "error" in measured:
                    results[t.name]["error"] = measured["error"]
                    continue
                results[t.name]["runtime_info"] = measured["describe"]
                lat[t.name].append(measured["latency"]["times"])
                b = measured["throughput"]
                thr[t.name].append(b["items"] * len(b["times"]) / sum(b["times"]))
                loads[t.name].append(measured["load_seconds"])
                peaks[t.name].append(measured["peak_rss_mb"])
    for name in lat:
        if "error" in results[name] or not lat[name]:
            continue
        flat = [x for rnd in lat[name] for x in rnd]
        results[name].update(
            latency_ms={"p50": _pct(flat, 50), "p90": _pct(flat, 90), "p99": _pct(flat, 99),
                        "mean": float(np.mean(flat) * 1000)},
            throughput=float(statistics.median(thr[name])),
            throughput_rounds=thr[name],
            load_seconds=float(statistics.median(loads[name])),
            peak_rss_mb=float(max(peaks[name])),
        )
    if "error" not in results[baseline] and lat[baseline]:
        for name in lat:
            if "error" in results[name] or len(lat[name]) != len(lat[baseline]):
                continue
            results[name]["ratios"] = {
                "throughput": float(statistics.median(
                    [c / b for c, b in zip(thr[name], thr[baseline], strict=True)])),
                "latency": float(statistics.median(
                    [statistics.median(b) / statistics.median(c)
                     for c, b in zip(lat[name], lat[baseline], strict=True)])),
            }
    return results


def _measure(t: Target, inputs: Path, opts: BenchOptions) -> dict[str, Any]:
    """One candidate's turn in one round, in a fresh process that exits afterwards."""
    w = _Worker(t, inputs, opts)
    try:
        kind, ready = _safe(w, "")
        if kind != "ready":
            return {"error": ready["message"]}
        k1, a = _safe(w, "latency", opts.latency_runs)
        k2, b = _safe(w, "throughput", opts.throughput_runs) if k1 == "times" else (k1, a)
        k3, c = _safe(w, "stop") if k2 == "times" else (k2, b)
        if k3 != "done":
            return {"error": c.get("message", "worker failed")}
        return {**ready, "latency": a, "throughput": b, "peak_rss_mb": c["peak_rss_mb"]}
    finally:
        w.close()


def _safe(w: _Worker, cmd: str, count: int = 0) -> tuple[str, dict[str, Any]]:
    try:
        return w.ask(cmd, count)
    except (TimeoutError, RuntimeError, OSError) as e:
        return "error", {"message": str(e)}
