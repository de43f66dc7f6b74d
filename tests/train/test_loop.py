"""The shared training loop: exact resume, early stopping, bf16, time budget, two ranks."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from slimkit.data import Dataset
from slimkit.errors import ConfigError
from slimkit.train import TrainSettings, fit
from tests.models import MLP

ROOT = Path(__file__).resolve().parents[2]


def learnable(n: int = 100, seed: int = 0) -> Dataset:
    """Labels a linear map of the inputs decides, so there is something to learn."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    return Dataset({"x": x}, (x @ w).argmax(1), "learnable")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(32)


def noisy_ce(module: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor | None
             ) -> torch.Tensor:
    # Dropout on the logits draws from the global RNG: resuming must restore it too.
    assert y is not None
    return F.cross_entropy(F.dropout(module(**x), 0.2, training=True), y)


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def losses(history: list[dict[str, float]]) -> list[float]:
    return [row["loss"] for row in history]


class Interrupt:
    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, step: int, total: int) -> None:
        if step == self.at:
            raise KeyboardInterrupt


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path: Path) -> None:
    data = learnable()
    settings = TrainSettings(epochs=3, lr=1e-2, batch_size=16, seed=3, checkpoint_every=3)
    straight = mlp()
    done = fit(straight, noisy_ce, data, settings)
    assert done.steps == 21 and done.epochs == 3

    ckpt = tmp_path / "ckpt"
    resumable = TrainSettings(**{**vars(settings), "checkpoint_dir": ckpt})
    with pytest.raises(KeyboardInterrupt):
        fit(mlp(), noisy_ce, data, resumable, after_step=Interrupt(11))
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    assert meta["progress"]["step"] == 9  # the last checkpoint before step 11
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint.json",
                                                       "state-00000009.safetensors"]
    assert any(k.startswith("optim/") for k in load_file(str(ckpt / meta["tensors"])))

    resumed_module = mlp(seed=99)  # other starting weights: the checkpoint must replace them
    resumed = fit(resumed_module, noisy_ce, data, resumable)
    assert resumed.steps == 21 and resumed.epochs == 3
    assert_same(weights(resumed_module), weights(straight))
    assert losses(resumed.history) == losses(done.history)
    assert not resumed_module.training


def test_early_stopping_restores_the_best_epoch() -> None:
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate(module: nn.Module) -> float:
        seen.append(weights(module))
        return next(scores)

    module = mlp()
    result = fit(module, noisy_ce, learnable(), TrainSettings(epochs=6, lr=1e-2, batch_size=32,
                                                              patience=2), evaluate=evaluate)
    assert result.stopped_early and result.epochs == 4 and len(seen) == 4
    assert result.best_metric == 0.7
    assert [row["metric"] for row in result.history] == [0.5, 0.7, 0.6, 0.65]
    assert_same(weights(module), seen[1])
    assert not torch.equal(seen[1]["net.0.weight"], seen[3]["net.0.weight"])


def test_bf16_trains_under_autocast_and_fp16_on_cpu_is_refused() -> None:
    dtypes: set[torch.dtype] = set()

    def ce(module: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor | None
           ) -> torch.Tensor:
        out = module(**x)
        dtypes.add(out.dtype)
        assert y is not None
        return F.cross_entropy(out.float(), y)

    data = learnable(256)
    result = fit(mlp(), ce, data, TrainSettings(epochs=5, lr=1e-2, batch_size=32,
                                                precision="bf16"))
    assert dtypes == {torch.bfloat16}
    first, *_, last = losses(result.history)
    assert last < 0.8 * first
    with pytest.raises(ConfigError, match="fp16"):
        fit(mlp(), ce, data, TrainSettings(epochs=1, precision="fp16"))


def test_a_time_budget_stops_at_a_step_and_the_rest_resumes(tmp_path: Path) -> None:
    data = learnable(64)
    settings = TrainSettings(epochs=2, lr=1e-2, batch_size=16, checkpoint_dir=tmp_path)
    module = mlp()
    cut = fit(module, noisy_ce, data, TrainSettings(**{**vars(settings), "max_minutes": 0.0}))
    assert cut.out_of_time and cut.steps == 1 and cut.history == []
    rest = fit(module, noisy_ce, data, settings)
    straight = mlp()
    fit(straight, noisy_ce, data, TrainSettings(**{**vars(settings), "checkpoint_dir": None}))
    assert rest.steps == 8 and not rest.out_of_time
    assert_same(weights(module), weights(straight))


def test_two_ranks_under_torchrun_end_with_identical_weights(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", str(Path(__file__).with_name("ddp_run.py")), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert_same(rank0, rank1)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world"] == 2 and result["steps"] == 2 * 4  # 2 epochs, 100 rows, batch 32
    assert (tmp_path / "ckpt" / "checkpoint.json").is_file()
    start = load_file(str(tmp_path / "start.safetensors"))
    assert not torch.equal(start["net.0.weight"], rank0["net.0.weight"])
    text0, text1 = (load_file(str(tmp_path / f"text{r}.safetensors")) for r in (0, 1))
    assert_same(text0, text1)
    widths = [json.loads((tmp_path / f"widths{r}.json").read_text()) for r in (0, 1)]
    assert len(widths[0]) == len(widths[1]) == 13  # 200 rows, 16 per step across both ranks
    assert min(widths[0]) < 24  # batches were cut


