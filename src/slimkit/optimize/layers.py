"""Per operator of the served model: its module path, the weights it holds (as stored), its
FLOPs per example at the data's shapes, and the role of its weights; and the grouping of
module paths into the layers a profile reports.

A runtime reports time per operator under its own names; a reader wants it per module of the
network they wrote. The TorchScript exporter names each node after the module scopes it ran
in (`/encoder/encoder/layer.0/attention/self/query/MatMul`), the dynamo exporter records the
scopes as node metadata (`pkg.torch.onnx.name_scopes`), and OpenVINO keeps the ONNX node names
as friendly names; one parser maps all three back to module paths. An operator whose name says
nothing (fused or made by a converter: `BiasGelu_token_3`, `MVN_3067`) takes the path of the
operator that feeds it, so a fused bias-GELU or a decomposed LayerNorm lands in the module
its input came from. Nothing is dropped: what maps to no module is reported under its
operator type. An eager torch model is counted by `slimkit.optimize.torch_layers` into the
same records.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("embedding", "linear", "conv", "norm", "other")
MATMUL_OPS = frozenset({"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul",
                        "MatMulNBits", "FullyConnected", "DynamicQuantizeMatMul",
                        "MatMulIntegerToFloat", "FusedGemm"})
CONV_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "FusedConv",
                      "Convolution", "GroupConvolution", "ConvolutionBackpropData",
                      "GroupConvolutionBackpropData"})
LAYER_NORM_OPS = frozenset({"LayerNormalization", "SkipLayerNormalization", "MVN", "RMS",
                            "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
                            "RMSNormalization"})
NORM_OPS = LAYER_NORM_OPS | {"BatchNormalization", "InstanceNormalization", "GroupNormalization",
                             "BatchNormInference", "NormalizeL2"}
ATTENTION_OPS = frozenset({"ScaledDotProductAttention", "Attention", "MultiHeadAttention"})
# Operators through which a weight's role is read from the operator that made the activation
# it meets: a bias Add after a MatMul is the linear layer's, a LayerNorm's scale after MVN the
# norm's.
PASS_OPS = frozenset({"Add", "Mul", "Sub", "Div", "Multiply", "Subtract", "Divide", "Where",
                      "Select", "Cast", "Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
                      "Identity", "DequantizeLinear", "QuantizeLinear"})
# ONNX element types that hold weights, with their bits; int64/int32/bool initializers are
# shapes and indices, not parameters.
ONNX_WEIGHT_BITS = {1: 32, 2: 8, 3: 8, 10: 16, 11: 64, 16: 16, 17: 8, 18: 8, 19: 8, 20: 8,
                    21: 4, 22: 4, 23: 4}
OV_WEIGHT_TYPES = frozenset({"f64", "f32", "f16", "bf16", "i8", "u8", "i4", "u4", "nf4",
                             "f8e4m3", "f8e5m2", "f4e2m1", "u2", "u1"})
# A group is split into its sub-modules when it holds more than this share of the model's
# FLOPs or weight bytes: one transformer layer of six (17 %) splits into attention, MLP and
# output; its attention (6 %) does not.
SPLIT_SHARE = 0.08
# ... and only when sub-modules with children of their own hold nearly all of it, so a block
# of conv, norm and activation stays one layer instead of becoming three single operators.
CONTAINED = 0.9


@dataclass
class OpStat:
    """One operator of the served model, or for torch one module's share of one aten op."""

    path: str | None  # module path; "" at the model's top level; None when nothing names it
    op_type: str
    params: int = 0
    bytes: int = 0
    flops: float = 0.0  # per example, 2 x multiply-accumulates
    role: str = "other"


@dataclass
class ModelStats:
    ops: list[OpStat]
    attention: bool  # a Softmax between two MatMuls, or an attention operator
    layer_norm: bool
    # A runtime's operator or tensor name -> module path, with the fallbacks the graph knows.
    path_of: Callable[[str], str | None]


