"""Techniques registered by config type.

A technique is one file: a typed config class plus one `apply` per model format it works on,
each registered with `@technique(...)`. The registry imports exactly the modules under
`slimkit/techniques` that use that decorator (helpers with heavy imports stay unloaded) and finds
third-party techniques by an entry point in the group `slimkit.techniques` or by
`package.module:Config` written in a recipe, so adding one needs no line anywhere else.

An `apply` returns the new model, or a `StepResult` with what should be recorded (the config
plus what a rebuild needs: kept channels, chosen layers) and the step's report. The pipeline, not
the technique, appends the record to a torch model's lineage and stores the report; a cached
artifact is rebuilt through `apply_step` as well, so a fresh build and a rebuild share one path.
A step keeps its model's format, except one registered with `makes`: a quantizer that only
works while converting (LiteRT's, from torch) takes the model in one format and gives another.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from slimkit.errors import ConfigError, ModelLoadError, TechniqueError
from slimkit.messages import clip, field_path, one_line, quote
from slimkit.model import Format, Model, TorchModel, import_object
from slimkit.results import StepReport

if TYPE_CHECKING:
    from slimkit.data import Dataset

ENTRY_POINTS = "slimkit.techniques"
# What marks a module as one that registers techniques (see the module docstring).
_MARK = "@technique("


class TechniqueConfig(BaseModel):
    """Base of every technique config: frozen, strict about unknown fields, YAML round-trips."""

    # No option means anything as NaN or infinity, and NaN passes every comparison-free check.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    technique: str
    name: ClassVar[str] = ""
    # Part of every cache key: bump it when an implementation starts producing other output.
    version: ClassVar[int] = 1
    # Options that reports always show, defaults or not (what kind of cast, how many bits).
    always_shown: ClassVar[tuple[str, ...]] = ()
    # What kind of report the technique gives (quantization, pruning, distillation, fusion):
    # renderers choose what to say about a step by it, never by the technique's name.
    family: ClassVar[str] = ""
    # Options a search may vary, each a `slimkit.space` parameter (see `slimkit optimize`).
    space: ClassVar[dict[str, Any]] = {}

    def shown_options(self) -> dict[str, Any]:
        """The options a reader needs: those set away from their defaults, plus the defining
        ones; the cache key still covers every option."""
        shown = self.model_dump(mode="json", exclude={"technique"}, exclude_defaults=True)
        full = self.model_dump(mode="json")
        return {**{k: full[k] for k in self.always_shown}, **shown}

    def needs_data(self) -> bool:
        """Whether this config reads data even where its implementation normally does not
        (an accuracy budget, say); the pipeline then keys the step by the data too."""
        return False

    def resolve(self) -> TechniqueConfig:
        """This config with every machine-dependent choice (`auto`) made for this machine.

        The pipeline keys, applies and records the resolved config, so an artifact built for
        one CPU is never reused for another that would have chosen differently."""
        return self

    @model_serializer(mode="wrap")
    def _spec_for_others(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A technique from outside slimkit is recorded by its import path, so a recipe or an
        artifact written with it reads back in a process that has not imported it yet."""
        dumped = handler(self)
        if isinstance(dumped, dict) and "technique" in dumped and not _builtin(type(self)):
            dumped["technique"] = spec_of(type(self))
        return dumped

    def short(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.model_dump(exclude={"technique"}).items())
        return f"{self.technique}({opts})"


@dataclass
class StepContext:
    workdir: Path
    data: Dataset | None = None
    threads: int = 2
    # Where a training step keeps its checkpoints, so an interrupted build resumes the step.
    checkpoints: Path | None = None


@dataclass
class StepResult:
    """What an `apply` gives back when it has more to say than the model itself."""

    model: Model
    # The config as recorded in the lineage: the step's own config plus what a rebuild needs.
    record: TechniqueConfig | None = None
    report: StepReport | dict[str, Any] | None = None


Apply = Callable[[Model, Any, StepContext], "Model | StepResult"]


