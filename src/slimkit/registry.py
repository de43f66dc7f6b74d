"""Techniques registered by config type.

A technique is a typed config class plus one `apply` per model format it works on. The pipeline
asks the registry which formats a config supports and calls the matching function; nothing else
in slimkit names a technique, so adding one touches one new file.
"""

from __future__ import annotations

import difflib
import re
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

    # No option means anything as NaN or infinity, and NaN passes every comparison-free check.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

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
        raise ConfigError(f"unknown technique {quote(tag)} (known: {', '.join(sorted(_CONFIGS))})")
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
        return cls.model_validate(raw)
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


# How pydantic names the member of a union (or a validator) it tried, inside a location:
# `alpha.constrained-float`, `steps.0.function-before[parse_step()]`. Not the user's words.
_TAG = re.compile(r"(constrained-\w+|function-[\w-]+\[.*\]|[\w-]+\[.*\]|float|int|str|bool|"
                  r"bytes|none)")


def field_path(loc: tuple[Any, ...] | list[Any]) -> list[Any]:
    """A pydantic error location as the recipe spells it, without union and validator tags."""
    return [p for p in loc if isinstance(p, int) or not _TAG.fullmatch(str(p))]


# Messages quote what the user wrote; a value may be a megabyte or span lines, and the CLI
# promises one short line.
MESSAGE_LIMIT = 400
# Everything str.splitlines() breaks at, and NUL, which terminals and logs mangle.
_BREAKS = str.maketrans(dict.fromkeys("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029\x00", " "))


def clip(value: Any, limit: int = 80) -> str:
    """`str(value)` on one line, cut to `limit` characters."""
    try:
        text = value if isinstance(value, str) else str(value)
    except ValueError:  # an int with more digits than Python converts
        text = f"<{type(value).__name__} too long to show>"
    text = text.translate(_BREAKS)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters (repr escapes newlines, so it stays one line)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__} too long to show>"
    return clip(text, limit)


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """A whole message as one line of at most `limit` characters."""
    return clip(text, limit)
