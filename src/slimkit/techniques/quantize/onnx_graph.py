"""Small ONNX graph rewrites that quantizers need."""

from __future__ import annotations

from typing import Any


def gemm_to_matmul(model: Any) -> Any:
    """Rewrite Gemm with a constant weight as MatMul + Add.

    torch exports a Linear on 2-D input as Gemm, which MatMulNBits does not take; the rewrite
    gives the quantizer every linear layer, and changes nothing numerically.
    """
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 \
            and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T.copy()
        name = node.input[1] + "_matmul"
        graph.initializer.append(numpy_helper.from_array(w, name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_mm" if has_bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], name], [mm_out],
                                           name=node.name + "_MatMul"))
        if has_bias:
            nodes.append(onnx.helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]],
                                               name=node.name + "_Add"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return model


def fold_constant_quantize(model: Any) -> int:
    """Replace QuantizeLinear of constant weights by the int8 initializer it would compute.

    Exported QAT models quantize their float weights at run time (QuantizeLinear on an
    initializer); ONNX Runtime only recognises DequantizeLinear of an integer initializer as a
    quantized weight, so without this fold it runs the layers in float and keeps fp32 weights
    on disk. Returns how many nodes were folded.
    """
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # in topological order, so Identity chains resolve
        if node.op_type == "Constant" and node.attribute:
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    keep, folded = [], 0
    for node in graph.node:
        ins = list(node.input)
        if node.op_type != "QuantizeLinear" or len(ins) < 3 or not all(i in consts for i in ins):
            keep.append(node)
            continue
        x, scale, zero = consts[ins[0]], consts[ins[1]], consts[ins[2]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        info = np.iinfo(zero.dtype)
        q = np.clip(np.round(x / scale) + zero.astype(np.int32), info.min, info.max)
        graph.initializer.append(numpy_helper.from_array(q.astype(zero.dtype), node.output[0]))
        folded += 1
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = [i for i in graph.initializer if i.name not in used]
    for i in unused:
        graph.initializer.remove(i)
    return folded


def drop_dead_nodes(model: Any) -> int:
    """Remove nodes none of whose outputs is used, and initializers nothing reads.

    ONNX Runtime's quantizer folds a Clip or Relu into the range of the QuantizeLinear after
    it and leaves the Constant nodes that held the clip bounds behind; every session then logs
    one warning per orphan while it cleans them up. Returns how many nodes were removed."""
    graph = model.graph
    if any(a.g.node or a.graphs for n in graph.node for a in n.attribute):
        return 0  # subgraphs read outer names this scan does not see
    removed = 0
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
        removed += len(dead)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return removed
