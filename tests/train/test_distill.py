"""The distill technique: students move toward their teachers, with or without labels, and the
result is an artifact that rebuilds from its record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.model import ModelRef, TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import StepContext, parse_step
from slimkit.techniques.distill import Distill, distill_torch
from tests.models import applied, batch, eager, perturb, trusted

WIDE = "tests.models:tiny_mlp"


def narrow_mlp() -> TorchModel:
    model = load_model(ModelRef(source=WIDE, kwargs={"width": 16, "seed": 4}))
    assert isinstance(model, TorchModel)
    return model


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def top1(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(1)
    return float((num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def test_a_narrow_student_learns_its_teachers_decisions(tmp_path: Path) -> None:
    teacher = load_model(WIDE)
    assert isinstance(teacher, TorchModel)
    x = rows(512, 0)
    data = Dataset({"x": x}, eager(teacher, x).argmax(1), "teacher-labelled")
    held_out = rows(256, 1)
    target = eager(teacher, held_out)
    student = narrow_mlp()
    before = top1(eager(student, held_out), target)

    step = parse_step({"distill": {"teacher": WIDE, "epochs": 6, "lr": 1e-2, "batch_size": 64,
                                   "features": [["net.2", "net.2"]]}})
    cache = Cache(tmp_path / "cache")
    built = build(student, model_key(student), [step], "torch", cache, data=data)
    report = json.loads((built.path / "report.json").read_text())
    assert report["loss"] == "response"  # auto: logits and labels
    losses = [row["loss"] for row in report["history"]]
    assert losses[-1] < 0.8 * losses[0]
    assert report["agreement"]["after"] > report["agreement"]["before"]

    trained = built.model
    assert isinstance(trained, TorchModel)
    after = top1(eager(trained, held_out), target)
    assert after > before + 0.2, (before, after)
    assert not (cache.root / "checkpoints").exists() or not any(
        (cache.root / "checkpoints").iterdir())

    reloaded = trusted(built.path)  # rebuilt from the record, then its weights loaded
    assert isinstance(reloaded, TorchModel)
    np.testing.assert_array_equal(eager(reloaded, held_out), eager(trained, held_out))
    assert reloaded.steps[-1].loss == "response"


def test_teacher_only_on_unlabelled_data_moves_a_damaged_copy_back(tmp_path: Path) -> None:
    source = load_model(WIDE)
    assert isinstance(source, TorchModel)
    damaged = perturb(load_model(WIDE), scale=0.2)  # type: ignore[arg-type]
    x = rows(512, 2)
    data = Dataset({"x": x}, None, "unlabelled")
    held_out = rows(256, 3)
    before = cosine(eager(damaged, held_out), eager(source, held_out))
    config = Distill(epochs=4, lr=3e-3, batch_size=32)
    out = applied(distill_torch, damaged, config,
                  StepContext(tmp_path, data, checkpoints=tmp_path / "c"))
    assert isinstance(out, TorchModel)
    assert out.steps[-1].loss == "embedding"  # auto without labels: 1 - cosine
    after = cosine(eager(out, held_out), eager(source, held_out))
    assert after > before and 1 - after < 0.5 * (1 - before), (before, after)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["agreement"]["measure"] == "cosine" and len(report["history"]) == 4


def test_attention_transfer_on_conv_features(tmp_path: Path) -> None:
    cnn = load_model("tests.models:tiny_cnn")
    assert isinstance(cnn, TorchModel)
    damaged = perturb(load_model("tests.models:tiny_cnn"), scale=0.3)  # type: ignore[arg-type]
    data = Dataset(batch(cnn.inputs, 256, seed=4), None, "images")
    config = Distill(loss="feature", features=[("res", "res")], feature_loss="attention",
                     epochs=3, lr=3e-3, batch_size=32)
    applied(distill_torch, damaged, config, StepContext(tmp_path, data))
    history = json.loads((tmp_path / "report.json").read_text())["history"]
    assert history[-1]["loss"] < history[0]["loss"]


def test_recipe_step_round_trips_through_yaml() -> None:
    raw = {"technique": "distill", "teacher": "tests.models:tiny_mlp", "loss": "response",
           "temperature": 2.0, "alpha": 0.7, "features": [["net.0", "net.0"]],
           "epochs": 2, "lr": 1e-3, "batch_size": 16, "precision": "bf16", "max_minutes": 5.0,
           "patience": 2, "seed": 1}
    step = parse_step(raw)
    assert isinstance(step, Distill)
    again = parse_step(yaml.safe_load(yaml.safe_dump(step.model_dump(mode="json"))))
    assert again == step and again.features == [("net.0", "net.0")]
    assert step.shown_options()["loss"] == "response"
    with pytest.raises(ValueError, match="features"):
        parse_step({"distill": {"loss": "feature"}})
    with pytest.raises(ValueError, match="unknown field"):
        parse_step({"distill": {"temprature": 2.0}})


def test_unknown_feature_module_is_one_clear_error(tmp_path: Path) -> None:
    model = load_model(WIDE)
    assert isinstance(model, TorchModel)
    data = Dataset({"x": rows(64, 0)}, None, "d")
    with pytest.raises(TechniqueError, match=r"no module 'net\.9'"):
        applied(distill_torch, model, Distill(features=[("net.9", "net.0")]),
                StepContext(tmp_path, data))


def embed(model: TorchModel, data: Dataset) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model.module(**{k: torch.from_numpy(v) for k, v in data.inputs.items()}).numpy()


def test_token_hidden_states_pull_a_student_towards_its_teacher(tmp_path: Path) -> None:
    from tests.models import token_data

    data, held_out = token_data(256, seed=1), token_data(64, seed=2)
    teacher = load_model(ModelRef(source="tests.models:tiny_bert"))
    student = load_model(ModelRef(source="tests.models:tiny_bert", kwargs={"seed": 1}))
    assert isinstance(teacher, TorchModel) and isinstance(student, TorchModel)
    before = cosine(embed(student, held_out), embed(teacher, held_out))
    config = Distill(teacher="tests.models:tiny_bert", hidden="all", epochs=3, lr=3e-3,
                     batch_size=32)
    out = applied(distill_torch, student, config, StepContext(tmp_path, data))
    assert isinstance(out, TorchModel)
    after = cosine(embed(out, held_out), embed(teacher, held_out))
    assert 1 - after < 0.5 * (1 - before), (before, after)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["hidden_states"] == [["encoder.encoder.layer.0", "encoder.encoder.layer.0"],
                                       ["encoder.encoder.layer.1", "encoder.encoder.layer.1"]]


def test_hidden_all_needs_layers_of_one_depth(tmp_path: Path) -> None:
    from tests.models import token_data

    student = load_model(ModelRef(source="tests.models:tiny_bert", kwargs={"layers": 1}))
    config = Distill(teacher="tests.models:tiny_bert", hidden="all", epochs=1)
    with pytest.raises(TechniqueError, match="as many layers"):
        applied(distill_torch, student, config, StepContext(tmp_path, token_data(32)))


def test_per_token_outputs_keep_their_padding_and_train(tmp_path: Path) -> None:
    from tests.models import token_data

    student = load_model(ModelRef(source="tests.models:tiny_bert_tokens", kwargs={"seed": 1}))
    config = Distill(teacher="tests.models:tiny_bert_tokens", epochs=1, batch_size=8)
    out = applied(distill_torch, student, config, StepContext(tmp_path, token_data(32)))
    assert isinstance(out, TorchModel) and out.steps[-1].loss == "embedding"
    assert json.loads((tmp_path / "report.json").read_text())["steps"] == 4


def test_frozen_parameters_stay_the_same_and_trainable_afterwards(tmp_path: Path) -> None:
    import torch

    from tests.models import token_data

    student = load_model(ModelRef(source="tests.models:tiny_bert", kwargs={"seed": 1}))
    assert isinstance(student, TorchModel)
    before = {n: p.detach().clone() for n, p in student.module.named_parameters()}
    frozen = "encoder.embeddings.word_embeddings"
    config = Distill(teacher="tests.models:tiny_bert", hidden="all", epochs=1, lr=3e-3,
                     batch_size=16, freeze=[frozen])
    out = applied(distill_torch, student, config, StepContext(tmp_path, token_data(32)))
    after = dict(out.module.named_parameters())
    assert all(p.requires_grad for p in after.values())
    changed = {n for n, v in before.items() if not torch.equal(after[n].detach(), v)}
    assert f"{frozen}.weight" not in changed
    assert "encoder.embeddings.position_embeddings.weight" in changed
    assert "encoder.encoder.layer.0.attention.self.query.weight" in changed


def test_freeze_naming_no_parameter_is_refused(tmp_path: Path) -> None:
    from tests.models import token_data

    student = load_model(ModelRef(source="tests.models:tiny_bert", kwargs={"seed": 1}))
    config = Distill(teacher="tests.models:tiny_bert", epochs=1, freeze=["word_embeddings"])
    with pytest.raises(TechniqueError, match="freeze names no parameter 'word_embeddings' "
                                             r"\(like: encoder.embeddings.word_embeddings"):
        applied(distill_torch, student, config, StepContext(tmp_path, token_data(32)))
