"""The `slimkit` command: a thin layer over the Python API.

Every user error (a recipe field, a model file, a data path) becomes one line on stderr and exit
code 2; a traceback means a bug in slimkit.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from slimkit.errors import SlimkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress, export and measure trained neural networks.")


def _fail(e: SlimkitError) -> None:
    print(f"error: {e}", file=sys.stderr)
    raise typer.Exit(2)


@app.command()
def run(recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
        output: Annotated[Path | None, typer.Option("--output", "-o",
                                                    help="run directory")] = None) -> None:
    """Build, evaluate and benchmark every candidate of RECIPE; write results and reports."""
    from slimkit.api import run as api_run
    from slimkit.config import load_recipe
    from slimkit.summary import print_summary

    try:
        r = load_recipe(recipe)
        if output is not None:
            r = r.model_copy(update={"output": str(output)})
        doc = api_run(r)
    except SlimkitError as e:
        _fail(e)
        return
    print_summary(doc)
    out = r.output_dir
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}")


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
) -> None:
    """Benchmark models on their runtimes; ratios are against the first one."""
    from slimkit.api import BenchmarkOptions, benchmark
    from slimkit.bench.report import print_bench

    try:
        dims = dict(_parse_dim(d) for d in dim or [])
        opts = BenchmarkOptions(threads=threads, batch_size=batch_size, rounds=rounds,
                                runtimes=runtime or [], dims=dims,
                                data=str(data) if data else None)
        res = benchmark(models, options=opts)
    except SlimkitError as e:
        _fail(e)
        return
    print_bench(res)
    if json_out:
        from slimkit.io import atomic_write_json

        atomic_write_json(json_out, res)


def _parse_dim(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not value.isdigit():
        raise SlimkitError(f"--dim {text!r}: write NAME=N, e.g. sequence=128")
    return name, int(value)


@app.command()
def export(model: Annotated[str, typer.Argument(help="model source")],
           to: Annotated[str, typer.Option(help="onnx or openvino")] = "onnx",
           output: Annotated[Path, typer.Option("--output", "-o")] = Path("exported")) -> None:
    """Export a model to ONNX or OpenVINO IR as a slimkit artifact directory."""
    from slimkit.api import export as api_export

    try:
        path = api_export(model, to, output)
    except SlimkitError as e:
        _fail(e)
        return
    print(path)


@app.command("list")
def list_() -> None:
    """Known techniques and runtimes."""
    from slimkit.registry import config_class, implementations, technique_names
    from slimkit.runtimes import runtime_names

    print("runtimes:   " + ", ".join(runtime_names()))
    for name in technique_names():
        cls = config_class(name)
        fmts = ", ".join(implementations(cls.model_construct()))
        opts = ", ".join(k for k in cls.model_fields if k != "technique")
        print(f"technique:  {name} [{fmts}] options: {opts}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
