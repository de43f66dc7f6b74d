"""The Python API; the CLI calls these and nothing else.

Each function takes a handful of arguments; the rest sit in a keyword-only options object.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from slimkit.artifact import check_output_folder, copy_tree
from slimkit.bench.harness import BenchOptions, Target, run_benchmark
from slimkit.config import Recipe, load_recipe
from slimkit.data import Dataset, DataSpec, load_data, synthetic
from slimkit.errors import ConfigError
from slimkit.evaluate.evaluator import Task, collect_outputs, evaluate_outputs
from slimkit.model import Format, Model, ModelRef, load_model
from slimkit.pipeline import Built, Cache, build, model_key
from slimkit.registry import TechniqueConfig, parse_step
from slimkit.runtimes import RuntimeOptions, get_runtime, runtime_format
from slimkit.runtimes.base import runtime_for_format


def _is_folder(model: Model | ModelRef | str) -> bool:
    from slimkit.artifact import is_artifact

    return isinstance(model, str) and Path(model).is_dir() and is_artifact(Path(model))


def _model(model: Model | ModelRef | str, trust_code: bool = False) -> Model:
    """A loaded model from a source, a ModelRef, or a slimkit artifact directory.

    A factory the caller names is the caller's own code and runs; a folder is someone's
    record, whose factories run only with `trust_code` (see `slimkit.artifact`)."""
    from slimkit.artifact import load_artifact

    if _is_folder(model):
        return load_artifact(Path(str(model)), trust_code=trust_code)
    return load_model(model) if isinstance(model, (ModelRef, str)) else model


def run(recipe: Recipe | str | Path) -> dict[str, Any]:
    """Run a recipe and return its results (also written to the run directory)."""
    from slimkit.run import run_recipe

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if recipe.search is not None:
        return optimize(recipe)
    return run_recipe(recipe)


def optimize(recipe: Recipe | str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Search a recipe's `search:` space (same as `slimkit optimize RECIPE.yaml`); the best
    model lands in the run folder's `best/`."""
    from slimkit.optimize.driver import optimize as run_search
    from slimkit.optimize.job import job_from_recipe

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if recipe.search is None:
        raise ConfigError("the recipe has no search: section")
    return run_search(job_from_recipe(recipe, resume)).to_document()


def compress(model: Model | ModelRef | str, steps: list[TechniqueConfig | dict[str, Any]],
             runtime: str = "onnxruntime", *, output: Path | None = None,
             data: Dataset | None = None, cache_dir: Path | None = None,
             trust_code: bool = False) -> Built:
    """Apply `steps` and convert for `runtime`; the artifact is cached and optionally copied.

    `trust_code`: an artifact folder given as `model` may call the factories it names."""
    if output is not None:
        check_output_folder(Path(output))  # before the work, not after
    m = _model(model, trust_code)
    configs = []
    for k, s in enumerate(steps):
        try:
            configs.append(parse_step(s))
        except ValueError as e:
            raise ConfigError(f"steps[{k}]: {e}") from None
    built = build(m, model_key(m), configs, runtime_format(runtime), Cache(cache_dir), data=data)
    if output is not None:
        copy_tree(built.path, Path(output))
    return built


def export(model: Model | ModelRef | str, to: Format | str, output: Path,
           *, cache_dir: Path | None = None, trust_code: bool = False) -> Path:
    """Export to `onnx`, `openvino` or `litert`; returns the artifact directory.

    `output` must be new, empty or an earlier artifact: a folder holding anything else is
    refused before any work. `trust_code` as in `compress`."""
    if to not in ("onnx", "openvino", "litert"):
        raise ConfigError(f"--to {to!r}: choose onnx, openvino or litert")
    check_output_folder(Path(output))
    m = _model(model, trust_code)
    built = build(m, model_key(m), [], to, Cache(cache_dir))  # type: ignore[arg-type]
    copy_tree(built.path, Path(output))
    return Path(output)


def evaluate(model: Model | ModelRef | str, data: Dataset | DataSpec, task: Task = "generic",
             *, runtime: str | None = None, reference: Any = None, threads: int = 2,
             batch_size: int = 32, trust_code: bool = False) -> dict[str, float]:
    """Quality of `model` on `data`; `reference` holds the baseline outputs, if any.
    `trust_code` as in `compress`."""
    m = _model(model, trust_code)
    ds = data if isinstance(data, Dataset) else load_data(data, m)
    rt = get_runtime(runtime or runtime_for_format(m.format), RuntimeOptions(threads=threads))
    outputs = collect_outputs(rt.load(m), ds, batch_size)
    return evaluate_outputs(task, outputs, reference, ds.labels)


class BenchmarkOptions(BenchOptions):
    model_config = ConfigDict(extra="forbid", frozen=True)

    runtimes: list[str] = Field(default_factory=list, description="default: each model's own")
    dims: dict[str, int] = Field(default_factory=dict, description="sizes of dynamic axes")
    data: str | None = Field(None, description=".npz of inputs; default synthetic from the "
                                               "input signature")
    cache_dir: str | None = None


def benchmark(models: list[str], *, options: BenchmarkOptions | None = None,
              trust_code: bool = False) -> dict[str, Any]:
    """Benchmark each model on each runtime in one interleaved run; ratios vs the first.

    `trust_code`: artifact folders among `models` may call the factories they name. The
    workers get the same decision, except for a factory named here, which is the caller's."""
    opts = options or BenchmarkOptions()
    cache = Cache(Path(opts.cache_dir) if opts.cache_dir else None)
    targets: list[Target] = []
    first: Model | None = None
    for src in models:
        m = _model(src, trust_code)
        first = first or m
        trusted = trust_code or not _is_folder(src)
        for rt in opts.runtimes or [runtime_for_format(m.format)]:
            built = build(m, model_key(m), [], runtime_format(rt), cache)
            name = f"{Path(src).name or src} @ {rt}"
            targets.append(Target(name, built.path, rt, trust_code=trusted))
    assert first is not None
    n = max(opts.batch_size * 4, 32)
    if opts.data:
        ds = load_data(DataSpec(source="npz", path=opts.data), first)
    else:
        ds = synthetic(first.inputs, n, opts.dims)
    bench_opts = BenchOptions(**opts.model_dump(include=set(BenchOptions.model_fields)))
    results = run_benchmark(targets, ds, bench_opts)
    return {"options": opts.model_dump(), "data": ds.name, "results": results,
            "baseline": targets[0].name}


