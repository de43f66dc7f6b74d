"""How a candidate is judged: a short distillation from the teacher as a proxy for how well it
will learn, and its latency measured on the target runtime against the teacher's.

The proxy trains through the same loop and losses as `distill` (so a resumable, budgeted full
run of the winner is the same code), then scores the student on rows held out of training: the
distillation loss (the search's objective) and agreement with the teacher (top-1 for
classifiers, cosine otherwise) for the report. Latency is never estimated: the candidate is
exported and timed with the benchmark harness, interleaved with the teacher in one run, so the
ratio is of two figures taken on the same machine at the same time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.model import TorchModel
from slimkit.train.recover import Objective


@dataclass
class Proxy:
    """The data and objective every candidate is trained and scored on."""

    objective: Objective
    train: Dataset
    held: Dataset
    target: torch.Tensor  # the teacher's outputs on the held-out rows
    classes: bool  # top-1 agreement (else cosine)
    token_axis: dict[str, Any]


def prepare(model: TorchModel, teacher: nn.Module, data: Dataset, temperature: float,
            alpha: float) -> Proxy:
    """Hold out a fifth of the rows (at most 512) for scoring, the rest to train on."""
    from slimkit.techniques.distill import Distill, _token_axis, resolve_loss

    names = [i.name for i in model.inputs]
    full = Dataset({n: data.inputs[n] for n in names}, data.labels, data.name)
    if len(full) < 4:
        raise TechniqueError(f"nas: {len(full)} examples are too few to train and score on")
    held_n = min(512, max(1, len(full) // 5))
    train, held = full.rows(0, len(full) - held_n), full.rows(len(full) - held_n, len(full))
    target = outputs(teacher, held, names)
    kind = resolve_loss(Distill(temperature=temperature, alpha=alpha), target, held)
    objective = Objective(loss=kind, temperature=temperature,  # type: ignore[arg-type]
                          alpha=alpha)
    return Proxy(objective, train, held, target, kind == "response",
                 _token_axis(model) if target.ndim < 3 else {})


def outputs(module: nn.Module, data: Dataset, names: list[str]) -> torch.Tensor:
    from slimkit.train.outputs import first_tensor

    module.eval()
    with torch.no_grad():
        return torch.cat([first_tensor(module(**{n: torch.from_numpy(b[n]) for n in names}))
                          .float() for b in data.batches(64)])


def judge(student: nn.Module, proxy: Proxy, names: list[str]) -> tuple[float, float]:
    """(distillation loss, agreement with the teacher) on the held-out rows."""
    from torch.nn import functional as F

    from slimkit.train.outputs import label_tensor
    from slimkit.train.recover import main_loss

    out = outputs(student, proxy.held, names)
    loss_fn = main_loss(proxy.objective)
    assert loss_fn is not None
    with torch.no_grad():
        loss = float(loss_fn(out, proxy.target, label_tensor(proxy.held.labels)))
    if proxy.classes:
        agree = float((out.argmax(1) == proxy.target.argmax(1)).float().mean())
    else:
        agree = float(F.cosine_similarity(out.flatten(1), proxy.target.flatten(1)).mean())
    return loss, agree


def accuracy(student: nn.Module, proxy: Proxy, names: list[str]) -> float | None:
    """Top-1 accuracy on the held-out labels, where there are class labels."""
    from slimkit.train.outputs import label_tensor, uses_labels

    labels = label_tensor(proxy.held.labels)
    out = outputs(student, proxy.held, names)
    if labels is None or not uses_labels(out, labels):
        return None
    return float((out.argmax(1) == labels).float().mean())


def train(student: nn.Module, teacher: nn.Module, proxy: Proxy, *, steps: int | None,
          seconds: float | None, epochs: int | None, minutes: float | None, lr: float,
          batch_size: int, seed: int, checkpoints: Path | None, title: str) -> int:
    """Distil `teacher` into `student` in place; the optimizer steps taken. The proxy gives
    `steps` or `seconds`, the winner's full run `epochs` and `minutes`."""
    from slimkit.train import TrainSettings
    from slimkit.train.recover import recover

    data = proxy.train
    per_epoch = math.ceil(len(data) / batch_size)
    if steps is not None:
        if steps < per_epoch:  # exactly `steps` steps: one epoch over that many batches
            data = data.head(steps * batch_size)
        epochs = max(1, math.ceil(steps / per_epoch))
    elif seconds is not None:
        epochs, minutes = 10_000, seconds / 60
    assert epochs is not None
    settings = TrainSettings(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                             max_minutes=minutes, checkpoint_dir=checkpoints, **proxy.token_axis)
    run = recover(student, teacher, data, proxy.objective, settings, title=title, owner="nas")
    return run.fit.steps


def export(module: nn.Module, model: TorchModel, runtime: str, folder: Path,
           data: Dataset) -> Path:
    """The student as an artifact of the runtime's format in `folder` (reused if there)."""
    from slimkit.artifact import is_artifact, save_artifact
    from slimkit.export import convert, path_between
    from slimkit.runtimes import runtime_format

    final = folder / runtime
    if is_artifact(final):
        return final
    current: Any = TorchModel(module.eval(), model.inputs, model.tokenizer, ref=model.ref)
    for nxt in path_between("torch", runtime_format(runtime))[1:]:
        hop = folder / nxt if nxt != runtime_format(runtime) else final
        hop.mkdir(parents=True, exist_ok=True)
        current = convert(current, nxt, hop, data)
        save_artifact(current, hop)
    return final


@dataclass
class Timing:
    ratio: float  # candidate time / teacher time
    teacher_ms: float
    candidate_ms: float


def time_against(teacher: Path, candidate: Path, runtime: str, data: Dataset, *, threads: int,
                 batch: int, rounds: int) -> Timing:
    """The candidate's time per request (batch 1) or per serving batch, over the teacher's,
    measured side by side in interleaved rounds."""
    from slimkit.bench import BenchOptions, Target, run_benchmark

    # The harness times both single requests and serving batches; only one series is used,
    # so the other is kept to a single run.
    single = batch == 1
    opts = BenchOptions(threads=threads, batch_size=batch, rounds=rounds, warmup=1,
                        latency_runs=10 if single else 1, throughput_runs=1 if single else 3,
                        min_seconds=0.05)
    got = run_benchmark([Target("teacher", teacher, runtime, trust_code=True),
                         Target("candidate", candidate, runtime, trust_code=True)],
                        data, opts, baseline="teacher")
    for name in ("teacher", "candidate"):
        if "error" in got[name]:
            raise TechniqueError(f"nas: timing the {name} on {runtime} failed "
                                 f"({got[name]['error']})")
    t, c = got["teacher"], got["candidate"]

    def ms(m: dict[str, Any]) -> float:
        return (float(m["latency_ms"]["p50"]) if batch == 1
                else 1000.0 * batch / float(m["throughput"]))

    speedup = c["ratios"]["latency" if batch == 1 else "throughput"]
    return Timing(1.0 / float(speedup), ms(t), ms(c))
