"""A candidate is a pure function of its inputs: building one never changes the base model."""

from __future__ import annotations

from pathlib import Path

import torch

from slimkit.model import TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import parse_step


def test_steps_leave_the_base_model_untouched(tmp_path: Path):
    base = load_model("tests.models:tiny_mlp")
    assert isinstance(base, TorchModel)
    key = model_key(base)
    before = {k: v.clone() for k, v in base.module.state_dict().items()}
    cache = Cache(tmp_path)
    build(base, key, [parse_step({"cast": {"dtype": "bf16"}})], "torch", cache)
    build(base, key, [parse_step("dynamic_int8")], "torch", cache)
    after = base.module.state_dict()
    assert all(after[k].dtype == torch.float32 for k in before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model_key(base) == key
    assert base.steps == []