@dataclass(frozen=True)
class Implementation:
    apply: Apply
    format: Format
    requires_data: bool
    # Final formats this implementation makes sense for (None: any). ORT's int8 operators,
    # say, mean nothing to OpenVINO, which would only unpack them again.
    targets: frozenset[str] | None = None
    # Rebuild the structure from the record alone (no data), before weights are loaded.
    # None means `apply` itself is deterministic and data-free, so it serves as the rebuild.
    rebuild: Apply | None = None
    # The format the step gives, when not the one it takes (None: the same).
    makes: Format | None = None

    @property
    def output(self) -> Format:
        return self.makes or self.format


_CONFIGS: dict[str, type[TechniqueConfig]] = {}
_IMPLS: dict[type[TechniqueConfig], dict[str, Implementation]] = {}


def technique(config: type[TechniqueConfig], *, format: Format, requires_data: bool = False,
              rebuild: Apply | None = None,
              targets: set[str] | None = None,
              makes: Format | None = None) -> Callable[[Apply], Apply]:
    """Register `apply` for `config` on models of `format`, giving models of `makes`."""
    tag = config.model_fields["technique"].default
    if not isinstance(tag, str):
        raise TypeError(f"{config.__name__}.technique needs a string default")
    held = _CONFIGS.get(tag)
    if held is not None and spec_of(held) != spec_of(config):
        # A plugin must not silently take over a built-in's name (or another plugin's).
        raise TypeError(f"technique {tag!r} is already {spec_of(held)}")
    config.name = tag
    _CONFIGS[tag] = config

    def deco(fn: Apply) -> Apply:
        _IMPLS.setdefault(config, {})[format] = Implementation(
            fn, format, requires_data, frozenset(targets) if targets else None, rebuild,
            makes if makes != format else None)
        return fn

    return deco


_discovered = False


def _ensure_loaded() -> None:
    """Import every built-in module that registers a technique, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # first: a module being imported may call back into the registry
    root = Path(__file__).resolve().parent
    for path in sorted((root / "techniques").rglob("*.py")):
        if _MARK in path.read_text(encoding="utf-8"):
            parts = path.relative_to(root.parent).with_suffix("").parts
            if parts[-1] == "__init__":  # a package registering in itself: import it once
                parts = parts[:-1]
            importlib.import_module(".".join(parts))


def _builtin(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "slimkit"


def spec_of(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _load_named(spec: str) -> type[TechniqueConfig]:
    """A technique named by `package.module:Config` (importing it registers it)."""
    try:
        cls = import_object(spec, "technique")
    except ModelLoadError as e:
        raise ConfigError(one_line(str(e))) from None
    except Exception as e:  # the module itself failed: its error, on one line
        raise ConfigError(one_line(f"{spec}: importing it failed ({type(e).__name__}: {e})"))\
            from None
    if not (isinstance(cls, type) and issubclass(cls, TechniqueConfig)):
        raise ConfigError(f"{clip(spec)}: not a TechniqueConfig subclass")
    if not any(c in _IMPLS for c in cls.__mro__):
        raise ConfigError(f"{clip(spec)}: no implementation registered (decorate an apply "
                          f"function with @slimkit.registry.technique({cls.__name__}, ...))")
    return cls


def names_outside_code(name: str) -> bool:
    """Whether resolving a step's technique name would run code from outside slimkit (an
    import path, an installed plugin), found without importing it: an artifact from elsewhere
    may name any module."""
    _ensure_loaded()
    if name in _CONFIGS:
        return not _builtin(_CONFIGS[name])
    return ":" in name or name in _plugins()


def step_name(raw: Any) -> str | None:
    """The technique a step names, in any spelling `parse_step` takes, without parsing it."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, dict):
        named = raw.get("technique")
        if named is None and len(raw) == 1:
            named = next(iter(raw))
        return named if isinstance(named, str) else None
    return None


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}


def implementations(config: TechniqueConfig) -> dict[str, Implementation]:
    """Implementations by format, the most derived config class first."""
    _ensure_loaded()
    found: dict[str, Implementation] = {}
    for cls in type(config).__mro__:
        for fmt, impl in _IMPLS.get(cls, {}).items():
            found.setdefault(fmt, impl)
    return found


