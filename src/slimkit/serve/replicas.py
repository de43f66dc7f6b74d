"""Several copies of the model behind one port, on this machine (`--replicas N`).

Each replica is a process with its own session and batcher, accepting on one shared listening
socket (uvicorn's supervisor), so N replicas use N times the memory and split the cores
between them. On a small machine one replica with every core is usually faster; more replicas
pay off when one session cannot use all cores (small models, batch-1 latency).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from slimkit.serve.batcher import BatchOptions
from slimkit.serve.server import ServeOptions

# What a replica needs to build its app, passed through the environment because uvicorn
# starts replicas by importing the app factory by name in fresh (spawned) processes. The API
# key itself is not in it: each replica reads the key file.
ENV = "SLIMKIT_SERVE_REPLICA"


def replica_threads(options: ServeOptions, replicas: int) -> int:
    """The cores split between the replicas, unless --threads says otherwise."""
    return options.threads or max(1, (os.cpu_count() or 1) // replicas)


def encode(model_dir: Path, options: ServeOptions) -> str:
    doc = dataclasses.asdict(options)
    doc["api_key_file"] = str(options.api_key_file) if options.api_key_file else None
    return json.dumps({"model_dir": str(model_dir), "options": doc})


def decode(text: str) -> tuple[Path, ServeOptions]:
    doc: dict[str, Any] = json.loads(text)
    opts = dict(doc["options"])
    opts["batch"] = BatchOptions(**opts["batch"])
    key = opts.pop("api_key_file")
    return Path(doc["model_dir"]), ServeOptions(**opts, api_key_file=Path(key) if key else None)


def replica_app() -> Any:
    """The app of one replica: uvicorn calls this in each replica process."""
    from slimkit.serve.app import build_app
    from slimkit.serve.server import check_options, load_served

    model_dir, options = decode(os.environ[ENV])
    served = load_served(model_dir, options, check_options(options))
    return build_app(served, options.batch)


def serve_replicas(model_dir: Path, options: ServeOptions, replicas: int) -> None:
    """Serve with `replicas` processes until SIGINT/SIGTERM; each finishes its requests in
    flight and answers what it has queued before it exits."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from slimkit.serve.server import bind

    options = dataclasses.replace(options, threads=replica_threads(options, replicas))
    os.environ[ENV] = encode(model_dir, options)
    sock = bind(options.host, options.port)
    config = uvicorn.Config("slimkit.serve.replicas:replica_app", factory=True,
                            workers=replicas, log_level="info", access_log=False, lifespan="on")
    host, port = sock.getsockname()[:2]
    print(f"serving {model_dir} on http://{host}:{port} ({replicas} replicas of "
          f"{options.threads} threads, max batch {options.batch.max_batch}, max delay "
          f"{options.batch.max_delay * 1000:g} ms)", flush=True)
    Multiprocess(config, sockets=[sock]).run()
