"""From trials to an answer: the finalists measured side by side with the baseline, the
Pareto front of quality x objective x size among those within budget, and the chosen model.

Every speed on the front comes from one interleaved benchmark per node, beside that node's
own baseline, so the ratios are comparable; the quick per-trial figures only chose finalists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimkit.bench import Target, run_benchmark
from slimkit.bench.harness import BenchOptions
from slimkit.dataset import Dataset
from slimkit.optimize.settings import SearchConfig
from slimkit.results import Candidate
from slimkit.results_search import TrialRecord

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def trial_records(study: Any) -> list[TrialRecord]:
    """Every trial of the study as results.json keeps it."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":  # queued for a later run, never started
            continue
        a = t.user_attrs
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed",
                 "RUNNING": "running", "WAITING": "waiting"}.get(t.state.name, t.state.name)
        if state == "failed" and study.user_attrs.get(f"interrupted.{t.number}"):
            state = "interrupted"
        fid = a.get("fidelity")
        out.append(TrialRecord(
            number=t.number, idea=a.get("idea"), runtime=a.get("runtime"),
            steps=a.get("steps") or [], state=state,
            within_budget=fid.get("within") if fid else None, fidelity=fid,
            slice=a.get("slice"), quality=a.get("quality"), estimate=a.get("estimate"),
            size_bytes=a.get("size_bytes"), key=a.get("key"), artifact=a.get("artifact"),
            seconds=a.get("seconds"), error=a.get("error"),
            node=a.get("node"), repeat_of=a.get("repeat_of"), run=a.get("run")))
    return out


def candidate_name(t: TrialRecord) -> str:
    chain = "+".join(next(iter(s)) for s in t.steps) or "fp32"
    return _UNSAFE.sub("-", f"t{t.number:03d}-{t.runtime}-{chain}")[:100]


def _objective(t: TrialRecord, objective: str) -> float | None:
    """Larger is better, from the quick estimate, to rank trials for the final measurement."""
    if objective == "size":
        return -float(t.size_bytes) if t.size_bytes else None
    est = t.estimate or {}
    value = est.get({"throughput": "throughput", "latency": "latency_ms",
                     "memory": "peak_rss_mb"}[objective])
    if value is None:
        return None
    return float(value) if objective == "throughput" else -float(value)


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """`a` is at least as good as `b` everywhere and better somewhere (larger is better)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and a != b


def front(scores: dict[str, tuple[float, ...]]) -> list[str]:
    return [n for n, s in scores.items()
            if not any(dominates(o, s) for m, o in scores.items() if m != n)]


def _quality(t: TrialRecord, settings: SearchConfig) -> float:
    fid = t.fidelity or {}
    if settings.budget.min_cosine is not None:
        return float(fid.get("cosine") or 0.0)
    return -float(fid.get("accuracy_drop") or 0.0)


def finalists(trials: list[TrialRecord], settings: SearchConfig) -> list[TrialRecord]:
    """Within budget, one per artifact: the estimated front first, then the best of the rest
    by the objective, up to `settings.finalists`."""
    seen: dict[tuple[str, str], TrialRecord] = {}
    for t in trials:
        if t.state == "complete" and t.within_budget and t.repeat_of is None \
                and _objective(t, settings.objective) is not None:
            seen.setdefault((str(t.runtime), str(t.steps)), t)
    pool = list(seen.values())
    scores = {candidate_name(t): (_quality(t, settings), _objective(t, settings.objective) or 0.0,
                                  -float(t.size_bytes or 0)) for t in pool}
    on_front = set(front(scores))
    ranked = sorted(pool, key=lambda t: (candidate_name(t) not in on_front,
                                         -(_objective(t, settings.objective) or 0.0)))
    return ranked[: settings.finalists]


@dataclass
class Measured:
    bench: dict[str, dict[str, Any]]
    nodes: dict[str, str]


def bench_group(payload: dict[str, Any]) -> dict[str, Any]:
    """One node's share of the finalists, timed serially beside that node's baseline."""
    import socket

    from slimkit.data import DataSpec, load_data
    from slimkit.model import ModelRef, load_model

    data = payload.get("_data")
    if data is None:
        model = load_model(ModelRef.model_validate(payload["model"]))
        data = load_data(DataSpec.model_validate(payload["data"]), model)
    targets = [Target(n, Path(p), r, trust_code=True) for n, p, r in payload["targets"]]
    opts = BenchOptions.model_validate(payload["bench"])
    measured = run_benchmark(targets, data, opts, payload["baseline"])
    return {"node": socket.gethostname(), "bench": measured}


def measure(workers: Any, baseline: tuple[str, Path, str], chosen: list[tuple[str, Path, str]],
            data: Dataset, spec: dict[str, Any], bench: BenchOptions,
            progress: Any = None) -> Measured:
    """Interleaved rounds of the baseline and the finalists: on this machine when the workers
    have one node, else split across nodes, each beside its own baseline."""
    nodes = workers.nodes()
    groups = [chosen[k::len(nodes)] for k in range(len(nodes))] if len(nodes) > 1 else [chosen]
    out = Measured({}, {})
    for node, group in zip(nodes, groups, strict=False):
        if not group and out.bench:
            continue
        payload = {**spec, "targets": [[n, str(p), r] for n, p, r in [baseline, *group]],
                   "bench": bench.model_dump(), "baseline": baseline[0]}
        if len(nodes) == 1:
            got = bench_group({**payload, "_data": data})
        else:
            got = workers.on_node(node, bench_group, payload)
            if not isinstance(got, dict):
                got = {"node": node, "bench": {n: {"error": got.error} for n, _, _ in group}}
        for name, figures in got["bench"].items():
            key = name if name != baseline[0] or len(nodes) == 1 else f"{name}@{got['node']}"
            out.bench[key] = figures
            out.nodes[key] = got["node"]
    return out


def measured_objective(c: Candidate, objective: str) -> float | None:
    """Larger is better, from the side-by-side measurement."""
    if objective == "size":
        return -float(c.size_bytes) if c.size_bytes else None
    if objective == "memory":
        return -float(c.bench.peak_rss_mb) if c.bench and c.bench.peak_rss_mb else None
    if c.ratios is None:
        return None
    return c.ratios.throughput if objective == "throughput" else c.ratios.latency
