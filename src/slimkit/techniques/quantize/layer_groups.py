"""What "keep this layer in float" has to cover when more than layers are quantized.

static_int8 quantizes a CNN's chain between convolutions too (activations, residual Adds,
pooling: `conv_chain`). An accuracy-aware search that excluded only the convolutions left
those quantized: on MobileNetV2 every one of its 53 layers was kept in float and the drop on
the search rows was still 13.5 points. So each layer is a group: the layer and the quantized
operators that follow it up to the next layer, so that keeping every group in float leaves
nothing quantized, and a layer's sensitivity is that of its part of the chain.
"""

from __future__ import annotations

from pathlib import Path


def layer_groups(path: Path, layers: list[str], op_types: list[str]) -> dict[str, list[str]]:
    """Each layer's node name with the names of the quantized operators it owns: those whose
    first input that any layer reaches comes from it (an operator fed by two, such as a
    residual Add, joins the first). An operator that no layer feeds (a Pad on the model's
    input) joins the group of whatever reads its output, or else the first layer's."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    groups = {n: [n] for n in layers}
    owner: dict[str, str] = {}  # tensor name -> the layer whose group made it
    orphans: dict[str, list[str]] = {}  # tensor name -> ungrouped operators upstream of it
    for node in graph.node:
        inputs = [t for t in node.input if t]
        group = node.name if node.name in groups else next(
            (owner[t] for t in inputs if t in owner), None)
        upstream = [o for t in inputs for o in orphans.get(t, [])]
        quantized = node.op_type in op_types and node.name not in groups
        if group is None:
            carried = upstream + ([node.name] if quantized else [])
            for t in node.output:
                orphans[t] = carried
            continue
        groups[group] += [o for o in upstream if o not in groups[group]]
        if quantized:
            groups[group].append(node.name)
        for t in node.output:
            owner[t] = group
    grouped = {m for names in groups.values() for m in names}
    left = [o for names in orphans.values() for o in names if o not in grouped]
    if layers and left:
        groups[layers[0]] += list(dict.fromkeys(left))
    return groups


def expand(groups: dict[str, list[str]], names: list[str]) -> list[str]:
    """The node names of the given layers' groups; a name that is not a layer stays as it is."""
    return list(dict.fromkeys(m for n in names for m in groups.get(n, [n])))
