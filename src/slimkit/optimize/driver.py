"""Run a whole `slimkit optimize`: prepare, advise, search, measure, choose, write."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path
from typing import Any

from slimkit import __version__
from slimkit.artifact import copy_tree, is_artifact
from slimkit.io import atomic_write_text
from slimkit.machine import describe_machine
from slimkit.optimize.advise import Advice, Idea, advise
from slimkit.optimize.answer import (
    candidate_name,
    finalists,
    measure,
    measured_objective,
    trial_records,
)
from slimkit.optimize.job import Job, Setup, check_folder, metric_name, prepare, trial_context
from slimkit.optimize.search import Loop, search
from slimkit.optimize.study import open_study, requeue_unfinished, stored_ideas
from slimkit.progress import console
from slimkit.results import (
    RESULTS_FILE,
    BenchSettings,
    Candidate,
    DataInfo,
    Machine,
    RunResults,
    save_results,
)
from slimkit.results_search import SearchInfo, TrialRecord

BASELINE = "baseline"


def optimize(job: Job) -> RunResults:
    """The search's results, also written to the run folder with the reports and `best/`."""
    check_folder(job.output, job.resume)
    t0 = time.monotonic()
    setup = prepare(job)
    fresh = advise(setup.profile, job.settings, setup.reachable)
    study = open_study(job.output, job.settings, fresh.ideas, job.resume)
    ideas = stored_ideas(study)
    if not ideas:
        raise_no_ideas(fresh)
    for line in [*(f"try {i.id} on {', '.join(i.runtimes)}: {'; '.join(i.reasons)}"
                   for i in ideas), *fresh.notes, *fresh.skipped]:
        console.print(f"advice: {line}", highlight=False)
    runs = int(study.user_attrs.get("runs", 0)) + 1
    study.set_user_attr("runs", runs)
    if job.resume:
        n = requeue_unfinished(study)
        console.print(f"resuming: {n} interrupted trial(s) asked again", highlight=False)
    from slimkit.optimize.workers import open_workers

    tracker = None
    if job.settings.mlflow:
        from slimkit.optimize.tracking import Tracker

        tracker = Tracker(job.settings.mlflow, job.name)
    workers = open_workers(job.settings.workers)
    errors: list[str] = []
    try:
        loop = Loop(job.settings, ideas, json.dumps(trial_context(job, setup), sort_keys=True),
                    workers, setup.data, job.bench.threads, job.bench.batch_size, runs,
                    lambda m: console.print(m, highlight=False), errors,
                    tracker.trial if tracker else None)
        budget_s = job.settings.minutes * 60 if job.settings.minutes else None
        search(study, loop, t0 + budget_s if budget_s else None)
        records = trial_records(study)
        made = {t.number: t.user_attrs for t in study.get_trials(deepcopy=False)}
        results = answer(job, setup, records, made, workers, fresh, ideas)
    finally:
        workers.close()
    minutes = float(study.user_attrs.get("minutes", 0.0)) + (time.monotonic() - t0) / 60
    study.set_user_attr("minutes", minutes)
    assert results.search is not None
    results.search.minutes = minutes
    results.search.runs = runs
    write(job, setup, results, errors)
    if tracker is not None:
        tracker.answer(results)
    return results


def raise_no_ideas(advice: Advice) -> None:
    from slimkit.errors import ConfigError

    why = "; ".join(advice.skipped) or "no rule applies to this model with these settings"
    raise ConfigError(f"nothing to search: {why}")


def _baseline_candidate(setup: Setup, bench: dict[str, Any]) -> Candidate:
    from slimkit.evaluate import evaluate_outputs
    from slimkit.run import model_bytes

    ev = setup.evaluation
    quality = evaluate_outputs(ev["task"], setup.reference, setup.reference, setup.data.labels,
                               top_k=ev["top_k"])
    size = model_bytes(setup.baseline.path)
    return _candidate(BASELINE, setup.baseline_runtime, setup.baseline.lineage(),
                      setup.baseline.key, size, quality, bench, size, {})


def _candidate(name: str, runtime: str, lineage: list[dict[str, Any]], key: str | None,
               size: int | None, quality: dict[str, Any] | None, bench: dict[str, Any],
               base_size: int | None, reports: dict[str, Any]) -> Candidate:
    from slimkit.run import candidate_doc

    bench = dict(bench)
    error = bench.pop("error", None)
    return candidate_doc(name, runtime, lineage=lineage, key=key,
                         artifact=f"candidates/{name}", size=size, quality=quality,
                         bench=bench, base_size=base_size,
                         error=f"benchmark: {error}" if error else None, details=reports)


