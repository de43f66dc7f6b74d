"""One ONNX file for an early-exit network: the segments nested in `If` nodes.

Each stage (a segment and its exit head) is exported on its own; they are then joined so that
stage k+1 sits in the else-branch of an `If` on "every row of the batch is decided". ONNX
Runtime and OpenVINO run only the branch taken, so at batch size 1 an input that leaves early
never pays for the rest, and the artifact stays a single `model.onnx` that every format,
runtime and benchmark here already handles. The decision mirrors `EarlyExitNet.forward`.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import TechniqueError

THRESHOLD = "exit_threshold"  # the initializer a copy at another threshold rewrites
OPSET = 17


class _Stage(nn.Module):
    def __init__(self, segment: nn.Module, head: nn.Module | None, tap: int) -> None:
        super().__init__()
        self.segment, self.head, self.tap = segment, head, tap

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        vals = self.segment(*inputs)
        if self.head is None:
            return (vals,)
        return (*vals, self.head(vals[self.tap]))


def export(net: Any, args: tuple[torch.Tensor, ...], names: list[str], path: Path) -> None:
    """Write `net` (an EarlyExitNet) as one ONNX graph taking `names`, giving the logits as
    `output` and the answering exit as `exit`."""
    import onnx

    stages: list[Any] = []
    vals: tuple[torch.Tensor, ...] = args
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for k, seg in enumerate(net.segments):
            head = net.heads[k] if k < len(net.heads) else None
            # eval before export: the exporter restores the mode it found, into shared modules
            stage = _Stage(seg, head, net.taps[k] if head is not None else 0).eval()
            in_names = names if k == 0 else [f"in_{j}" for j in range(len(vals))]
            out = stage(*vals)
            out_names = [f"out_{j}" for j in range(len(out))]
            file = Path(tmp) / f"stage{k}.onnx"
            _export_stage(stage, vals, in_names, out_names, file)
            stages.append(onnx.load(str(file)))
            vals = out[:-1] if head is not None else out
    model = _join(stages, names, net.threshold)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _export_stage(stage: nn.Module, args: tuple[torch.Tensor, ...], ins: list[str],
                  outs: list[str], file: Path) -> None:
    axes = {n: {0: "batch"} for n in [*ins, *outs]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(stage, args, str(file), input_names=ins, output_names=outs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                              do_constant_folding=True)
    except Exception as e:
        raise TechniqueError(f"early_exit: ONNX export of a segment failed "
                             f"({str(e).splitlines()[0][:200]})") from e


def _join(stages: list[Any], names: list[str], threshold: float) -> Any:
    from onnx import TensorProto, helper

    inits: list[Any] = []
    live: list[str] = list(names)
    bodies: list[tuple[list[Any], list[str], str]] = []  # (nodes, live out, logits)
    for k, proto in enumerate(stages):
        g = proto.graph
        rename = {f"in_{j}": v for j, v in enumerate(live)} if k else {n: n for n in names}
        nodes = [_renamed(n, rename, f"s{k}/") for n in g.node]
        for t in g.initializer:
            t.name = rename.get(t.name, f"s{k}/{t.name}")
            inits.append(t)
        outs = [rename.get(o.name, f"s{k}/{o.name}") for o in g.output]
        bodies.append((nodes, outs[:-1], outs[-1]))
        live = outs[:-1]
    # A threshold of 1.0 never exits (see `net.confident`): infinity says so in the graph.
    limit = threshold if threshold < 1.0 else math.inf
    inits.append(helper.make_tensor(THRESHOLD, TensorProto.FLOAT, [], [limit]))
    nodes, out, which = _level(bodies, 0, None)
    nodes += [helper.make_node("Identity", [out], ["output"]),
              helper.make_node("Identity", [which], ["exit"])]
    src = stages[0].graph
    graph = helper.make_graph(
        nodes, "early_exit", list(src.input),
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", None]),
         helper.make_tensor_value_info("exit", TensorProto.INT64, ["batch"])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             ir_version=stages[0].ir_version)


def _renamed(node: Any, rename: dict[str, str], prefix: str) -> Any:
    node.input[:] = [rename.get(i, prefix + i) if i else i for i in node.input]
    node.output[:] = [prefix + o if o else o for o in node.output]
    node.name = prefix + (node.name or node.op_type)
    return node


def _level(bodies: list[tuple[list[Any], list[str], str]], k: int,
           done_before: str | None) -> tuple[list[Any], str, str]:
    """Nodes that run stage k and, unless every row is decided, the stages after it: the
    logits and the answering exit per row, by their value names."""
    from onnx import TensorProto, helper

    nodes, _, logits = bodies[k]
    nodes = list(nodes)
    p = f"e{k}/"

    def node(op: str, ins: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, ins, [p + out], name=p + out, **attrs))
        return p + out

    exit_no = node("Constant", [], "no", value=helper.make_tensor("", TensorProto.INT64, [],
                                                                    [k]))
    if k == len(bodies) - 1:  # the final head answers every row still undecided
        rows = node("Shape", [logits], "shape", start=0, end=1)
        which = node("Expand", [exit_no, rows], "which")
        return nodes, logits, which
    probs = node("Softmax", [logits], "probs", axis=1)
    conf = node("ReduceMax", [probs], "conf", axes=[1], keepdims=0)
    hit = node("GreaterOrEqual", [conf, THRESHOLD], "hit")
    done = hit if done_before is None else node("Or", [done_before, hit], "done")
    undecided = node("Not", [done], "undecided")
    any_left = node("ReduceMax", [node("Cast", [undecided], "left", to=TensorProto.INT32)],
                    "any_left", keepdims=0)
    go_on = node("Cast", [any_left], "go_on", to=TensorProto.BOOL)
    rest, rest_out, rest_exit = _level(bodies, k + 1, done)
    stop_out = node("Identity", [logits], "stop_out")
    rows = node("Shape", [logits], "shape", start=0, end=1)
    stop_exit = node("Expand", [exit_no, rows], "stop_exit")
    typed = [helper.make_tensor_value_info("", TensorProto.FLOAT, None),
             helper.make_tensor_value_info("", TensorProto.INT64, None)]

    def branch(name: str, body: list[Any], outs: list[str]) -> Any:
        infos = [helper.make_tensor_value_info(o, t.type.tensor_type.elem_type, None)
                 for o, t in zip(outs, typed, strict=True)]
        return helper.make_graph(body, name, [], infos)

    # Both branches are computed inside the `If` (only the taken one runs); `stop_*` nodes
    # above are cheap and shared.
    after = node("If", [go_on], "rest_out", then_branch=branch(
        p + "more", rest, [rest_out, rest_exit]), else_branch=branch(
        p + "stop", [helper.make_node("Identity", [stop_out], [p + "s_out"]),
                     helper.make_node("Identity", [stop_exit], [p + "s_exit"])],
        [p + "s_out", p + "s_exit"]))
    nodes[-1].output.append(p + "rest_exit")
    mask = node("Unsqueeze", [hit, node("Constant", [], "axis1", value=helper.make_tensor(
        "", TensorProto.INT64, [1], [1]))], "mask")
    out = node("Where", [mask, logits, after], "out")
    which = node("Where", [hit, exit_no, p + "rest_exit"], "which")
    return nodes, out, which
