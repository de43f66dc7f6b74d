"""`slimkit profile`: where a model's bytes, FLOPs and measured time go, layer by layer, on the
runtime it will serve on.

Compression pays where the time is, and the time is not always where the FLOPs are: an
embedding table holds half of a small encoder's bytes and almost none of its time, a fused
GELU can cost as much as a matmul. So both are measured here on the runtime itself: its
operator profiler on batches of the real data at the serving batch size, mapped back to the
modules of the network, beside the bytes and FLOPs of the same modules and the baseline speed
measured the way `slimkit run` measures it.
"""

from __future__ import annotations

import typing
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from slimkit.bench import BenchOptions, Target, run_benchmark
from slimkit.data import Dataset
from slimkit.errors import ConfigError, SlimkitError
from slimkit.machine import describe_machine
from slimkit.model import FileModel, Model, TorchModel
from slimkit.optimize.layers import (
    CONV_OPS,
    MATMUL_OPS,
    ROLES,
    ModelStats,
    OpStat,
    layer_grouping,
    onnx_stats,
    openvino_stats,
)
from slimkit.optimize.op_times import OpTimes, TimedOp, measure_ops
from slimkit.optimize.torch_layers import torch_stats
from slimkit.pipeline import Cache, build, model_key
from slimkit.runtimes import runtime_format

Family = Literal["encoder_transformer", "cnn", "mlp", "other"]
WARM_BATCHES = 2  # discarded: first runs allocate, pack weights and pick kernels
PROFILED_BATCHES = 3
BASELINE_KEYS = ("latency_ms", "throughput", "peak_rss_mb", "load_seconds", "runtime_info")


class LayerProfile(BaseModel):
    name: str  # module path at the grouping depth, or the op type for unmapped nodes
    kinds: list[str]  # operator types in it, most time first ("MatMul", "Conv", "Gather", ...)
    params: int
    bytes: int  # weight bytes as stored
    flops: float  # per example at the data's shapes (2 x MACs)
    time_ms: float  # measured operator time per batch on the runtime
    time_share: float  # time_ms / sum over layers


class Profile(BaseModel):
    model: str  # what the user named
    runtime: str
    family: Family
    source_format: str  # torch / hf / onnx / openvino (what was loaded)
    task: str
    has_labels: bool
    examples: int
    input_shapes: dict[str, list[int]]  # per example, from the data
    batch_size: int
    threads: int
    params: int
    bytes: int
    flops: float
    layers: list[LayerProfile]  # most time first
    op_time_share: dict[str, float]  # share of measured time by operator type, sums to 1
    kind_bytes_share: dict[str, float]  # share of weight bytes by role
    kind_flops_share: dict[str, float]  # same roles, by FLOPs
    measured_ms: float  # sum of operator times per profiled batch
    wall_ms: float  # wall time per profiled batch, same runs
    baseline: dict[str, Any]  # latency_ms, throughput, peak_rss_mb, load_seconds, runtime_info
    machine: dict[str, Any]  # slimkit.machine.describe_machine()


def profile(model: Model, data: Dataset, runtime: str, *, threads: int = 2,
            batch_size: int = 32, cache: Cache | None = None, bench: BenchOptions | None = None,
            task: str = "generic") -> Profile:
    """Profile `model` on `runtime` with `data`: per layer its parameters, stored bytes, FLOPs
    per example and measured operator time, with the baseline speed and the machine."""
    from slimkit.evaluate.evaluator import Task

    if task not in typing.get_args(Task):
        raise ConfigError(f"task {task!r}: one of {', '.join(typing.get_args(Task))}")
    if len(data) == 0:
        raise ConfigError(f"{data.name}: no examples to profile with")
    opts = (bench or BenchOptions(rounds=3)).model_copy(
        update={"threads": threads, "batch_size": batch_size})
    built = build(model, model_key(model), [], runtime_format(runtime), cache or Cache(),
                  threads=threads)
    baseline = _baseline(built.path, runtime, data, opts)
    shapes = {k: list(v.shape[1:]) for k, v in data.inputs.items()}
    stats = _static(built.model, shapes, data, _known_modules(model), model)
    batches = serving_batches(data, batch_size, WARM_BATCHES + PROFILED_BATCHES)
    times = measure_ops(runtime, built.model, batches, WARM_BATCHES, threads, stats.path_of)
    layers = build_layers(stats, times)
    return Profile(
        model=_model_name(model), runtime=runtime,
        family=model_family(stats, data), source_format=_source_format(model), task=task,
        has_labels=data.labels is not None, examples=len(data), input_shapes=shapes,
        batch_size=batch_size, threads=threads,
        params=sum(op.params for op in stats.ops), bytes=sum(op.bytes for op in stats.ops),
        flops=sum(op.flops for op in stats.ops), layers=layers,
        op_time_share=_shares({op.op_type: op.ms for op in _merged(times.ops)}),
        kind_bytes_share=role_shares(stats.ops, "bytes"),
        kind_flops_share=role_shares(stats.ops, "flops"),
        measured_ms=times.measured_ms, wall_ms=times.wall_ms,
        baseline=baseline, machine=describe_machine(),
    )


def _baseline(artifact: Path, runtime: str, data: Dataset, opts: BenchOptions) -> dict[str, Any]:
    """Latency, throughput and memory measured as `slimkit run` measures a candidate: fresh
    processes, interleaved rounds."""
    measured = run_benchmark([Target("baseline", artifact, runtime, trust_code=True)], data,
                             opts)["baseline"]
    if "error" in measured:
        raise SlimkitError(f"benchmark on {runtime} failed: {measured['error']}")
    return {k: measured[k] for k in BASELINE_KEYS if k in measured}


