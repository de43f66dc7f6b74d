"""The `slimkit` command: a thin layer over the Python API.

Every user error (a recipe field, a model file, a data path) becomes one line on stderr and exit
code 2; a traceback means a bug in slimkit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from slimkit.bench.harness import BenchOptions
from slimkit.cli_common import data_spec as _data_spec
from slimkit.cli_common import fail as _fail
from slimkit.errors import ConfigError, SlimkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress, export and measure trained neural networks.")


def _invalid(e: ValueError) -> SlimkitError:
    """One line for a value pydantic rejected: where, and why (its own text spans lines)."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError) and e.errors():
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or e.title
        return ConfigError(f"{loc}: {err['msg']}"[:300])
    lines = str(e).strip().splitlines()
    return ConfigError(lines[0][:300] if lines else type(e).__name__)


def _at_least_one(**counts: int | None) -> None:
    """Counts must be positive. Checked here rather than with Typer's `min=`, whose message
    is a multi-line box, so a bad one is the usual one line naming the option."""
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: must be at least 1")


TrustOption = Annotated[bool, typer.Option(
    "--trust-code", help="let an artifact folder's artifact.json call the Python factories it "
                         "names (only for folders you trust)")]


@app.command()
def run(recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
        output: Annotated[Path | None, typer.Option("--output", "-o",
                                                    help="run directory")] = None) -> None:
    """Build, evaluate and benchmark every candidate of RECIPE; write results and reports."""
    from slimkit.api import run as api_run
    from slimkit.config import load_recipe
    from slimkit.summary import print_summary

    try:
        if output is not None and output.exists() and not output.is_dir():
            raise ConfigError(f"--output {output}: exists and is not a directory")
        r = load_recipe(recipe)
        if output is not None:
            r = r.model_copy(update={"output": str(output)})
        doc = api_run(r)
    except SlimkitError as e:
        _fail(e)
        return
    print_summary(doc)
    if r.search is not None:
        from slimkit.optimize.render import print_search
        from slimkit.results import as_results

        print_search(as_results(doc))
    out = r.output_dir
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="run directory, or its results.json")]
           ) -> None:
    """Write a run's report.md and report.html again from its results.json, and print its
    summary; results written by an earlier slimkit are read too."""
    from slimkit.report import write_reports
    from slimkit.results import load_results
    from slimkit.summary import print_summary

    folder = run_dir if run_dir.is_dir() else run_dir.parent
    try:
        results = load_results(run_dir)
        try:
            write_reports(folder, results)
        except OSError as e:
            raise SlimkitError(f"{folder}: cannot write the reports ({e.strerror})") from None
    except SlimkitError as e:
        _fail(e)
        return
    print_summary(results)
    print(f"report:  {folder / 'report.html'}")


@app.command()
def bench(
    models: Annotated[list[str], typer.Argument(help="model files, HF dirs, artifact dirs or "
                                                     "package.module:function")],
    runtime: Annotated[list[str] | None, typer.Option("--runtime", "-r",
                       help="runtime(s); default: the model's own")] = None,
    data: Annotated[Path | None, typer.Option(help=".npz with one array per input")] = None,
    dim: Annotated[list[str] | None, typer.Option(help="size of a dynamic axis, NAME=N")] = None,
    threads: int = 2, batch_size: int = 32, rounds: int = 5,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results here")] = None,
    trust_code: TrustOption = False,
) -> None:
    """Benchmark models on their runtimes; ratios are against the first one."""
    from pydantic import ValidationError

    from slimkit.api import BenchmarkOptions, benchmark
    from slimkit.bench.report import print_bench

    try:
        _at_least_one(threads=threads, batch_size=batch_size, rounds=rounds)
        if json_out is not None and json_out.is_dir():
            raise ConfigError(f"--json {json_out}: is a directory, not a file")
        dims = dict(_parse_dim(d) for d in dim or [])
        opts = BenchmarkOptions(threads=threads, batch_size=batch_size, rounds=rounds,
                                runtimes=runtime or [], dims=dims,
                                data=str(data) if data else None)
        res = benchmark(models, options=opts, trust_code=trust_code)
    except SlimkitError as e:
        _fail(e)
        return
    except ValidationError as e:  # option values that pydantic rejects
        _fail(_invalid(e))
        return
    print_bench(res)
    if json_out:
        from slimkit.io import atomic_write_json

        atomic_write_json(json_out, res)


