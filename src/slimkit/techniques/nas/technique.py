"""Student architecture search: the smallest student that fits a latency budget on the target
runtime and learns best from its teacher.

Pruning cuts one model down a fixed path; a search tries many shapes of student (fewer layers
or blocks, fewer heads, narrower FFNs, channels or hidden size), each inheriting the teacher's
most important weights (as in Minitron), each timed on the real runtime against the teacher and
briefly distilled as a proxy for how well it will learn. The winner is then distilled fully.
The chosen architecture is recorded in the step, so a saved model rebuilds without data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.techniques.nas.space import Architecture
from slimkit.techniques.prune import Method

if TYPE_CHECKING:
    from slimkit.techniques.nas.search import Settings


class Nas(TechniqueConfig):
    technique: Literal["nas"] = "nas"
    family = "search"
    always_shown = ("latency", "runtime", "trials")
    latency: float = Field(0.4, gt=0, le=1, description="the student's latency budget, as a "
                           "share of the teacher's latency measured on the runtime")
    runtime: Literal["onnxruntime", "openvino"] = Field(
        "onnxruntime", description="where candidates are exported to and timed")
    serving_batch: int = Field(1, gt=0, description="batch the latency is timed at: 1 times "
                               "single requests, more the time of one serving batch")
    rounds: int = Field(3, gt=0, description="interleaved timing rounds, teacher against "
                                             "candidate")
    trials: int = Field(12, gt=0, description="distinct candidate architectures to time and "
                        "score (those the FLOPs filter rejects untimed do not count)")
    shares: list[float] = Field(
        default_factory=lambda: [0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0],
        description="shares of each width (channels, heads, FFN, hidden size) a candidate "
                    "may keep")
    round_to: int = Field(8, ge=1, description="kept channels, FFN and hidden sizes are "
                                               "multiples of this")
    layer_selection: Literal["importance", "even"] = Field(
        "importance", description="which layers or blocks a shallower student keeps: those "
                                  "whose removal moves the output most, or evenly spaced")
    importance: Method = Field("l1", description="how CNN channels are ranked")
    head_importance: Literal["taylor", "magnitude"] = Field(
        "taylor", description="how attention heads and FFN neurons are ranked")
    flops_filter: float | None = Field(
        1.0, gt=0, description="candidates whose FLOPs ratio exceeds this times the latency "
                               "budget are rejected untimed; None times every candidate")
    proxy_steps: int | None = Field(50, gt=0, description="distillation steps scoring each "
                                                          "candidate inside the budget")
    proxy_seconds: float | None = Field(None, gt=0, description="instead of proxy_steps: "
                                        "seconds of distillation per candidate")
    epochs: int = Field(10, ge=0, description="epochs distilling the winner")
    minutes: float | None = Field(None, gt=0, description="time limit distilling the winner")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, gt=0, description="training batch of every distillation")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="teacher's share in the loss where "
                                                      "there are labels")
    samples: int = Field(256, gt=0, description="examples importance is measured on")
    ignore: list[str] = Field(default_factory=list, description="CNN modules never narrowed")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    arch: Architecture | None = Field(
        None, description="the chosen student (recorded); given, the search is skipped")

    @field_validator("shares")
    @classmethod
    def _shares(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < s <= 1 for s in v):
            raise ValueError("shares are fractions in (0, 1], at least one")
        return sorted(set(v))

    @model_validator(mode="before")
    @classmethod
    def _one_proxy(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("proxy_seconds") is not None:
            if raw.get("proxy_steps") is not None:
                raise ValueError("give proxy_steps or proxy_seconds, not both")
            return {**raw, "proxy_steps": None}
        return raw

    @model_validator(mode="after")
    def _has_proxy(self) -> Nas:
        if self.proxy_steps is None and self.proxy_seconds is None:
            raise ValueError("give proxy_steps or proxy_seconds")
        return self

    def needs_data(self) -> bool:
        return True


def _rebuild(model: Model, config: Nas, ctx: StepContext) -> Model:
    from slimkit.techniques.nas import inherit

    assert isinstance(model, TorchModel)
    if config.arch is None:
        raise TechniqueError("nas: the saved step records no architecture to rebuild from")
    inherit.rebuild(model, config.arch)
    return model


@technique(Nas, format="torch", requires_data=True, rebuild=_rebuild)
def nas_torch(model: Model, config: Nas, ctx: StepContext) -> StepResult:
    from slimkit.progress import progress_bar
    from slimkit.techniques.nas import inherit, score, search

    assert isinstance(model, TorchModel)
    if ctx.data is None or len(ctx.data) == 0:
        raise TechniqueError("nas needs data to rank weights and to distil candidates")
    sample = ctx.data.head(min(config.samples, len(ctx.data)))
    teacher = inherit.analyse(model, sample, channel_importance=config.importance,
                              head_importance=config.head_importance,
                              layers_by_importance=config.layer_selection == "importance",
                              ignore=config.ignore)
    with tempfile.TemporaryDirectory(prefix="slimkit-nas-") as tmp:
        folder = ctx.checkpoints / "nas" if ctx.checkpoints is not None else Path(tmp)
        proxy = score.prepare(model, model.module, ctx.data, config.temperature, config.alpha)
        found = search.Search(teacher, model, proxy, _settings(config, ctx), folder)
        rows: list[dict[str, Any]] = []
        arch = config.arch
        if arch is None:
            with progress_bar("nas search", total=config.trials) as advance:
                rows = search.run(found, advance)
            best = search.winner(rows, config.latency)
            if best is None:
                timed = [r["latency_ratio"] for r in rows if r["latency_ratio"] is not None]
                fastest = f"fastest measured x{min(timed):.2f}" if timed else "none timed"
                raise TechniqueError(
                    f"nas: none of {len(rows)} candidates met the latency budget "
                    f"{config.latency:g} ({fastest}); allow more latency or more trials")
            arch = Architecture.model_validate(best["architecture"])
        student = inherit.inherit(teacher, arch)
        steps = score.train(student, model.module, proxy, steps=None, seconds=None,
                            epochs=config.epochs, minutes=config.minutes, lr=config.lr,
                            batch_size=config.batch_size, seed=config.seed,
                            checkpoints=folder / "winner" if ctx.checkpoints else None,
                            title="nas: distilling the winner")
    names = teacher.names
    loss, agreement = score.judge(student, proxy, names)
    chosen = next((r for r in rows if r["architecture"] == arch.model_dump(mode="json")), None)
    report = {
        "family": teacher.family, "runtime": config.runtime, "latency_budget": config.latency,
        "teacher": teacher.shape.model_dump(mode="json"),
        "winner": arch.model_dump(mode="json"), "winner_summary": arch.short(),
        "latency_ratio": None if chosen is None else chosen["latency_ratio"],
        "teacher_ms": None if chosen is None else chosen["teacher_ms"],
        "student_ms": None if chosen is None else chosen["candidate_ms"],
        "flops_ratio": inherit.flops(student, teacher) / found.teacher_flops,
        "teacher_loss": found.loss_teacher, "loss": loss, "agreement": agreement,
        "teacher_accuracy": score.accuracy(model.module, proxy, names),
        "accuracy": score.accuracy(student, proxy, names),
        "measured_on": f"{len(proxy.held)} held-out rows", "steps": steps,
        "timed": sum(r["latency_ratio"] is not None for r in rows),
        "scored": len(found.scored), "read_back": sum(bool(r.get("resumed")) for r in rows),
        "candidates": rows,
    }
    return StepResult(TorchModel(student.eval(), model.inputs, model.tokenizer, ref=model.ref),
                      record=config.model_copy(update={"arch": arch}), report=report)


def _settings(config: Nas, ctx: StepContext) -> Settings:
    from slimkit.techniques.nas.search import Settings

    return Settings(latency=config.latency, trials=config.trials, shares=config.shares,
                    round_to=config.round_to, runtime=config.runtime, threads=ctx.threads,
                    serving_batch=config.serving_batch, rounds=config.rounds,
                    flops_filter=config.flops_filter, proxy_steps=config.proxy_steps,
                    proxy_seconds=config.proxy_seconds, lr=config.lr,
                    batch_size=config.batch_size, seed=config.seed)
