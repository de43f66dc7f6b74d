"""Recipes: what to compress, how, on which runtime, and how to measure it.

A recipe is validated whole when loaded. The first problem is reported as one line naming the
field (`candidates[1].steps[0]: dynamic_int8.per_channl: unknown field`), which the CLI prints
before exiting with code 2.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, get_args

import yaml
from pydantic import (
    AfterValidator,
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
from slimkit.errors import ConfigError, SlimkitError, TechniqueError
from slimkit.evaluate.evaluator import Task
from slimkit.messages import clip, field_path, one_line, quote
from slimkit.model import Format, ModelRef, check_path_text
from slimkit.optimize.settings import SearchConfig
from slimkit.recipe_yaml import read_recipe_file
from slimkit.registry import TechniqueConfig, parse_step
from slimkit.runtimes.base import runtime_format, runtime_names

Step = Annotated[SerializeAsAny[TechniqueConfig], BeforeValidator(parse_step)]

# Recipe and candidate names become folders (runs/<name>, runs/<name>/<candidate>): no
# separators, no `.`/`..`, nothing a file system or a shell would mangle, and short.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def _file_name(v: str) -> str:
    if not _NAME.fullmatch(v):
        raise ValueError(f"{quote(v)} cannot be a folder name: use 1 to 100 letters, digits, "
                         f"'.', '_', '+' or '-', starting with a letter or digit")
    return v


def _path_text(v: str | None) -> str | None:
    return None if v is None else check_path_text(v)


SafeName = Annotated[str, AfterValidator(_file_name)]
PathText = Annotated[str | None, AfterValidator(_path_text)]


class CandidateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: SafeName
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
            raise ValueError(f"unknown runtime {quote(v)} (known: {', '.join(runtime_names())})")
        return v

    @model_validator(mode="after")
    def _compile_needs_torch(self) -> CandidateConfig:
        if self.compile and self.runtime != "torch":
            raise ValueError("compile: only the torch runtime compiles")
        return self


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    task: Task = "generic"
    batch_size: int = Field(32, gt=0)
    output: int = Field(0, ge=0, description="which model output to score")
    top_k: int = Field(10, gt=0, description="neighbours compared for embeddings")
    user_metric: str | None = Field(None, description="package.module:function")


class LoadSpec(BaseModel):
    """`slimkit run` serves each candidate with `slimkit serve` on 127.0.0.1 and sends it the
    run's own data rows, one per request, at each concurrency (as `slimkit loadtest` does)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    concurrency: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        [1, 8, 32], min_length=1, description="concurrent clients, one level each")
    requests: int = Field(2000, gt=0, le=1_000_000, description="per level at most")
    duration: float = Field(10.0, gt=0, le=3600, description="seconds per level at most")
    dollars_per_hour: float = Field(1.0, ge=0, description="the machine's price, for the cost "
                                                           "of a million requests")
    max_batch: int = Field(32, gt=0, description="the server's --max-batch")
    max_delay_ms: float = Field(0.0, ge=0, description="the server's --max-delay-ms")
    candidates: list[str] | None = Field(None, description="names to serve; default all")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: SafeName
    model: ModelRef
    data: DataSpec
    calibration: DataSpec | None = Field(
        None, description="data for steps that calibrate or search; default: the `calibration` "
                          "split of a bundled example, else none")
    evaluation: EvalConfig = Field(default_factory=EvalConfig)
    benchmark: BenchOptions = Field(default_factory=BenchOptions)
    candidates: list[CandidateConfig] = Field(default_factory=list)
    search: SearchConfig | None = Field(None, description="search techniques x runtimes "
                                        "within a quality budget (slimkit optimize)")
    loadtest: LoadSpec | None = Field(None, description="serve each candidate on 127.0.0.1 "
                                      "and measure it under load; the figures join the report")
    output: PathText = Field(None, description="run directory; default runs/<name>")
    cache_dir: PathText = Field(None, description="default $SLIMKIT_CACHE or ~/.cache/slimkit")

    @model_validator(mode="after")
    def _check_candidates(self) -> Recipe:
        if not self.candidates and self.search is None:
            raise ValueError("candidates: give at least one candidate, or a search: section")
        names = [c.name for c in self.candidates]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"candidates: duplicate name(s) {', '.join(dup)}")
        folded = [n.casefold() for n in names]
        clash = sorted({n for n in names if folded.count(n.casefold()) > 1})
        if clash:  # one folder on macOS and Windows
            raise ValueError(f"candidates: names differ only in case: {', '.join(clash)}")
        unknown = [n for n in (self.loadtest.candidates or []) if n not in names] \
            if self.loadtest else []
        if unknown:
            raise ValueError(f"loadtest.candidates: {unknown[0]!r} is not a candidate "
                             f"(candidates: {', '.join(names)})")
        if sum(c.baseline for c in self.candidates) > 1:
            raise ValueError("candidates: more than one is marked baseline")
        for i, cand in enumerate(self.candidates):
            problem = _placement(cand.model or self.model, cand)
            if problem:
                raise ValueError(f"candidates[{i}]{problem}")
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


