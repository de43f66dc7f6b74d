"""The search loop: ask Optuna for a batch of trials, build and score them where the workers
are, measure the speed of those that can still meet the budget, tell the study, repeat.

Batches are synchronous and their size does not depend on the workers, so a seed gives the
same trials on one process or on a Ray cluster (for objectives that are not timed: a timed
figure differs a little between any two runs). Speed is measured here, one trial at a time,
while no build runs, because two timings on one machine at once would both be wrong; these
per-trial figures only guide the search, and the finalists are measured again side by side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimkit.bench import Target, run_benchmark
from slimkit.bench.harness import BenchOptions
from slimkit.dataset import Dataset
from slimkit.optimize.advise import Idea
from slimkit.optimize.settings import SearchConfig
from slimkit.optimize.study import trial_steps
from slimkit.optimize.trial import run_trial
from slimkit.progress import console, progress_bar

# A quick look at one trial's speed: enough to rank trials, not to claim a ratio.
QUICK = BenchOptions(rounds=1, warmup=2, latency_runs=10, throughput_runs=2)


@dataclass
class Speed:
    """A trial's quick figures, and the baseline's taken the same way, so an estimate is a
    ratio to a baseline measured by the same method on the same machine."""

    throughput: float | None = None
    latency_ms: float | None = None
    peak_rss_mb: float | None = None


def quick_speed(artifact: Path, runtime: str, data: Dataset, threads: int, batch_size: int
                ) -> Speed | str:
    opts = QUICK.model_copy(update={"threads": threads, "batch_size": batch_size})
    got = run_benchmark([Target("trial", artifact, runtime, trust_code=True)], data, opts)
    m = got["trial"]
    if "error" in m:
        return str(m["error"])
    return Speed(m["throughput"], m["latency_ms"]["p50"], m["peak_rss_mb"])


def objective_value(objective: str, speed: Speed | None, size: int) -> float | None:
    if objective == "size":
        return float(size)
    if speed is None:
        return None
    return {"throughput": speed.throughput, "latency": speed.latency_ms,
            "memory": speed.peak_rss_mb}[objective]


def quality_value(settings: SearchConfig, fidelity: dict[str, Any]) -> float:
    if settings.budget.min_cosine is not None:
        return float(fidelity["cosine"])
    return float(fidelity["accuracy_drop"] or 0.0)


def constraint(settings: SearchConfig, fidelity: dict[str, Any]) -> float:
    """At most 0 inside the budget, in the budget's own unit."""
    b = settings.budget
    if b.min_cosine is not None:
        return float(b.min_cosine - fidelity["cosine"])
    return float((fidelity["accuracy_drop"] or 0.0) - (b.max_drop or 0.0))


@dataclass
class Loop:
    """What the loop needs besides the study: where trials run and how they are measured."""

    settings: SearchConfig
    ideas: list[Idea]
    context: str  # the trials' shared context, as JSON
    workers: Any  # slimkit.optimize.workers.Workers
    data: Dataset
    threads: int
    batch_size: int
    run_number: int
    log: Callable[[str], None]
    errors: list[str]  # tracebacks of trials that failed inside slimkit, for errors.log
    told: Callable[[Any], None] | None = None  # called with each finished trial (MLflow)


def _ask(study: Any, loop: Loop, count: int) -> list[tuple[Any, dict[str, Any]]]:
    asked = []
    for _ in range(count):
        trial = study.ask()
        idea, steps, runtime = trial_steps(trial, loop.ideas, loop.settings)
        trial.set_user_attr("idea", idea.id)
        trial.set_user_attr("steps", steps)
        trial.set_user_attr("runtime", runtime)
        trial.set_user_attr("run", loop.run_number)
        asked.append((trial, {"context": loop.context, "steps": steps, "runtime": runtime}))
    return asked


def _repeat_of(study: Any, steps: list[dict[str, Any]], runtime: str) -> Any:
    """A finished trial with the same steps and runtime: its figures stand for this one."""
    import optuna

    same = json.dumps([steps, runtime], sort_keys=True)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if json.dumps([t.user_attrs.get("steps"), t.user_attrs.get("runtime")],
                      sort_keys=True) == same:
            return t
    return None


def _tell(study: Any, loop: Loop, trial: Any, result: dict[str, Any]) -> str:
    import optuna

    for key in ("state", "error", "key", "artifact", "size_bytes", "slice", "fidelity",
                "quality", "seconds", "node", "lineage", "reports"):
        if key in result:
            trial.set_user_attr(key, result[key])
    state = result.get("state")
    if result.get("traceback"):
        loop.errors.append(f"trial {trial.number}\n{result['traceback']}")
    if state == "failed":
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return "failed"
    if state == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    speed: Speed | str | None = None
    if result.get("estimate"):
        speed = Speed(**result["estimate"])
    elif loop.settings.objective != "size":
        speed = quick_speed(Path(result["artifact"]), trial.user_attrs["runtime"], loop.data,
                            loop.threads, loop.batch_size)
    if isinstance(speed, str):
        trial.set_user_attr("error", f"benchmark: {speed}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return "failed"
    if speed is not None:
        trial.set_user_attr("estimate", speed.__dict__)
    value = objective_value(loop.settings.objective, speed, result["size_bytes"])
    fid = result["fidelity"]
    # Feasible at 0 or below: the sampler keeps over-budget trials off the front it models.
    trial.set_constraint("budget", constraint(loop.settings, fid))
    study.tell(trial, [quality_value(loop.settings, fid), value])
    return "within budget" if fid["within"] else "over budget"


def finished(study: Any) -> int:
    """Trials that ran to an end (complete, stopped at the slice, or failed on their own)."""
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=done)
               if not study.user_attrs.get(f"interrupted.{t.number}"))


def search(study: Any, loop: Loop, deadline: float | None) -> int:
    """Run trials until the study holds `trials` finished ones or the time is up; returns
    how many this call ran."""
    ran = 0
    total = loop.settings.trials
    with progress_bar("searching", total=total) as advance:
        advance(finished(study), "resumed" if finished(study) else "")
        while finished(study) < total:
            if deadline is not None and time.monotonic() > deadline:
                loop.log(f"time is up after {ran} trial(s) in this run")
                break
            asked = _ask(study, loop, min(loop.settings.batch, total - finished(study)))
            todo, results = [], {}
            for trial, payload in asked:
                earlier = _repeat_of(study, payload["steps"], payload["runtime"])
                if earlier is not None:
                    results[trial.number] = {**{k: earlier.user_attrs.get(k) for k in (
                        "state", "key", "artifact", "size_bytes", "slice", "fidelity",
                        "quality", "lineage", "reports", "estimate")}, "seconds": 0.0,
                        "repeat_of": earlier.number}
                    trial.set_user_attr("repeat_of", earlier.number)
                else:
                    todo.append((trial, payload))
            got = loop.workers.map(run_trial, [p for _, p in todo])
            for (trial, _), res in zip(todo, got, strict=True):
                results[trial.number] = res if isinstance(res, dict) else {
                    "state": "failed", "error": res.error, "traceback": res.traceback}
            for trial, payload in asked:
                outcome = _tell(study, loop, trial, results[trial.number])
                if loop.told is not None:
                    loop.told(study.get_trials(deepcopy=False)[trial.number])
                ran += 1
                label = f"#{trial.number} {payload['runtime']} {_chain(payload['steps'])}"
                advance(1, f"{label}: {outcome}")
                console.print(f"trial {label}: {outcome}", highlight=False)
    return ran


def _chain(steps: list[dict[str, Any]]) -> str:
    return " → ".join(next(iter(s)) for s in steps) or "as is"
