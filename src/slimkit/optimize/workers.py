"""Where a search's trials run: in this process, one after another, or as Ray tasks.

A trial's build and quality evaluation is a pure function of a small JSON-able payload that
returns a small JSON-able result; artifacts go to a cache folder every worker can read. That
is all a worker pool has to carry, so the search is written once against `Workers` and the
same code runs serially on a laptop or spread over a cluster.

Speed is the exception: two timings on one node disturb each other (BENCHMARKING.md, rule 4),
so `on_node` runs one function holding every CPU of a named node, and the caller times each
node's finalists there, one at a time, beside that node's own baseline.

Ray is imported only inside functions: listing techniques must load no heavy package, and a
user without Ray should meet a one-line "install slimkit[ray]", not an ImportError.
"""

from __future__ import annotations

import logging
import math
import os
import site
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from slimkit.errors import ConfigError

Payload = dict[str, Any]
Task = Callable[[Payload], Payload]

CPUS_ENV = "SLIMKIT_RAY_CPUS"
# What decides how slimkit behaves in a worker: where artifacts are cached, the CPU features
# that pick kernels, and whether Hugging Face may reach the network.
PASSED_ENV = ("SLIMKIT_CACHE", "SLIMKIT_CPU_FEATURES", "HF_HOME", "HF_HUB_OFFLINE",
              "TRANSFORMERS_OFFLINE")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
ERROR_CHARS = 300
CONNECT_TIMEOUT_S = 5.0
SPECS = "'local', 'ray', 'ray://HOST:PORT' or 'ray:HOST:PORT'"


@dataclass(frozen=True)
class TaskFailure:
    """What a task that raised gives back instead of its result, so one bad trial is recorded
    as failed while the rest of its batch still counts."""

    error: str  # one line: "ExceptionType: message", at most ERROR_CHARS characters
    traceback: str  # the whole traceback, from the process the task ran in


Result = Payload | TaskFailure
Progress = Callable[[int, Result], None]


class Workers(Protocol):
    """A pool that runs pure payload-to-result functions, and can run one alone on a node."""

    label: str

    def map(self, fn: Task, payloads: list[Payload],
            progress: Progress | None = None) -> list[Result]:
        """Results in payload order; progress(i, result) as each task finishes."""
        ...

    def nodes(self) -> list[str]:
        """The names of the nodes that can benchmark."""
        ...

    def on_node(self, node: str, fn: Task, payload: Payload) -> Result:
        """Run fn alone on that node, holding all of its CPUs."""
        ...

    def close(self) -> None:
        """Release what this pool started."""
        ...


def one_line(e: BaseException) -> str:
    """`Type: first line of the message`, cut to ERROR_CHARS: a table row or a log line can
    show it whole, and the traceback keeps the rest."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text[:ERROR_CHARS]


def call(fn: Task, payload: Payload) -> Result:
    """Run one task, turning its exception (or a result that is not a dict) into a
    TaskFailure, so the caller's loop never sees an exception from a trial."""
    try:
        result = fn(payload)
    except Exception as e:
        return TaskFailure(one_line(e), traceback.format_exc())
    if not isinstance(result, dict):
        e = TypeError(f"{getattr(fn, '__qualname__', fn)} returned "
                      f"{type(result).__name__}, not a dict")
        return TaskFailure(one_line(e), str(e))
    return result


def run_task(fn: Task, payload: Payload, threads: int) -> Result:
    """The body of every Ray task: cap the threads, then `call`.

    A Ray worker process is reused across tasks with different CPU shares (a one-CPU build,
    then a whole-node benchmark), so the cap is set each time: in the environment for the
    processes the task starts and for a torch imported later, and in torch itself if it is
    already loaded."""
    for var in THREAD_ENV:
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    return call(fn, payload)


class LocalWorkers:
    """Everything in this process, serially: no extra processes, and the same results a
    cluster gives, so a search can be debugged with a plain traceback at hand."""

    label = "local"

    def map(self, fn: Task, payloads: list[Payload],
            progress: Progress | None = None) -> list[Result]:
        """Run the tasks one after another."""
        results: list[Result] = []
        for i, payload in enumerate(payloads):
            results.append(call(fn, payload))
            if progress is not None:
                progress(i, results[-1])
        return results

    def nodes(self) -> list[str]:
        """This machine only."""
        return [socket.gethostname()]

    def on_node(self, node: str, fn: Task, payload: Payload) -> Result:
        """Run fn here; nothing else runs while it does, since map is serial."""
        if node not in self.nodes():
            raise ConfigError(f"workers local: no node {node!r} (only {self.nodes()[0]!r})")
        return call(fn, payload)

    def close(self) -> None:
        """Nothing to release."""