def _parse_dim(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not value.isdigit() or int(value) < 1:
        raise SlimkitError(f"--dim {text[:80]!r}: write NAME=N with N at least 1, e.g. "
                           f"sequence=128")
    return name, int(value)


@app.command()
def export(model: Annotated[str, typer.Argument(help="model source")],
           to: Annotated[str, typer.Option(help="onnx, openvino or litert")] = "onnx",
           output: Annotated[Path, typer.Option(
               "--output", "-o", help="a new or empty folder, or an earlier export")
           ] = Path("exported"),
           trust_code: TrustOption = False) -> None:
    """Export a model to ONNX, OpenVINO IR or LiteRT as a slimkit artifact directory."""
    from slimkit.api import export as api_export

    try:
        path = api_export(model, to, output, trust_code=trust_code)
    except SlimkitError as e:
        _fail(e)
        return
    print(path)


DataOption = Annotated[str, typer.Option(help="evaluation data: an example name (minilm, "
                                              "digits) or a .npz / image folder / .jsonl / .txt")]
TrainData = Annotated[str | None, typer.Option(
    "--train-data", help="training / calibration data, as --data (default: the example's "
                         "calibration split)")]
RuntimeOption = Annotated[str, typer.Option("--runtime", "-r")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="run directory")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="technique option KEY=VALUE "
                                                                   "(YAML value)")]


@app.command()
def quantize(
    model: Annotated[str, typer.Argument(help="model file, HF dir or package.module:function")],
    data: DataOption,
    runtime: RuntimeOption = "onnxruntime",
    method: Annotated[str | None, typer.Option(
        help="a quantization technique (`slimkit list` shows them); default by runtime"
    )] = None,
    min_cosine: Annotated[float | None, typer.Option(help="budget: mean output cosine")] = None,
    max_drop: Annotated[float | None, typer.Option(help="budget: accuracy points")] = None,
    calibration: Annotated[str | None, typer.Option(help="calibration data, as --data")] = None,
    equalize: Annotated[bool, typer.Option(
        help="torch models: cross-layer equalization before quantizing")] = False,
    bias_correct: Annotated[bool, typer.Option(
        help="torch models: correct each layer's int8 output shift on the calibration data")
    ] = False,
    adaround: Annotated[bool, typer.Option(
        help="torch models: learn each weight's rounding on the calibration data")] = False,
    task: str = "generic",
    option: Annotated[list[str] | None, typer.Option("--set", help="technique option KEY=VALUE "
                                                                    "(YAML value)")] = None,
    output: OutputOption = None,
    rounds: int = 3,
) -> None:
    """Quantize MODEL for a runtime within a budget; report it against the float model.
    --equalize, --bias-correct and --adaround run on the torch model first, in that order;
    --set options go to the quantizer."""
    from slimkit.api import QuantizeOptions
    from slimkit.api import quantize as api_quantize

    def run_it() -> dict:
        opts = QuantizeOptions(method=method, min_cosine=min_cosine, max_drop=max_drop,
                               equalize=equalize, bias_correct=bias_correct,
                               adaround=adaround,
                               **_shared(runtime, option, task, calibration, output, rounds))
        return api_quantize(model, _data_spec(data), options=opts)

    _report(run_it)


