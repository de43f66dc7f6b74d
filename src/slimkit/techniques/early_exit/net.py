"""A classifier cut into segments with an exit head after each cut but the last.

The cuts come from a torch.fx trace, so any traceable forward works, residuals included: a
segment hands on every value that later code still reads, not only the one its exit looks at.
The same segments run eagerly here and are exported one by one to build the ONNX graph.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import fx, nn
from torch.nn import functional as F

from slimkit.errors import TechniqueError


class _Tracer(fx.Tracer):
    """Keeps the named modules whole, so a cut can fall right after each of them."""

    def __init__(self, whole: set[str]) -> None:
        super().__init__()
        self.whole = whole

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.whole or super().is_leaf_module(m, qualname)


def trace(module: nn.Module, whole: set[str]) -> fx.Graph:
    try:
        return _Tracer(whole).trace(module)
    except Exception as e:
        raise TechniqueError(f"early_exit: torch.fx cannot trace the model "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def default_cuts(module: nn.Module) -> list[str]:
    """Every top-level block in the order the forward calls it, less the last two: the last
    is the classifier and an exit in front of it would cost as much as the answer it saves."""
    tops = {name for name, _ in module.named_children()}
    graph = trace(module, tops)
    order = list(dict.fromkeys(str(n.target) for n in graph.nodes
                               if n.op == "call_module" and n.target in tops))
    if len(order) < 3:
        raise TechniqueError(f"early_exit: the model calls {len(order)} top-level block(s); "
                             f"name where the exits go with `after`")
    return order[:-2]


def split(module: nn.Module, cuts: list[str]) -> tuple[list[fx.GraphModule], list[int]]:
    """The segments between the cuts, and where in each segment's outputs its exit's
    features are. Segment k takes what segment k-1 gives; the last gives the model's output."""
    missing = [c for c in cuts if c not in dict(module.named_modules())]
    if missing:
        raise TechniqueError(f"early_exit: after names no module {missing[0]!r}")
    graph = trace(module, set(cuts))
    nodes = [n for n in graph.nodes if n.op != "output"]
    where = {n: k for k, n in enumerate(nodes)}
    ends = []
    for c in cuts:
        calls = [n for n in nodes if n.op == "call_module" and n.target == c]
        if len(calls) != 1:
            raise TechniqueError(f"early_exit: the forward calls {c!r} {len(calls)} times; an "
                                 f"exit goes after a module called once")
        ends.append(where[calls[0]])
    if ends != sorted(ends) or len(set(ends)) != len(ends):
        raise TechniqueError("early_exit: after must list modules in the order the forward "
                             "calls them, each once")
    output = next(n for n in graph.nodes if n.op == "output")
    segments, taps = [], []
    live_in = [n for n in nodes if n.op == "placeholder"]
    start = 0
    for end, tap in [*((e, nodes[e]) for e in ends), (len(nodes) - 1, None)]:
        body = [n for n in nodes[start:end + 1] if n.op != "placeholder"]
        if tap is None:
            live_out: list[fx.Node] | None = None
        else:
            live_out = [n for n in nodes[:end + 1]
                        if n is tap or any(where.get(u, len(nodes)) > end for u in n.users)]
            taps.append(live_out.index(tap))
        segments.append(_segment(module, live_in, body, live_out, output))
        live_in, start = live_out or [], end + 1
    return segments, taps


def _segment(root: nn.Module, live_in: list[fx.Node], body: list[fx.Node],
             live_out: list[fx.Node] | None, output: fx.Node) -> fx.GraphModule:
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {n: g.placeholder(f"in_{k}") for k, n in enumerate(live_in)}
    for n in body:
        env[n] = g.node_copy(n, lambda a: env[a])
    if live_out is None:
        g.output(fx.map_arg(output.args[0], lambda a: env[a]))
    else:
        g.output(tuple(env[n] for n in live_out))
    return fx.GraphModule(root, g)


def make_head(features: torch.Tensor, classes: int, kind: str, width: int) -> nn.Module:
    """A small classifier on one exit's features: global pool and a Linear, with a 3x3
    convolution in front for `conv` (early features need a little more to say a class)."""
    if features.ndim == 4:
        channels = features.shape[1]
        layers: list[nn.Module] = []
        if kind == "conv":
            layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(channels, classes))
    if features.ndim == 3:
        return nn.Sequential(_MeanTokens(), nn.Linear(features.shape[2], classes))
    if features.ndim == 2:
        return nn.Linear(features.shape[1], classes)
    raise TechniqueError(f"early_exit: no exit head for features of shape "
                         f"{list(features.shape)} (expected 2, 3 or 4 dimensions)")


class _MeanTokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


def confident(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Rows whose top class has softmax probability >= threshold. A threshold of 1.0 never
    exits: a float32 softmax rounds to exactly 1.0 for a wide enough margin."""
    if threshold >= 1.0:
        return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    return F.softmax(logits.float(), dim=1).amax(1) >= threshold


class EarlyExitNet(nn.Module):
    """The backbone's segments with exit heads between them.

    Evaluating, each row is answered by its first exit whose confidence reaches `threshold`,
    and the rest of the network runs only while some row of the batch is still undecided: at
    batch size 1 that is per input. Outputs: the logits and, per row, the exit that answered
    (the number of exits for the final head). Training, it returns every exit's logits and the
    final head's, with the frozen backbone run without gradients.
    """

    def __init__(self, segments: list[fx.GraphModule], taps: list[int], heads: nn.ModuleList,
                 threshold: float) -> None:
        super().__init__()
        self.segments = nn.ModuleList(segments)
        self.heads = heads
        self.taps = taps
        self.threshold = threshold

    def train(self, mode: bool = True) -> EarlyExitNet:
        """Only the heads ever train: the backbone's batch statistics stay as they are."""
        super().train(mode)
        self.segments.eval()
        return self

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.training:
            return self.all_logits(*inputs)
        vals: tuple[torch.Tensor, ...] = inputs
        out = which = done = None
        for k, (seg, head) in enumerate(zip(self.segments[:-1], self.heads, strict=True)):
            vals = seg(*vals)
            logits = head(vals[self.taps[k]])
            hit = confident(logits, self.threshold)
            if out is None or which is None or done is None:
                out, which, done = logits, torch.zeros_like(hit, dtype=torch.int64), hit
            else:
                out = torch.where(done[:, None], out, logits)
                which = torch.where(done, which, k)
                done = done | hit
            if bool(done.all()):
                return out, which
        final = self.segments[-1](*vals)
        if out is None or which is None or done is None:
            return final, torch.zeros(final.shape[0], dtype=torch.int64)
        return torch.where(done[:, None], out, final), torch.where(done, which, len(self.heads))

    def all_logits(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *taps, final = self.backbone_outputs(*inputs)
        return (*(h(f) for h, f in zip(self.heads, taps, strict=True)), final)

    def backbone_outputs(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the frozen backbone gives the heads: each exit's features, then the final
        logits, all without gradients."""
        taps = []
        vals: tuple[torch.Tensor, ...] = inputs
        with torch.no_grad():
            for k, seg in enumerate(self.segments[:-1]):
                vals = seg(*vals)
                taps.append(vals[self.taps[k]])
            return (*taps, self.segments[-1](*vals))

    def export_onnx(self, args: tuple[torch.Tensor, ...], names: list[str], path: Path) -> None:
        """A trace would keep one path through the exits; the graph is built instead (see
        `onnx_graph`). The torch -> ONNX conversion calls this."""
        from slimkit.techniques.early_exit.onnx_graph import export

        export(self, args, names, path)