def _placement(ref: ModelRef, cand: CandidateConfig) -> str | None:
    """Where a candidate cannot be built from its model's format, found before anything is:
    otherwise the run goes on and that candidate fails at build time."""
    try:
        source = ref.resolved_format()
    except (SlimkitError, OSError, ValueError):
        return None  # reported in its own words when the model is loaded
    from slimkit.formats import get_format, reachable  # no torch; needed only with candidates

    start: Format = get_format(source).loads_as or source  # type: ignore[assignment]
    target = runtime_format(cand.runtime)

    model = f"{'an' if start[0] in 'aeiou' else 'a'} {start} model"
    if target != start and target not in reachable(start):
        ahead = ", ".join(reachable(start)) or "none"
        return (f".runtime: {model} cannot be served on {cand.runtime} (no conversion leads "
                f"from {start} to {target}; {start} converts to: {ahead})")
    for j in range(len(cand.steps)):
        if _plans(start, cand.steps[: j + 1], target):
            continue
        where = [r for r in runtime_names() if _plans(start, cand.steps[: j + 1],
                                                      runtime_format(r))]
        step = cand.steps[j].technique
        runs = ", ".join(where) if where else "none"
        return (f".steps[{j}]: {step} cannot run on the way from {model} to {cand.runtime} "
                f"(runtimes it can run for here: {runs})")
    return None


def _plans(start: Format, steps: list[TechniqueConfig], target: Format) -> bool:
    from slimkit.pipeline import plan

    try:
        plan(start, steps, target)
    except TechniqueError:
        return False
    return True


def load_recipe(path: Path | str) -> Recipe:
    path = Path(path)
    name = clip(path, 120)
    raw = read_recipe_file(path, name)
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: a recipe is a mapping of fields (name, model, data, ...)")
    return parse_recipe(raw, name)


def parse_recipe(raw: dict[str, Any], origin: str = "recipe") -> Recipe:
    origin = clip(origin, 120)
    try:
        bad = _non_finite(raw, [])
        if bad is not None:
            raise ConfigError(one_line(f"{origin}: {_loc(bad)}: not a finite number (got "
                                       f"{_get(raw, bad)})"))
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line(f"{origin}: {describe_error(e, raw)}")) from None
    except RecursionError:
        raise ConfigError(f"{origin}: nested too deeply to be a recipe") from None


def _get(raw: Any, loc: list[Any]) -> Any:
    for p in loc:
        raw = raw[p]
    return raw


def _non_finite(raw: Any, where: list[Any]) -> list[Any] | None:
    """Where the first NaN or infinity is: no recipe field means anything by them, and NaN
    slips through every bound (`nan > 0` and `nan <= 1` are both false, so neither fails)."""
    if isinstance(raw, float) and not math.isfinite(raw):
        return where
    items = raw.items() if isinstance(raw, dict) else enumerate(raw) \
        if isinstance(raw, list) else ()
    for k, v in items:
        found = _non_finite(v, [*where, k])
        if found is not None:
            return found
    return None


def describe_error(e: ValidationError, raw: Any) -> str:
    """One line for the first error: where, and what is wrong, with a suggestion for typos.

    Values the user wrote are quoted cut short: one may be a megabyte long or span lines."""
    errors = e.errors()
    # A misspelled required key shows up twice (unknown + missing); the typo is the news.
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = field_path(err["loc"])
    where = _loc(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = "unknown field" + _suggest(loc)
    elif kind == "missing":
        msg = "required field is missing"
    else:
        msg = clip(err["msg"].removeprefix("Value error, "), 300)
        if "input" in err and kind not in ("value_error",) and not isinstance(err["input"], dict):
            msg += f" (got {quote(err['input'])})"
    return one_line(f"{where}: {msg}" if where else msg)


def _loc(loc: list[Any]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{clip(p, 40)}" if out else clip(p, 40))
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
