"""Student architecture search: candidates inherit the teacher's weights exactly where they keep
everything, smaller ones are measured faster on ONNX Runtime, the search keeps to its latency
budget and resumes without scoring twice, and the record rebuilds the student without data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.artifact import load_artifact, save_artifact
from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.model import InputSpec, ModelRef, TorchModel, load_model
from slimkit.registry import StepContext, parse_step
from slimkit.techniques.nas import inherit, score, search
from slimkit.techniques.nas.space import Architecture, even, selection_order
from slimkit.techniques.nas.technique import Nas, nas_torch
from tests.models import applied, batch, eager, token_data

IMAGE = [InputSpec(name="image", dtype="float32", shape=["batch", 1, 8, 8])]


class Block(nn.Module):
    """A residual block: dropping it leaves the stage's input to pass on unchanged."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                               nn.BatchNorm2d(width), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                               nn.BatchNorm2d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b(self.a(x)))


class Staged(nn.Module):
    """Two stages of repeatable residual blocks, a strided conv between them."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU())
        self.stage1 = nn.Sequential(Block(w), Block(w), Block(w))
        self.down = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * w), nn.ReLU())
        self.stage2 = nn.Sequential(Block(2 * w), Block(2 * w))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.down(self.stage1(self.stem(image)))))


def staged_cnn(width: int = 16, seed: int = 0) -> TorchModel:
    torch.manual_seed(seed)
    module = Staged(width)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return TorchModel(module.eval(), list(IMAGE))


def images(n: int = 96, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8), dtype=np.float32)
    return Dataset({"image": x}, rng.integers(0, 10, n), "images")


def staged(width: int = 16) -> TorchModel:
    return load_model(ModelRef(source="tests.compress.test_nas:staged_cnn",
                               kwargs={"width": width}))


def analysed(model: TorchModel, data: Dataset) -> inherit.Teacher:
    return inherit.analyse(model, data, channel_importance="l1", head_importance="magnitude",
                           layers_by_importance=True, ignore=[])


def test_cnn_candidate_equal_to_the_teacher_is_the_teacher() -> None:
    model = staged()
    teacher = analysed(model, images())
    assert teacher.shape.blocks == {"stage1": [0, 1, 2], "stage2": [0, 1]}
    x = batch(model.inputs, 8)["image"]
    student = inherit.inherit(teacher, teacher.shape)
    np.testing.assert_array_equal(eager(TorchModel(student, model.inputs), x), eager(model, x))


def test_bert_candidate_equal_to_the_teacher_is_the_teacher() -> None:
    model = load_model(ModelRef(source="tests.models:tiny_bert"))
    teacher = analysed(model, token_data())
    assert teacher.shape == Architecture(family="bert", layers=[0, 1], heads=4, ffn=64,
                                         hidden=32)
    student = inherit.inherit(teacher, teacher.shape)
    feeds = {k: torch.from_numpy(v) for k, v in token_data(6, seed=3).inputs.items()}
    with torch.no_grad():
        assert torch.equal(student(**feeds), model.module(**feeds))


def test_bert_candidate_keeps_the_most_important_units_and_rebuilds() -> None:
    model = load_model(ModelRef(source="tests.models:tiny_bert", kwargs={"layers": 3}))
    data = token_data()
    teacher = analysed(model, data)
    arch = Architecture(family="bert", layers=[0, 2], heads=2, ffn=24, hidden=16)
    student = inherit.inherit(teacher, arch)
    layers = student.encoder.encoder.layer
    assert len(layers) == 2
    assert layers[0].attention.self.query.weight.shape == (2 * 8, 16)
    assert layers[1].intermediate.dense.weight.shape == (24, 16)
    # the hidden dimensions kept are the most active ones, put back where they were
    kept = sorted(teacher.bert.hidden_order[:16]) if teacher.bert else []
    lift = layers[-1].output.LayerNorm[1].weight
    assert torch.equal(lift[kept, torch.arange(16)], torch.ones(16))
    fresh = load_model(ModelRef(source="tests.models:tiny_bert", kwargs={"layers": 3}))
    inherit.rebuild(fresh, arch)
    fresh.module.load_state_dict(student.state_dict())  # strict: every shape matches
    feeds = {k: torch.from_numpy(v) for k, v in token_data(6, seed=3).inputs.items()}
    with torch.no_grad():
        out = student(**feeds)
        assert out.shape == model.module(**feeds).shape
        assert torch.equal(fresh.module(**feeds), out)


def test_bert_student_exports_and_runs_on_onnxruntime(tmp_path: Path) -> None:
    from slimkit.artifact import load_artifact as load
    from slimkit.runtimes import get_runtime

    model = load_model(ModelRef(source="tests.models:tiny_bert"))
    teacher = analysed(model, token_data())
    student = inherit.inherit(teacher, Architecture(family="bert", layers=[1], heads=2, ffn=32,
                                                    hidden=16))
    path = score.export(student, model, "onnxruntime", tmp_path, token_data())
    session = get_runtime("onnxruntime").load(load(path))
    feeds = token_data(5, seed=2).inputs
    (out,) = session.run(feeds)
    with torch.no_grad():
        expected = student(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_much_smaller_candidate_measures_faster_on_onnxruntime(tmp_path: Path) -> None:
    model = staged(64)
    data = images(64)
    teacher = analysed(model, data)
    small = Architecture(family="cnn", widths={r: max(1, n // 8)
                                               for r, n in teacher.shape.widths.items()},
                         blocks={"stage1": [0], "stage2": [0]})
    student = inherit.inherit(teacher, small)
    t = score.export(model.module, model, "onnxruntime", tmp_path / "teacher", data)
    c = score.export(student, model, "onnxruntime", tmp_path / "student", data)
    timing = score.time_against(t, c, "onnxruntime", data, threads=1, batch=16, rounds=1)
    assert timing.candidate_ms < timing.teacher_ms
    assert timing.ratio < 0.8


def test_search_keeps_to_the_measured_latency_budget(tmp_path: Path) -> None:
    config = Nas(latency=0.6, trials=1, serving_batch=16, rounds=1, round_to=4,
                 shares=[0.25, 0.5, 1.0], proxy_steps=2, epochs=1, batch_size=32)
    # wide enough that compute, not the runtime's fixed cost per call, sets the latency
    out = applied(nas_torch, staged(32), config, StepContext(tmp_path, images(64), 1))
    assert isinstance(out, TorchModel)
    report = json.loads((tmp_path / "report.json").read_text())
    rows = report["candidates"]
    assert report["timed"] == 1 and report["scored"] == len(rows) >= 1
    assert all(r["status"] in ("kept", "rejected") and r["reason"] for r in rows)
    assert all(r["latency_ratio"] <= 0.6 for r in rows if r["status"] == "kept")
    assert report["latency_ratio"] is not None and report["latency_ratio"] <= 0.6
    winner = out.steps[-1]
    assert isinstance(winner, Nas) and winner.arch is not None
    assert winner.arch.model_dump(mode="json") == report["winner"]


def _search(model: TorchModel, data: Dataset, folder: Path, trials: int) -> search.Search:
    """A search whose FLOPs filter rejects every candidate untimed: cheap to score, and it
    asks its full bound of proposals (3 per trial) since none is timed."""
    teacher = analysed(model, data)
    proxy = score.prepare(model, model.module, data, 4.0, 0.5)
    settings = search.Settings(latency=0.5, trials=trials, shares=[0.25, 0.5, 0.75, 1.0],
                               round_to=2, runtime="onnxruntime", threads=1, serving_batch=1,
                               rounds=1, flops_filter=1e-6, proxy_steps=1, proxy_seconds=None,
                               lr=1e-3, batch_size=16, seed=0)
    return search.Search(teacher, model, proxy, settings, folder)


@pytest.mark.parametrize("family", ["cnn", "bert"])
def test_resumed_search_does_not_rescore_finished_candidates(family: str, tmp_path: Path) -> None:
    model, data = ((staged(), images(48)) if family == "cnn" else
                   (load_model(ModelRef(source="tests.models:tiny_bert")), token_data()))
    first = _search(model, data, tmp_path, 1)
    rows = search.run(first, lambda *_a, **_k: None)
    assert len(rows) == len(first.scored) >= 2
    assert all(r["status"] == "rejected" and "not timed" in r["reason"] for r in rows)
    records = {p: p.stat().st_mtime_ns for p in (tmp_path / "candidates").iterdir()}
    assert len(records) == len(rows)
    again = _search(model, data, tmp_path, 2)
    more = search.run(again, lambda *_a, **_k: None)
    n = len(rows)
    assert len(more) > n and len(again.scored) == len(more) - n
    assert [r["architecture"] for r in more[:n]] == [r["architecture"] for r in rows]
    assert all(r["resumed"] for r in more[:n]) and not any(r["resumed"] for r in more[n:])
    assert all(p.stat().st_mtime_ns == t for p, t in records.items())


def test_impossible_budget_is_refused_in_one_line(tmp_path: Path) -> None:
    config = Nas(latency=0.001, trials=1, proxy_steps=1, epochs=0)
    with pytest.raises(TechniqueError, match=r"none of \d candidates met the latency budget "
                                             r"0.001 \(none timed\)"):
        nas_torch(staged(), config, StepContext(tmp_path, images(), 1))


def test_record_rebuilds_the_student_without_data(tmp_path: Path) -> None:
    model = staged()
    teacher = analysed(model, images(32))
    arch = Architecture(family="cnn", widths={r: n // 2 for r, n in teacher.shape.widths.items()},
                        blocks={"stage1": [0, 2], "stage2": [1]})
    out = applied(nas_torch, model, Nas(arch=arch, epochs=0, layer_selection="even"),
                  StepContext(tmp_path, images(32), 1))
    save_artifact(out, tmp_path / "artifact")
    loaded = load_artifact(tmp_path / "artifact", trust_code=True)
    assert isinstance(loaded, TorchModel)
    assert isinstance(loaded.module.stage1[1], nn.Identity)
    x = batch(model.inputs, 8, seed=7)["image"]
    np.testing.assert_array_equal(eager(loaded, x), eager(out, x))


def test_bert_record_rebuilds_through_an_artifact(tmp_path: Path) -> None:
    model = load_model(ModelRef(source="tests.models:tiny_bert"))
    arch = Architecture(family="bert", layers=[1], heads=2, ffn=32, hidden=24)
    out = applied(nas_torch, model, Nas(arch=arch, epochs=0, head_importance="magnitude"),
                  StepContext(tmp_path, token_data()))
    save_artifact(out, tmp_path / "artifact")
    loaded = load_artifact(tmp_path / "artifact", trust_code=True)
    assert isinstance(loaded, TorchModel)
    feeds = {k: torch.from_numpy(v) for k, v in token_data(5, seed=2).inputs.items()}
    with torch.no_grad():
        assert torch.equal(loaded.module(**feeds), out.module(**feeds))


@pytest.mark.parametrize(("raw", "field"), [
    ({"latency": 1.5}, "nas.latency"), ({"latency": 0}, "nas.latency"),
    ({"shares": [0.5, 2]}, "nas.shares"), ({"trials": 0}, "nas.trials"),
    ({"runtime": "tensorflow"}, "nas.runtime"), ({"proxy_steps": 5, "proxy_seconds": 2}, "nas"),
    ({"arch": {"family": "cnn", "widths": {"stem.0": 0}}}, "nas.arch.widths"),
])
def test_bad_option_names_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse_step({"technique": "nas", **raw})


def test_layer_orders() -> None:
    assert even(6, 3) == [0, 2, 5] and even(4, 1) == [3] and even(3, 5) == [0, 1, 2]
    assert selection_order(4, [0.1, 0.9, 0.5, 0.2]) == [1, 2, 3, 0]
    assert sorted(selection_order(5, None)) == [0, 1, 2, 3, 4]
