"""Run a recipe: build every candidate, evaluate it, benchmark all of them in one run, serve
each under load when the recipe asks (`loadtest:`), report.

Nothing is written into the run directory until the work is done; then each artifact, the
results and the reports land atomically. Finished steps and quality figures are cached, so a
rerun or an interrupted run resumes where it stopped; speed is always measured afresh, because
a ratio is only worth something when both sides were timed together.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import json
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit import __version__
from slimkit.artifact import REPORT_JSON, copy_tree, is_artifact
from slimkit.bench import Target, run_benchmark
from slimkit.config import CandidateConfig, Recipe
from slimkit.cpu_notes import step_notes
from slimkit.data import Dataset, load_data
from slimkit.errors import ConfigError, SlimkitError
from slimkit.evaluate import evaluate_outputs, primary_metric
from slimkit.evaluate.budget_check import budget_warnings
from slimkit.io import atomic_write_text
from slimkit.machine import describe_machine
from slimkit.model import Model, import_object, load_model
from slimkit.outputs import model_outputs, outputs_key
from slimkit.pipeline import Built, Cache, build, model_key
from slimkit.progress import console, progress_bar
from slimkit.results import (
    RESULTS_FILE,
    Bench,
    BenchSettings,
    Candidate,
    DataInfo,
    LineageStep,
    Machine,
    Ratios,
    RunResults,
    RuntimeInfo,
    ServedLevel,
    save_results,
    step_label,
    step_report,
)
from slimkit.runtimes import runtime_format


@dataclass
class CandidateResult:
    name: str
    runtime: str
    compile: bool = False
    built: Built | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, float] | None = None
    bench: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what is known to lose on this CPU
    served: list[ServedLevel] | None = None  # the recipe's loadtest


def run_recipe(recipe: Recipe) -> dict[str, Any]:
    """The run's results as results.json holds them; `run_results` gives them typed."""
    return run_results(recipe).to_document()


def run_results(recipe: Recipe) -> RunResults:
    """Every candidate built, evaluated and measured; a candidate that fails at any stage
    keeps its error and the run goes on, so one bad step never costs the others' figures."""
    check_output_dir(recipe.output_dir)
    if recipe.loadtest is not None and importlib.util.find_spec("uvicorn") is None:
        raise ConfigError("loadtest: serving needs the serve extra (pip install 'slimkit[serve]')")
    cache = Cache(Path(recipe.cache_dir) if recipe.cache_dir else None)
    base = load_model(recipe.model)
    data = load_data(recipe.data, base)
    errors: list[str] = []
    results = [CandidateResult(c.name, c.runtime, c.compile) for c in recipe.candidates]
    warnings: list[str] = []
    for cand, res in zip(recipe.candidates, results, strict=True):
        res.notes = step_notes(cand.steps, cand.runtime)
        for note in res.notes:
            _warn(warnings, f"{cand.name}: {note}")
    _build_all(recipe, results, base, data, cache, warnings, errors)
    _evaluate_all(recipe, results, data, cache, errors)
    for res in results:  # a budget met on calibration data that the evaluation data breaks
        for text in budget_warnings(res.name, res.details, res.quality):
            _warn(warnings, text)
    _benchmark_all(recipe, results, data)
    if recipe.loadtest is not None:
        _load_all(recipe, results, data, warnings)
    doc = _results_doc(recipe, results, data, warnings)
    _write_run(recipe, results, doc, errors)
    return doc


def _warn(warnings: list[str], text: str) -> None:
    warnings.append(text)
    console.print(f"[yellow]warning:[/yellow] {text}", highlight=False)