def _static(model: Model, shapes: dict[str, list[int]], data: Dataset,
            known: frozenset[str] | None, source: Model) -> ModelStats:
    """The served model's operators. An IR converted from an ONNX source keeps the source's
    node names but not their metadata, so the source is read for the names alone."""
    if isinstance(model, TorchModel):
        return torch_stats(model.module, data.slice(0, 1), [i.name for i in model.inputs])
    if model.format == "onnx":
        return onnx_stats(model.path, shapes, known)
    names = None
    if isinstance(source, FileModel) and source.format == "onnx":
        names = onnx_stats(source.path, shapes, known).path_of
    return openvino_stats(model.path, shapes, known, names)


def _known_modules(model: Model) -> frozenset[str] | None:
    """A torch source's module names settle how an exported node name reads back."""
    if isinstance(model, TorchModel):
        return frozenset(n for n, _ in model.module.named_modules())
    return None


def serving_batches(data: Dataset, batch_size: int, count: int) -> list[dict[str, np.ndarray]]:
    """`count` consecutive batches of the real data, wrapping round (and repeating rows) when
    there is less data than that: the runtime sees the serving shape either way."""
    n = len(data)
    out = []
    for k in range(count):
        rows = (np.arange(batch_size) + k * batch_size) % n
        out.append({name: np.ascontiguousarray(v[rows]) for name, v in data.inputs.items()})
    return out


def _merged(ops: list[TimedOp]) -> list[TimedOp]:
    acc: dict[str, float] = defaultdict(float)
    for op in ops:
        acc[op.op_type] += op.ms
    return [TimedOp(None, k, v) for k, v in acc.items()]


def _shares(values: dict[str, float]) -> dict[str, float]:
    total = sum(values.values())
    if total <= 0:
        return {}
    ordered = sorted(values.items(), key=lambda kv: -kv[1])
    return {k: v / total for k, v in ordered}


def role_shares(ops: list[OpStat], measure: Literal["bytes", "flops"]) -> dict[str, float]:
    """Every role present as a key, zero included, so a reader need not guess what a
    missing key means; empty when the model has no weights (or no FLOPs) at all."""
    values = {role: 0.0 for role in ROLES}
    for op in ops:
        values[op.role if op.role in values else "other"] += float(getattr(op, measure))
    total = sum(values.values())
    return {k: v / total for k, v in values.items()} if total > 0 else {}


def build_layers(stats: ModelStats, times: OpTimes) -> list[LayerProfile]:
    """Static operators and timed ones, grouped by the same function of their module path;
    a layer may hold time and no weights (a runtime's layout reorder) or the reverse."""
    layer = layer_grouping(stats.ops, (t.path for t in times.ops))
    acc: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "params": 0, "bytes": 0, "flops": 0.0, "time": 0.0,
        "timed": defaultdict(float), "static": defaultdict(float)})
    for op in stats.ops:
        a = acc[layer(op.path, op.op_type)]
        a["params"] += op.params
        a["bytes"] += op.bytes
        a["flops"] += op.flops
        if op.flops or op.bytes:
            a["static"][op.op_type] += op.flops + op.bytes
    for t in times.ops:
        a = acc[layer(t.path, t.op_type)]
        a["time"] += t.ms
        a["timed"][t.op_type] += t.ms
    total = sum(a["time"] for a in acc.values())
    layers = []
    for name, a in acc.items():
        if not (a["time"] or a["bytes"] or a["flops"] or a["params"]):
            continue  # a graph's bookkeeping (Result, a shape Gather): nothing to report
        # what ran, as the runtime names it; the graph's names only where nothing was timed
        source = a["timed"] or a["static"]
        kinds = sorted(source, key=lambda k: -source[k])
        layers.append(LayerProfile(name=name, kinds=kinds, params=a["params"],
                                   bytes=a["bytes"], flops=a["flops"], time_ms=a["time"],
                                   time_share=a["time"] / total if total > 0 else 0.0))
    layers.sort(key=lambda lp: (-lp.time_ms, -lp.bytes, lp.name))
    return layers


def model_family(stats: ModelStats, data: Dataset) -> Family:
    """An encoder transformer has attention, LayerNorm and token ids for input; a CNN spends
    most FLOPs in convolutions; an MLP is matrix products without either."""
    tokens = any(np.issubdtype(v.dtype, np.integer) for v in data.inputs.values())
    if stats.attention and stats.layer_norm and tokens:
        return "encoder_transformer"
    flops = sum(op.flops for op in stats.ops)
    conv = sum(op.flops for op in stats.ops if op.op_type in CONV_OPS or op.role == "conv")
    if flops > 0 and conv > 0.5 * flops:
        return "cnn"
    matmul = any(op.op_type in MATMUL_OPS or op.role == "linear" for op in stats.ops)
    if matmul and not stats.attention and conv == 0:
        return "mlp"
    return "other"


def _model_name(model: Model) -> str:
    """What the user typed (a factory, a file), so a profile names the model as they do."""
    if isinstance(model, FileModel):
        return str(model.path)
    return model.ref.source if model.ref is not None else type(model.module).__name__


def _source_format(model: Model) -> str:
    if isinstance(model, TorchModel) and model.ref is not None:
        return model.ref.resolved_format()
    return model.format
