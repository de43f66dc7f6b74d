"""`import slimkit` stays light: the heavy backends load only when a function needs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["onnxruntime", "openvino", "transformers", "torch"]


def loaded_after(code: str, modules: list[str] = HEAVY) -> list[str]:
    """Which of `modules` are in sys.modules after running `code` in a fresh interpreter."""
    report = f"import json, sys\nprint(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    probe = f"{code}\n{report}"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_slimkit_loads_no_backend() -> None:
    assert loaded_after("import slimkit; slimkit.__version__") == []


def test_registry_loads_no_runtime() -> None:
    loaded = loaded_after("import slimkit.registry\n"
                          "assert 'cast' in slimkit.registry.technique_names()")
    assert loaded == []  # torch included: every technique module imports it in its functions


@pytest.mark.parametrize("code", [
    "import slimkit.config",
    "from slimkit.runtimes import runtime_names; runtime_names()",
])
def test_config_and_runtime_names_load_no_runtime(code: str) -> None:
    assert not {"onnxruntime", "openvino", "transformers"} & set(loaded_after(code))


def test_probe_sees_a_loaded_backend() -> None:
    # the probe itself works: importing a runtime module is seen
    assert "onnxruntime" in loaded_after("import slimkit.runtimes.onnxruntime")


def test_lazy_public_api() -> None:
    import slimkit

    assert slimkit.ModelRef.__name__ == "ModelRef"
    assert set(slimkit.__all__) >= {"load_model", "Recipe", "compress", "SlimkitError"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = slimkit.nope  # type: ignore[attr-defined]