def answer(job: Job, setup: Setup, records: list[TrialRecord], made: dict[int, dict[str, Any]],
           workers: Any, advice: Advice, ideas: list[Idea]) -> RunResults:
    """The finalists measured side by side, the front among those within budget, the best."""
    from slimkit.progress import progress_bar

    chosen = finalists(records, job.settings)
    for t in chosen:
        t.candidate = candidate_name(t)
    targets = [(candidate_name(t), Path(str(t.artifact)), str(t.runtime)) for t in chosen]
    spec = {"model": job.model.model_dump(mode="json"), "data": job.data.model_dump(mode="json")}
    with progress_bar("benchmarking finalists", total=None) as advance:
        advance(0, f"{len(targets)} beside the baseline, {job.bench.rounds} rounds")
        measured = measure(workers, (BASELINE, setup.baseline.path, setup.baseline_runtime),
                           targets, setup.data, spec, job.bench)
    base = _baseline_candidate(setup, measured.bench.get(BASELINE, {}))
    cands = [base]
    for t in chosen:
        name = candidate_name(t)
        attrs = made[t.number]
        cands.append(_candidate(name, str(t.runtime), attrs.get("lineage") or [], t.key,
                                t.size_bytes, t.quality, measured.bench.get(name, {}),
                                base.size_bytes, attrs.get("reports") or {}))
    front, best = choose(cands, job, setup)
    return RunResults(
        name=job.name, slimkit_version=__version__,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), task=setup.task,
        primary_metric=metric_name(setup),
        data=DataInfo(name=setup.data.name, examples=len(setup.data),
                      fingerprint=setup.data.fingerprint()),
        machine=Machine.model_validate(describe_machine()),
        benchmark=BenchSettings.model_validate(job.bench.model_dump()), baseline=BASELINE,
        recipe=job.recipe, candidates=cands,
        search=SearchInfo(
            budget=job.settings.budget.model_dump(), objective=job.settings.objective,
            settings=job.settings.model_dump(mode="json"), workers=workers.label,
            trials=records, finalists=[c.name for c in cands[1:]], front=front, best=best,
            best_dir="best" if best else None, nodes=measured.nodes,
            advice={**advice.to_dict(), "ideas": [i.__dict__ for i in ideas]},
            profile=setup.profile.model_dump(mode="json")))


def choose(cands: list[Candidate], job: Job, setup: Setup) -> tuple[list[str], str | None]:
    """The front (quality x measured objective x size, within budget) and the best on the
    objective within budget, the baseline included: no trial may be worse than doing nothing."""
    from slimkit.optimize.answer import front as pareto

    objective = job.settings.objective
    scores: dict[str, tuple[float, ...]] = {}
    for c in cands:
        value = measured_objective(c, objective)
        if c.error or value is None:
            continue
        q = _budget_quality(c, job)
        if q is None:
            continue
        scores[c.name] = (q, value, -float(c.size_bytes or 0))
    on_front = pareto(scores)
    best = max(scores, key=lambda n: (scores[n][1], scores[n][0])) if scores else None
    return [n for n in scores if n in on_front], best


def _budget_quality(c: Candidate, job: Job) -> float | None:
    """Quality in the budget's terms, larger better; None when outside the budget."""
    if c.name == BASELINE:
        return 1.0 if job.settings.budget.min_cosine is not None else 0.0
    q = c.quality or {}
    b = job.settings.budget
    if b.min_cosine is not None:
        cos = q.get("mean_cosine", q.get("cosine"))
        return float(cos) if cos is not None and cos >= b.min_cosine else None
    drop = q.get("accuracy_delta")
    drop = -float(drop) if drop is not None else 100 * (1 - float(q.get("agreement", 0.0)))
    return -drop if drop <= (b.max_drop or 0.0) else None


def write(job: Job, setup: Setup, results: RunResults, errors: list[str]) -> None:
    from slimkit.optimize.card import model_card
    from slimkit.report import write_reports

    out = job.output
    keep = {c.name for c in results.candidates}
    if (out / "candidates").is_dir():
        for old in (out / "candidates").iterdir():
            if old.is_dir() and old.name not in keep and is_artifact(old):
                shutil.rmtree(old)
    paths = {BASELINE: setup.baseline.path}
    for t in results.search.trials if results.search else []:
        if t.candidate:
            paths[t.candidate] = Path(str(t.artifact))
    for c in results.candidates:
        copy_tree(paths[c.name], out / "candidates" / c.name)
    best = results.search.best if results.search else None
    if best:
        copy_tree(paths[best], out / "best")
        chosen = next(c for c in results.candidates if c.name == best)
        atomic_write_text(out / "best" / "MODEL_CARD.md", model_card(results, chosen))
    save_results(out / RESULTS_FILE, results)
    write_reports(out, results)
    (out / "errors.log").unlink(missing_ok=True)
    if errors:
        atomic_write_text(out / "errors.log", "\n\n".join(errors))