def _build_all(recipe: Recipe, results: list[CandidateResult], base: Model, data: Dataset,
               cache: Cache, warnings: list[str], errors: list[str]) -> None:
    """Build every candidate; one that fails keeps its error and the others go on."""
    calib_spec = recipe.calibration_spec
    calib = load_data(calib_spec, base) if calib_spec else None
    base_key = model_key(base)
    log = recipe.output_dir / ERROR_LOG
    warn = functools.partial(_warn, warnings)
    sources: dict[str, tuple[Model, str]] = {}
    calibrations: dict[str, Dataset] = {}

    def calibration(cand: CandidateConfig, model: Model) -> Dataset | None:
        if cand.calibration is None:
            chosen = calib
        else:
            tag = cand.calibration.model_dump_json() + (cand.model.model_dump_json()
                                                         if cand.model else "")
            if tag not in calibrations:
                calibrations[tag] = load_data(cand.calibration, model)
            chosen = calibrations[tag]
        if (chosen is not None and chosen.fingerprint() == data.fingerprint()
                and any(_reads_data(s) for s in cand.steps)):
            text = (f"{cand.name}: calibration/training data is the evaluation data itself "
                    f"(same fingerprint); its quality figures are not held-out")
            if text not in warnings:
                warn(text)
        return chosen

    def source(cand: CandidateConfig) -> tuple[Model, str]:
        if cand.model is None:
            return base, base_key
        tag = cand.model.model_dump_json()
        if tag not in sources:
            m = load_model(cand.model)
            sources[tag] = (m, model_key(m))
        return sources[tag]

    with progress_bar("building", total=len(results)) as advance:
        for cand, res in zip(recipe.candidates, results, strict=True):
            try:
                model, key = source(cand)
                res.built = build(model, key, list(cand.steps), runtime_format(cand.runtime),
                                  cache, data=calibration(cand, model),
                                  threads=recipe.benchmark.threads,
                                  on_step=lambda s, n=cand.name: advance(0, f"{n}: {s}"))
            except SlimkitError as e:
                res.error = str(e)
            except Exception as e:
                res.error = internal_error(e, log)
                errors.append(f"{cand.name}\n{traceback.format_exc()}")
            if res.built is not None:
                res.details = technique_reports(cache, res.built)
            advance(1, cand.name)


ERROR_LOG = "errors.log"
# What slimkit writes into a run folder; anything else there is the user's and stays.
RUN_FILES = {"recipe.yaml", "results.json", "report.md", "report.html", ERROR_LOG, "candidates"}


def check_output_dir(out: Path) -> None:
    """Refuse, before any work, a run folder that is a file or holds files slimkit did not
    write: a rerun replaces its own outputs, never a user's."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out}: exists and is not a directory")
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ConfigError(f"output {out}: holds files slimkit did not write ({shown}); "
                          f"choose an empty or new folder")
    cands = out / "candidates"
    if cands.exists() and (not cands.is_dir() or any(
            not (p.is_dir() and is_artifact(p)) for p in cands.iterdir())):
        raise ConfigError(f"output {out}: {cands} holds files that are not slimkit "
                          f"artifacts; choose an empty or new folder")


_SLIMKIT_DIR = Path(__file__).resolve().parent
_LIBRARY_DIRS = tuple({str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix)})


def _user_frame(tb: traceback.StackSummary) -> traceback.FrameSummary | None:
    """The innermost frame in the user's own code (a factory, a metric), if any."""
    for frame in reversed(tb):
        path = Path(frame.filename).resolve()
        if not (path.is_relative_to(_SLIMKIT_DIR) or str(path).startswith(_LIBRARY_DIRS)
                or frame.filename.startswith("<")):
            return frame
    return None


def internal_error(e: BaseException, log: Path) -> str:
    """The summary's line for an unexpected exception: its type, where it was raised, and
    where the whole traceback is, never a bare message such as `float division by zero`.
    Raised inside the user's own code it says so; otherwise it is slimkit's bug."""
    tb = traceback.extract_tb(e.__traceback__)
    user = _user_frame(tb)
    if user is not None:
        return (f"error in your code: {type(e).__name__}: {str(e)[:200]} at "
                f"{Path(user.filename).name}:{user.lineno} (traceback in {log})")
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"internal error: {type(e).__name__}{where} (traceback in {log})"


