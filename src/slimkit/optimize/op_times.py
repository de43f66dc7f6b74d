"""Time per operator, as each runtime measures it, mapped to module paths.

Each runtime has its own profiler, and each names what it ran after its own fusions: ONNX
Runtime's JSON trace names optimized-graph nodes (`BiasGelu_token_3`,
`/stem/stem.0/stem.0.2/Relu_output_0_nchwc`), OpenVINO's profiling info names nodes of the
compiled graph and lists the IR operators fused into each, and torch names no operator after
a module at all, only aten operators (`aten::linear`). Each is read here into the same list of
(module path, operator type, ms per batch), so a layer means the same thing on every runtime.

Profiling runs in this process, after a few warm batches, on batches of the real data at the
serving batch size; the per-batch wall time of the same runs comes back beside the sum of the
operator times, and the runtime's own figure for a whole run (ONNX Runtime's `model_run`,
OpenVINO's request latency, the root module's range in torch), which is what the operator
times add up to.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.errors import TechniqueError
from slimkit.model import FileModel, Model, TorchModel

PathOf = Callable[[str], str | None]
RANGE = "slimkit.module::"  # the profiler range each torch module's forward runs in


@dataclass
class TimedOp:
    path: str | None  # module path; "" at the top level; None when nothing names it
    op_type: str  # as the runtime names it: ONNX Runtime's kernels, OpenVINO's layer types
    ms: float  # per batch


@dataclass
class OpTimes:
    ops: list[TimedOp]
    measured_ms: float  # sum of operator times per batch
    runtime_ms: float  # the runtime's own time for a whole run, per batch
    wall_ms: float  # the caller's clock around each run, per batch
    batches: int


def measure_ops(runtime: str, model: Model, batches: list[dict[str, np.ndarray]], warm: int,
                threads: int, path_of: PathOf) -> OpTimes:
    """Operator times on `runtime` over `batches[warm:]`, after `batches[:warm]` warmed it."""
    if len(batches) <= warm:
        raise ValueError("no batch left to profile after the warm-up")
    if runtime == "onnxruntime" and isinstance(model, FileModel):
        return onnxruntime_times(model, batches, warm, threads, path_of)
    if runtime == "openvino" and isinstance(model, FileModel):
        return openvino_times(model, batches, warm, threads, path_of)
    if runtime == "torch" and isinstance(model, TorchModel):
        return torch_times(model, batches, warm, threads)
    raise TechniqueError(f"no operator profiler for {runtime} with a {model.format} model")


def _collect(acc: dict[tuple[str | None, str], float], runtime_ms: float,
             walls: list[float]) -> OpTimes:
    """Per-batch figures; `acc` is already per batch, so the sum is the measured time."""
    ops = [TimedOp(path, op, ms) for (path, op), ms in acc.items()]
    return OpTimes(ops, sum(acc.values()), runtime_ms, float(np.mean(walls)), len(walls))


def onnxruntime_times(model: FileModel, batches: list[dict[str, np.ndarray]], warm: int,
                      threads: int, path_of: PathOf) -> OpTimes:
    """ONNX Runtime's own profiler, with the session options its runtime serves with.

    The optimized graph is written beside the trace: a fused node's name may say nothing
    (`BiasGelu_token_3`), but its inputs name the operators that feed it."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="slimkit-profile-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"

        def session(save: bool) -> ort.InferenceSession:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "trace")
            so.log_severity_level = 3
            if save:
                so.optimized_model_filepath = str(optimized)
            return ort.InferenceSession(str(model.path), so, providers=["CPUExecutionProvider"])

        try:
            sess = session(save=True)
        except Exception:  # a graph too large to write back: names alone then
            sess = session(save=False)
        names = [i.name for i in sess.get_inputs()]
        walls = []
        for k, feeds in enumerate(batches):
            t0 = time.perf_counter()
            sess.run(None, {n: feeds[n] for n in names})
            if k >= warm:
                walls.append((time.perf_counter() - t0) * 1000)
        trace = json.loads(Path(sess.end_profiling()).read_text())
        fused = _optimized_paths(optimized, path_of) if optimized.is_file() else {}
    return _ort_times(trace, len(walls), walls, lambda n: fused[n] if n in fused else path_of(n))


