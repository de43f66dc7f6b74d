"""The search part of results.json: every trial `slimkit optimize` ran, the front it found and
the model it chose, typed like the rest of the file so reports render from it alone."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TrialRecord(_Open):
    number: int
    idea: str | None = None
    runtime: str | None = None
    steps: list[dict[str, Any]] = Field(default_factory=list)
    # complete, pruned (stopped after the slice), failed, interrupted (a killed run's; asked
    # again), running
    state: str
    within_budget: bool | None = None
    fidelity: dict[str, Any] | None = None  # cosine, accuracy_drop on the whole data
    slice: dict[str, Any] | None = None  # the same on the first rows
    quality: dict[str, float | None] | None = None
    estimate: dict[str, float | None] | None = None  # quick speed, one process, one round
    size_bytes: int | None = None
    key: str | None = None  # the artifact's cache key
    artifact: str | None = None  # where the artifact is in the cache
    seconds: float | None = None
    error: str | None = None
    node: str | None = None
    repeat_of: int | None = None  # a trial with the same steps and runtime, whose figures count
    run: int | None = None  # 1 for the first run, 2 for the first resume, ...
    candidate: str | None = None  # its name among the measured finalists


class SearchInfo(_Open):
    budget: dict[str, float | None]
    objective: str
    settings: dict[str, Any] = Field(default_factory=dict)
    workers: str = "local"
    minutes: float | None = None  # wall time of the search, all runs together
    runs: int = 1
    trials: list[TrialRecord] = Field(default_factory=list)
    finalists: list[str] = Field(default_factory=list)  # candidates measured side by side
    front: list[str] = Field(default_factory=list)  # within budget, none better on all of
    # quality, objective and size
    best: str | None = None
    best_dir: str | None = None
    nodes: dict[str, str] = Field(default_factory=dict)  # candidate -> node its speed is from
    advice: dict[str, Any] = Field(default_factory=dict)
    profile: dict[str, Any] | None = None
