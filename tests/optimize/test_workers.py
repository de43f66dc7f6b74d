"""Worker pools: local and a 2-CPU Ray cluster give the same results in payload order, a task
that raises or dies fails alone, `on_node` holds a whole node, and every wrong spec is one
ConfigError line.

Ray imports the task functions below by module name in its worker processes; it finds this
file because the pool passes the driver's sys.path additions (here pytest's) on as PYTHONPATH.
One cluster serves the whole module: starting one takes several seconds.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slimkit.errors import ConfigError
from slimkit.optimize.workers import (
    CPUS_ENV,
    LocalWorkers,
    TaskFailure,
    Workers,
    one_line,
    open_workers,
    worker_env,
)

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]


def square(payload: dict[str, Any]) -> dict[str, Any]:
    """A trial stand-in: sleeps as told, fails as told, else squares."""
    time.sleep(payload.get("sleep", 0.0))
    if payload.get("fail"):
        raise ValueError(f"trial {payload['i']} broke\nsecond line")
    return {"i": payload["i"], "square": payload["i"] ** 2}


def environment(payload: dict[str, Any]) -> dict[str, Any]:
    """What a worker process sees of its settings."""
    import torch

    return {"pid": os.getpid(), "cache": os.environ.get("SLIMKIT_CACHE"),
            "omp": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads()}


def where(payload: dict[str, Any]) -> dict[str, Any]:
    """The node a task ran on and the CPUs Ray gave it."""
    context = ray.get_runtime_context()
    return {"ip": ray.util.get_node_ip_address(), "node_id": context.get_node_id(),
            "cpus": context.get_assigned_resources().get("CPU"),
            "omp": os.environ.get("OMP_NUM_THREADS")}


def die(payload: dict[str, Any]) -> dict[str, Any]:
    """A task whose process ends without an exception (as the kernel's OOM killer would)."""
    if payload.get("die"):
        os._exit(3)
    return {"alive": True}


def not_a_dict(payload: dict[str, Any]) -> dict[str, Any]:
    return [1, 2]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Workers]:
    """A 2-CPU Ray cluster for the module, with both workers started; stopped at the end."""
    if ray.is_initialized():
        pytest.skip("this process is already connected to Ray")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CPUS_ENV, "2")
        mp.delenv("RAY_ADDRESS", raising=False)
        workers = open_workers("ray")
        try:
            # Two overlapping tasks make Ray start both worker processes now, so the tests
            # below see tasks finish in the order their work takes, not their start-up.
            workers.map(square, [{"i": 0, "sleep": 0.3}, {"i": 1, "sleep": 0.3}])
            yield workers
        finally:
            workers.close()
    assert not ray.is_initialized()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_and_ray_agree_in_payload_order(cluster: Workers) -> None:
    payloads = [{"i": i, "sleep": 0.5 if i == 0 else 0.0} for i in range(6)]
    seen: dict[str, list[tuple[int, Any]]] = {"local": [], "ray": []}
    local = open_workers("local").map(square, payloads,
                                      lambda i, r: seen["local"].append((i, r)))
    remote = cluster.map(square, payloads, lambda i, r: seen["ray"].append((i, r)))
    assert local == remote == [{"i": i, "square": i * i} for i in range(6)]
    for name, results in (("local", local), ("ray", remote)):
        assert sorted(i for i, _ in seen[name]) == list(range(6))
        assert all(results[i] == r for i, r in seen[name])
    assert [i for i, _ in seen["local"]] == list(range(6))
    assert seen["ray"][0][0] != 0  # the slow first task finished after others
    assert cluster.label == "ray (2 CPUs on 1 node)"
    assert open_workers("local").label == "local"


@pytest.mark.parametrize("where_", ["local", "ray"])
def test_a_raising_task_fails_alone(cluster: Workers, where_: str) -> None:
    workers = open_workers("local") if where_ == "local" else cluster
    payloads = [{"i": i, "fail": i == 2} for i in range(4)]
    calls: list[int] = []
    results = workers.map(square, payloads, lambda i, r: calls.append(i))
    failure = results[2]
    assert isinstance(failure, TaskFailure)
    assert failure.error == "ValueError: trial 2 broke"
    assert "in square" in failure.traceback and "second line" in failure.traceback
    assert [r for i, r in enumerate(results) if i != 2] == [
        {"i": i, "square": i * i} for i in (0, 1, 3)]
    assert sorted(calls) == [0, 1, 2, 3]


