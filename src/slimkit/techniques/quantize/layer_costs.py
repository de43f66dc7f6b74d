"""What keeping a layer in float costs: its share of the float model's run time, as the
runtime's own profiler measures it (`slimkit.optimize.op_times`).

An accuracy-aware search that ranks layers by sensitivity alone may keep a costly layer in
float where a cheap one, nearly as sensitive, would have done; with each layer's time share
as its cost, the allocator's damage-per-cost rule makes that trade. A few batches suffice: the
shares only order layers. They are profiled in a few short rounds and each layer keeps its
median, since a machine busy with other work stalls a run now and then, and one stalled kernel
would otherwise look like the costliest layer. Where no profile can be taken, every layer
costs the same and the ranking is by sensitivity alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimkit.dataset import Dataset
from slimkit.model import FileModel, TorchModel
from slimkit.optimize.op_times import OpTimes

WARM = 1
PROFILED = 2
ROUNDS = 3
BATCH = 32
# Operators an ONNX Runtime layer's kernel absorbs (an activation, a folded BatchNorm, a bias
# Add): their time, and the fused kernel named after them, belong to the layer they follow.
_FOLLOWERS = {"Relu", "Clip", "BatchNormalization", "Sigmoid", "Tanh", "LeakyRelu",
              "HardSigmoid", "HardSwish", "Gelu", "Add", "Mul", "Sub", "Div"}


@dataclass(frozen=True)
class LayerCosts:
    shares: dict[str, float]  # per layer, its share of the float model's run time
    source: str  # how they were measured, or why every layer costs the same
    measured: bool


def equal(layers: list[str], why: str) -> LayerCosts:
    return LayerCosts(dict.fromkeys(layers, 1.0 / max(len(layers), 1)), f"equal: {why}", False)


def profile_batches(data: Dataset) -> list[dict[str, np.ndarray]]:
    """WARM + PROFILED batches of real rows, smaller ones where the data is short."""
    n = WARM + PROFILED
    size = max(1, min(BATCH, len(data) // n))
    return [data.slice((k * size) % len(data), (k * size) % len(data) + size) for k in range(n)]


def shares_of(rounds: list[OpTimes], layers: list[str], what: str) -> LayerCosts:
    """Each layer's median time over the rounds as a share of the median total; a layer the
    profile does not name (its kernel fused with another's) gets the mean share of those it
    does."""
    per = {n: [0.0] * len(rounds) for n in layers}
    for k, times in enumerate(rounds):
        for op in times.ops:
            if op.path in per:
                per[op.path][k] += op.ms
    total = float(np.median([t.measured_ms for t in rounds]))
    medians = {n: float(np.median(ms)) for n, ms in per.items()}
    found = {n: ms / total for n, ms in medians.items() if ms > 0} if total > 0 else {}
    if not found:
        return equal(layers, f"the {what} profile named none of the layers")
    mean = float(np.mean(list(found.values())))
    missing = [n for n in layers if n not in found]
    source = (f"{what} profile of the float model, median of {len(rounds)} rounds of "
              f"{rounds[0].batches} batches")
    if missing:
        source += f"; {len(missing)} layer(s) not in it given the mean share"
    return LayerCosts({n: found.get(n, mean) for n in layers}, source, True)


def onnx_costs(path: Path, layers: list[str], data: Dataset, threads: int) -> LayerCosts:
    from slimkit.optimize.op_times import onnxruntime_times

    owner = _owners(path, set(layers))
    batches = profile_batches(data)
    try:
        rounds = [onnxruntime_times(FileModel("onnx", path, []), batches, WARM, threads,
                                    owner.get) for _ in range(ROUNDS)]
    except Exception as e:  # a profile is a refinement; the search works without it
        return equal(layers, f"ONNX Runtime profiling failed ({type(e).__name__})")
    return shares_of(rounds, layers, "ONNX Runtime")


def torch_costs(model: TorchModel, layers: list[str], data: Dataset,
                threads: int) -> LayerCosts:
    from slimkit.optimize.op_times import torch_times

    batches = profile_batches(data)
    try:
        rounds = [torch_times(model, batches, WARM, threads) for _ in range(ROUNDS)]
    except Exception as e:
        return equal(layers, f"torch profiling failed ({type(e).__name__})")
    return shares_of(rounds, layers, "torch")


def _owners(path: Path, layers: set[str]) -> dict[str, str]:
    """Node and tensor names of the ONNX graph, each mapped to the layer that owns it: a
    layer owns itself, its outputs, and the chain of followers fed by it alone."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    consts = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output}
    made: dict[str, str] = {}
    owner: dict[str, str] = {}
    for node in graph.node:
        found: str | None = node.name if node.name in layers else None
        if found is None and node.op_type in _FOLLOWERS:
            fed = [t for t in node.input if t and t not in consts]
            found = made.get(fed[0]) if len(fed) == 1 else None
        if found is not None:
            owner[node.name] = found
            for t in node.output:
                made[t] = found
    return {**made, **owner}