@functools.cache
def _operator_names() -> frozenset[str]:
    import onnx

    names = {s.name for s in onnx.defs.get_all_schemas_with_history()}
    return frozenset(names | MATMUL_OPS | CONV_OPS | NORM_OPS | ATTENTION_OPS
                     | {"BiasGelu", "FastGelu", "QuickGelu", "Gelu", "WithoutBiases"})


def _names_operator(segment: str) -> bool:
    """`MatMul_1`, `Relu_output_0_nchwc`: an exporter's last segment, or a runtime's suffix to
    it, starts with the operator type; module names rarely are operator types."""
    return segment.split("_")[0] in _operator_names()


def scope_path(name: str, known: frozenset[str] | None = None) -> str | None:
    """The module path a TorchScript-exported node name spells, "" for the top level, None
    when the name is not of that form.

    Each scope segment is a module's name from its last non-numeric atom on (`layer.0`,
    `attention`, `stem.0.0`), so the full path is rebuilt by overlapping each segment with the
    path so far; `known` (the torch model's module names) settles the rare ambiguous case."""
    if not name.startswith("/"):
        return None
    scopes = []
    for segment in name.split("/")[1:-1]:
        if not segment or _names_operator(segment):
            break
        scopes.append(segment)
    path: list[str] = []
    for segment in scopes:
        path = _extend(path, segment.split("."), known)
    return ".".join(path)


def _extend(path: list[str], atoms: list[str], known: frozenset[str] | None) -> list[str]:
    """The longest overlap first: a Sequential's child `stem.0` inside `stem` is `stem.0`,
    while `encoder` inside `encoder` (a model wrapping a model) can only be `encoder.encoder`,
    as a segment always adds at least its last atom."""
    options = [path + atoms[k:] for k in range(min(len(atoms) - 1, len(path)), -1, -1)
               if path[len(path) - k:] == atoms[:k]]
    if known:
        for option in options:
            if ".".join(option) in known:
                return option
    return options[0]


def _dims_product(shape: Sequence[int] | None) -> int:
    """Unknown dimensions (-1) count as 1: a lower bound rather than a guess."""
    return math.prod(max(int(d), 1) for d in shape) if shape else 0


@dataclass
class _Node:
    name: str
    op: str
    inputs: list[int] = field(default_factory=list)
    const: bool = False  # a weight, or computed from weights alone
    params: int = 0
    bytes: int = 0
    flops: float = 0.0
    meta_path: str | None = None
    path: str | None = None