class RayWorkers:
    """Tasks on a Ray cluster, each holding `cpus_per_task` CPUs.

    `owns` says whether this object opened the driver's connection: then `close` ends it,
    which for a cluster it started also stops the cluster, and for one it joined only
    disconnects."""

    def __init__(self, ray: Any, label: str, cpus_per_task: float, *, owns: bool) -> None:
        self._ray = ray
        self.label = label
        self._cpus = cpus_per_task
        self._threads = max(1, math.floor(cpus_per_task))
        self._owns = owns
        # max_retries=0: a crashed build (out of memory, a kernel's segfault) would crash
        # again, and a retry would only hide it behind minutes of repeated work.
        self._task = ray.remote(max_retries=0)(run_task)

    def map(self, fn: Task, payloads: list[Payload],
            progress: Progress | None = None) -> list[Result]:
        """Submit every payload, then collect as tasks finish; an interrupt (or a progress
        callback that raises) cancels the tasks still queued or running."""
        ray = self._ray
        refs = [self._task.options(num_cpus=self._cpus).remote(fn, p, self._threads)
                for p in payloads]
        where = {ref: i for i, ref in enumerate(refs)}
        results: list[Result | None] = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = where[ref]
                    results[i] = self._get(ref)
                    if progress is not None:
                        progress(i, results[i])  # type: ignore[arg-type]
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return results  # type: ignore[return-value]

    def _get(self, ref: Any) -> Result:
        """A task's result; a worker that died (out of memory, killed, a crash in native
        code) becomes a TaskFailure like an exception would."""
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayError as e:
            return TaskFailure(one_line(e), str(e))

    def node_table(self) -> dict[str, tuple[str, float]]:
        """Node name -> (Ray node id, CPUs), for live nodes with CPUs. The name is the node's
        IP; several nodes on one IP (a test cluster) get their id's start added."""
        found: dict[str, tuple[str, float]] = {}
        for n in sorted(self._ray.nodes(), key=lambda n: (n["NodeManagerAddress"], n["NodeID"])):
            cpus = float(n.get("Resources", {}).get("CPU", 0.0))
            if not n.get("Alive") or cpus <= 0:
                continue
            name = n["NodeManagerAddress"]
            if name in found:
                name = f"{name}/{n['NodeID'][:8]}"
            found[name] = (n["NodeID"], cpus)
        return found

    def nodes(self) -> list[str]:
        """The live nodes with CPUs, by IP."""
        return list(self.node_table())

    def on_node(self, node: str, fn: Task, payload: Payload) -> Result:
        """Run fn pinned to `node` (hard affinity), asking for all its CPUs, so Ray starts it
        only once the node is idle and starts nothing else there until it returns."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        alive = self.node_table()
        if node not in alive:
            raise ConfigError(f"workers {self.label}: no live node {node!r} "
                              f"(nodes: {', '.join(alive) or 'none'})")
        node_id, cpus = alive[node]
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        ref = self._task.options(num_cpus=cpus, scheduling_strategy=strategy).remote(
            fn, payload, max(1, math.floor(cpus)))
        return self._get(ref)

    def close(self) -> None:
        """End the connection this object opened (stopping a cluster it started)."""
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def import_path() -> str:
    """PYTHONPATH for workers on this machine: the driver's own PYTHONPATH, then the
    directories the driver added to sys.path itself (the current directory, a script's
    folder, a test runner's rootdir), so a function importable here is importable there.

    The interpreter's own directories (stdlib, site-packages) are left out: the workers run
    the same interpreter and find them anyway, and a site-packages placed before the stdlib
    could shadow it."""
    own = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    sites = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    for p in sys.path:
        path = Path(p or os.getcwd()).resolve()
        if not path.is_dir() or path in sites or any(path.is_relative_to(o) for o in own):
            continue
        entries.append(str(path))
    return os.pathsep.join(dict.fromkeys(entries))


def worker_env(threads: int, *, same_machine: bool) -> dict[str, str]:
    """The environment variables every worker gets.

    A cluster joined through RAY_ADDRESS was started with someone else's environment, so on
    this machine the settings that steer slimkit are passed explicitly. On a remote cluster
    (ray://) paths and CPU features of this machine mean nothing, and only the thread cap
    travels: two one-CPU tasks must not each start one thread per core."""
    env = {var: str(threads) for var in THREAD_ENV}
    if same_machine:
        env.update({k: os.environ[k] for k in PASSED_ENV if k in os.environ})
        path = import_path()
        if path:
            env["PYTHONPATH"] = path
    return env


def _cluster_cpus() -> int:
    """CPUs for a cluster started here: SLIMKIT_RAY_CPUS, else every core."""
    text = os.environ.get(CPUS_ENV)
    if text is None:
        return os.cpu_count() or 1
    try:
        cpus = int(text)
    except ValueError:
        cpus = 0
    if cpus < 1:
        raise ConfigError(f"{CPUS_ENV}={text!r}: expected a whole number of CPUs, 1 or more")
    return cpus


def _host_port(what: str, text: str) -> tuple[str, int]:
    """HOST:PORT from a spec or RAY_ADDRESS; `what` names where it came from in the error."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _check_reachable(what: str, host: str, port: int) -> None:
    """Fail in seconds with one line where Ray would retry for half a minute or more, and
    print pages of retries."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(f"{what}: cannot reach a Ray cluster at {host}:{port} ({reason})"
                          ) from None


def _import_ray(spec: str) -> Any:
    """The ray module, or a one-line hint at the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"workers {spec!r}: Ray is not installed; install slimkit[ray]"
                          ) from None
    return ray


def _client(what: str, host_port: str) -> str:
    """A Ray Client address, once its port answers."""
    host, port = _host_port(what, host_port)
    _check_reachable(what, host, port)
    return f"ray://{host}:{port}"


def _target(spec: str) -> tuple[str | None, bool]:
    """(address for ray.init, whether the cluster is on this machine); None starts one."""
    if spec != "ray":
        rest = spec.removeprefix("ray://") if spec.startswith("ray://") else spec[4:]
        return _client(f"workers {spec!r}", rest), False
    joined = os.environ.get("RAY_ADDRESS", "").strip()
    what = f"workers 'ray' (RAY_ADDRESS={joined!r})"
    if not joined or joined == "local":
        return None, True
    if joined.startswith("ray://"):
        return _client(what, joined.removeprefix("ray://")), False
    if joined != "auto":
        _check_reachable(what, *_host_port(what, joined))
    return joined, True


def _label(ray: Any, address: str | None) -> str:
    """"ray://host:port" for a remote cluster, else its size."""
    if address is not None and address.startswith("ray://"):
        return address
    cpus = int(ray.cluster_resources().get("CPU", 0))
    count = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"ray ({cpus} CPUs on {count} node{'s' if count != 1 else ''})"


def _init_options(address: str | None, same_machine: bool, threads: int) -> dict[str, Any]:
    """ray.init's arguments. Ray Client forwards any argument beyond the address and the
    runtime environment to ray.init on the server, so a remote cluster gets only those."""
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_env(threads, same_machine=same_machine)}}
    if address is not None and address.startswith("ray://"):
        return {"address": address, **options}
    options.update(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                   ignore_reinit_error=True)
    if address is None:
        return {"address": "local", "num_cpus": _cluster_cpus(), **options}
    return {"address": address, **options}


