"""Recipes: what to compress, how, on which runtime, and how to measure it.

A recipe is validated whole when loaded. The first problem is reported as one line naming the
field (`candidates[1].steps[0]: dynamic_int8.per_channl: unknown field`), which the CLI prints
before exiting with code 2.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from slimkit.bench.harness import BenchOptions
from slimkit.data import DataSpec
from slimkit.errors import ConfigError
from slimkit.evaluate.evaluator import Task
from slimkit.model import ModelRef
from slimkit.registry import TechniqueConfig, parse_step
from slimkit.runtimes.base import runtime_names

Step = Annotated[SerializeAsAny[TechniqueConfig], BeforeValidator(parse_step)]


class CandidateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    runtime: str
    steps: list[Step] = Field(default_factory=list)
    baseline: bool = False
    compile: bool = Field(False, description="torch runtime only: serve through torch.compile")
    model: ModelRef | None = Field(None, description="this candidate's own source model (a "
                                   "teacher, another student); default the recipe's model")
    calibration: DataSpec | None = Field(None, description="this candidate's own calibration "
                                         "and training data; default the recipe's")

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, v: str) -> str:
        if v not in runtime_names():
            raise ValueError(f"unknown runtime {v!r} (known: {', '.join(runtime_names())})")
        return v

    @model_validator(mode="after")
    def _compile_needs_torch(self) -> CandidateConfig:
        if self.compile and self.runtime != "torch":
            raise ValueError("compile: only the torch runtime compiles")
        return self


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: Task = "generic"
    batch_size: int = Field(32, gt=0)
    output: int = Field(0, ge=0, description="which model output to score")
    top_k: int = Field(10, gt=0, description="neighbours compared for embeddings")
    user_metric: str | None = Field(None, description="package.module:function")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    model: ModelRef
    data: DataSpec
    calibration: DataSpec | None = Field(
        None, description="data for steps that calibrate or search; default: the `calibration` "
                          "split of a bundled example, else none")
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    benchmark: BenchOptions = Field(default_factory=BenchOptions)
    candidates: list[CandidateConfig] = Field(min_length=1)
    output: str | None = Field(None, description="run directory; default runs/<name>")
    cache_dir: str | None = Field(None, description="default $SLIMKIT_CACHE or ~/.cache/slimkit")

    @model_validator(mode="after")
    def _check_candidates(self) -> Recipe:
        names = [c.name for c in self.candidates]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"candidates: duplicate name(s) {', '.join(dup)}")
        if sum(c.baseline for c in self.candidates) > 1:
            raise ValueError("candidates: more than one is marked baseline")
        return self

    @property
    def baseline(self) -> CandidateConfig:
        return next((c for c in self.candidates if c.baseline), self.candidates[0])

    @property
    def calibration_spec(self) -> DataSpec | None:
        if self.calibration is not None:
            return self.calibration
        if self.data.source == "example":
            return self.data.model_copy(update={"split": "calibration", "limit": None})
        return None

    @property
    def output_dir(self) -> Path:
        return Path(self.output or f"runs/{self.name}")

    def to_yaml(self) -> str:
        raw = self.model_dump(mode="json", exclude_defaults=True)
        for cand, out in zip(self.candidates, raw["candidates"], strict=True):
            if cand.steps:  # a step's `technique` tag is its default, and must stay
                out["steps"] = [{s.technique: s.model_dump(mode="json", exclude={"technique"},
                                                           exclude_defaults=True)}
                                for s in cand.steps]
        return yaml.safe_dump(raw, sort_keys=False)


def load_recipe(path: Path | str) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such recipe file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError(f"{path}: not valid YAML ({where}: {getattr(e, 'problem', e)})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of fields (name, model, data, ...)")
    return parse_recipe(raw, str(path))


def parse_recipe(raw: dict[str, Any], origin: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{origin}: {describe_error(e, raw)}") from None


def describe_error(e: ValidationError, raw: Any) -> str:
    """One line for the first error: where, and what is wrong, with a suggestion for typos."""
    errors = e.errors()
    # A misspelled required key shows up twice (unknown + missing); the typo is the news.
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    where = _loc(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = "unknown field" + _suggest(loc)
    elif kind == "missing":
        msg = "required field is missing"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and kind not in ("value_error",) and not isinstance(err["input"], dict):
            msg += f" (got {err['input']!r})"
    return f"{where}: {msg}" if where else msg


def _loc(loc: list[Any]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _model_in(ann: Any) -> Any:
    """The pydantic model inside an annotation such as `list[InputSpec] | None`."""
    if hasattr(ann, "model_fields"):
        return ann
    for arg in get_args(ann):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _suggest(loc: list[Any]) -> str:
    """'did you mean' from the fields of the model that owns the misspelled key."""
    model: Any = Recipe
    for p in loc[:-1]:
        if isinstance(p, int):
            continue
        field = getattr(model, "model_fields", {}).get(p)
        if field is None:
            return ""
        model = _model_in(field.annotation)
        if model is None:
            return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