class _Graph:
    """The operators of an ONNX or OpenVINO model, in topological order, reduced to what a
    profile needs; both formats are read into it so that paths, weights and roles are
    worked out once."""

    def __init__(self, known: frozenset[str] | None,
                 names: Callable[[str], str | None] | None = None) -> None:
        self.nodes: list[_Node] = []
        self.by_name: dict[str, int] = {}
        self.tensors: dict[str, int] = {}
        self.known = known
        self.names = names

    def _named(self, name: str) -> str | None:
        found = scope_path(name, self.known)
        return self.names(name) if found is None and self.names is not None else found

    def add(self, node: _Node, outputs: Iterable[str] = ()) -> int:
        k = len(self.nodes)
        self.nodes.append(node)
        self.by_name.setdefault(node.name, k)
        for t in outputs:
            self.tensors[t] = k
        return k

    def path_of(self, name: str) -> str | None:
        k = self.by_name.get(name, self.tensors.get(name))
        if k is not None and not self.nodes[k].const:
            return self.nodes[k].path
        return self._named(name)

    def finish(self) -> ModelStats:
        nodes = self.nodes
        consumers: list[list[int]] = [[] for _ in nodes]
        for k, n in enumerate(nodes):
            for i in n.inputs:
                consumers[i].append(k)
            if not n.const and n.inputs and all(nodes[i].const for i in n.inputs):
                n.const = True
        for n in nodes:
            if n.const or n.op == "Parameter":
                continue
            n.path = n.meta_path if n.meta_path is not None else self._named(n.name)
            if n.path is None:
                n.path = next((nodes[i].path for i in n.inputs
                               if not nodes[i].const and nodes[i].path is not None), None)
        for k, n in enumerate(nodes):
            if n.const and n.bytes:
                user = self._user(k, consumers)
                if user is not None:
                    nodes[user].params += n.params
                    nodes[user].bytes += n.bytes
        ops = [OpStat(n.path, n.op, n.params, n.bytes, n.flops, self._role(k))
               for k, n in enumerate(nodes) if not n.const and n.op != "Parameter"]
        attention = any(self._attention(k, consumers) for k in range(len(nodes)))
        layer_norm = any(n.op in LAYER_NORM_OPS for n in nodes)
        return ModelStats(ops, attention, layer_norm, self.path_of)

    def _user(self, k: int, consumers: list[list[int]]) -> int | None:
        """The first operator a weight meets an activation in, past its dequantization or
        decompression: that operator holds it."""
        frontier, seen = [k], {k}
        while frontier:
            nxt = []
            for j in frontier:
                for c in consumers[j]:
                    if not self.nodes[c].const:
                        return c
                    if c not in seen:
                        seen.add(c)
                        nxt.append(c)
            frontier = nxt
        return None

    def _role(self, k: int) -> str:
        n = self.nodes[k]
        weighted = any(self.nodes[i].const for i in n.inputs)
        if n.op in MATMUL_OPS:
            return "linear" if weighted else "other"
        if n.op in CONV_OPS:
            return "conv"
        if n.op in NORM_OPS:
            return "norm"
        if n.op == "Gather" and n.inputs and self.nodes[n.inputs[0]].const:
            return "embedding"
        if n.bytes and n.op in PASS_OPS:
            for j in self._upstream(k, 3):
                op = self.nodes[j].op
                if op in MATMUL_OPS | CONV_OPS | NORM_OPS:
                    return "conv" if op in CONV_OPS else "norm" if op in NORM_OPS else "linear"
        return "other"

    def _upstream(self, k: int, depth: int) -> list[int]:
        found, frontier = [], [k]
        for _ in range(depth):
            frontier = [i for j in frontier for i in self.nodes[j].inputs
                        if not self.nodes[i].const]
            found += frontier
        return found

    def _attention(self, k: int, consumers: list[list[int]]) -> bool:
        n = self.nodes[k]
        if n.op in ATTENTION_OPS:
            return True
        if n.op not in ("Softmax", "SoftMax"):
            return False
        before = any(self.nodes[j].op in MATMUL_OPS for j in self._upstream(k, 4))
        frontier, after = [k], False
        for _ in range(3):
            frontier = [c for j in frontier for c in consumers[j]]
            after = after or any(self.nodes[c].op in MATMUL_OPS for c in frontier)
        return before and after