def _optimized_paths(path: Path, path_of: PathOf) -> dict[str, str | None]:
    """Each node of ONNX Runtime's optimized graph: the path its own name gives; else that of
    the tensor its name was made from (a layout transform names the fused node after the
    output it replaces: `relu_1_nchwc`); else its outputs' (a ReorderOutput restores a
    tensor of the original graph); else its first input's whose producer has one."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    paths: dict[str, str | None] = {}
    made: dict[str, str | None] = {}
    for node in proto.graph.node:
        found = _name_path(node.name, path_of) if node.name else None
        for t in [*node.output, *node.input]:
            if found is not None:
                break
            if t:
                found = made[t] if t in made else path_of(t)
        paths[node.name] = found
        for t in node.output:
            made[t] = found
    return paths


def _name_path(name: str, path_of: PathOf) -> str | None:
    """The name, then the name with its suffixes cut one by one (`relu_1_nchwc`, `relu_1`)."""
    parts = name.split("_")
    for n in range(len(parts), 0, -1):
        found = path_of("_".join(parts[:n]))
        if found is not None:
            return found
    return None


def _ort_times(trace: list[dict[str, Any]], n: int, walls: list[float],
               path_of: PathOf) -> OpTimes:
    """Node events inside the last `n` runs; the warm runs before them are in the same trace."""
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"][-n:]
    windows = [(r["ts"], r["ts"] + r["dur"]) for r in runs]
    acc: dict[tuple[str | None, str], float] = defaultdict(float)
    for e in trace:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if not any(a <= e["ts"] <= b for a, b in windows):
            continue
        name = e["name"].removesuffix("_kernel_time")
        op = e.get("args", {}).get("op_name") or name
        acc[(path_of(name), op)] += e["dur"] / 1000 / n
    return _collect(acc, sum(r["dur"] for r in runs) / 1000 / n, walls)


def openvino_times(model: FileModel, batches: list[dict[str, np.ndarray]], warm: int,
                   threads: int, path_of: PathOf) -> OpTimes:
    """OpenVINO's per-node counters (PERF_COUNT) with the settings its runtime serves with.

    The CPU plugin reports each node's mean over every inference since compilation, not the
    last one (read after each run, the sum stayed at 10 ms while the request latency went from
    8 to 17 ms), so the profiled runs' own times are the totals after all runs less the totals
    after the warm ones."""
    import openvino as ov

    config = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": model.session_options.get("inference_precision", "f32"),
        "PERF_COUNT": True,
    }
    compiled = ov.Core().compile_model(str(model.path), "CPU", config)
    paths = _exec_paths(compiled.get_runtime_model(), path_of)
    request = compiled.create_infer_request()
    fed = batches[0] if batches else {}  # an input may have gained names in compiling
    names = [next((n for n in sorted(p.get_names()) if n in fed), p.get_any_name())
             for p in compiled.inputs]
    walls, latency = [], 0.0
    warm_means: dict[tuple[str, str], float] = {}
    for k, feeds in enumerate(batches):
        if k == warm and warm:
            warm_means = _ov_means(request)
        t0 = time.perf_counter()
        request.infer({n: feeds[n] for n in names})
        if k >= warm:
            walls.append((time.perf_counter() - t0) * 1000)
            latency += request.latency
    n = len(walls)
    acc: dict[tuple[str | None, str], float] = defaultdict(float)
    for (node, kind), mean in _ov_means(request).items():
        ms = (mean * len(batches) - warm_means.get((node, kind), 0.0) * warm) / n
        acc[(paths.get(node), kind)] += max(ms, 0.0)
    return _collect(acc, latency / n, walls)


def _ov_means(request: Any) -> dict[tuple[str, str], float]:
    """Each executed node's mean time in ms so far, by (name, layer type)."""
    import openvino as ov

    executed = ov.ProfilingInfo.Status.EXECUTED
    return {(info.node_name, info.node_type): info.real_time.total_seconds() * 1000
            for info in request.profiling_info if info.status == executed}


def _exec_paths(runtime_model: Any, path_of: PathOf) -> dict[str, str | None]:
    """Each compiled node: the path of the first IR operator fused into it that has one,
    else of its own name, else of its first input that has one (a layout Reorder, a node
    the plugin made)."""
    paths: dict[str, str | None] = {}
    for op in runtime_model.get_ordered_ops():
        rt = op.get_rt_info()
        fused = rt["originalLayersNames"].astype(str).split(",") \
            if "originalLayersNames" in rt else []
        name = op.get_friendly_name()
        found = next((p for p in (path_of(o) for o in fused if o) if p is not None), None)
        if found is None:
            found = path_of(name)
        if found is None:
            found = next((paths[i.get_node().get_friendly_name()] for i in op.input_values()
                          if paths.get(i.get_node().get_friendly_name()) is not None), None)
        paths[name] = found
    return paths


def torch_times(model: TorchModel, batches: list[dict[str, np.ndarray]], warm: int,
                threads: int) -> OpTimes:
    """torch.profiler, with each module's forward inside a named range (hooks open and close
    it), so each top-level aten operator belongs to the innermost module it ran in; an
    operator a module runs itself (attention's matmuls in a self-attention module) is that
    module's, which timing only the leaf modules would lose."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    module = model.module
    names = {m: n for n, m in module.named_modules()}
    open_ranges: list[Any] = []

    def enter(m: Any, _args: Any) -> None:
        r = record_function(RANGE + names.get(m, "?"))
        r.__enter__()
        open_ranges.append(r)

    def leave(m: Any, _args: Any, _out: Any) -> None:
        open_ranges.pop().__exit__(None, None, None)

    handles = [h for m in names for h in (m.register_forward_pre_hook(enter),
                                          m.register_forward_hook(leave))]
    args = [tuple(torch.from_numpy(np.ascontiguousarray(b[i.name])) for i in model.inputs)
            for b in batches]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    walls = []
    try:
        with torch.inference_mode():
            for a in args[:warm]:
                module(*a)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for a in args[warm:]:
                    t0 = time.perf_counter()
                    module(*a)
                    walls.append((time.perf_counter() - t0) * 1000)
    finally:
        for h in handles:
            h.remove()
        torch.set_num_threads(previous)
    return _torch_times(prof.events(), walls)


def _torch_times(events: Any, walls: list[float]) -> OpTimes:
    n = len(walls)
    acc: dict[tuple[str | None, str], float] = defaultdict(float)
    runtime_us = 0.0
    for e in events:
        parent = e.cpu_parent
        if e.name.startswith(RANGE):
            if parent is None:
                runtime_us += e.cpu_time_total
            continue
        if parent is not None and not parent.name.startswith(RANGE):
            continue  # inside another operator, whose time holds it
        path = parent.name[len(RANGE):] if parent is not None else None
        acc[(path, e.name)] += e.cpu_time_total / 1000 / n
    return _collect(acc, runtime_us / 1000 / n, walls)
