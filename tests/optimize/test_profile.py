"""`slimkit profile` on the bundled real models: the digits CNN on ONNX Runtime, OpenVINO and
torch, MiniLM on ONNX Runtime. Small data, one benchmark round; nothing here asserts on speed,
only on how the measured time is accounted for and where it is attributed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from slimkit.bench import BenchOptions
from slimkit.data import DataSpec, load_data
from slimkit.dataset import Dataset
from slimkit.model import Model, load_model
from slimkit.optimize.layers import onnx_stats, openvino_stats, scope_path
from slimkit.optimize.op_times import measure_ops
from slimkit.optimize.profile import Profile, profile, serving_batches
from slimkit.optimize.profile_render import print_profile, profile_html
from slimkit.pipeline import Cache, build, model_key

ROOT = Path(__file__).resolve().parents[2]
DIGITS = "slimkit.examples.digits:load_model"
MINILM = "slimkit.examples.minilm:load_model"
FAST = BenchOptions(rounds=1, warmup=1, latency_runs=3, throughput_runs=1)
# The digits CNN by hand: 3x3 convolutions 1->64 and 64->128 at 8x8, 128->256 and 256->256
# at 4x4 (after the 2x2 max-pool), and the 256->10 classifier; 2 FLOPs per multiply-add.
DIGITS_MACS = (1 * 64 * 9 * 64 + 64 * 128 * 9 * 64 + 128 * 256 * 9 * 16 + 256 * 256 * 9 * 16
               + 256 * 10)
# Parameters as exported: each BatchNorm folded into its convolution, which gains a bias.
DIGITS_PARAMS = (64 * 9 + 64 + 128 * 64 * 9 + 128 + 256 * 128 * 9 + 256 + 256 * 256 * 9 + 256
                 + 256 * 10 + 10)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    return Cache(tmp_path_factory.mktemp("profile-cache"))


@pytest.fixture(scope="module")
def digits() -> tuple[Model, Dataset]:
    model = load_model(DIGITS)
    return model, load_data(DataSpec(source="example", name="digits", limit=64), model)


@pytest.fixture(scope="module")
def minilm() -> tuple[Model, Dataset]:
    model = load_model(MINILM)
    spec = DataSpec(source="example", name="minilm", limit=8, max_length=32)
    return model, load_data(spec, model)


@pytest.fixture(scope="module")
def digits_profiles(digits: tuple[Model, Dataset], cache: Cache) -> dict[str, Profile]:
    model, data = digits
    return {rt: profile(model, data, rt, batch_size=32, cache=cache, bench=FAST,
                        task="classification")
            for rt in ("onnxruntime", "openvino", "torch")}


@pytest.fixture(scope="module")
def minilm_profile(minilm: tuple[Model, Dataset], cache: Cache) -> Profile:
    model, data = minilm
    return profile(model, data, "onnxruntime", batch_size=8, cache=cache, bench=FAST,
                   task="embedding")


def test_names_read_back_as_module_paths() -> None:
    assert scope_path("/encoder/encoder/layer.0/attention/self/query/MatMul") == \
        "encoder.encoder.layer.0.attention.self.query"
    assert scope_path("/stem/stem.0/stem.0.0/Conv") == "stem.0.0"
    assert scope_path("/stem/stem.0/stem.0.0/Conv/WithoutBiases") == "stem.0.0"  # OpenVINO
    assert scope_path("/stem/stem.0/stem.0.2/Relu_output_0_nchwc") == "stem.0.2"  # ORT fused
    assert scope_path("/encoder/embeddings/LayerNorm/LayerNormalization") == \
        "encoder.embeddings.LayerNorm"
    assert scope_path("/Add") == ""  # the model's own forward
    assert scope_path("BiasGelu_token_3") is None
    # a ModuleList `a` that is never called inside a module `a`: only the module names can
    # tell `a.a.0` from `a.0`
    assert scope_path("/a/a.0/MatMul") == "a.0"
    assert scope_path("/a/a.0/MatMul", frozenset({"", "a", "a.a", "a.a.0"})) == "a.a.0"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_operator_times_add_up_to_the_run(runtime: str, digits: tuple[Model, Dataset],
                                          cache: Cache) -> None:
    """The operator times of a batch against the runtime's own time for that run: ONNX
    Runtime's `model_run` event, OpenVINO's request latency.

    Both runtimes run the nodes one after another inside that interval, so their sum lies
    within it: at most 1.05 of it allows for clock rounding, at least 0.5 catches nodes left
    out (the gaps between small nodes are a few per cent). The runtime's own figure is the
    fair reference, not the wall time around the call, which adds Python's copying of inputs
    and outputs. OpenVINO's counters are means since compilation; read raw after a run they
    came to 1.2 times its latency here, which this check would catch.
    """
    model, data = digits
    built = build(model, model_key(model), [], "onnx" if runtime == "onnxruntime" else
                  "openvino", cache)
    shapes = {k: list(v.shape[1:]) for k, v in data.inputs.items()}
    stats = (onnx_stats if runtime == "onnxruntime" else openvino_stats)(built.model.path,
                                                                        shapes)
    times = measure_ops(runtime, built.model, serving_batches(data, 32, 5), 2, 2,
                        stats.path_of)
    assert times.batches == 3
    assert 0.5 * times.runtime_ms <= times.measured_ms <= 1.05 * times.runtime_ms
    assert times.runtime_ms <= times.wall_ms * 1.01


def test_every_timed_operator_lands_in_a_layer(digits_profiles: dict[str, Profile],
                                               minilm_profile: Profile) -> None:
    for p in [*digits_profiles.values(), minilm_profile]:
        assert sum(lp.time_ms for lp in p.layers) == pytest.approx(p.measured_ms, rel=1e-9)
        assert 0 < p.measured_ms <= 1.05 * p.wall_ms
        assert [lp.time_ms for lp in p.layers] == sorted((lp.time_ms for lp in p.layers),
                                                         reverse=True)
        assert sum(lp.params for lp in p.layers) == p.params
        assert sum(lp.bytes for lp in p.layers) == p.bytes


def test_shares_sum_to_one(digits_profiles: dict[str, Profile],
                           minilm_profile: Profile) -> None:
    for p in [*digits_profiles.values(), minilm_profile]:
        assert sum(p.op_time_share.values()) == pytest.approx(1.0, abs=1e-6)
        assert sum(lp.time_share for lp in p.layers) == pytest.approx(1.0, abs=1e-6)
        assert sum(p.kind_bytes_share.values()) == pytest.approx(1.0, abs=1e-6)
        assert sum(p.kind_flops_share.values()) == pytest.approx(1.0, abs=1e-6)


def test_digits_is_a_cnn_with_the_hand_counted_flops(
        digits_profiles: dict[str, Profile]) -> None:
    for runtime, p in digits_profiles.items():
        assert p.family == "cnn", runtime
        assert p.flops == pytest.approx(2 * DIGITS_MACS, rel=0.01), runtime
        assert p.kind_flops_share["conv"] > 0.99
        assert p.input_shapes == {"image": [1, 8, 8]} and p.has_labels
        assert {"res", "body", "stem.1", "head"} <= {lp.name for lp in p.layers}, runtime
        res = next(lp for lp in p.layers if lp.name == "res")
        assert res.flops == pytest.approx(2 * 256 * 256 * 9 * 16, rel=0.01)
    for runtime in ("onnxruntime", "openvino"):
        p = digits_profiles[runtime]
        assert p.params == DIGITS_PARAMS and p.bytes == 4 * DIGITS_PARAMS
        assert p.source_format == "torch" and p.baseline["throughput"] > 0
        assert p.baseline["latency_ms"]["p50"] > 0


def test_minilm_is_an_encoder_transformer(minilm_profile: Profile) -> None:
    p = minilm_profile
    assert p.family == "encoder_transformer"
    names = {lp.name for lp in p.layers}
    for k in range(6):
        for part in ("attention", "intermediate", "output"):
            assert f"encoder.encoder.layer.{k}.{part}" in names
    biggest = max(p.layers, key=lambda lp: lp.bytes)
    assert biggest.name == "encoder.embeddings"
    assert biggest.bytes > 0.45 * p.bytes
    assert max(p.kind_bytes_share, key=p.kind_bytes_share.__getitem__) == "embedding"
    attention = next(lp for lp in p.layers if lp.name == "encoder.encoder.layer.0.attention")
    # Q, K, V and the output projection, plus Q·K and A·V, at 32 tokens
    expected = 2 * (4 * 32 * 384 * 384 + 2 * 32 * 32 * 384)
    assert attention.flops == pytest.approx(expected, rel=0.01)
    assert "MatMul" in attention.kinds


def test_terminal_table_and_html_section(minilm_profile: Profile) -> None:
    console = Console(record=True, width=200)
    print_profile(minilm_profile, console)
    text = console.export_text()
    assert "encoder.embeddings" in text and "rest (" in text and "Time ms" in text
    assert "encoder transformer on onnxruntime" in text
    html = profile_html(minilm_profile.model_copy(update={"model": "<mini & lm>"}))
    assert html.startswith('<section id="profile">') and html.endswith("</section>")
    assert "&lt;mini &amp; lm&gt;" in html and "<mini" not in html
    assert "<svg" in html and "<script" not in html and "<link" not in html
    assert "×" not in html and "baseline)" not in html


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SLIMKIT_CACHE": str(cache),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "slimkit.cli", "profile", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_cli_prints_the_table_and_writes_json(tmp_path: Path, session_cache_dir: Path) -> None:
    out = tmp_path / "profile.json"
    proc = cli(DIGITS, "--data", "digits", "--rounds", "1", "--batch-size", "16", "--json",
               str(out), cache=session_cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert "Layer" in proc.stdout and "res" in proc.stdout
    p = Profile.model_validate(json.loads(out.read_text()))
    assert p.family == "cnn" and p.batch_size == 16 and p.model == DIGITS


def test_cli_missing_model_file_is_one_line(tmp_path: Path) -> None:
    proc = cli(str(tmp_path / "nope.onnx"), "--data", "digits", cache=tmp_path / "cache")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope.onnx" in lines[0]