def technique_names() -> list[str]:
    """Built-in and registered techniques, and installed plugins (not imported to list them)."""
    _ensure_loaded()
    return sorted(set(_CONFIGS) | set(_plugins()))


def config_class(tag: str) -> type[TechniqueConfig]:
    _ensure_loaded()
    if tag in _CONFIGS:
        return _CONFIGS[tag]
    if ":" in tag:
        return _load_named(tag)
    plugin = _plugins().get(tag)
    if plugin is not None:
        return _load_named(plugin.value)
    raise ConfigError(f"unknown technique {quote(tag)} (known: {', '.join(technique_names())})")


def apply_step(impl: Implementation, model: Model, config: TechniqueConfig, ctx: StepContext,
               *, rebuild: bool = False) -> StepResult:
    """Run one step and complete its result: the record appended to a torch model's lineage,
    the report typed and named. Building and rebuilding both come through here."""
    fn = (impl.rebuild or impl.apply) if rebuild else impl.apply
    out = fn(model, config, ctx)
    result = out if isinstance(out, StepResult) else StepResult(out)
    made = result.model
    if made.format != impl.output:  # a conversion is the format graph's job, not a step's
        raise TechniqueError(f"{config.technique} on a {impl.format} model gave a {made.format} "
                             f"model")
    if isinstance(made, TorchModel):
        record = result.record or config
        made.steps = [*model.steps, record]
        result.record = record
    report = result.report
    if report is not None:  # typed, and named by the step whatever the technique said
        fields = report.model_dump() if isinstance(report, StepReport) else dict(report)
        cls = type(report) if isinstance(report, StepReport) else StepReport
        result.report = cls.model_validate({**fields, "technique": config.technique,
                                            "family": config.family})
    return result


def parse_step(raw: Any) -> TechniqueConfig:
    """Build a technique config from `{technique: name, ...options}` or `{name: {options}}`.

    Raises ValueError with one line naming the offending option, which pydantic then places
    under the step's location in the recipe.
    """
    if isinstance(raw, TechniqueConfig):
        return raw
    if isinstance(raw, str):
        raw = {"technique": raw}
    if not isinstance(raw, dict):
        raise ValueError("a step is a mapping such as {technique: dynamic_int8}")
    if "technique" not in raw:
        if len(raw) != 1:
            raise ValueError("a step needs the field 'technique'")
        (tag, opts), = raw.items()
        if not isinstance(tag, str):
            raise ValueError(f"a step's key names a technique, not {quote(tag)}")
        if opts is not None and not isinstance(opts, dict):
            raise ValueError(f"{clip(tag, 40)}: options are a mapping such as {{dtype: fp16}}, "
                             f"not {quote(opts)}")
        opts = opts or {}
        # The key names the technique; an inner `technique:` saying otherwise would silently
        # turn the step into another one.
        if "technique" in opts and opts["technique"] != tag:
            raise ValueError(f"{clip(tag, 40)}.technique: {quote(opts['technique'])} contradicts "
                             f"the step's key {quote(tag)}")
        raw = {"technique": tag, **opts}
    if not isinstance(raw["technique"], str):
        raise ValueError(f"technique: a name such as dynamic_int8, not {quote(raw['technique'])}")
    try:
        cls = config_class(raw["technique"])
    except ConfigError as e:
        raise ValueError(one_line(str(e))) from None
    try:
        return cls.model_validate({**raw, "technique": cls.name})
    except ValidationError as e:
        err = e.errors()[0]
        loc = field_path(err["loc"])
        where = ".".join(clip(p, 40) for p in loc)
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), list(cls.model_fields), n=1)
            msg = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
        else:
            msg = clip(err["msg"].removeprefix("Value error, "), 200)
            if err["type"] != "value_error" and "input" in err \
                    and not isinstance(err["input"], dict):
                msg += f" (got {quote(err['input'])})"
        raise ValueError(one_line(f"{cls.name}.{where}: {msg}")) from None


