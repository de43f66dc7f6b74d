"""Per-module statistics of an eager torch model: its parameters, and the FLOPs of each aten
operator that ran in each module, counted by torch's own FlopCounterMode, in the same
`OpStat` records the exported graphs give (`slimkit.optimize.layers`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.optimize.layers import ModelStats, OpStat


def torch_stats(module: Any, example: dict[str, np.ndarray], names: list[str]) -> ModelStats:
    """Per module of an eager model: its parameters, and the FLOPs of each aten operator that
    ran in it and in none of its sub-modules, at one example."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def sdpa_cpu(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                 out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n][:1])) for n in names)
    custom = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa_cpu}
    with torch.inference_mode(), Record(), FlopCounterMode(display=False,
                                                           custom_mapping=custom) as counter:
        module(*args)
    modules = dict(module.named_modules())
    ops = _torch_flops(counter.get_flop_counts(), type(module).__name__, modules)
    for name, p in module.named_parameters():
        owner = name.rpartition(".")[0]
        ops.append(OpStat(owner, type(modules[owner]).__name__, p.numel(),
                          p.numel() * p.element_size(), role=_torch_role(modules[owner])))
    attention = any("scaled_dot_product" in s for s in seen) or _softmax_between(seen)
    layer_norm = any(s in ("native_layer_norm", "layer_norm", "rms_norm", "_fused_rms_norm")
                     for s in seen)
    return ModelStats(ops, attention, layer_norm, lambda n: n if n in modules else None)


def _softmax_between(seen: list[str]) -> bool:
    """Attention written out by hand (scores, softmax, weighted sum) rather than through
    scaled_dot_product_attention: a softmax with a matrix product shortly before and after."""
    products = {"bmm", "mm", "matmul", "baddbmm"}
    for k, s in enumerate(seen):
        if s == "_softmax" and products & set(seen[max(0, k - 8):k]) and (
                products & set(seen[k + 1:k + 9])):
            return True
    return False


def _torch_flops(counts: dict[str, dict[Any, int]], root: str,
                 modules: dict[str, Any]) -> list[OpStat]:
    """FlopCounterMode counts each module with its sub-modules; what a module did itself is
    its count less that of the nearest counted modules inside it."""
    totals: dict[str, dict[str, float]] = {}
    for key, per_op in counts.items():
        if key == root or key.startswith(root + "."):
            totals[key[len(root) + 1:]] = {"aten::" + str(op).rpartition(".")[2]: float(v)
                                           for op, v in per_op.items()}
    own = {p: dict(v) for p, v in totals.items()}
    for path, per_op in totals.items():
        parent = _nearest(path, totals)
        if parent is not None:
            for op, v in per_op.items():
                own[parent][op] = own[parent].get(op, 0.0) - v
    ops = []
    for path, per_op in own.items():
        for op, flops in per_op.items():
            if flops > 0:
                m = modules.get(path)
                role = "conv" if op == "aten::convolution" else _torch_role(m) if m is not None \
                    else "other"
                ops.append(OpStat(path, op, flops=flops,
                                  role=role if role in ("linear", "conv") else "other"))
    return ops


def _nearest(path: str, paths: dict[str, Any]) -> str | None:
    if path == "":
        return None
    atoms = path.split(".")
    for n in range(len(atoms) - 1, -1, -1):
        candidate = ".".join(atoms[:n])
        if candidate in paths:
            return candidate
    return None


def _torch_role(m: Any) -> str:
    """By class, with names as a fallback: models define their own norms (`T5LayerNorm`)
    and linear layers (GPT-2's `Conv1D` is a matmul)."""
    from torch import nn

    name = type(m).__name__
    if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(m, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(m, nn.Linear) or "Linear" in name or name == "Conv1D":
        return "linear"
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or (
            name.endswith("Norm")):
        return "norm"
    return "other"
