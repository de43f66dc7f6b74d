"""Replicas across a Ray cluster (`slimkit serve --ray`).

The same app as a local server (batcher, metrics, errors, key) runs inside each Ray Serve
replica as its ASGI ingress, so a request is batched by the replica that takes it and the
answers do not depend on where it ran. Ray's proxy owns the port and spreads requests over
the replicas. Every node needs slimkit installed and the model folder at the same path.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Any

from slimkit.serve.replicas import replica_threads
from slimkit.serve.server import ServeOptions, bind, check_options, load_served

APP = "slimkit"


def _builder(model_dir: Path, options: ServeOptions) -> Any:
    def build() -> Any:
        from slimkit.serve.app import build_app

        served = load_served(model_dir, options, check_options(options))
        return build_app(served, options.batch)

    return build


def deploy(model_dir: Path, options: ServeOptions, replicas: int) -> Any:
    """Start Serve's proxy on the host and port and deploy the replicas; Ray must be
    initialised. Returns once every replica has loaded the model."""
    from ray import serve

    class SlimkitReplica:
        """Empty: the ingress app does the work."""

    b = options.batch
    deployment = serve.deployment(
        name=APP, num_replicas=replicas, ray_actor_options={"num_cpus": options.threads},
        # Ray's default of 5 requests per replica would cap every batch at 5; the batcher
        # bounds the queue itself, and Ray answers 503 once its own queue is full.
        max_ongoing_requests=b.max_queue + b.max_batch, max_queued_requests=b.max_queue,
    )(serve.ingress(_builder(model_dir, options))(SlimkitReplica))
    serve.start(http_options={"host": options.host, "port": options.port})
    # Serve's access log line per request would drown the server's own output
    return serve.run(deployment.bind(), name=APP, route_prefix="/",
                     logging_config={"log_level": "WARNING", "enable_access_log": False})


def serve_on_ray(model_dir: Path, options: ServeOptions, replicas: int,
                 address: str | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then remove the replicas (they finish what they hold);
    with no `address` a local Ray instance is started for the purpose and stopped after."""
    import ray
    from ray import serve

    check_options(options)
    load_served(model_dir, options, None)  # a bad folder fails here as one line, not in Ray
    bind(options.host, options.port).close()  # and so does a port in use
    threads = replica_threads(options, replicas) if address is None else options.threads or 1
    options = dataclasses.replace(options, threads=threads)
    ray.init(address=address, include_dashboard=False, logging_level="warning",
             configure_logging=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        deploy(model_dir, options, replicas)
        print(f"serving {model_dir} on http://{options.host}:{options.port} (Ray Serve, "
              f"{replicas} replicas of {threads} threads, max batch "
              f"{options.batch.max_batch})", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if address is None:
            serve.shutdown()
        else:  # someone else's cluster: remove only this app
            serve.delete(APP)
        ray.shutdown()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
