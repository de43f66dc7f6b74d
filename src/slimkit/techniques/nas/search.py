"""The search: Optuna's TPE proposes students, each is cut from the teacher, timed on the
target runtime and, if it fits the latency budget, briefly distilled; the lowest proxy loss
inside the budget wins.

TPE rather than a hand-written evolutionary loop: the space mixes categorical widths and integer
depths, a few dozen trials is the budget TPE is built for, and its constraint handling ranks
every candidate that breaks the latency budget below every one that keeps it, which is exactly
the rule here. Candidates over the budget are not trained (their loss is the inherited one),
and candidates whose FLOPs already exceed it are not even timed: FLOPs only pre-filter, the
budget itself is always checked on a measured latency.

Resuming: the study is an Optuna journal and every scored candidate a JSON record in the step's
checkpoint folder, keyed by its architecture. A search started again after an interrupt reads
the journal (trials that were running are asked again with the same parameters) and takes each
candidate's figures from its record, so nothing finished is scored twice.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.io import atomic_write_json
from slimkit.model import TorchModel
from slimkit.techniques.nas import inherit, score
from slimkit.techniques.nas.space import Architecture, seeds, selection_order, suggest

JOURNAL = "study.journal"


@dataclass
class Settings:
    """What the search needs from the step's config and context."""

    latency: float
    trials: int
    shares: list[float]
    round_to: int
    runtime: str
    threads: int
    serving_batch: int
    rounds: int
    flops_filter: float | None
    proxy_steps: int | None
    proxy_seconds: float | None
    lr: float
    batch_size: int
    seed: int


@dataclass
class Search:
    """One search's teacher, proxy and folder (the journal, the records, the exports)."""

    teacher: inherit.Teacher
    model: TorchModel  # the teacher as a model: inputs, tokenizer, source
    proxy: score.Proxy
    settings: Settings
    folder: Path
    # Candidates scored by this process (not read back from a record), for the report.
    scored: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.folder / "candidates").mkdir(parents=True, exist_ok=True)
        self.teacher_flops = inherit.flops(self.teacher_module, self.teacher)
        self.loss_teacher = score.judge(self.teacher_module, self.proxy, self.teacher.names)[0]
        self._teacher_artifact: Path | None = None

    @property
    def teacher_module(self) -> nn.Module:
        t = self.teacher.cnn or self.teacher.bert
        assert t is not None
        return t.module

    def record_path(self, arch: Architecture) -> Path:
        return self.folder / "candidates" / f"{arch.key()}.json"

    def teacher_artifact(self) -> Path:
        if self._teacher_artifact is None:
            self._teacher_artifact = score.export(self.teacher_module, self.model,
                                                  self.settings.runtime,
                                                  self.folder / "exports" / "teacher",
                                                  self.proxy.train)
        return self._teacher_artifact

    def score(self, arch: Architecture) -> dict[str, Any]:
        """Cut, filter by FLOPs, time, and (inside the budget) distil one candidate."""
        s = self.settings
        started = time.perf_counter()
        self.scored.append(arch.key())
        student = inherit.inherit(self.teacher, arch)
        names = self.teacher.names
        row: dict[str, Any] = {
            "architecture": arch.model_dump(mode="json"), "summary": arch.short(),
            "params": sum(p.numel() for p in student.parameters()),
            "flops_ratio": inherit.flops(student, self.teacher) / self.teacher_flops,
            "latency_ratio": None, "teacher_ms": None, "candidate_ms": None,
            "inherited_loss": score.judge(student, self.proxy, names)[0],
            "proxy_loss": None, "agreement": None, "proxy_steps": 0}
        if s.flops_filter is not None and row["flops_ratio"] > s.latency * s.flops_filter:
            row.update(status="rejected", reason=(
                f"FLOPs ratio {row['flops_ratio']:.3f} > {s.flops_filter:g} x the latency "
                f"budget {s.latency:g}; not timed"))
        else:
            folder = self.folder / "exports" / arch.key()
            try:
                art = score.export(student, self.model, s.runtime, folder, self.proxy.train)
                timing = score.time_against(self.teacher_artifact(), art, s.runtime,
                                            self.proxy.train, threads=s.threads,
                                            batch=s.serving_batch, rounds=s.rounds)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            row.update(latency_ratio=timing.ratio, teacher_ms=timing.teacher_ms,
                       candidate_ms=timing.candidate_ms)
            if timing.ratio > s.latency:
                row.update(status="rejected", reason=f"measured latency ratio {timing.ratio:.3f}"
                                                     f" > budget {s.latency:g}")
            else:
                row["proxy_steps"] = score.train(
                    student, self.teacher_module, self.proxy, steps=s.proxy_steps,
                    seconds=s.proxy_seconds, epochs=None, minutes=None, lr=s.lr,
                    batch_size=s.batch_size, seed=s.seed, checkpoints=None,
                    title=f"nas proxy {arch.short()}")
                row["proxy_loss"], row["agreement"] = score.judge(student, self.proxy, names)
                row.update(status="kept", reason="inside the latency budget")
        row["seconds"] = time.perf_counter() - started
        return row

    def candidate(self, arch: Architecture) -> tuple[dict[str, Any], bool]:
        """The candidate's record, scored now or read back; and whether it was read back."""
        path = self.record_path(arch)
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8")), True
        row = self.score(arch)
        atomic_write_json(path, row)
        return row, False


