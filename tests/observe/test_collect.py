"""The torch and ONNX collectors: one pass serves every request, hooks never outlive a pass,
and both runtimes see the same ranges of the same model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slimkit.model import TorchModel
from slimkit.observe import HistogramObserver, MaxAbs, MinMax, Request, collect, collect_onnx
from slimkit.pipeline import Cache, build, model_key
from tests.models import mlp_data, tiny_mlp

LAYERS = ["net.0", "net.2", "net.4"]


def hook_count(model: TorchModel) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks)
               for m in model.module.modules())


def reference_inputs(model: TorchModel, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each Linear's input, computed layer by layer without hooks."""
    net, seen = model.module.net, {}
    h = torch.from_numpy(x)
    with torch.no_grad():
        for i, layer in enumerate(net):
            if isinstance(layer, torch.nn.Linear):
                seen[f"net.{i}"] = h.numpy().copy()
            h = layer(h)
    return seen


def test_inputs_and_outputs_match_a_manual_forward() -> None:
    model, data = tiny_mlp(), mlp_data(40)
    stats = collect(model.module, data, ["x"], [
        Request(LAYERS, {"range": MinMax}), Request(["net.4"], {"range": MinMax}, "output")],
        batch_size=7)
    for name, x in reference_inputs(model, data.inputs["x"]).items():
        rng = stats[name].inputs["range"]
        assert isinstance(rng, MinMax)
        assert rng.range() == (float(x.min()), float(x.max()))
        assert rng.ndim == 2 and rng.count == x.size
    with torch.no_grad():
        out = model.module(torch.from_numpy(data.inputs["x"])).numpy()
    top = stats["net.4"].outputs["range"]
    assert isinstance(top, MinMax)
    assert top.range() == pytest.approx((out.min(), out.max()), rel=1e-6)
    assert hook_count(model) == 0


def test_one_pass_serves_two_requests() -> None:
    model, data = tiny_mlp(), mlp_data(32)
    calls = []
    model.module.register_forward_pre_hook(lambda _m, _a: calls.append(1))
    ranges = Request(LAYERS, {"range": MinMax})
    smooth = Request(["net.2"], {"range": MinMax, "max_abs": MaxAbs})
    stats = collect(model.module, data, ["x"], [ranges, smooth], batch_size=8)
    assert len(calls) == 4  # 32 rows in batches of 8: the data ran once
    assert set(stats["net.2"].inputs) == {"range", "max_abs"}  # the shared key is one observer
    both = stats["net.2"].inputs
    assert both["range"].count == both["max_abs"].count == 32 * 64


def test_hooks_are_removed_when_the_model_fails() -> None:
    model, data = tiny_mlp(), mlp_data(16)
    before = hook_count(model)

    class Boom(MinMax):
        def _update(self, x: np.ndarray) -> None:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        collect(model.module, data, ["x"], [Request(LAYERS, {"bad": Boom}, "output")])
    assert hook_count(model) == before
    with pytest.raises(KeyError, match="nope"):
        collect(model.module, data, ["x"], [Request(["net.0", "nope"], {"r": MinMax})])
    assert hook_count(model) == before


def test_onnx_and_torch_see_the_same_ranges(tmp_path: Path) -> None:
    import onnx

    model, data = tiny_mlp(), mlp_data(48)
    built = build(model, model_key(model), [], "onnx", Cache(tmp_path))
    path = built.path / "model.onnx"
    gemms = [n for n in onnx.load(str(path)).graph.node if n.op_type in ("Gemm", "MatMul")]
    assert len(gemms) == len(LAYERS)
    ask = {"range": MinMax, "histogram": HistogramObserver}
    onnx_stats = collect_onnx(path, data, {n.input[0]: ask for n in gemms}, batch_size=5)
    torch_stats = collect(model.module, data, ["x"], [Request(LAYERS, ask)], batch_size=16)
    for node, layer in zip(gemms, LAYERS, strict=True):
        o, t = onnx_stats[node.input[0]], torch_stats[layer].inputs
        assert o["range"].range() == pytest.approx(t["range"].range(), rel=1e-5, abs=1e-6)  # type: ignore[attr-defined]
        oh, th = o["histogram"], t["histogram"]
        assert isinstance(oh, HistogramObserver) and isinstance(th, HistogramObserver)
        step = (th.maximum - th.minimum) / 2048
        assert oh.percentile(99.0) == pytest.approx(th.percentile(99.0), abs=2 * step)
