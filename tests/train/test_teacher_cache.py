"""The teacher's outputs computed once: the same values the teacher gives on whole batches,
and the teacher run at every step again when they do not fit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit.model import ModelRef, TorchModel, load_model
from slimkit.registry import StepContext
from slimkit.techniques.distill import Distill, distill_torch
from slimkit.train.outputs import first_tensor
from slimkit.train.teacher_cache import HIDDEN, OUTPUT, RunTeacher, teacher_columns
from tests.models import applied, tiny_bert, token_data


def _run(module: torch.nn.Module) -> tuple[RunTeacher, list[Any]]:
    layers = module.encoder.encoder.layer
    seen: list[torch.Tensor] = []
    hooks = [la.register_forward_hook(lambda _m, _a, out: seen.append(first_tensor(out)))
             for la in layers]

    def run(x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        seen.clear()
        return module(**x), list(seen)

    return run, hooks


def test_cached_outputs_match_the_teacher_on_whole_batches() -> None:
    teacher = tiny_bert().module.eval()
    data = token_data(70, seq=16)  # two length-sorted batches, the second short
    run, hooks = _run(teacher)
    columns = teacher_columns(run, data, "cpu", 2**30, "attention_mask", ("input_ids",))
    with torch.no_grad():
        out, states = run({k: torch.from_numpy(v) for k, v in data.inputs.items()})
    for h in hooks:
        h.remove()
    assert columns is not None and sorted(columns) == [HIDDEN.format(0), HIDDEN.format(1), OUTPUT]
    np.testing.assert_allclose(columns[OUTPUT], out.numpy(), atol=1e-5)
    mask = data.inputs["attention_mask"].astype(bool)
    for i, state in enumerate(states):
        cached = columns[HIDDEN.format(i)]
        assert cached.dtype == np.float16 and cached.shape == tuple(state.shape)
        np.testing.assert_allclose(cached[mask], state.numpy()[mask], rtol=2e-3, atol=2e-3)


def test_token_states_over_the_cap_are_not_kept() -> None:
    teacher = tiny_bert().module.eval()
    run, hooks = _run(teacher)
    data = token_data(8, seq=16)
    # 2 layers x 8 rows x 16 tokens x 32 wide x 2 bytes = 16 KiB
    assert teacher_columns(run, data, "cpu", 16 * 1024 - 1, "attention_mask") is None
    assert teacher_columns(run, data, "cpu", 16 * 1024, "attention_mask") is not None
    for h in hooks:
        h.remove()


def test_hidden_distillation_with_and_without_the_cache_agree(tmp_path: Path) -> None:
    """The cache changes where the targets come from, not what they are: the same fp32 run
    with and without it ends at nearly the same weights."""
    data = token_data(96, seed=3)
    results = []
    for cap in (8.0, 0.0):
        student = load_model(ModelRef(source="tests.models:tiny_bert", kwargs={"seed": 1}))
        assert isinstance(student, TorchModel)
        config = Distill(teacher="tests.models:tiny_bert", hidden="all", epochs=2, lr=3e-3,
                         batch_size=16, teacher_cache_gb=cap)
        work = tmp_path / str(cap)
        work.mkdir()
        out = applied(distill_torch, student, config, StepContext(work, data))
        results.append((out.module.state_dict(), json.loads((work / "report.json").read_text())))
    (cached, a), (live, b) = results
    assert a["steps"] == b["steps"] == 12
    assert (a["teacher_run"], b["teacher_run"]) == ("once, before training", "at every step")
    for name, value in cached.items():
        torch.testing.assert_close(value, live[name], rtol=1e-2, atol=3e-3)
    assert abs(a["agreement"]["after"] - b["agreement"]["after"]) < 1e-3
