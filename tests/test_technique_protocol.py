"""The technique protocol: one file per technique, lineage and reports owned by the pipeline,
and techniques from outside slimkit named in a recipe or installed as plugins."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

import slimkit
from slimkit import registry
from slimkit.artifact import ARTIFACT_JSON, REPORT_JSON, load_artifact
from slimkit.errors import ModelLoadError, TechniqueError
from slimkit.model import Model, ModelRef, TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import (
    StepContext,
    StepResult,
    TechniqueConfig,
    parse_step,
    technique,
    technique_names,
)
from slimkit.run import technique_reports
from slimkit.techniques.fold_batchnorm import FoldBatchNorm
from tests.models import batch, eager

SRC = Path(slimkit.__file__).resolve().parent
ROOT = SRC.parent.parent


def cnn() -> TorchModel:
    model = load_model(ModelRef(source="tests.models:tiny_cnn"))
    assert isinstance(model, TorchModel)
    return model


@pytest.fixture
def restore_registry() -> Iterator[None]:
    configs, impls = dict(registry._CONFIGS), dict(registry._IMPLS)
    yield
    registry._CONFIGS.clear()
    registry._CONFIGS.update(configs)
    registry._IMPLS.clear()
    registry._IMPLS.update(impls)


def test_a_technique_is_one_file_and_its_readme_row() -> None:
    """fold_batchnorm is registered, listed and documented, and no other file of slimkit
    names it: nothing to add to an import list, a report list or a help string."""
    assert "fold_batchnorm" in technique_names()
    name = re.compile(r"\bfold_batchnorm\b|\bFoldBatchNorm\b")
    naming = sorted(str(p.relative_to(ROOT)) for p in SRC.rglob("*.py")
                    if name.search(p.read_text()))
    assert naming == ["src/slimkit/techniques/fold_batchnorm.py"]
    assert "| `fold_batchnorm` |" in (ROOT / "README.md").read_text()


def test_fold_batchnorm_is_exact_and_rebuilds(tmp_path: Path) -> None:
    model = cnn()
    x = batch(model.inputs, 6)["image"]
    before = eager(model, x)
    built = build(model, model_key(model), [FoldBatchNorm()], "torch", Cache(tmp_path))
    after = eager(built.model, x)
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in built.model.module.modules())
    assert built.model.steps == [FoldBatchNorm()]
    report = json.loads((built.path / REPORT_JSON).read_text())
    assert report == {"technique": "fold_batchnorm", "family": "", "folded": 2, "left": 0}
    again = load_artifact(built.path, trust_code=True)
    np.testing.assert_allclose(eager(again, x), before, atol=1e-5)


def test_two_steps_of_one_technique_keep_both_reports(tmp_path: Path) -> None:
    model = cnn()
    cache = Cache(tmp_path)
    built = build(model, model_key(model), [FoldBatchNorm(), FoldBatchNorm()], "onnx", cache)
    reports = technique_reports(cache, built)
    assert list(reports) == ["0:fold_batchnorm", "1:fold_batchnorm", ]
    assert [r["folded"] for r in reports.values()] == [2, 0]
    assert [s.step for s in built.steps] == ["fold_batchnorm", "fold_batchnorm", "export_onnx"]


class _Widen(TechniqueConfig):
    """Changes the structure on apply but records nothing a rebuild could follow."""

    technique: Literal["test_widen"] = "test_widen"


def test_a_record_missing_rebuild_facts_fails_on_the_first_build(
        tmp_path: Path, restore_registry: None) -> None:
    @technique(_Widen, format="torch", rebuild=lambda model, config, ctx: model)
    def _apply(model: Model, config: _Widen, ctx: StepContext) -> Model:
        assert isinstance(model, TorchModel)
        model.module.net[4] = torch.nn.Linear(64, 3)  # the rebuild does not know
        return model

    model = load_model(ModelRef(source="tests.models:tiny_mlp"))
    with pytest.raises(ModelLoadError, match="weights do not fit the rebuilt model"):
        build(model, model_key(model), [_Widen()], "torch", Cache(tmp_path))


class _Convert(TechniqueConfig):
    technique: Literal["test_convert"] = "test_convert"


def test_a_technique_gives_the_format_it_runs_on(tmp_path: Path,
                                                   restore_registry: None) -> None:
    @technique(_Convert, format="torch")
    def _apply(model: Model, config: _Convert, ctx: StepContext) -> Model:
        from slimkit.export import to_onnx

        assert isinstance(model, TorchModel)
        return to_onnx(model, ctx.workdir / "model.onnx")

    model = cnn()
    with pytest.raises(TechniqueError, match="on a torch model gave a onnx model"):
        build(model, model_key(model), [_Convert()], "torch", Cache(tmp_path))


PLUGIN = '''
from typing import Literal

from slimkit.model import TorchModel
from slimkit.registry import StepResult, TechniqueConfig, technique


class Scale(TechniqueConfig):
    """Multiplies the last layer's weights: a stand-in for a user's own technique."""

    technique: Literal["user_scale"] = "user_scale"
    factor: float = 2.0


@technique(Scale, format="torch")
def scale_torch(model, config, ctx):
    import torch

    with torch.no_grad():
        model.module.net[4].weight.mul_(config.factor)
    return StepResult(TorchModel(model.module, model.inputs, ref=model.ref),
                      report={"scaled": "net.4"})
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           restore_registry: None) -> Iterator[Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "user_techniques.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "user_techniques-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: user-techniques\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[slimkit.techniques]\nuser_scale = user_techniques:Scale\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("user_techniques", None)


def test_a_technique_named_by_its_import_path(plugin: Path, tmp_path: Path) -> None:
    config = parse_step({"technique": "user_techniques:Scale", "factor": 3.0})
    assert type(config).__name__ == "Scale" and config.technique == "user_scale"
    # recorded by its import path, so a recipe or an artifact reads back anywhere
    assert config.model_dump()["technique"] == "user_techniques:Scale"
    model = load_model(ModelRef(source="tests.models:tiny_mlp"))
    cache = Cache(tmp_path / "cache")
    built = build(model, model_key(model), [config], "torch", cache)
    record = json.loads((built.path / ARTIFACT_JSON).read_text())
    assert record["steps"] == [{"technique": "user_techniques:Scale", "factor": 3.0}]
    assert technique_reports(cache, built) == {
        "0:user_scale": {"technique": "user_scale", "family": "", "scaled": "net.4"}}
    with pytest.raises(ModelLoadError, match=r"user_techniques:Scale.*--trust-code"):
        load_artifact(built.path)
    x = batch(model.inputs, 4)["x"]
    np.testing.assert_allclose(eager(load_artifact(built.path, trust_code=True), x),
                               eager(built.model, x), atol=1e-6)


def test_an_installed_plugin_is_listed_and_loaded_by_name(plugin: Path) -> None:
    assert "user_scale" in technique_names()
    assert "user_techniques" not in sys.modules  # listed without importing it
    assert parse_step({"user_scale": {"factor": 0.5}}).factor == 0.5  # type: ignore[attr-defined]


@pytest.mark.parametrize(("spec", "message"), [
    ("user_techniques:nothing", "has no attribute 'nothing'"),
    ("json:dumps", "not a TechniqueConfig subclass"),
    ("no_such_module_here:X", "cannot import module"),
])
def test_a_wrong_import_path_is_one_line(plugin: Path, spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_step({"technique": spec})
    assert "\n" not in str(info.value)


def test_a_step_result_report_is_typed() -> None:
    from slimkit.registry import Implementation, StepReport, apply_step

    model = cnn()
    impl = Implementation(lambda m, c, ctx: StepResult(m, report={"n": 1}), "torch", False)
    result = apply_step(impl, model, FoldBatchNorm(), StepContext(Path(".")))
    assert isinstance(result.report, StepReport)
    assert result.report.model_dump() == {"technique": "fold_batchnorm", "family": "", "n": 1}
    assert result.model.steps == [FoldBatchNorm()]


@pytest.mark.parametrize("step", ["user_techniques:Scale", {"user_techniques:Scale": {}},
                                  {"user_scale": {"factor": 2.0}}, "user_scale"])
def test_an_artifact_naming_outside_code_imports_nothing_untrusted(
        plugin: Path, tmp_path: Path, step: object) -> None:
    model = load_model(ModelRef(source="slimkit.examples.digits:load_model"))
    built = build(model, model_key(model), [], "torch", Cache(tmp_path / "cache"))
    folder = tmp_path / "sent"
    folder.mkdir()
    record = json.loads((built.path / ARTIFACT_JSON).read_text())
    (folder / ARTIFACT_JSON).write_text(json.dumps({**record, "steps": [step]}))
    (folder / "model.safetensors").write_bytes((built.path / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="--trust-code"):
        load_artifact(folder)
    assert "user_techniques" not in sys.modules


def test_a_plugin_cannot_take_a_builtin_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             restore_registry: None) -> None:
    (tmp_path / "squatter.py").write_text(PLUGIN.replace('"user_scale"', '"dynamic_int8"'))
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"squatter:Scale: .*technique 'dynamic_int8' is "
                                         r"already slimkit\.techniques") as info:
        parse_step({"technique": "squatter:Scale"})
    with pytest.raises(ValueError, match="broken:X: importing it failed") as broken:
        parse_step({"technique": "broken:X"})
    for e in (info, broken):
        assert "\n" not in str(e.value)
    sys.modules.pop("squatter", None)
    sys.modules.pop("broken", None)