def texts(n: int = 200, width: int = 24, seed: int = 0) -> Dataset:
    """Right-padded token rows of random lengths, with a per-token feature column."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width + 1, n)
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, 50, (n, width)) * mask
    return Dataset({"ids": ids, "mask": mask, "feat": rng.standard_normal((n, width, 3))},
                   rng.integers(0, 2, n), "texts")


def test_token_batches_hold_similar_lengths_cut_to_their_longest_text() -> None:
    data = texts()
    seen: list[dict[str, torch.Tensor]] = []
    table = nn.Embedding(50, 2)

    def record(module: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor | None
               ) -> torch.Tensor:
        seen.append({k: v.clone() for k, v in x.items()})
        return module(x["ids"]).mean()

    settings = TrainSettings(epochs=2, batch_size=16, mask="mask",
                             sequence_columns=("ids", "feat"))
    fit(table, record, data, settings)
    lengths = data.inputs["mask"].sum(1)
    per_epoch = len(seen) // 2
    for epoch in (seen[:per_epoch], seen[per_epoch:]):
        assert sum(len(b["ids"]) for b in epoch) == len(data)
        for b in epoch:
            longest = int(b["mask"].sum(1).max())
            assert b["ids"].shape[1] == b["mask"].shape[1] == b["feat"].shape[1] == longest
    # Grouped by length: the spread inside a batch is far below that of random batches.
    spread = np.mean([float(b["mask"].sum(1).max() - b["mask"].sum(1).min()) for b in seen])
    assert spread < 0.25 * (lengths.max() - lengths.min())
    # Every row is seen once per epoch, and cutting lost none of its tokens.
    rows = sorted(tuple(F.pad(row, (0, 24 - len(row))).tolist())
                  for b in seen[:per_epoch] for row in b["ids"])
    assert rows == sorted(tuple(r.tolist()) for r in data.inputs["ids"])


def test_left_padding_is_never_cut_into() -> None:
    data = texts()
    left = Dataset({k: v[:, ::-1].copy() for k, v in data.inputs.items()}, data.labels)
    widths: list[int] = []

    def record(module: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor | None
               ) -> torch.Tensor:
        widths.append(x["ids"].shape[1])
        assert int(x["mask"].sum()) == int(torch.count_nonzero(x["ids"]))
        return module(x["ids"]).mean()

    fit(nn.Embedding(50, 2), record, left,
        TrainSettings(epochs=1, batch_size=16, mask="mask", sequence_columns=("ids",)))
    assert set(widths) == {24}


def test_a_sequence_column_of_another_length_is_named() -> None:
    data = texts()
    bad = Dataset({**data.inputs, "feat": data.inputs["feat"][:, :5]}, data.labels)
    with pytest.raises(ConfigError, match="'feat'"):
        fit(nn.Embedding(50, 2), lambda m, x, y: m(x["ids"]).mean(), bad,
            TrainSettings(epochs=1, mask="mask", sequence_columns=("feat",)))


def test_linear_schedule_warms_up_then_decays_to_zero() -> None:
    # With a constant gradient of 1, each AdamW step moves the weight by exactly its lr.
    weight = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(weight.weight)
    seen = [0.0]
    data = Dataset({"x": np.ones((8, 1), np.float32)}, None)
    fit(weight, lambda m, x, y: m.weight.sum(), data,
        TrainSettings(epochs=1, batch_size=1, lr=0.1, schedule="linear", warmup=0.25),
        after_step=lambda step, total: seen.append(weight.weight.item()))
    moves = [a - b for a, b in itertools.pairwise(seen)]
    # 8 steps, 2 of warm-up: 1/2, 2/2, then 6/6, 5/6, ... 1/6 of lr.
    expected = [0.05, 0.1, *(0.1 * k / 6 for k in (6, 5, 4, 3, 2, 1))]
    assert moves == pytest.approx(expected, rel=1e-5)


def test_length_grouped_linear_schedule_run_resumes_exactly(tmp_path: Path) -> None:
    data = texts()
    torch.manual_seed(0)
    table = nn.Embedding(50, 4)
    start = weights(table)

    def loss(m: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor | None) -> torch.Tensor:
        # Depends on the cut width, so a batch cut differently would give other weights.
        return F.dropout(m(x["ids"]), 0.2).pow(2).mean() * x["ids"].shape[1]

    settings = TrainSettings(epochs=2, lr=1e-2, batch_size=16, checkpoint_every=4,
                             schedule="linear", mask="mask", sequence_columns=("ids",))
    straight = nn.Embedding(50, 4)
    straight.load_state_dict(start)
    fit(straight, loss, data, settings)
    resumable = TrainSettings(**{**vars(settings), "checkpoint_dir": tmp_path})
    first = nn.Embedding(50, 4)
    first.load_state_dict(start)
    with pytest.raises(KeyboardInterrupt):
        fit(first, loss, data, resumable, after_step=Interrupt(18))
    resumed = nn.Embedding(50, 4)
    fit(resumed, loss, data, resumable)
    assert_same(weights(resumed), weights(straight))
