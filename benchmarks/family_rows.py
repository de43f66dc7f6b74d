"""The machinery under benchmarks/family.py: rows built through the pipeline cache, evaluated
on one reference, timed together in one interleaved run, and claims printed beside figures.

Kept apart so that family.py reads as what it measures (which rows, which claims) and this
file as how: every row of a model shares one base model, one cache, one test split and one
reference (ONNX Runtime fp32), so figures in one table compare like with like.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.artifact import REPORT_JSON, load_artifact
from slimkit.bench import BenchOptions, Target, run_benchmark
from slimkit.data import DataSpec, load_data
from slimkit.evaluate import collect_outputs, evaluate_outputs
from slimkit.formats.base import ModelRef
from slimkit.model import load_model
from slimkit.pipeline import Built, Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.run import model_bytes
from slimkit.runtimes import RuntimeOptions, get_runtime, runtime_format

BASELINE = "ort-fp32"
THREADS = 2


@dataclass
class Row:
    """One candidate: how it was built, and what was measured on it."""

    name: str
    runtime: str
    built: Built | None = None
    error: str | None = None
    quality: dict[str, float] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.built is not None and self.error is None

    def throughput(self) -> float | None:
        return self.bench.get("ratios", {}).get("throughput")

    def latency(self) -> float | None:
        """Batch-1 latency as a share of the baseline's (the harness's ratio is a speed-up)."""
        speedup = self.bench.get("ratios", {}).get("latency")
        return 1 / speedup if speedup else None


class Bench:
    """The rows of one model: built, evaluated, timed."""

    def __init__(self, model: str, source: str, test: dict[str, Any], calib: dict[str, Any],
                 task: str, batch_size: int) -> None:
        self.model, self.task, self.batch_size = model, task, batch_size
        self.base = load_model(ModelRef(source=source))
        self.test = load_data(DataSpec(**test), self.base)
        self.calib = load_data(DataSpec(**calib), self.base)
        self.cache = Cache()
        self.key = model_key(self.base)
        self.rows: dict[str, Row] = {}
        self.reference: np.ndarray | None = None

    def add(self, name: str, steps: list[dict[str, Any]], runtime: str = "onnxruntime",
            note: str = "") -> Row:
        """Build (or read back from the cache) one row; a failure is kept on the row, not
        raised, so the other rows still get measured."""
        print(f"  [{self.model}] {name}", flush=True)
        row = Row(name, runtime, note=note)
        try:
            configs = [parse_step(s) for s in steps]
            row.built = build(self.base, self.key, configs, runtime_format(runtime), self.cache,
                              data=self.calib, threads=THREADS)
        except Exception as e:  # reported beside the row
            row.error = f"{type(e).__name__}: {e}"
            print(f"    failed: {row.error}", flush=True)
        self.rows[name] = row
        return row

    def report(self, row: Row, technique: str) -> dict[str, Any]:
        """The report the named step wrote beside its artifact ({} if none)."""
        if not row.ok:
            return {}
        assert row.built is not None
        for step in row.built.steps:
            path = self.cache.path(step.key) / REPORT_JSON
            if step.step == technique and path.is_file():
                return dict(json.loads(path.read_text()))
        return {}

    def evaluate(self) -> None:
        """Every row on the test split against the baseline's outputs (evaluated first)."""
        order = sorted(self.rows.values(), key=lambda r: r.name != BASELINE)
        for row in order:
            if not row.ok:
                continue
            assert row.built is not None
            try:
                session = get_runtime(row.runtime, RuntimeOptions(threads=THREADS)).load(
                    load_artifact(row.built.path, trust_code=True))
                out = collect_outputs(session, self.test, 32)
            except Exception as e:  # reported beside the row
                row.error = f"evaluation: {type(e).__name__}: {e}"
                continue
            self.reference = out if self.reference is None else self.reference
            row.quality = evaluate_outputs(self.task, out, self.reference,  # type: ignore[arg-type]
                                           self.test.labels)

    def time(self, names: list[str], rounds: int, **opts: Any) -> None:
        """One interleaved run of the baseline and `names`, each in its own process."""
        rows = [self.rows[BASELINE]] + [self.rows[n] for n in names if n != BASELINE]
        targets = [Target(r.name, r.built.path, r.runtime, trust_code=True)
                   for r in rows if r.ok and r.built is not None]
        bench = BenchOptions(threads=THREADS, batch_size=self.batch_size, rounds=rounds, **opts)
        print(f"  [{self.model}] timing {len(targets)} rows, {rounds} interleaved rounds, "
              f"batch {self.batch_size}, {THREADS} threads", flush=True)
        res = run_benchmark(targets, self.test, bench, BASELINE)
        for t in targets:
            self.rows[t.name].bench = res[t.name]
            if "error" in res[t.name]:
                self.rows[t.name].error = f"benchmark: {res[t.name]['error']}"

    def size(self, row: Row, against: str) -> float | None:
        base = self.rows[against]
        if not (row.ok and base.ok):
            return None
        assert row.built is not None and base.built is not None
        return model_bytes(row.built.path) / model_bytes(base.built.path)

    def accuracy_drop(self, row: Row, against: str = BASELINE) -> float | None:
        """Points of accuracy lost against `against` on the test split."""
        a, b = row.quality.get("accuracy"), self.rows[against].quality.get("accuracy")
        return None if a is None or b is None else 100 * (b - a)

    def print_rows(self, size_against: dict[str, str]) -> None:
        quality = "accuracy" if self.task == "classification" else "mean_cosine"
        print(f"\n{self.model}: against {BASELINE} on the test split ({len(self.test)} rows); "
              f"thr × at batch {self.batch_size}, lat × at batch 1 (lower is faster)")
        print(f"{'row':<34}{'runtime':<13}{'thr ×':>7}{'lat ×':>7}{quality[:8]:>9}{'size ×':>8}"
              "  note")
        for row in self.rows.values():
            if not row.ok:
                print(f"{row.name:<34}{row.runtime:<13}failed: {row.error}")
                continue
            q = row.quality.get(quality)
            shown = "-" if q is None else f"{q:.2%}" if quality == "accuracy" else f"{q:.4f}"
            size = self.size(row, size_against.get(row.name, BASELINE))
            print(f"{row.name:<34}{row.runtime:<13}{_f(row.throughput(), '×'):>7}"
                  f"{_f(row.latency(), '×'):>7}"
                  f"{shown:>9}"
                  f"{_f(size, '×'):>8}  {row.note}")