DEFAULT_METHOD = {"onnxruntime": "dynamic_int8", "openvino": "nncf_int8", "torch": "torchao",
                  "litert": "litert_int8"}


class CompareOptions(BaseModel):
    """What a one-technique command shares: where it runs, how it is judged and measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: str = "onnxruntime"
    settings: dict[str, Any] = Field(default_factory=dict, description="the technique's options")
    task: Task = "generic"
    calibration: DataSpec | None = Field(None, description="calibration / training data")
    output: str | None = None
    benchmark: BenchOptions = Field(default_factory=lambda: BenchOptions(rounds=3))


class QuantizeOptions(CompareOptions):
    method: str | None = Field(None, description="technique; default by runtime")
    min_cosine: float | None = None
    max_drop: float | None = None
    # Torch steps that prepare a CNN's weights for int8, in the order they run
    equalize: bool = Field(False, description="cross-layer equalization first")
    bias_correct: bool = Field(False, description="correct each layer's int8 output shift")
    adaround: bool = Field(False, description="learned rounding of the weights")


class PruneOptions(CompareOptions):
    method: str = Field("prune_channels", description="a pruning technique")
    distill: dict[str, Any] | None = Field(
        default_factory=dict, description="options of the distillation that recovers quality "
        "after pruning (after prune_transformer: hidden all, schedule linear unless set); "
        "None prunes only")


class DistillOptions(CompareOptions):
    teacher: str | None = Field(None, description="teacher model; default the model itself "
                                "before any step")


def _versus(model: str, data: DataSpec, opts: CompareOptions, label: str,
            steps: list[dict[str, Any]], baseline: str | None = None) -> dict[str, Any]:
    """A two-candidate run on one runtime: the reference model in float against `model`
    with `steps`, with the usual results and reports."""
    from slimkit.config import parse_recipe

    for given in (model, baseline):
        if given is not None and _is_folder(given):
            raise ConfigError(f"{given}: an artifact folder cannot be the model here; give a "
                              f"factory, a Hugging Face directory, or the folder's .onnx/.xml")
    name = Path(model).stem if Path(model).exists() else model.rsplit(":", 1)[-1]
    # the run's name is a folder name: a model file called `My Model.onnx` must not fail it
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-._+")[:60] or "model"
    compiled = {"compile": True} if opts.runtime == "torch" else {}
    first: dict[str, Any] = {"name": f"{opts.runtime}-float", "runtime": opts.runtime,
                             "baseline": True, **compiled}
    if baseline is not None:
        first["model"] = {"source": baseline}
    raw = {
        "name": f"{name}-{label}",
        "model": {"source": model},
        "data": data.model_dump(),
        "calibration": opts.calibration.model_dump() if opts.calibration else None,
        "evaluation": {"task": opts.task},
        "benchmark": opts.benchmark.model_dump(),
        "candidates": [first, {"name": f"{opts.runtime}-{label}", "runtime": opts.runtime,
                               "steps": steps, **compiled}],
        "output": opts.output,
    }
    return run(parse_recipe(raw, f"slimkit {label}"))


def quantize(model: str, data: DataSpec, *, options: QuantizeOptions | None = None
             ) -> dict[str, Any]:
    """Quantize `model` for a runtime, within an optional quality budget, and measure it
    against the same model in float on that runtime."""
    opts = options or QuantizeOptions()
    method = opts.method or DEFAULT_METHOD.get(opts.runtime, "dynamic_int8")
    settings = dict(opts.settings)
    if opts.min_cosine is not None or opts.max_drop is not None:
        settings["budget"] = {"min_cosine": opts.min_cosine, "max_drop": opts.max_drop}
    prepare = [{name: {}} for name, on in (("equalize", opts.equalize),
                                           ("bias_correct", opts.bias_correct),
                                           ("adaround", opts.adaround)) if on]
    return _versus(model, data, opts, method, [*prepare, {method: settings}])


def prune(model: str, data: DataSpec, *, options: PruneOptions | None = None) -> dict[str, Any]:
    """Prune `model`, recover it by distillation from the unpruned model, and measure it
    against the unpruned model on the runtime."""
    opts = options or PruneOptions()
    steps: list[dict[str, Any]] = [{opts.method: dict(opts.settings)}]
    if opts.distill is not None:
        # A pruned encoder keeps its width and depth, so every token's hidden state after each
        # layer can be matched: far more signal per text than the pooled output alone.
        usual = {"hidden": "all", "schedule": "linear"} if opts.method == "prune_transformer" \
            else {}
        steps.append({"distill": {**usual, **opts.distill}})
    return _versus(model, data, opts, opts.method, steps)


def distill(model: str, data: DataSpec, *, options: DistillOptions | None = None
            ) -> dict[str, Any]:
    """Train `model` (the student) to imitate a teacher on the data, labelled or not, and
    measure it against the teacher on the runtime."""
    opts = options or DistillOptions()
    settings = dict(opts.settings)
    if opts.teacher is not None:
        settings["teacher"] = opts.teacher
    return _versus(model, data, opts, "distill", [{"distill": settings}], opts.teacher)