def _open_ray(spec: str, cpus_per_task: float) -> RayWorkers:
    """Connect (or start a cluster), check a task fits on some node, and wrap it.

    A process already connected to Ray keeps that connection (and its environment for
    workers): Ray allows one per process, and closing it is left to whoever opened it."""
    ray = _import_ray(spec)
    address, same_machine = _target(spec)
    owns = not ray.is_initialized()
    if owns:
        try:
            ray.init(**_init_options(address, same_machine, max(1, math.floor(cpus_per_task))))
        except Exception as e:
            # Clusters started by `ray start` ask for a token by default (Ray 2.52 on).
            hint = ("; a cluster with token authentication needs RAY_AUTH_MODE=token"
                    if address is not None and "RAY_AUTH_MODE" not in os.environ else "")
            raise ConfigError(f"workers {spec!r}: could not start or join Ray: "
                              f"{one_line(e)}{hint}") from None
    workers = RayWorkers(ray, _label(ray, address), cpus_per_task, owns=owns)
    largest = max((cpus for _, cpus in workers.node_table().values()), default=0.0)
    if cpus_per_task > largest:
        workers.close()
        raise ConfigError(f"workers {spec!r}: a task asks for {cpus_per_task:g} CPUs but the "
                          f"largest node has {largest:g}")
    return workers


def open_workers(spec: str, *, cpus_per_task: float = 1.0) -> Workers:
    """A worker pool from its spec.

    `local`: this process, serially. `ray`: start a Ray cluster on this machine (CPUs from
    SLIMKIT_RAY_CPUS, else every core), or join the one RAY_ADDRESS names. `ray://HOST:PORT`
    or `ray:HOST:PORT`: connect through Ray Client to a remote cluster, which must have
    slimkit installed and see the same cache folder. Anything wrong is one ConfigError line.
    """
    spec = spec.strip()
    if not (isinstance(cpus_per_task, int | float) and math.isfinite(cpus_per_task)
            and cpus_per_task > 0):
        raise ConfigError(f"workers {spec!r}: cpus_per_task must be a positive number, "
                          f"got {cpus_per_task!r}")
    if spec == "local":
        return LocalWorkers()
    if spec == "ray" or spec.startswith("ray:"):
        return _open_ray(spec, float(cpus_per_task))
    raise ConfigError(f"workers {spec!r}: expected {SPECS}")