def test_a_task_whose_worker_dies_fails_alone(cluster: Workers) -> None:
    results = cluster.map(die, [{"die": False}, {"die": True}, {"die": False}])
    assert results[0] == results[2] == {"alive": True}
    assert isinstance(results[1], TaskFailure)
    assert "\n" not in results[1].error and len(results[1].error) <= 300
    assert "Worker" in results[1].error or "worker" in results[1].error


def test_workers_see_settings_and_a_thread_cap(cluster: Workers) -> None:
    (got,) = cluster.map(environment, [{}])
    assert isinstance(got, dict), got
    assert got["pid"] != os.getpid()
    assert got["cache"] == os.environ["SLIMKIT_CACHE"]
    assert got["omp"] == "1" and got["torch_threads"] == 1


def test_on_node_holds_the_whole_node(cluster: Workers) -> None:
    (node,) = cluster.nodes()
    got = cluster.on_node(node, where, {})
    assert isinstance(got, dict), got
    assert got["ip"] == node
    assert got["cpus"] == 2.0 and got["omp"] == "2"
    with pytest.raises(ConfigError, match=r"no live node '10\.9\.9\.9'"):
        cluster.on_node("10.9.9.9", where, {})


def test_a_task_larger_than_any_node_is_refused(cluster: Workers) -> None:
    with pytest.raises(ConfigError) as e:
        open_workers("ray", cpus_per_task=64)
    assert str(e.value) == "workers 'ray': a task asks for 64 CPUs but the largest node has 2"
    # The refused pool had joined this process's connection, so it left it open.
    assert cluster.map(square, [{"i": 3}]) == [{"i": 3, "square": 9}]


def test_local_runs_here() -> None:
    local = LocalWorkers()
    assert local.nodes() == [socket.gethostname()]
    assert local.on_node(socket.gethostname(), square, {"i": 4}) == {"i": 4, "square": 16}
    with pytest.raises(ConfigError, match="no node 'elsewhere'"):
        local.on_node("elsewhere", square, {"i": 4})
    (bad,) = local.map(not_a_dict, [{}])
    assert isinstance(bad, TaskFailure) and bad.error.startswith("TypeError: ")
    assert one_line(ValueError("x" * 500)) == "ValueError: " + "x" * 288
    assert one_line(KeyError()) == "KeyError"


def test_worker_env_carries_settings_and_import_path() -> None:
    env = worker_env(2, same_machine=True)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert env["SLIMKIT_CACHE"] == os.environ["SLIMKIT_CACHE"]
    path = env["PYTHONPATH"].split(os.pathsep)
    # Whatever pytest's import mode, the folder this module is imported from is passed on.
    assert str(ROOT) in path and str(Path(__file__).resolve().parents[__name__.count(".")]) in path
    assert not any(p.startswith(sys.prefix) for p in path)
    assert worker_env(3, same_machine=False) == {
        "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3"}


@pytest.mark.parametrize("spec", ["spark", "ray:", "ray://host", "ray://host:99999",
                                  "ray:host:port", "locally", ""])
def test_a_bad_spec_is_one_config_error_line(spec: str) -> None:
    with pytest.raises(ConfigError) as e:
        open_workers(spec)
    assert "\n" not in str(e.value) and str(e.value).startswith("workers ")


@pytest.mark.parametrize("cpus", [0, -1.0, float("nan"), float("inf")])
def test_a_bad_cpu_share_is_refused(cpus: float) -> None:
    with pytest.raises(ConfigError, match="cpus_per_task must be a positive number"):
        open_workers("local", cpus_per_task=cpus)


def test_an_unreachable_cluster_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    for spec in (f"ray://127.0.0.1:{port}", f"ray:127.0.0.1:{port}"):
        with pytest.raises(ConfigError) as e:
            open_workers(spec)
        assert str(e.value).startswith(f"workers '{spec}': cannot reach a Ray cluster at "
                                       f"127.0.0.1:{port} (")
        assert "\n" not in str(e.value)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=r"RAY_ADDRESS='127.0.0.1:\d+'\): cannot reach"):
        open_workers("ray")


def test_ray_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError) as e:
        open_workers("ray")
    assert str(e.value) == "workers 'ray': Ray is not installed; install slimkit[ray]"
