"""Machine capabilities, and the int8 path chosen from them: right for the CPU the suite runs
on, whichever kind that is (the suite must hold on AVX2-only and on AVX-512 VNNI machines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimkit.cpu_notes import step_notes
from slimkit.machine import FEATURES_ENV, Capabilities, capabilities, detect
from slimkit.model import load_onnx
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.runtimes import RuntimeOptions, get_runtime
from slimkit.techniques.quantize.ort_kernels import pick_int8_mode
from tests.models import sqnr

AVX2 = Capabilities("x86_64", frozenset({"avx2", "fma"}), "test")
VNNI = Capabilities("x86_64", frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}), "test")
AMX = Capabilities("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16",
                                        "amx_tile", "amx_int8", "amx_bf16"}), "test")
ARM = Capabilities("aarch64", frozenset({"asimd", "asimddp", "bf16"}), "test")


def test_override_replaces_the_kernels_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FEATURES_ENV, "AVX2, fma")
    caps = detect()
    assert caps.features == {"avx2", "fma"} and caps.source == FEATURES_ENV
    assert not caps.int8_dot and not caps.bf16


@pytest.mark.parametrize(("caps", "kind", "mode"), [
    (AVX2, "x86 AVX2 without VNNI, no native bf16", "reduce_range"),
    (VNNI, "x86 AVX-512 VNNI, no native bf16", "u8s8"),
    (AMX, "x86 AMX, native bf16", "u8s8"),
    (ARM, "aarch64 with int8 dot product", "u8s8"),
])
def test_each_kind_of_cpu_gets_its_int8_path(caps: Capabilities, kind: str, mode: str) -> None:
    assert caps.kind() == kind
    assert pick_int8_mode(caps)[0] == mode
    listed = caps.to_dict()
    assert listed["int8_dot_product"] == caps.int8_dot
    assert all(isinstance(f, str) for f in listed["features"])


def test_detected_features_agree_with_torchs_own_cpuid() -> None:
    """/proc/cpuinfo (the kernel's view) and torch's cpuid-based dispatch must agree on the
    vector width, or a path chosen here would not be the one the kernels take."""
    import torch

    caps = capabilities()
    if caps.source != "/proc/cpuinfo" or not caps.x86:
        pytest.skip(f"features come from {caps.source}")
    torch_says = torch.backends.cpu.get_cpu_capability()
    has_512 = caps.has("avx512f") and caps.has("avx512bw") and caps.has("avx512vl")
    assert (torch_says == "AVX512") == has_512, (torch_says, sorted(caps.features))
    assert caps.has("avx2") == (torch_says in ("AVX2", "AVX512"))


def test_notes_follow_the_capabilities() -> None:
    bf16, fp16 = parse_step({"cast": {"dtype": "bf16"}}), parse_step({"cast": {"dtype": "fp16"}})
    torchao = parse_step({"torchao": {}})
    assert step_notes([bf16], "torch", AVX2) and not step_notes([bf16], "torch", AMX)
    assert not step_notes([bf16], "onnxruntime", AVX2)  # ONNX cast has no bf16; not a CPU fact
    assert step_notes([fp16], "onnxruntime", AMX)  # no fp16 CPU kernels anywhere
    assert step_notes([torchao], "torch", AVX2) and not step_notes([torchao], "torch", VNNI)
    assert step_notes([parse_step({"nncf_int8": {}})], "openvino", AVX2)
    assert not step_notes([parse_step({"dynamic_int8": {}})], "onnxruntime", AVX2)


def _matmul_model(path: Path) -> Path:
    """One wide MatMul with inputs large enough that 16-bit sums of u8×s8 pairs saturate."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_chosen_int8_path_fits_this_cpu(tmp_path: Path) -> None:
    """`auto` is recorded as the mode this CPU picks, the weights are what that mode means,
    and its fidelity here is at least the plain u8s8 default's (on AVX2 the default saturates;
    with VNNI both are the same kernel)."""
    src = load_onnx(_matmul_model(tmp_path / "mm.onnx"))
    x = (np.random.default_rng(1).standard_normal((64, 256)) * 3).astype(np.float32)
    ref = x @ numpy_helper.to_array(onnx.load(str(src.path)).graph.initializer[0])
    cache = Cache(tmp_path / "cache")
    scores = {}
    for mode in ("auto", "u8s8", "reduce_range", "u8u8"):
        built = build(src, model_key(src), [parse_step({"dynamic_int8": {"int8_mode": mode}})],
                      "onnx", cache)
        session = get_runtime("onnxruntime", RuntimeOptions(threads=1)).load(
            load_onnx(built.path / "model.onnx"))
        scores[mode] = sqnr(ref, session.run({"x": x})[0])
        if mode == "auto":
            picked = pick_int8_mode()[0]
            assert built.steps[-1].options["int8_mode"] == picked
            weights = [numpy_helper.to_array(i) for i in onnx.load(
                str(built.path / "model.onnx")).graph.initializer if i.data_type == 3]
            limit = 63 if picked == "reduce_range" else 127
            assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= limit + 1
            assert (built.path / "report.json").is_file()
    assert scores["auto"] >= scores["u8s8"] - 0.1, scores
    assert min(scores.values()) > 20, scores
