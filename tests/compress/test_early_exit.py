"""The early_exit technique: exits that answer confident inputs, the same decisions on torch,
ONNX Runtime and OpenVINO, and an artifact that rebuilds from its record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.model import FileModel, ModelRef, TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import StepContext, parse_step
from slimkit.runtimes import get_runtime
from slimkit.techniques.early_exit import EarlyExit
from slimkit.techniques.early_exit import build as build_net
from slimkit.techniques.early_exit.curve import at_threshold, exit_curve
from slimkit.techniques.early_exit.train import agreement
from tests.models import applied, batch, eager

CNN = "tests.models:tiny_cnn"
FAST = {"epochs": 3, "curve_rows": 0}


def cnn() -> TorchModel:
    """The tiny CNN with its classifier centred and scaled on the pooled features: as built,
    its bias answers one class for every input, and there would be nothing for exits to learn."""
    model = load_model(ModelRef(source=CNN))
    assert isinstance(model, TorchModel)
    net = model.module
    pooled: list[torch.Tensor] = []
    hook = net.head[1].register_forward_hook(lambda m, i, o: pooled.append(o))
    with torch.no_grad():
        net(torch.from_numpy(batch(model.inputs, 500, 99)["image"]))
        hook.remove()
        mean, std = pooled[0].mean(0), pooled[0].std(0)
        linear = net.head[2]
        linear.weight.mul_(2 / std)
        linear.bias.copy_(-linear.weight @ mean)
    return model


def images(n: int, seed: int) -> Dataset:
    return Dataset(batch(cnn().inputs, n, seed), None, f"images-{seed}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TorchModel:
    from slimkit.techniques.early_exit import early_exit_torch

    ctx = StepContext(tmp_path_factory.mktemp("ee"), images(400, 0))
    made = applied(early_exit_torch, cnn(), EarlyExit(**FAST), ctx)
    assert isinstance(made, TorchModel)
    return made


def at(model: TorchModel, threshold: float) -> TorchModel:
    made = at_threshold(model, threshold, Path("unused"))
    assert isinstance(made, TorchModel)
    return made


def run(model: TorchModel | FileModel, runtime: str, x: np.ndarray) -> list[np.ndarray]:
    return get_runtime(runtime).load(model).run({"image": x})


def test_threshold_one_never_exits_and_is_the_full_model(trained: TorchModel,
                                                         tmp_path: Path) -> None:
    x = images(64, 7).inputs["image"]
    logits, which = run(at(trained, 1.0), "torch", x)
    assert (which == 1).all()  # one exit (after the stem): 1 is the final head
    np.testing.assert_array_equal(logits, eager(cnn(), x))
    from slimkit.formats.onnx_export import to_onnx

    full = run(to_onnx(cnn(), tmp_path / "full" / "model.onnx"), "onnxruntime", x)[0]
    ort_logits, ort_which = run(to_onnx(at(trained, 1.0), tmp_path / "model.onnx"),
                                "onnxruntime", x)
    assert (ort_which == 1).all()
    np.testing.assert_allclose(ort_logits, full, atol=1e-5)


def test_threshold_zero_answers_everything_at_the_first_exit(trained: TorchModel,
                                                             tmp_path: Path) -> None:
    from slimkit.formats.onnx_export import to_onnx

    x = images(32, 8).inputs["image"]
    logits, which = run(at(trained, 0.0), "torch", x)
    assert (which == 0).all()
    with torch.no_grad():
        first = trained.module.all_logits(torch.from_numpy(x))[0].numpy()  # type: ignore[operator]
    np.testing.assert_array_equal(logits, first)
    _, ort_which = run(to_onnx(at(trained, 0.0), tmp_path / "model.onnx"), "onnxruntime", x)
    assert (ort_which == 0).all()


def test_trained_heads_follow_the_final_head_better_than_untrained(trained: TorchModel) -> None:
    held = images(300, 9)
    untrained, _ = build_net(cnn(), EarlyExit())
    before = agreement(untrained, held)[0]
    after = agreement(trained.module, held)[0]  # type: ignore[arg-type]
    assert after > before + 0.2, (before, after)


def test_a_middle_threshold_splits_the_rows_and_keeps_each_exits_answer(
        trained: TorchModel) -> None:
    x = images(200, 10).inputs["image"]
    with torch.no_grad():
        first, final = trained.module.all_logits(torch.from_numpy(x))  # type: ignore[operator]
    conf = torch.softmax(first, 1).amax(1).numpy()
    t = float(np.median(conf))
    logits, which = run(at(trained, t), "torch", x)
    early = conf >= t
    np.testing.assert_array_equal(which, np.where(early, 0, 1))
    np.testing.assert_array_equal(logits[early], first.numpy()[early])
    np.testing.assert_array_equal(logits[~early], final.numpy()[~early])


def _gap_threshold(model: TorchModel, x: np.ndarray) -> float:
    """A threshold in the widest gap between the middle rows' confidences, so float noise
    between runtimes cannot move a row across it."""
    with torch.no_grad():
        first = model.module.all_logits(torch.from_numpy(x))[0]  # type: ignore[operator]
    conf = np.sort(torch.softmax(first, 1).amax(1).numpy())
    mid = conf[len(conf) // 4: 3 * len(conf) // 4]
    k = int(np.argmax(np.diff(mid)))
    return float((mid[k] + mid[k + 1]) / 2)


def test_the_artifact_runs_on_every_runtime_with_the_same_decisions(tmp_path: Path) -> None:
    cache, base, data = Cache(tmp_path / "cache"), cnn(), images(400, 0)
    x = images(64, 11).inputs["image"]
    made = {target: build(base, model_key(base), [EarlyExit(**FAST)], target, cache,
                          data=data).model for target in ("torch", "onnx", "openvino")}
    torch_model = made["torch"]
    assert isinstance(torch_model, TorchModel)  # loaded back: rebuilt from its record
    t = _gap_threshold(torch_model, x)
    ref_logits, ref_which = run(at(torch_model, t), "torch", x)
    assert 0 < ref_which.sum() < len(x)  # some rows leave early, some do not
    for target, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        model = made[target]
        assert isinstance(model, FileModel) and model.format == target
        logits, which = run(at_threshold(model, t, tmp_path / target), runtime, x)
        np.testing.assert_array_equal(which, ref_which)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4)


def test_curve_counts_every_row_once_per_threshold(trained: TorchModel, tmp_path: Path) -> None:
    data = Dataset(images(24, 12).inputs, np.zeros(24, np.int64), "labelled")
    from slimkit.formats.onnx_export import to_onnx

    full = to_onnx(cnn(), tmp_path / "full" / "model.onnx")
    exits = to_onnx(trained, tmp_path / "exits" / "model.onnx")
    curve = exit_curve(exits, data, [0.0, 1.0], workdir=tmp_path, full=full)
    zero, one = curve["thresholds"]
    assert zero["exit_rate"] == [1.0, 0.0] and one["exit_rate"] == [0.0, 1.0]
    assert one["agreement"] == 1.0 and one["accuracy"] == curve["full_model"]["accuracy"]
    assert all(r["mean_ms"] > 0 and r["p99_ms"] > 0 for r in curve["thresholds"])


def test_the_report_holds_a_curve_on_onnxruntime(tmp_path: Path) -> None:
    from slimkit.techniques.early_exit import early_exit_torch

    ctx = StepContext(tmp_path, images(400, 0))
    config = EarlyExit(epochs=1, curve=[0.0, 0.9], curve_rows=32)
    result = early_exit_torch(cnn(), config, ctx)
    curve = result.report["curve"]  # type: ignore[index]
    assert curve["runtime"]["runtime"] == "onnxruntime" and curve["rows"] == 32
    assert [r["threshold"] for r in curve["thresholds"]] == [0.0, 0.9]
    assert curve["thresholds"][0]["exit_rate"][0] == 1.0
    assert curve["full_model"]["agreement"] == 1.0
    assert not (tmp_path / "curve").exists()
    assert "0.9: " in result.report["curve_summary"]  # type: ignore[index]


@pytest.mark.parametrize(("raw", "field"), [
    ({"technique": "early_exit", "threshold": 1.5}, "early_exit.threshold"),
    ({"technique": "early_exit", "head": "mlp"}, "early_exit.head"),
    ({"technique": "early_exit", "after": []}, "early_exit.after"),
    ({"technique": "early_exit", "curve": [0.5, 2]}, "early_exit.curve"),
    ({"technique": "early_exit", "treshold": 0.5}, "did you mean 'threshold'"),
])
def test_a_bad_option_names_its_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse_step(raw)


@pytest.mark.parametrize(("after", "message"), [
    (["nowhere"], "after names no module 'nowhere'"),
    (["res", "stem"], "in the order the forward calls them"),
])
def test_exits_at_modules_that_do_not_fit_are_one_clear_error(after: list[str],
                                                              message: str) -> None:
    with pytest.raises(TechniqueError, match=message):
        build_net(cnn(), EarlyExit(after=after))


def test_a_model_without_blocks_to_follow_asks_where_the_exits_go() -> None:
    mlp = load_model(ModelRef(source="tests.models:tiny_mlp"))
    assert isinstance(mlp, TorchModel)
    with pytest.raises(TechniqueError, match="name where the exits go with `after`"):
        build_net(mlp, EarlyExit())


def test_heads_train_alike_on_stored_features_and_on_the_running_backbone(
        tmp_path: Path) -> None:
    from slimkit.techniques.early_exit import early_exit_torch

    heads = []
    for gb in (2.0, 0.0):  # 0: nothing fits, so the backbone runs at every step
        config = EarlyExit(epochs=1, curve_rows=0, feature_cache_gb=gb)
        made = early_exit_torch(cnn(), config, StepContext(tmp_path / str(gb), images(200, 0)))
        heads.append(made.model.module.heads.state_dict())  # type: ignore[union-attr]
    for name, value in heads[0].items():
        torch.testing.assert_close(value, heads[1][name], atol=1e-5, rtol=1e-4)
