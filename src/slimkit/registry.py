"""Techniques registered by config type.

A technique is a typed config class plus one `apply` per model format it works on. The pipeline
asks the registry which formats a config supports and calls the matching function; nothing else
in slimkit names a technique, so adding one touches one new file.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from slimkit.errors import ConfigError
from slimkit.model import Format, Model

if TYPE_CHECKING:
    from slimkit.data import Dataset


class TechniqueConfig(BaseModel):
    """Base of every technique config: frozen, strict about unknown fields, YAML round-trips."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    technique: str
    name: ClassVar[str] = ""
    # Part of every cache key: bump it when an implementation starts producing other output.
    version: ClassVar[int] = 1
    # Options that reports always show, defaults or not (what kind of cast, how many bits).
    always_shown: ClassVar[tuple[str, ...]] = ()

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


Apply = Callable[[Model, Any, StepContext], Model]


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


_CONFIGS: dict[str, type[TechniqueConfig]] = {}
_IMPLS: dict[type[TechniqueConfig], dict[str, Implementation]] = {}


def technique(config: type[TechniqueConfig], *, format: Format, requires_data: bool = False,
              rebuild: Apply | None = None,
              targets: set[str] | None = None) -> Callable[[Apply], Apply]:
    """Register `apply` for `config` on models of `format`."""
    tag = config.model_fields["technique"].default
    if not isinstance(tag, str):
        raise TypeError(f"{config.__name__}.technique needs a string default")
    config.name = tag
    _CONFIGS[tag] = config

    def deco(fn: Apply) -> Apply:
        _IMPLS.setdefault(config, {})[format] = Implementation(
            fn, format, requires_data, frozenset(targets) if targets else None, rebuild)
        return fn

    return deco


def _ensure_loaded() -> None:
    import slimkit.techniques  # noqa: F401  (registers the built-in techniques)


def implementations(config: TechniqueConfig) -> dict[str, Implementation]:
    """Implementations by format, the most derived config class first."""
    _ensure_loaded()
    found: dict[str, Implementation] = {}
    for cls in type(config).__mro__:
        for fmt, impl in _IMPLS.get(cls, {}).items():
            found.setdefault(fmt, impl)
    return found


def technique_names() -> list[str]:
    _ensure_loaded()
    return sorted(_CONFIGS)


def config_class(tag: str) -> type[TechniqueConfig]:
    _ensure_loaded()
    if tag not in _CONFIGS:
        raise ConfigError(f"unknown technique {tag!r} (known: {', '.join(sorted(_CONFIGS))})")
    return _CONFIGS[tag]


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
        if opts is not None and not isinstance(opts, dict):
            raise ValueError(f"{tag}: options are a mapping such as {{dtype: fp16}}, "
                             f"not {opts!r}")
        raw = {"technique": tag, **(opts or {})}
    try:
        cls = config_class(str(raw["technique"]))
    except ConfigError as e:
        raise ValueError(str(e)) from None
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), list(cls.model_fields), n=1)
            msg = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
        else:
            msg = err["msg"]
        raise ValueError(f"{cls.name}.{where}: {msg}") from None
