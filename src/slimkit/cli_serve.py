"""`slimkit serve` and `slimkit loadtest`: a model folder behind HTTP, and load against it.
Kept beside the CLI so their options read in one place; the work is in `slimkit.serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slimkit.cli_common import fail
from slimkit.errors import ConfigError, SlimkitError


def serve(
    model_dir: Annotated[Path, typer.Argument(help="artifact folder (a run's best/) or .onnx")],
    runtime: Annotated[str | None, typer.Option(
        help="runtime; default the model's own (onnxruntime for ONNX)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: int = 8000,
    max_batch: Annotated[int, typer.Option(
        help="most rows per model call and per request; 1 turns batching off")] = 32,
    max_delay_ms: Annotated[float, typer.Option(
        help="longest a request waits for others to join its batch once batches merge; "
             "0: a batch is what queued while the previous one ran")] = 0.0,
    max_queue: Annotated[int, typer.Option(
        help="requests that may wait; beyond, 503 with Retry-After")] = 256,
    max_tokens: Annotated[int, typer.Option(
        help="text batches: rows x padded length at most")] = 8192,
    threads: Annotated[int | None, typer.Option(help="the runtime's intra-op threads")] = None,
    api_key_file: Annotated[Path | None, typer.Option(
        help="file holding the key clients send as 'Authorization: Bearer KEY'; required "
             "for a non-loopback --host")] = None,
    replicas: Annotated[int, typer.Option(
        help="copies of the model, each with its own batcher; the cores are split between "
             "them unless --threads is given")] = 1,
    ray: Annotated[bool, typer.Option(
        "--ray", help="replicas on Ray Serve (a local Ray instance unless --ray-address)")
                   ] = False,
    ray_address: Annotated[str | None, typer.Option(
        help="an existing Ray cluster, e.g. ray://head:10001 or auto")] = None,
) -> None:
    """Serve MODEL_DIR over HTTP with dynamic batching: POST /v1/predict, POST /v1/embed
    (text models), GET /health, GET /metrics."""
    from slimkit.serve.batcher import BatchOptions
    from slimkit.serve.server import ServeOptions
    from slimkit.serve.server import serve as run_server

    batch = BatchOptions(max_batch=max_batch, max_delay=max_delay_ms / 1000.0,
                         max_queue=max_queue, max_tokens=max_tokens)
    options = ServeOptions(runtime=runtime, host=host, port=port, threads=threads,
                           api_key_file=api_key_file, batch=batch)
    try:
        if replicas < 1:
            raise ConfigError(f"--replicas {replicas}: must be at least 1")
        if ray_address is not None and not ray:
            raise ConfigError("--ray-address: only with --ray")
        if ray:
            from slimkit.serve.ray_serve import serve_on_ray

            serve_on_ray(model_dir, options, replicas, ray_address)
        elif replicas > 1:
            from slimkit.serve.replicas import serve_replicas
            from slimkit.serve.server import check_options, load_served

            load_served(model_dir, options, check_options(options))  # errors as one line
            serve_replicas(model_dir, options, replicas)
        else:
            run_server(model_dir, options)
    except SlimkitError as e:
        fail(e)


def loadtest(
    url: Annotated[str, typer.Argument(help="server URL, e.g. http://127.0.0.1:8000 "
                                            "(or .../v1/embed)")],
    concurrency: Annotated[str, typer.Option(help="clients at once, per level: 1,8,32")
                           ] = "1,8,32",
    requests: Annotated[int, typer.Option(help="requests per level at most")] = 1000,
    duration: Annotated[float, typer.Option(help="seconds per level at most")] = 30.0,
    dollars_per_hour: Annotated[float | None, typer.Option(
        help="the machine's price, for cost per million requests")] = None,
    payload: Annotated[Path | None, typer.Option(
        help="JSON body to send; default one row built from the server's /health")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        help="a non-loopback host that may be loaded (repeat it)")] = None,
    api_key_file: Annotated[Path | None, typer.Option(help="the server's key")] = None,
) -> None:
    """Load a running server at each concurrency; print throughput, p50/p90/p99 latency,
    errors and cost per million requests."""
    from slimkit.serve.loadtest import LoadOptions, render
    from slimkit.serve.loadtest import loadtest as run_load
    from slimkit.serve.server import read_key

    try:
        try:
            levels = [int(c) for c in concurrency.split(",") if c.strip()]
        except ValueError:
            raise ConfigError(f"--concurrency {concurrency!r}: give numbers, e.g. 1,8,32"
                              ) from None
        if not levels:
            raise ConfigError("--concurrency: give at least one level, e.g. 1,8,32")
        options = LoadOptions(concurrency=levels, requests=requests, duration=duration,
                              payload=payload, allow_hosts=allow_host or [],
                              api_key=read_key(api_key_file) if api_key_file else None,
                              dollars_per_hour=dollars_per_hour)
        results = run_load(url, options)
    except SlimkitError as e:
        fail(e)
        return
    print(render(results, dollars_per_hour))
