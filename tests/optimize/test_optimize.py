"""`slimkit optimize` on the bundled digits CNN, end to end: the search, the answer, the
report in a real browser, resume after `kill -9`, and the same trials on a Ray cluster.

The objective here is size and training is left out, so every figure the sampler sees is
deterministic and a seed must give the same trials on one process and on Ray.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimkit.bench.harness import BenchOptions
from slimkit.data import DataSpec
from slimkit.model import ModelRef
from slimkit.optimize.job import Job
from slimkit.optimize.settings import SearchConfig, parse_budget
from slimkit.results import RunResults, load_results

ROOT = Path(__file__).resolve().parents[2]
DIGITS = "slimkit.examples.digits:load_model"


def job(out: Path, cache: Path, workers: str = "local", trials: int = 5,
        mlflow: str | None = None) -> Job:
    settings = SearchConfig(budget=parse_budget("max_drop=1.0"), objective="size",
                            trials=trials, train_minutes=0, runtimes=["onnxruntime", "openvino"],
                            finalists=3, workers=workers, seed=3, mlflow=mlflow)
    return Job(name="digits-search", model=ModelRef(source=DIGITS),
               data=DataSpec(source="example", name="digits"), settings=settings, output=out,
               bench=BenchOptions(rounds=1, latency_runs=5, throughput_runs=1),
               cache_dir=cache)


def signature(results: RunResults) -> list[tuple[Any, ...]]:
    assert results.search is not None
    return [(t.number, t.idea, t.runtime, str(t.steps), t.state) for t in results.search.trials]


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResults, Path]:
    from slimkit.optimize.driver import optimize

    base = tmp_path_factory.mktemp("search")
    out = base / "run"
    optimize(job(out, base / "cache", mlflow=f"sqlite:///{base / 'mlflow.db'}"))
    return load_results(out), out


def test_search_answers_within_budget(serial: tuple[RunResults, Path]) -> None:
    results, out = serial
    s = results.search
    assert s is not None and len(s.trials) == 5
    assert {t.state for t in s.trials} <= {"complete", "pruned", "failed"}
    assert s.best is not None and s.front and s.best in s.front
    by_name = {c.name: c for c in results.candidates}
    for name in s.front:
        c = by_name[name]
        assert c.ratios is not None and c.ratios.throughput is not None  # measured side by side
        if name != results.baseline:
            assert (c.quality or {})["accuracy_delta"] >= -1.0
    best = by_name[s.best]
    assert best.size_bytes is not None
    assert best.size_bytes <= min(c.size_bytes or 1 << 60 for c in by_name.values()
                                  if c.name in s.front)
    card = (out / "best" / "MODEL_CARD.md").read_text()
    assert best.runtime in card and "How to load and call it" in card
    # the advice and profile that chose what to try are kept with the results
    assert s.advice["ideas"] and s.profile and s.profile["family"] == "cnn"


def test_every_trial_is_logged_to_mlflow(serial: tuple[RunResults, Path]) -> None:
    import mlflow

    results, _ = serial
    assert results.search is not None
    runs = mlflow.search_runs(experiment_names=["digits-search"], output_format="list")
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted([f"trial {t.number}" for t in results.search.trials] + ["answer"])
    answer = next(r for r in runs if r.info.run_name == "answer")
    assert answer.data.tags["best"] == results.search.best
    first = next(r for r in runs if r.info.run_name == "trial 0")
    assert first.data.params["runtime"] == results.search.trials[0].runtime
    assert "size_mb" in first.data.metrics


def test_best_reloads_and_reproduces_its_quality(serial: tuple[RunResults, Path]) -> None:
    from slimkit.artifact import load_artifact
    from slimkit.data import load_data
    from slimkit.evaluate import collect_outputs, metrics
    from slimkit.model import load_model
    from slimkit.runtimes import RuntimeOptions, get_runtime

    results, out = serial
    assert results.search is not None and results.search.best is not None
    best = next(c for c in results.candidates if c.name == results.search.best)
    data = load_data(DataSpec(source="example", name="digits"), load_model(DIGITS))
    session = get_runtime(best.runtime, RuntimeOptions(threads=2)).load(
        load_artifact(out / "best", trust_code=True))
    outputs = collect_outputs(session, data, 32)
    assert metrics.accuracy(outputs, data.labels) == pytest.approx(
        (best.quality or {})["accuracy"], abs=1e-9)


def test_report_draws_the_front_in_a_browser(serial: tuple[RunResults, Path]) -> None:
    from tests.browser import chromium, inspect_html

    results, out = serial
    assert results.search is not None
    with chromium() as browser:
        facts, errors = inspect_html(browser, out / "report.html", """() => {
          const svg = document.querySelector('#search-chart');
          const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
          const front = document.querySelector('#search-chart #pareto-front');
          return {box: [r.width, r.height],
                  marks: svg ? svg.querySelectorAll('.trial').length : 0,
                  front: front ? front.getTotalLength() : -1,
                  solid: svg ? svg.querySelectorAll('.trial.front, .trial.best').length : 0,
                  profile: !!document.querySelector('#profile')};
        }""")
    assert errors == []
    assert min(facts["box"]) > 0
    shown = [t for t in results.search.trials if t.size_bytes and (t.fidelity or t.slice)]
    failed = [t for t in results.search.trials if t.state in ("failed", "interrupted")]
    assert facts["marks"] == len(shown) + len(failed)
    on_front = [t for t in results.search.trials if t.candidate in results.search.front]
    assert facts["solid"] == len(on_front)
    assert facts["front"] >= 0 if len(on_front) > 1 else True
    assert facts["profile"]


def test_ray_runs_the_same_trials(serial: tuple[RunResults, Path],
                                  tmp_path: Path) -> None:
    """Two Ray workers, batches of two: the same seed gives the same trials, in the same
    order, with the same outcome as one process."""
    from slimkit.optimize.driver import optimize

    results, _ = serial
    env = {"SLIMKIT_RAY_CPUS": "2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ray_results = optimize(job(tmp_path / "run", tmp_path / "cache", workers="ray"))
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert ray_results.search is not None and ray_results.search.workers.startswith("ray")
    assert signature(ray_results) == signature(results)


def _cli(*args: str, cwd: Path, wait: bool = True) -> Any:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "slimkit.cli", "optimize", DIGITS, "--data", "digits",
           "--budget", "max_drop=1.0", "--objective", "size", "--train-minutes", "0",
           "-r", "onnxruntime", "--rounds", "1", "--finalists", "2", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _finished(journal: Path) -> int:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not journal.exists():
        return 0
    study = optuna.load_study(study_name="slimkit",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished())


@pytest.fixture
def killed(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A search killed with SIGKILL after some trials finished."""
    proc = _cli("--trials", "6", "-o", "run", cwd=tmp_path, wait=False)
    journal = tmp_path / "run" / "study.journal"
    deadline = time.monotonic() + 600
    try:
        while _finished(journal) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    yield tmp_path, _finished(journal)