def _reads_data(step: Any) -> bool:
    from slimkit.registry import implementations

    return step.needs_data() or any(i.requires_data for i in implementations(step).values())


def _evaluate_all(recipe: Recipe, results: list[CandidateResult], data: Dataset, cache: Cache,
                  errors: list[str]) -> None:
    ev = recipe.evaluation
    user = import_object(ev.user_metric, "user metric") if ev.user_metric else None
    order = sorted(results, key=lambda r: r.name != recipe.baseline.name)  # baseline first
    reference: np.ndarray | None = None
    ref_key = ""
    with progress_bar("evaluating", total=len(data) * len(results)) as advance:
        for res in order:
            if res.built is None:
                advance(len(data))
                continue
            key = outputs_key(res.built.key, res.runtime, ev.model_dump(), data, ref_key,
                              res.compile)
            try:
                outputs = model_outputs(res.built.path, key, res.runtime, data, cache.root,
                                        batch_size=ev.batch_size, output=ev.output,
                                        threads=recipe.benchmark.threads, compile=res.compile,
                                        progress=lambda n, r=res.name: advance(n, r))
            except SlimkitError as e:
                res.error = str(e)
                continue
            except Exception as e:
                res.error = internal_error(e, recipe.output_dir / ERROR_LOG)
                errors.append(f"{res.name} (evaluation)\n{traceback.format_exc()}")
                continue
            if res.name == recipe.baseline.name:
                reference, ref_key = outputs, res.built.key
            res.quality = evaluate_outputs(ev.task, outputs, reference, data.labels,
                                           top_k=ev.top_k, user_metric=user)


def _benchmark_all(recipe: Recipe, results: list[CandidateResult], data: Dataset) -> None:
    targets = [Target(r.name, r.built.path, r.runtime, r.compile, trust_code=True) for r in results
               if r.built is not None and r.error is None]
    if not targets:
        return
    opts = recipe.benchmark
    steps = len(targets) * opts.rounds
    with progress_bar("benchmarking", total=steps) as advance:
        measured = run_benchmark(targets, data, opts, recipe.baseline.name,
                                 progress=lambda note: advance(1, note))
    for r in results:
        if r.name in measured:
            r.bench = measured[r.name]
            if "error" in r.bench:
                r.error = f"benchmark: {r.bench.pop('error')}"


def _load_all(recipe: Recipe, results: list[CandidateResult], data: Dataset,
              warnings: list[str]) -> None:
    """Each measured candidate behind `slimkit serve`, one after another (never two servers
    sharing the cores); one that cannot be served gets a warning and the rest go on."""
    from slimkit.serve.under_load import put_under_load

    spec = recipe.loadtest
    assert spec is not None
    chosen = [r for r in results if r.built is not None and r.error is None
              and (spec.candidates is None or r.name in spec.candidates)]
    with tempfile.TemporaryDirectory(prefix="slimkit-serve-") as logs, \
            progress_bar("load testing", total=len(chosen) * len(spec.concurrency)) as advance:
        for r in chosen:
            assert r.built is not None
            try:
                r.served = put_under_load(r.built.path, data, spec, recipe.benchmark.threads,
                                          Path(logs) / f"{r.name}.log",
                                          progress=lambda n, c=r.name: advance(1, f"{c} {n}"))
            except SlimkitError as e:
                _warn(warnings, f"{r.name}: not load tested: {e}")


def technique_reports(cache: Cache, built: Built) -> dict[str, Any]:
    """The report each step left beside its artifact, keyed by its place in the lineage and
    its name ("2:static_int8"), so two steps of one technique both survive."""
    found = {}
    for k, step in enumerate(built.steps):
        path = cache.path(step.key) / REPORT_JSON
        if path.is_file():
            found[step_label(k, step.step)] = json.loads(path.read_text())
    return found


def model_bytes(path: Path) -> int:
    """Bytes a deployment ships: the model files, not the reports kept beside them; which
    files those are, the artifact's format says."""
    from slimkit.artifact import read_record
    from slimkit.formats import get_format

    return get_format(read_record(path).format).size(path)


