"""`slimkit optimize` and `slimkit advise`: the search's commands, kept beside the CLI so its
options read in one place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from slimkit.errors import ConfigError, SlimkitError

if TYPE_CHECKING:
    from slimkit.data import DataSpec
    from slimkit.optimize.job import Job
    from slimkit.optimize.settings import SearchConfig

BudgetOption = Annotated[str | None, typer.Option(
    help="quality the result may lose: min_cosine=C (mean output cosine) or max_drop=P "
         "(accuracy points)")]
ObjectiveOption = Annotated[str, typer.Option(
    help="what to make cheaper: throughput, latency, size or memory")]
RuntimesOption = Annotated[list[str] | None, typer.Option(
    "--runtime", "-r", help="a runtime to try (repeat it); default all the model reaches")]
TrainOption = Annotated[float, typer.Option(
    "--train-minutes", help="time cap of each training step in a trial; 0 leaves pruning "
                            "and distillation out")]


def _settings(budget: str | None, objective: str, runtimes: list[str] | None, **more: Any
              ) -> SearchConfig:
    from pydantic import ValidationError

    from slimkit.optimize.settings import SearchConfig, parse_budget

    if budget is None:
        raise ConfigError("--budget: required, e.g. --budget min_cosine=0.99 or "
                          "--budget max_drop=1.0")
    try:
        return SearchConfig(budget=parse_budget(budget), objective=objective,  # type: ignore[arg-type]
                            runtimes=runtimes or None, **more)
    except ValidationError as e:
        err = e.errors()[0]
        where = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "option"
        raise ConfigError(f"{where}: {err['msg'].removeprefix('Value error, ')}"[:300]) from None
    except ValueError as e:
        raise ConfigError(f"--budget {str(e)[:200]}") from None


def optimize(
    model: Annotated[str, typer.Argument(help="model file, HF dir, package.module:function, "
                                              "or a recipe .yaml with a search: section")],
    data: Annotated[str | None, typer.Option(help="evaluation data: an example name (minilm, "
                                                  "digits), .npz, image folder, .jsonl, .txt")
                    ] = None,
    budget: BudgetOption = None,
    objective: ObjectiveOption = "throughput",
    runtime: RuntimesOption = None,
    trials: Annotated[int, typer.Option(help="trials in all, a resumed run's included")] = 24,
    time_: Annotated[str | None, typer.Option("--time", help="no new trial after this long "
                                                             "(30m, 1h, 90s)")] = None,
    train_minutes: TrainOption = 3.0,
    calibration: Annotated[str | None, typer.Option(help="calibration and training data, as "
                                                         "--data")] = None,
    task: Annotated[str, typer.Option(help="auto, classification, embedding or generic")
                    ] = "auto",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="run directory")] = None,
    workers: Annotated[str, typer.Option(help="local, ray, or ray://HOST:PORT")] = "local",
    resume: Annotated[bool, typer.Option(help="continue the search in the run directory")
                      ] = False,
    seed: int = 0,
    rounds: Annotated[int, typer.Option(help="interleaved benchmark rounds of the finalists")
                      ] = 5,
    finalists: int = 6,
    mlflow: Annotated[str | None, typer.Option(help="MLflow tracking URI: log every trial")
                      ] = None,
) -> None:
    """Search techniques x options x runtimes for the cheapest model within a quality budget,
    measure the finalists side by side, and write the best to DIR/best/."""
    from slimkit.cli_common import data_spec as _data_spec
    from slimkit.cli_common import fail as _fail
    from slimkit.optimize.settings import parse_minutes
    from slimkit.summary import print_summary

    try:
        if model.endswith((".yaml", ".yml")):
            job = _recipe_job(model, output, resume, workers)
        else:
            if data is None:
                raise ConfigError("--data: required with a model (or give a recipe .yaml)")
            minutes = _minutes(time_, parse_minutes)
            settings = _settings(budget, objective, runtime, trials=trials, minutes=minutes,
                                 train_minutes=train_minutes, seed=seed, workers=workers,
                                 finalists=finalists, mlflow=mlflow)
            job = _model_job(model, _data_spec(data), settings, output, resume, task,
                             _data_spec(calibration, calib=True) if calibration else None,
                             rounds)
        from slimkit.optimize.driver import optimize as run_search

        results = run_search(job)
    except SlimkitError as e:
        _fail(e)
        return
    print_summary(results)
    from slimkit.optimize.render import print_search

    print_search(results)
    print(f"results: {job.output / 'results.json'}\nreport:  {job.output / 'report.html'}")


def _minutes(text: str | None, parse: Callable[[str], float]) -> float | None:
    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as e:
        raise ConfigError(f"--time {e}") from None


def _model_job(model: str, data: DataSpec, settings: SearchConfig, output: Path | None,
               resume: bool, task: str, calibration: DataSpec | None, rounds: int) -> Job:
    import re

    from slimkit.bench.harness import BenchOptions
    from slimkit.model import ModelRef
    from slimkit.optimize.job import Job

    if task not in ("auto", "classification", "embedding", "generic"):
        raise ConfigError(f"--task {task[:40]!r}: use auto, classification, embedding or generic")
    if rounds < 1:
        raise ConfigError(f"--rounds {rounds}: must be at least 1")
    # a factory is named by its module (`slimkit.examples.digits:load_model` -> digits)
    name = Path(model).stem if Path(model).exists() else model.split(":")[0].rsplit(".", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-._+")[:60] or "model"
    return Job(name=f"{name}-optimize", model=ModelRef(source=model), data=data,
               settings=settings, output=output or Path(f"runs/{name}-optimize"),
               calibration=calibration, task=task, bench=BenchOptions(rounds=rounds),
               resume=resume)


def _recipe_job(path: str, output: Path | None, resume: bool, workers: str) -> Job:
    from slimkit.config import load_recipe
    from slimkit.optimize.job import job_from_recipe

    recipe = load_recipe(path)
    if recipe.search is None:
        raise ConfigError(f"{path}: has no search: section (slimkit run runs its candidates)")
    job = job_from_recipe(recipe, resume)
    if output is not None:
        job.output = output
    if workers != "local":
        job.settings = job.settings.model_copy(update={"workers": workers})
    return job


def advise(
    model: Annotated[str, typer.Argument(help="model file, HF dir or package.module:function")],
    data: Annotated[str, typer.Option(help="evaluation data, as for optimize")],
    budget: BudgetOption = None,
    objective: ObjectiveOption = "throughput",
    runtime: RuntimesOption = None,
    train_minutes: TrainOption = 3.0,
    profile_runtime: Annotated[str, typer.Option("--profile-on", help="runtime to profile on")
                               ] = "onnxruntime",
) -> None:
    """Profile MODEL and say which techniques are worth trying here, and why: the search
    space `slimkit optimize` would explore."""
    from slimkit.cli_common import data_spec as _data_spec
    from slimkit.cli_common import fail as _fail
    from slimkit.data import load_data
    from slimkit.formats import reachable
    from slimkit.model import load_model
    from slimkit.optimize.advise import advise as run_advise
    from slimkit.optimize.profile import profile
    from slimkit.optimize.render import print_advice
    from slimkit.runtimes import runtime_format
    from slimkit.runtimes.base import runtime_names

    try:
        settings = _settings(budget, objective, runtime, train_minutes=train_minutes)
        loaded = load_model(model)
        ds = load_data(_data_spec(data), loaded)
        start = "torch" if loaded.format == "hf" else loaded.format
        runs = [r for r in runtime_names() if runtime_format(r) in [start, *reachable(start)]]
        prof = profile(loaded, ds, profile_runtime)
        advice = run_advise(prof, settings, runs)
    except SlimkitError as e:
        _fail(e)
        return
    print_advice(prof, advice)