def _f(x: float | None, unit: str = "") -> str:
    return "-" if x is None else f"{x:.2f}{unit}"


class Claims:
    """Each claim printed beside its figure; the tally makes the last line."""

    def __init__(self) -> None:
        self.held = self.total = 0

    def add(self, holds: bool | None, text: str) -> None:
        """`holds` None: the figure could not be measured (a row failed)."""
        self.total += 1
        self.held += bool(holds)
        mark = "holds" if holds else ("fails" if holds is not None else "n/a  ")
        print(f"  [{mark}] {text}", flush=True)

    @staticmethod
    def info(text: str) -> None:
        print(f"  [info ] {text}", flush=True)


def closest(rows: list[Row], target: float | None) -> Row | None:
    """The timed row whose measured latency ratio is nearest `target`."""
    timed = [r for r in rows if r.ok and r.latency() is not None]
    if not timed or target is None:
        return None
    return min(timed, key=lambda r: abs(r.latency() - target))  # type: ignore[operator]


def model_flops_ratio(report: dict[str, Any]) -> float | None:
    """Whole-model FLOPs after / before, from a low_rank report."""
    before, after = report.get("model_flops_before"), report.get("model_flops_after")
    return after / before if before and after is not None else None


def out_dir(model: str) -> Path:
    path = Path("runs/bench-family") / model
    path.mkdir(parents=True, exist_ok=True)
    return path
