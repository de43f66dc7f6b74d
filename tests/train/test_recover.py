"""The recovery entry: a changed student trains back towards its unchanged teacher, resumes
exactly with its feature adapters, leaves no hooks behind, and is what pruning's fine-tuning
and QAT train through."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.registry import StepContext
from slimkit.techniques.prune.magnitude import PruneMagnitude, prune_magnitude_torch
from slimkit.techniques.quantize.qat import QAT, qat_torch
from slimkit.train import TrainSettings
from slimkit.train import recover as recover_module
from slimkit.train.recover import Objective, recover
from tests.models import MLP, batch, mlp_data, tiny_cnn, tiny_mlp
from tests.train.test_loop import Interrupt, assert_same, weights


def rows(n: int = 192, seed: int = 0) -> Dataset:
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return Dataset({"x": x}, None, "rows")


def pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A teacher and a damaged copy of it."""
    torch.manual_seed(seed)
    teacher = MLP(32).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape) * 0.2)
    return student, teacher


def distance(student: nn.Module, teacher: nn.Module, data: Dataset) -> float:
    x = torch.from_numpy(data.inputs["x"])
    with torch.no_grad():
        return float((student(x) - teacher(x)).pow(2).mean())


class Counting(nn.Module):
    """The teacher, counting the rows it is run on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.inner(x)


def test_a_damaged_copy_moves_back_and_the_teacher_runs_once_per_row() -> None:
    student, teacher = pair()
    data = rows()
    counting = Counting(teacher)
    before = distance(student, teacher, data)
    run = recover(student, counting, data, Objective(loss="mse"),
                  TrainSettings(epochs=3, lr=3e-3, batch_size=32))
    assert run.teacher_once and counting.rows == len(data)
    assert run.fit.steps == 18 and run.before is None
    assert distance(student, teacher, data) < 0.5 * before
    assert not any(p.requires_grad for p in counting.parameters())


def test_feature_adapters_resume_exactly(tmp_path: Path) -> None:
    data = rows()
    objective = Objective(loss="embedding", features=(("net.2", "net.2"),))
    settings = TrainSettings(epochs=2, lr=1e-2, batch_size=32, seed=5, checkpoint_every=2)
    straight, teacher = pair()
    done = recover(straight, teacher, data, objective, settings)
    assert not done.teacher_once  # the teacher's features feed adapters: it runs every step

    resumable = TrainSettings(**{**vars(settings), "checkpoint_dir": tmp_path})
    first, teacher = pair()
    with pytest.raises(KeyboardInterrupt):
        recover(first, teacher, data, objective, resumable, after_step=Interrupt(9))
    assert not first.net[2]._forward_hooks and not teacher.net[2]._forward_hooks
    resumed, teacher = pair()
    again = recover(resumed, teacher, data, objective, resumable)
    assert again.fit.steps == done.fit.steps == 12
    assert_same(weights(resumed), weights(straight))
    assert [r["loss"] for r in again.fit.history] == [r["loss"] for r in done.fit.history]


def test_evaluate_is_measured_before_and_after() -> None:
    student, teacher = pair()
    data = rows(64)
    seen: list[float] = []

    def closeness(module: nn.Module) -> float:
        seen.append(-distance(module, teacher, data))
        return seen[-1]

    run = recover(student, teacher, data, Objective(loss="mse"),
                  TrainSettings(epochs=2, lr=3e-3, batch_size=16), evaluate=closeness)
    assert run.before == seen[0] and run.after == seen[-1] and len(seen) == 4
    assert run.after is not None and run.before is not None and run.after > run.before
    assert [r["metric"] for r in run.fit.history] == seen[1:3]


def test_labels_need_no_teacher_but_do_need_labels() -> None:
    student, _ = pair()
    labelled = Dataset(rows(64).inputs, np.arange(64) % 8, "labelled")
    run = recover(student, None, labelled, Objective(loss="labels"),
                  TrainSettings(epochs=1, batch_size=16))
    assert run.fit.steps == 4 and not run.teacher_once
    with pytest.raises(TechniqueError, match="no class labels"):
        recover(student, None, rows(64), Objective(loss="labels"), TrainSettings(epochs=1))
    with pytest.raises(TechniqueError, match="needs a teacher"):
        recover(student, None, rows(64), Objective(loss="mse"), TrainSettings(epochs=1))


class Spy:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, student: nn.Module, teacher: nn.Module | None, data: Dataset,
                 objective: Objective, settings: TrainSettings,
                 **kwargs: Any) -> recover_module.Recovery:
        self.calls.append({"teacher": teacher, "objective": objective, "settings": settings,
                           "labels": data.labels, **kwargs})
        return recover(student, teacher, data, objective, settings, **kwargs)


def test_pruning_and_qat_train_through_it(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy()
    monkeypatch.setattr(recover_module, "recover", spy)
    prune_magnitude_torch(tiny_mlp(), PruneMagnitude(sparsity=0.5, epochs=1, batch_size=32),
                          StepContext(tmp_path / "labels", mlp_data(64)))
    prune_magnitude_torch(tiny_mlp(), PruneMagnitude(sparsity=0.5, epochs=1, batch_size=32),
                          StepContext(tmp_path / "distill", rows(64)))
    images = batch(tiny_cnn().inputs, 64, seed=4)
    qat_torch(tiny_cnn(), QAT(epochs=1, batch_size=32), StepContext(tmp_path, Dataset(images)))
    labelled, distilled, qat = spy.calls
    assert labelled["objective"].loss == "labels" and labelled["teacher"] is None
    assert distilled["objective"].loss == "mse" and distilled["teacher"] is not None
    assert labelled["owner"] == "prune_magnitude" and labelled["after_step"] is not None
    assert qat["objective"].loss == "mse" and qat["owner"] == "qat"
    assert isinstance(qat["teacher"], nn.Module) and qat["labels"] is None
