"""A recipe's `loadtest`: every candidate is served by `slimkit serve` and put under load, and
the figures land in results.json, both reports and the terminal summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from slimkit.config import load_recipe
from slimkit.errors import ConfigError
from slimkit.results import load_results

ROOT = Path(__file__).resolve().parents[2]
LOAD = {"concurrency": [1, 4], "requests": 60, "duration": 3, "dollars_per_hour": 0.5}


def _recipe(tmp: Path, **changes: Any) -> dict[str, Any]:
    """examples/digits-serve.yaml, timed briefly and written under `tmp`."""
    raw = yaml.safe_load((ROOT / "examples" / "digits-serve.yaml").read_text())
    raw.update(benchmark={"threads": 1, "rounds": 1, "latency_runs": 5, "throughput_runs": 1},
               loadtest=LOAD, output=str(tmp / "run"), cache_dir=str(tmp / "cache"))
    return {**raw, **changes}


def test_a_recipe_load_tests_every_candidate(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    from slimkit.api import run
    from slimkit.summary import print_summary

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path)))
    run(path)
    results = load_results(tmp_path / "run")
    assert results.loadtest is not None and results.loadtest["concurrency"] == [1, 4]
    for cand in results.candidates:
        assert cand.served is not None, cand.error
        assert [lv.concurrency for lv in cand.served] == [1, 4]
        for lv in cand.served:
            assert lv.requests > 0 and lv.errors == 0 and lv.first_error is None
            assert lv.throughput > 0 and lv.p50_ms is not None and lv.p99_ms >= lv.p50_ms
            assert lv.dollars_per_million == pytest.approx(0.5 / (lv.throughput * 3600) * 1e6)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Served" in md and "Cost ×" in md and "| ort-int8-static | onnxruntime | 4 |" in md
    assert "<h2>Served</h2>" in (tmp_path / "run" / "report.html").read_text()
    print_summary(results)
    assert "served (slimkit serve under load)" in capsys.readouterr().out


@pytest.mark.parametrize(("change", "words"), [
    ({"concurrency": [0]}, "loadtest.concurrency"),
    ({"candidates": ["ort-fp32", "nope"]}, "'nope' is not a candidate"),
    ({"duration": -1}, "loadtest.duration"),
])
def test_loadtest_settings_are_checked(tmp_path: Path, change: dict[str, Any], words: str
                                       ) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, loadtest={**LOAD, **change})))
    with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("'", ".")):
        load_recipe(path)