def _open_study(folder: Path, seed: int, trials: int) -> tuple[Any, bool]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = folder / JOURNAL
    resumed = path.is_file()
    storage = JournalStorage(JournalFileBackend(str(path)))
    with warnings.catch_warnings():  # multivariate is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=max(2, min(8, trials // 2)))
    study = optuna.create_study(study_name="nas", storage=storage, sampler=sampler,
                                direction="minimize", load_if_exists=True)
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:  # killed while running: failed, and asked again with the same choices
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params)
    return study, resumed


def run(search: Search, advance: Callable[..., None]) -> list[dict[str, Any]]:
    """Every candidate of the search in the order first proposed, scored or read back."""
    import optuna

    s = search.settings
    t = search.teacher
    study, resumed = _open_study(search.folder, s.seed, s.trials)
    if not resumed:
        for params in seeds(t.shape, s.latency, s.shares):
            study.enqueue_trial(params, skip_if_exists=True)
    shape = t.shape
    layer_order = selection_order(len(shape.layers), t.layer_order())
    blocks = t.block_importance()
    block_order = {stage: [kept[i] for i in selection_order(
        len(kept), None if blocks is None else blocks[stage])]
        for stage, kept in shape.blocks.items()}
    rows: dict[str, dict[str, Any]] = {}
    for done in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        key = done.user_attrs.get("architecture")
        path = search.folder / "candidates" / f"{key}.json"
        if key is not None and key not in rows and path.is_file():
            rows[key] = {**json.loads(path.read_text(encoding="utf-8")), "resumed": True}
            if rows[key]["latency_ratio"] is not None:
                advance(1, "resumed")
    asked = 0
    # `trials` counts timed candidates: those the FLOPs filter rejects cost a second each.
    # Proposals repeat in a small space: a repeat costs nothing, and the ask count is bounded.
    while _timed(rows) < s.trials and asked < 3 * s.trials:
        asked += 1
        trial = study.ask()
        arch = suggest(trial, shape, s.shares, s.round_to, layer_order, block_order)
        row, was_read = search.candidate(arch)
        fits = row["latency_ratio"] is not None and row["latency_ratio"] <= s.latency
        # At most 0 inside the budget: TPE ranks every trial over it below those inside.
        trial.set_constraint("latency", 0.0 if fits else 1.0 + (row["latency_ratio"]
                                                                 or row["flops_ratio"]))
        trial.set_user_attr("architecture", arch.key())
        value = row["proxy_loss"] if row["proxy_loss"] is not None else row["inherited_loss"]
        if math.isfinite(value):
            study.tell(trial, value)
        else:  # a student that diverged: no figure for the sampler to learn from
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if arch.key() not in rows:
            rows[arch.key()] = {**row, "resumed": was_read}
            ratio = row["latency_ratio"]
            if ratio is not None:
                advance(1, f"{arch.short()} latency x{ratio:.2f} {row['status']}")
    return list(rows.values())


def _timed(rows: dict[str, dict[str, Any]]) -> int:
    return sum(r["latency_ratio"] is not None for r in rows.values())


def winner(rows: list[dict[str, Any]], latency: float) -> dict[str, Any] | None:
    kept = [r for r in rows if r["status"] == "kept" and r["latency_ratio"] <= latency]
    return min(kept, key=lambda r: r["proxy_loss"]) if kept else None