def candidate_doc(name: str, runtime: str, *, lineage: list[dict[str, Any]], key: str | None,
                  artifact: str | None, size: int | None, quality: dict[str, Any] | None,
                  bench: dict[str, Any], base_size: int | None, error: str | None = None,
                  details: dict[str, Any] | None = None, notes: list[str] | None = None,
                  served: list[ServedLevel] | None = None) -> Candidate:
    """One candidate as results.json holds it, from what a run or a search measured: the
    size ratio joins the speed ratios, and a candidate that failed keeps none."""
    bench = dict(bench)
    ratios = bench.pop("ratios", None)
    info = bench.pop("runtime_info", None)
    if ratios is not None and size and base_size:
        ratios = {**ratios, "size": size / base_size}
    return Candidate(
        name=name, runtime=runtime,
        runtime_info=RuntimeInfo.model_validate(info) if info else None,
        steps=[LineageStep.model_validate(s) for s in lineage], key=key, artifact=artifact,
        size_bytes=size, quality=quality,
        bench=Bench.model_validate(bench) if bench else None,
        ratios=Ratios.model_validate(ratios) if ratios is not None and error is None else None,
        error=error,
        details={label: step_report(label, rep) for label, rep in (details or {}).items()}
        or None,
        cpu_notes=notes or [],
        served=served,
    )


def _candidate(r: CandidateResult, base_size: int | None) -> Candidate:
    built = r.built
    return candidate_doc(
        r.name, r.runtime, lineage=built.lineage() if built else [],
        key=built.key if built else None,
        artifact=f"candidates/{r.name}" if built else None,
        size=model_bytes(built.path) if built else None, quality=r.quality, bench=r.bench,
        base_size=base_size, error=r.error, details=r.details, notes=r.notes,
        served=r.served)


def _results_doc(recipe: Recipe, results: list[CandidateResult], data: Dataset,
                 warnings: list[str]) -> RunResults:
    base = next(r for r in results if r.name == recipe.baseline.name)
    base_size = model_bytes(base.built.path) if base.built else None
    return RunResults(
        name=recipe.name, slimkit_version=__version__,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        task=recipe.evaluation.task,
        primary_metric=primary_metric(recipe.evaluation.task, data.labels is not None),
        data=DataInfo(name=data.name, examples=len(data), fingerprint=data.fingerprint()),
        machine=Machine.model_validate(describe_machine()),
        benchmark=BenchSettings.model_validate(recipe.benchmark.model_dump()),
        baseline=recipe.baseline.name,
        recipe=recipe.model_dump(mode="json"),
        warnings=warnings,
        candidates=[_candidate(r, base_size) for r in results],
        loadtest=recipe.loadtest.model_dump(mode="json") if recipe.loadtest else None,
    )


def _write_run(recipe: Recipe, results: list[CandidateResult], doc: RunResults,
               errors: list[str]) -> None:
    from slimkit.report import write_reports

    out = recipe.output_dir
    # The output folder describes this run alone: what an earlier run left there (a candidate
    # since renamed or failed, an error log) would be read as this run's.
    kept = {r.name for r in results if r.built is not None}
    if (out / "candidates").is_dir():
        for old in (out / "candidates").iterdir():
            if old.is_dir() and old.name not in kept and is_artifact(old):
                shutil.rmtree(old)
    for r in results:
        if r.built is not None:
            copy_tree(r.built.path, out / "candidates" / r.name)
    atomic_write_text(out / "recipe.yaml", recipe.to_yaml())
    save_results(out / RESULTS_FILE, doc)
    write_reports(out, doc)
    (out / ERROR_LOG).unlink(missing_ok=True)
    if errors:
        atomic_write_text(out / ERROR_LOG, "\n\n".join(errors))
        console.print(f"[yellow]{len(errors)} internal error(s); tracebacks in "
                      f"{out / ERROR_LOG}")