def _settings(items: list[str] | None) -> dict[str, object]:
    import yaml

    settings = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        shown = repr(item[:80] + ("..." if len(item) > 80 else ""))
        if not sep or not key:
            raise ConfigError(f"--set {shown}: write KEY=VALUE, e.g. calibration=mse")
        try:
            settings[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(f"--set {shown}: the value is not valid YAML ({problem})") from None
    return settings


@app.command()
def prune(
    model: Annotated[str, typer.Argument(help="model file, HF dir or package.module:function")],
    data: DataOption,
    method: Annotated[str, typer.Option(
        help="a pruning technique (`slimkit list` shows them)")] = "prune_channels",
    runtime: RuntimeOption = "onnxruntime",
    train_data: TrainData = None,
    distill: Annotated[bool, typer.Option(help="recover by distilling from the unpruned "
                                               "model")] = True,
    epochs: Annotated[int | None, typer.Option(help="distillation epochs")] = None,
    task: str = "generic",
    option: SetOption = None,
    output: OutputOption = None,
    rounds: int = 3,
) -> None:
    """Prune MODEL, recover it by distillation, and measure it against the unpruned model."""
    from slimkit.api import PruneOptions
    from slimkit.api import prune as api_prune

    def run_it() -> dict:
        recover = ({"epochs": epochs} if epochs is not None else {}) if distill else None
        opts = PruneOptions(method=method, distill=recover,
                            **_shared(runtime, option, task, train_data, output, rounds))
        return api_prune(model, _data_spec(data), options=opts)

    _report(run_it)


@app.command()
def distill(
    model: Annotated[str, typer.Argument(help="the student: model file, HF dir or "
                                              "package.module:function")],
    data: DataOption,
    teacher: Annotated[str | None, typer.Option(help="teacher model (default: MODEL as "
                                                     "given, before training)")] = None,
    runtime: RuntimeOption = "onnxruntime",
    train_data: TrainData = None,
    task: str = "generic",
    option: SetOption = None,
    output: OutputOption = None,
    rounds: int = 3,
) -> None:
    """Distil a teacher into MODEL on the training data (labels optional); measure both."""
    from slimkit.api import DistillOptions
    from slimkit.api import distill as api_distill

    def run_it() -> dict:
        opts = DistillOptions(teacher=teacher,
                              **_shared(runtime, option, task, train_data, output, rounds))
        return api_distill(model, _data_spec(data), options=opts)

    _report(run_it)


def _shared(runtime: str, option: list[str] | None, task: str, train_data: str | None,
            output: Path | None, rounds: int) -> dict[str, Any]:
    """The options every one-technique command passes the same way."""
    _at_least_one(rounds=rounds)
    if output is not None and output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: exists and is not a directory")
    return {"runtime": runtime, "settings": _settings(option), "task": task,
            "calibration": _data_spec(train_data, calib=True) if train_data else None,
            "output": str(output) if output else None, "benchmark": BenchOptions(rounds=rounds)}


def _report(run_it: Callable[[], dict]) -> None:
    from slimkit.report.details import headlines
    from slimkit.results import as_results
    from slimkit.summary import print_summary

    try:
        doc = run_it()
    except SlimkitError as e:
        _fail(e)
        return
    except ValueError as e:  # option values that pydantic rejects
        _fail(_invalid(e))
        return
    results = as_results(doc)
    print_summary(results)
    for line in headlines(results):
        print(line)


@app.command()
def profile(
    model: Annotated[str, typer.Argument(help="model file, HF dir or package.module:function")],
    data: DataOption,
    runtime: RuntimeOption = "onnxruntime",
    threads: int = 2, batch_size: int = 32, rounds: int = 3,
    task: str = "generic",
    json_out: Annotated[Path | None, typer.Option("--json", help="write the profile here")
                        ] = None,
) -> None:
    """Where MODEL's bytes, FLOPs and measured time go, layer by layer, on a runtime."""
    from slimkit.data import load_data
    from slimkit.model import load_model
    from slimkit.optimize.profile import profile as run_profile
    from slimkit.optimize.profile_render import print_profile
    from slimkit.runtimes import runtime_format

    try:
        _at_least_one(threads=threads, batch_size=batch_size, rounds=rounds)
        if json_out is not None and (json_out.is_dir() or not json_out.parent.is_dir()):
            raise ConfigError(f"--json {json_out}: not a file in an existing folder")
        runtime_format(runtime)  # an unknown runtime is named before any model loads
        spec = _data_spec(data)
        loaded = load_model(model)
        result = run_profile(loaded, load_data(spec, loaded), runtime, threads=threads,
                             batch_size=batch_size, task=task,
                             bench=BenchOptions(threads=threads, batch_size=batch_size,
                                                rounds=rounds))
    except SlimkitError as e:
        _fail(e)
        return
    except ValueError as e:  # option values that pydantic rejects
        _fail(_invalid(e))
        return
    print_profile(result)
    if json_out is not None:
        from slimkit.io import atomic_write_text

        atomic_write_text(json_out, result.model_dump_json(indent=2))


@app.command("list")
def list_() -> None:
    """Known techniques and runtimes."""
    from slimkit.registry import config_class, implementations, technique_names
    from slimkit.runtimes import runtime_names

    print("runtimes:   " + ", ".join(runtime_names()))
    for name in technique_names():
        try:
            cls = config_class(name)
        except SlimkitError as e:  # an installed plugin that does not load
            print(f"technique:  {name} (not loadable: {e})")
            continue
        fmts = ", ".join(f"{f} → {i.makes}" if i.makes else f
                         for f, i in implementations(cls.model_construct()).items())
        opts = ", ".join(k for k in cls.model_fields if k != "technique")
        print(f"technique:  {name} [{fmts}] options: {opts}")


def _register_search_commands() -> None:
    from slimkit.cli_optimize import advise, optimize

    app.command()(optimize)
    app.command()(advise)
    from slimkit.cli_serve import loadtest, serve

    app.command()(serve)
    app.command()(loadtest)


_register_search_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