def onnx_stats(path: Path, input_shapes: dict[str, list[int]],
               known: frozenset[str] | None = None) -> ModelStats:
    """The operators of an ONNX model with FLOPs at one example of `input_shapes`."""
    import onnx

    proto = onnx.load(str(path))
    shapes = _onnx_shapes(proto, input_shapes)
    g = _Graph(known)
    inits = {init.name for init in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name not in inits:
            g.add(_Node(inp.name, "Parameter"), [inp.name])
    for init in proto.graph.initializer:
        g.add(_onnx_weight(init.name, list(init.dims), init.data_type), [init.name])
    for k, node in enumerate(proto.graph.node):
        name = node.name or f"{node.op_type}_{k}"
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            g.add(_onnx_weight(name, list(value.dims), value.data_type) if value is not None
                  else _Node(name, "Constant", const=True), node.output)
            continue
        g.add(_Node(name, node.op_type, [g.tensors[t] for t in node.input if t in g.tensors],
                    flops=_onnx_flops(node, shapes), meta_path=_name_scopes(node)),
              node.output)
    return g.finish()


def _onnx_weight(name: str, dims: list[int], data_type: int) -> _Node:
    """A tensor of a weight type counts at its stored width; a single number (an epsilon, a
    scale of sqrt(d)) is a constant of the arithmetic, not a parameter."""
    bits = ONNX_WEIGHT_BITS.get(data_type)
    numel = math.prod(dims)
    if bits is None or numel <= 1:
        return _Node(name, "Initializer", const=True)
    return _Node(name, "Initializer", const=True, params=numel, bytes=(numel * bits + 7) // 8)


def _name_scopes(node: Any) -> str | None:
    """The dynamo exporter's record of the module scopes a node ran in: full module paths,
    the operator's own name last."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return str(scopes[-2]) if len(scopes) >= 2 else ""
    return None


def _onnx_shapes(proto: Any, input_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Every tensor's shape at batch 1 and the data's other dimensions. ONNX's own inference
    loses the batch and head dimensions at the exporter's computed Reshapes; ONNX Runtime's
    symbolic inference follows them, so it goes first."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    for inp in fixed.graph.input:
        dims = inp.type.tensor_type.shape.dim
        want = [1, *input_shapes.get(inp.name, [])]
        if inp.name in input_shapes and len(dims) == len(want):
            for d, v in zip(dims, want, strict=True):
                d.Clear()
                d.dim_value = v
    inferred = None
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inferred = SymbolicShapeInference.infer_shapes(fixed, auto_merge=True)
    except Exception:
        inferred = None
    if inferred is None:
        try:
            inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
        except Exception:
            inferred = fixed
    shapes: dict[str, list[int]] = {}
    for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else -1
                               for d in vi.type.tensor_type.shape.dim]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _onnx_flops(node: Any, shapes: dict[str, list[int]]) -> float:
    """2 x MACs of a matrix product or convolution; other operators count none."""
    import onnx

    op = node.op_type
    if op not in MATMUL_OPS and op not in CONV_OPS:
        return 0.0
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def shape(i: int) -> list[int] | None:
        return shapes.get(node.input[i]) if i < len(node.input) and node.input[i] else None

    out = shapes.get(node.output[0]) if node.output else None
    a = shape(0)
    if out is None or not a:
        return 0.0
    if op in MATMUL_OPS:
        if op in ("Gemm", "FusedGemm"):
            k = a[0] if attrs.get("transA") else a[-1]
        elif op == "MatMulNBits":
            k = int(attrs.get("K", a[-1]))
        else:
            k = a[-2] if attrs.get("transA") and len(a) > 1 else a[-1]
        return 2.0 * _dims_product(out) * max(k, 1)
    if op == "ConvTranspose":
        w = shape(1)
        return 2.0 * _dims_product(a) * _dims_product(w[1:]) if w else 0.0
    w = shape(3 if op == "QLinearConv" else 1)
    return 2.0 * _dims_product(out) * _dims_product(w[1:]) if w else 0.0


def openvino_stats(path: Path, input_shapes: dict[str, list[int]],
                   known: frozenset[str] | None = None,
                   names: Callable[[str], str | None] | None = None) -> ModelStats:
    """The operators of an OpenVINO IR, reshaped to one example of `input_shapes`; weights
    count at their stored element type (an int8 or int4 Constant before its decompression).

    `names` reads a name the parser cannot: the IR keeps an ONNX source's node names but not
    their metadata, so a dynamo-exported source's scopes come from the ONNX file."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    with contextlib.suppress(Exception):  # left dynamic, unknown dimensions count as 1
        model.reshape({p.get_any_name(): ov.PartialShape([1, *input_shapes[p.get_any_name()]])
                       for p in model.inputs if p.get_names()
                       and p.get_any_name() in input_shapes
                       and p.get_partial_shape().rank.get_length()
                       == len(input_shapes[p.get_any_name()]) + 1})
    g = _Graph(known, names)
    ids: dict[str, int] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        name = op.get_friendly_name()
        if kind == "Constant":
            et = op.get_element_type()
            numel = _dims_product(list(op.get_output_partial_shape(0).to_shape()))
            weight = et.get_type_name() in OV_WEIGHT_TYPES and numel > 1
            node = _Node(name, "Constant", const=True, params=numel if weight else 0,
                         bytes=(numel * et.bitwidth + 7) // 8 if weight else 0)
        elif kind == "Parameter":
            node = _Node(name, "Parameter")
        else:
            node = _Node(name, kind, [ids[op.input_value(i).get_node().get_name()]
                                      for i in range(op.get_input_size())],
                         flops=_ov_flops(op, kind))
        ids[op.get_name()] = g.add(node)
    return g.finish()


def _ov_shape(op: Any, port: int, output: bool = False) -> list[int]:
    ps = op.get_output_partial_shape(port) if output else op.get_input_partial_shape(port)
    if ps.rank.is_dynamic:
        return []
    return [d.get_length() if d.is_static else -1 for d in ps]


def _ov_flops(op: Any, kind: str) -> float:
    """As `_onnx_flops`, from the shapes OpenVINO inferred; a grouped convolution's weights
    carry the group as a leading axis, and a transposed one runs over its input's size."""
    if kind not in ("MatMul", "ScaledDotProductAttention") and kind not in CONV_OPS:
        return 0.0
    out, a = _ov_shape(op, 0, output=True), _ov_shape(op, 0)
    if not out or not a:
        return 0.0
    if kind == "MatMul":
        k = a[-2] if op.get_attributes().get("transpose_a") and len(a) > 1 else a[-1]
        return 2.0 * _dims_product(out) * max(k, 1)
    if kind == "ScaledDotProductAttention":
        key, value = _ov_shape(op, 1), _ov_shape(op, 2)
        if not key or not value:
            return 0.0
        return 2.0 * _dims_product(a) * max(key[-2], 1) + (
            2.0 * _dims_product(a[:-1]) * max(key[-2], 1) * max(value[-1], 1))
    w = _ov_shape(op, 1)
    grouped = 2 if kind.startswith("Group") else 1
    base = a if kind.endswith("BackpropData") else out
    return 2.0 * _dims_product(base) * _dims_product(w[grouped:]) if w else 0.0


def layer_grouping(ops: Iterable[OpStat], paths: Iterable[str | None] = (),
                   split_share: float = SPLIT_SHARE) -> Callable[[str | None, str], str]:
    """A function from (module path, operator type) to the layer a profile reports it in.

    Starting from the top, a module is split into its sub-modules while it holds more than
    `split_share` of the FLOPs or weight bytes and sub-modules that have children of their own
    hold nearly all of that; so repeated blocks, and the parts of a large block, show
    separately, and a small module stays whole. Decided from FLOPs and bytes, never from
    time, so a layer is the same on every runtime and every run. `paths` adds modules that
    hold neither (a pooling module torch timed) to the tree, so they show under their own
    name as they do in an exported graph."""
    flops: dict[str, float] = defaultdict(float)
    size: dict[str, float] = defaultdict(float)
    children: dict[str, set[str]] = defaultdict(set)
    entries = [(op.path, op.flops, op.bytes) for op in ops]
    for path, op_flops, op_bytes in [*entries, *((p, 0.0, 0) for p in paths)]:
        if not path:
            continue
        atoms = path.split(".")
        for n in range(len(atoms) + 1):
            prefix = ".".join(atoms[:n])
            flops[prefix] += op_flops
            size[prefix] += op_bytes
            if n:
                children[".".join(atoms[:n - 1])].add(prefix)
    cuts = {""}

    def worth(v: str, measure: dict[str, float]) -> bool:
        whole = measure[""]
        inner = sum(measure[c] for c in children[v] if children.get(c))
        return whole > 0 and measure[v] > split_share * whole and (
            inner >= CONTAINED * measure[v])

    def visit(v: str) -> None:
        if children.get(v) and (v == "" or worth(v, flops) or worth(v, size)):
            for c in children[v]:
                cuts.add(c)
                visit(c)

    visit("")

    def layer(path: str | None, op_type: str) -> str:
        if not path:
            return op_type
        atoms = path.split(".")
        for n in range(len(atoms), 0, -1):
            prefix = ".".join(atoms[:n])
            if prefix in cuts:
                return prefix
        return atoms[0]

    return layer
