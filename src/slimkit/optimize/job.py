"""`slimkit optimize`: profile, advise, search, measure the finalists, hand back the best.

A run folder holds the study's journal, the baseline's reference outputs and the profile, so
`--resume` after a crash or a `kill -9` goes on where the search stopped; the artifacts and
quality figures live in the shared step cache. Everything the user reads (results.json, the
reports, `best/`) is written at the end, atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.bench.harness import BenchOptions
from slimkit.data import DataSpec, load_data
from slimkit.dataset import Dataset
from slimkit.errors import ConfigError
from slimkit.evaluate import primary_metric
from slimkit.formats import reachable
from slimkit.io import atomic_write_text
from slimkit.model import Model, ModelRef, load_model
from slimkit.optimize.settings import SearchConfig
from slimkit.outputs import model_outputs, outputs_key
from slimkit.pipeline import Built, Cache, build, model_key
from slimkit.progress import console
from slimkit.runtimes import runtime_format
from slimkit.runtimes.base import runtime_for_format, runtime_installed, runtime_names

SEARCH_DIR = "search"  # reference outputs and the profile, for a resume
OWN_FILES = {"results.json", "report.md", "report.html", "errors.log", "candidates", "best",
             "recipe.yaml", SEARCH_DIR}


@dataclass
class Job:
    """Everything `slimkit optimize` was asked; a recipe's `search:` section gives the same."""

    name: str
    model: ModelRef
    data: DataSpec
    settings: SearchConfig
    output: Path
    calibration: DataSpec | None = None
    task: str = "auto"
    evaluation: dict[str, Any] = field(default_factory=dict)  # batch_size, output, top_k
    bench: BenchOptions = field(default_factory=BenchOptions)
    cache_dir: Path | None = None
    resume: bool = False
    recipe: dict[str, Any] | None = None


@dataclass
class Setup:
    """What the search starts from, made once and reused by a resume."""

    model: Model
    data: Dataset
    cache: Cache
    baseline: Built
    baseline_runtime: str
    reference: np.ndarray
    reference_file: Path
    task: str
    evaluation: dict[str, Any]
    profile: Any
    reachable: list[str]


def check_folder(out: Path, resume: bool) -> None:
    """Refuse, before any work, a folder holding files slimkit did not write."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out}: exists and is not a directory")
    journal = out / "study.journal"
    if journal.exists() and not resume:
        raise ConfigError(f"{out}: holds a search already; pass --resume to continue it, or "
                          f"choose another folder")
    if resume and not journal.exists():
        raise ConfigError(f"--resume: {out} holds no search to continue")
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir()
                     if p.name not in OWN_FILES and not p.name.startswith("study.journal"))
    if foreign:
        raise ConfigError(f"output {out}: holds files slimkit did not write "
                          f"({', '.join(foreign[:3])}); choose an empty or new folder")


def calibration_spec(job: Job) -> DataSpec | None:
    if job.calibration is not None:
        return job.calibration
    if job.data.source == "example":
        return job.data.model_copy(update={"split": "calibration", "limit": None})
    return None


def resolve_task(task: str, data: Dataset, family: str, reference: np.ndarray,
                 settings: SearchConfig) -> str:
    """`auto`: classification with labels (or an accuracy budget on class scores), sentence
    embeddings for an encoder transformer, else a generic output comparison."""
    if task != "auto":
        return task
    if data.labels is not None or (settings.budget.max_drop is not None and reference.ndim == 2):
        return "classification"
    return "embedding" if family == "encoder_transformer" else "generic"


def prepare(job: Job) -> Setup:
    from slimkit.optimize.profile import Profile, profile

    cache = Cache(job.cache_dir)
    model = load_model(job.model)
    data = load_data(job.data, model)
    start = "torch" if model.format == "hf" else model.format
    base_rt = runtime_for_format(start)
    baseline = build(model, model_key(model), [], runtime_format(base_rt), cache)
    ev = {"batch_size": 32, "output": 0, "top_k": 10, **job.evaluation}
    ev_key = {**ev, "task": "reference"}
    reference = model_outputs(baseline.path, outputs_key(baseline.key, base_rt, ev_key, data),
                              base_rt, data, cache.root, batch_size=ev["batch_size"],
                              output=ev["output"], threads=job.bench.threads)
    folder = job.output / SEARCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    ref_file = folder / "reference.npz"
    tmp = folder / "reference.tmp.npz"
    np.savez(tmp, outputs=reference)
    tmp.replace(ref_file)
    runs = [r for r in runtime_names() if runtime_format(r) in [start, *reachable(start)]
            and runtime_installed(r)]
    prof_file = folder / "profile.json"
    if job.resume and prof_file.is_file():
        prof = Profile.model_validate_json(prof_file.read_text())
    else:
        where = "onnxruntime" if "onnxruntime" in runs else base_rt
        console.print(f"profiling on {where}", highlight=False)
        prof = profile(model, data, where, threads=job.bench.threads,
                       batch_size=job.bench.batch_size, cache=cache,
                       bench=job.bench.model_copy(update={"rounds": 2}))
        atomic_write_text(prof_file, prof.model_dump_json(indent=1))
    task = resolve_task(job.task, data, prof.family, reference, job.settings)
    return Setup(model, data, cache, baseline, base_rt, reference, ref_file, task,
                 {**ev, "task": task}, prof, runs)


def trial_context(job: Job, setup: Setup) -> dict[str, Any]:
    calib = calibration_spec(job)
    return {"model": job.model.model_dump(mode="json"), "data": job.data.model_dump(mode="json"),
            "calibration": calib.model_dump(mode="json") if calib else None,
            "reference": str(setup.reference_file.resolve()),
            "budget": job.settings.budget.model_dump(mode="json"),
            "cache": str(setup.cache.root.resolve()), "evaluation": setup.evaluation,
            "slice": job.settings.slice or max(32, len(setup.data) // 4),
            "threads": job.bench.threads}


def metric_name(setup: Setup) -> str:
    return primary_metric(setup.task, setup.data.labels is not None)  # type: ignore[arg-type]


def job_from_recipe(recipe: Any, resume: bool = False) -> Job:
    """A recipe with a `search:` section, as the job `slimkit optimize` runs."""
    ev = recipe.evaluation
    return Job(name=recipe.name, model=recipe.model, data=recipe.data, settings=recipe.search,
               output=recipe.output_dir, calibration=recipe.calibration, task=ev.task,
               evaluation={"batch_size": ev.batch_size, "output": ev.output, "top_k": ev.top_k},
               bench=recipe.benchmark,
               cache_dir=Path(recipe.cache_dir) if recipe.cache_dir else None, resume=resume,
               recipe=recipe.model_dump(mode="json"))