def test_resume_after_kill_runs_only_what_was_left(killed: tuple[Path, int]) -> None:
    folder, done = killed
    assert 2 <= done < 6
    proc = _cli("--trials", "6", "-o", "run", "--resume", cwd=folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = load_results(folder / "run")
    assert results.search is not None and results.search.runs == 2
    first = [t for t in results.search.trials if t.run == 1 and t.state != "interrupted"]
    second = [t for t in results.search.trials if t.run == 2]
    assert len(first) == done
    assert len(first) + len(second) == 6
    # a trial the kill interrupted is asked again with the same parameters
    for t in (t for t in results.search.trials if t.state == "interrupted"):
        assert any(u.steps == t.steps and u.runtime == t.runtime for u in second)


def test_cli_refuses_a_second_search_in_one_folder(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "study.journal").write_text("")
    proc = _cli("-o", "run", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--resume" in proc.stderr
    proc = _cli("-o", "other", "--resume", cwd=tmp_path)
    assert proc.returncode == 2 and "no search to continue" in proc.stderr


def test_cli_names_a_bad_budget(tmp_path: Path) -> None:
    env = {**os.environ}
    proc = subprocess.run([sys.executable, "-m", "slimkit.cli", "optimize", DIGITS, "--data",
                           "digits", "--budget", "max_dorp=1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--budget" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_reference_outputs_are_the_baselines(serial: tuple[RunResults, Path]) -> None:
    _, out = serial
    with np.load(out / "search" / "reference.npz", allow_pickle=False) as z:
        assert z["outputs"].shape[1] == 10


def test_advise_says_what_to_try_and_why(tmp_path: Path) -> None:
    env = {**os.environ, "SLIMKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "slimkit.cli", "advise", DIGITS, "--data",
                           "digits", "--budget", "max_drop=1.0", "--train-minutes", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "try ort-static-int8 on onnxruntime" in proc.stdout
    assert "convolutions take" in proc.stdout and "% of the time" in proc.stdout
    assert "train_minutes is 0" in proc.stdout  # a note, and no pruning idea
    assert "prune-channels" not in proc.stdout
