"""Build a candidate: a pure function of (model, steps, data) -> artifact, cached by its inputs.

Each step (a technique or a format conversion) is keyed by the hash of its input's key, its
config and the data it reads. A finished step lives in the cache as a complete artifact, so a
rerun, a resumed run or another worker skips it; an interrupted step leaves nothing behind.
"""

from __future__ import annotations

import copy
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from slimkit import __version__
from slimkit.artifact import REPORT_JSON, is_artifact, load_artifact, save_artifact
from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.export import EXPORT_VERSION, convert, path_between
from slimkit.io import atomic_dir, atomic_write_json, default_cache_dir, sha256_json
from slimkit.model import Format, Model, TorchModel
from slimkit.registry import (
    Implementation,
    StepContext,
    TechniqueConfig,
    apply_step,
    implementations,
)


@dataclass
class StepRecord:
    step: str
    options: dict[str, Any]  # the options set away from their defaults (the key has them all)
    format: str
    key: str
    seconds: float
    cached: bool
    peak_rss_mb: float


@dataclass
class Built:
    model: Model
    key: str
    path: Path
    steps: list[StepRecord] = field(default_factory=list)

    def lineage(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.steps]


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / "artifacts" / key[:2] / key

    def get(self, key: str) -> Model | None:
        p = self.path(key)
        return load_artifact(p, trust_code=True) if is_artifact(p) else None

    def produce(self, key: str, make: Callable[[Path], Model]) -> tuple[Model, bool]:
        """Return the cached model for `key`, or make it in a fresh directory and keep it.

        What was just made is returned as loaded back from the cache, so a first run and a rerun
        go through the same rebuild: a record missing what a rebuild needs fails at once."""
        cached = self.get(key)
        if cached is not None:
            return cached, True
        final = self.path(key)
        with atomic_dir(final) as tmp:
            save_artifact(make(tmp), tmp)
        return load_artifact(final, trust_code=True), False


def model_key(model: Model) -> str:
    """Content hash of a model, as its format computes it: a file model's files, a torch
    model's source, steps and weights."""
    from slimkit.formats import get_format

    return get_format(model.format).key(model)


def private_copy(model: Model) -> Model:
    """A torch model a technique may change in place without touching its input.

    Many torch transforms work in place (`module.to(dtype)`, fusions, pruning); the input of a
    step is also the input of other candidates and the key of cached work, so it must not move.
    File models are immutable here: techniques write new files.
    """
    if isinstance(model, TorchModel):
        return replace(model, module=copy.deepcopy(model.module), steps=list(model.steps))
    return model


def step_key(in_key: str, step: dict[str, Any], data: Dataset | None) -> str:
    return sha256_json({"in": in_key, "step": step, "v": __version__,
                        "data": data.fingerprint() if data is not None else None})


def plan(start: Format, steps: list[TechniqueConfig], target: Format) -> list[Format]:
    """The format each step runs on: the latest one on the way to `target` it supports.

    Applying as late as possible lets, say, int8 quantization run in the target runtime's own
    quantizer, while a torch-only step (pruning, training) still runs before export.
    """
    if not steps:
        return []
    route = path_between(start, target)  # the way every step is placed along
    formats: list[Format] = []
    at = 0
    for config in steps:
        impls = implementations(config)
        supported = [k for k in range(at, len(route)) if route[k] in impls
                     and (impls[route[k]].targets is None or target in impls[route[k]].targets)]
        if not supported:
            raise TechniqueError(
                f"{config.technique} cannot run between {route[at]} and {target} (it works on "
                f"{', '.join(impls) or 'nothing'})"
            )
        at = supported[-1]
        formats.append(route[at])  # type: ignore[arg-type]
        made = impls[route[at]].output
        if made != route[at]:  # a step that converts as it goes: the next ones run after it
            if made not in route[at:]:
                raise TechniqueError(f"{config.technique} gives a {made} model, which is not on "
                                     f"the way from {route[0]} to {target}")
            at = route.index(made, at)
    return formats


def _technique_step(src: Model, impl: Implementation, config: TechniqueConfig,
                    data: Dataset | None, threads: int) -> Callable[[Path, Path], Model]:
    """How one technique step makes its artifact: the model, and its report beside it."""

    def make(workdir: Path, checkpoints: Path) -> Model:
        ctx = StepContext(workdir, data, threads, checkpoints)
        return apply_technique(impl, private_copy(src), config, ctx)

    return make


def apply_technique(impl: Implementation, model: Model, config: TechniqueConfig,
                    ctx: StepContext) -> Model:
    """One technique as a step runs it: the result completed (lineage, typed report) and the
    report written beside the artifact."""
    result = apply_step(impl, model, config, ctx)
    if result.report is not None:
        atomic_write_json(ctx.workdir / REPORT_JSON, result.report.model_dump(mode="json"))
    return result.model


def build(base: Model, base_key: str, steps: list[TechniqueConfig], target: Format,
          cache: Cache, *, data: Dataset | None = None, threads: int = 2,
          on_step: Callable[[str], None] | None = None) -> Built:
    """Apply `steps` to `base` and convert it to `target`, reusing every cached step."""
    records: list[StepRecord] = []
    model, key = base, base_key
    steps = [s.resolve() for s in steps]

    def run_step(name: str, options: dict[str, Any], fmt: str, needs_data: bool,
                 make: Callable[[Path, Path], Model], version: int = 1,
                 shown: dict[str, Any] | None = None) -> None:
        nonlocal model, key
        if on_step:
            on_step(name)
        new_key = step_key(key, {"step": name, "version": version, **options},
                           data if needs_data else None)
        t0 = time.perf_counter()
        checkpoints = cache.root / "checkpoints" / new_key
        model, cached = cache.produce(new_key, lambda d: make(d, checkpoints))
        shutil.rmtree(checkpoints, ignore_errors=True)
        records.append(StepRecord(name, shown or {}, fmt, new_key, time.perf_counter() - t0,
                                  cached,
                                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6))
        key = new_key

    def hop_to(fmt: Format) -> None:
        for nxt in path_between(model.format, fmt)[1:]:
            src = model
            run_step(f"export_{nxt}", {"exporter": EXPORT_VERSION}, nxt, False,
                     lambda d, _ckpt, src=src, nxt=nxt: convert(src, nxt, d, data))

    for config, fmt in zip(steps, plan(base.format, steps, target), strict=True):
        hop_to(fmt)
        impl = implementations(config)[fmt]
        needs_data = impl.requires_data or config.needs_data()
        if needs_data and data is None:
            raise TechniqueError(f"{config.technique} needs calibration data")
        options = config.model_dump()
        named = options.pop("technique")
        if named != config.technique:  # from outside slimkit: its import path keys it too
            options["class"] = named
        run_step(config.technique, options, fmt, needs_data,
                 _technique_step(model, impl, config, data if needs_data else None, threads),
                 type(config).version,
                 config.shown_options())
    hop_to(target)
    if not records:  # the unchanged model, kept as an artifact of its own
        key = base_key
        model, cached = cache.produce(key, lambda d: base)
        records.append(StepRecord("save", {}, base.format, key, 0.0, cached, 0.0))
    return Built(model, key, cache.path(key), records)
