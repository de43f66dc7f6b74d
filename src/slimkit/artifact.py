"""Model artifacts on disk: one directory, one `artifact.json`, the model files beside it.

ONNX and OpenVINO artifacts are their own files. A torch artifact is a small readable record
(the model's source and the steps applied to it) plus its weights in safetensors: loading
rebuilds the structure from the record and then loads the weights, so nothing is unpickled.

Rebuilding calls the factory the record names, so a folder from elsewhere could name any
function (`os:makedirs`). Like Hugging Face's `trust_remote_code`, `load_artifact` calls no
factory but slimkit's own bundled examples unless the caller trusts the folder: slimkit trusts
the artifacts it built itself (the cache, a run's candidates), a user's folder needs
`--trust-code`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slimkit.errors import ConfigError, ModelLoadError
from slimkit.formats import format_names, get_format
from slimkit.io import atomic_dir, atomic_write_json
from slimkit.model import FileModel, Format, InputSpec, Model, ModelRef, TorchModel

if TYPE_CHECKING:
    from slimkit.registry import TechniqueConfig

ARTIFACT_JSON = "artifact.json"
# Factories slimkit ships as models: calling one runs slimkit's code, nothing the folder brought.
# Named one by one rather than as "anything under slimkit.": other slimkit functions
# (slimkit.io:atomic_write_text) would make a record into a write primitive.
BUNDLED_FACTORIES = frozenset({
    "slimkit.examples.digits:load_model",
    "slimkit.examples.digits:student",
    "slimkit.examples.minilm:load_model",
    "slimkit.examples.mobilenet:load_model",
})
# What an artifact folder consists of besides the model files: the step's report (written by
# the pipeline), what a step keeps for a rerun, and the per-technique report files that older
# artifacts hold.
REPORT_JSON = "report.json"
STEP_FILES = frozenset({REPORT_JSON, "calibration_ranges.json", "source.onnx",
                        "quantization.json", "fusion.json", "smoothing.json", "distill.json",
                        "pruning.json", "MODEL_CARD.md"})
MODEL_FILES = frozenset(n for f in format_names() for n in get_format(f).files)
_SHOWN_CHARS = 400


class Record(BaseModel):
    """The fields of `artifact.json`; unknown ones are ignored, so newer records still load."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    format: Format
    inputs: list[InputSpec]
    tokenizer: str | None = None
    session_options: dict[str, Any] = Field(default_factory=dict)
    ref: ModelRef | None = None
    steps: list[Any] = Field(default_factory=list)


def save_artifact(model: Model, dest: Path) -> Model:
    """Write `model` into the directory `dest` and return it as loaded from there."""
    dest.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format": model.format,
        "inputs": [i.model_dump() for i in model.inputs],
        "tokenizer": model.tokenizer,
    }
    saved, fields = get_format(model.format).save(model, dest)
    atomic_write_json(dest / ARTIFACT_JSON, {**meta, **fields})
    return saved


def load_artifact(path: Path, *, trust_code: bool = False) -> Model:
    """Load the artifact in `path`.

    `trust_code` allows calling the factories its record names; without it only the bundled
    examples are called, and a record naming any other is refused before anything is imported.
    """
    record = read_record(path)
    if record.format == "torch":
        if not trust_code:
            untrusted = [f for f in named_factories(path, record) if f not in BUNDLED_FACTORIES]
            if untrusted:
                raise ModelLoadError(
                    f"{path}: {ARTIFACT_JSON} names code that loading would run "
                    f"({_shown(untrusted)}); pass --trust-code (trust_code=True) only if you "
                    f"trust this folder")
        return _load_torch(path, record)
    fmt = get_format(record.format)
    missing = fmt.missing(path)
    if missing:
        raise ModelLoadError(f"{path}: the artifact's {missing[0]} is missing")
    main = path / fmt.files[0]
    if not trust_code:  # a folder from elsewhere: its model file is read before it is used
        fmt.read(main)
    return FileModel(record.format, main, record.inputs, record.tokenizer,
                     dict(record.session_options))


def read_record(path: Path) -> Record:
    """The validated `artifact.json` of `path`, or one line saying what is wrong with it."""
    meta_path = path / ARTIFACT_JSON
    if not meta_path.is_file():
        raise ModelLoadError(f"{path}: not a slimkit artifact (no {ARTIFACT_JSON})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"{meta_path}: not valid JSON ({_first_line(e)})") from None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{meta_path}: not a JSON object of fields (format, inputs, ...)")
    try:
        record = Record.model_validate(meta)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "record"
        raise ModelLoadError(f"{meta_path}: {loc}: {_first_line(err['msg'])}") from None
    if record.format == "torch" and record.ref is None:
        raise ModelLoadError(f"{meta_path}: ref: a torch artifact needs the model's source")
    return record


def named_factories(path: Path, record: Record) -> list[str]:
    """Every `package.module:function` that rebuilding `record` may call, first seen first:
    the model's source, any model a step names (a distillation teacher), and techniques from
    outside slimkit (importing one runs its module)."""
    from slimkit.registry import names_outside_code, step_name

    refs = [record.ref] if record.ref is not None else []
    code: list[str] = []
    for k, raw in enumerate(record.steps):
        named = step_name(raw)
        if named is not None and names_outside_code(named):
            code.append(named)
            continue
        config = _parse(path, k, raw)
        for attr in ("teacher", "model"):
            value = getattr(config, attr, None)
            if isinstance(value, ModelRef):
                refs.append(value)
            elif isinstance(value, str) and value != "source":
                refs.append(ModelRef(source=value))
    return list(dict.fromkeys([*(r.source for r in refs if _is_factory(r)), *code]))


def _is_factory(ref: ModelRef) -> bool:
    try:
        return ref.resolved_format() == "torch"
    except ModelLoadError:  # a path that does not load fails later, without calling anything
        return False


def _parse(path: Path, k: int, raw: Any) -> TechniqueConfig:
    from slimkit.registry import parse_step

    try:
        return parse_step(raw)
    except ValueError as e:
        raise ModelLoadError(f"{path / ARTIFACT_JSON}: steps[{k}]: {_first_line(e)}") from None


def _load_torch(path: Path, record: Record) -> TorchModel:
    from slimkit.model import load_model
    from slimkit.registry import StepContext, apply_step, implementations
    from slimkit.torch_state import load_state

    assert record.ref is not None
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"{path}: the artifact's {weights.name} is missing")
    model = load_model(record.ref)
    if not isinstance(model, TorchModel):
        raise ModelLoadError(f"{path / ARTIFACT_JSON}: ref {_shown([record.ref.source])} is "
                             f"not a torch model")
    ctx = StepContext(workdir=path)
    for k, raw in enumerate(record.steps):
        config = _parse(path, k, raw)
        impl = implementations(config).get("torch")
        if impl is None:
            raise ModelLoadError(f"{path / ARTIFACT_JSON}: steps[{k}]: {config.technique} "
                                 f"does not run on torch models")
        model = apply_step(impl, model, config, ctx, rebuild=True).model  # type: ignore[assignment]
    load_state(model.module, weights)
    return model


def is_artifact(path: Path) -> bool:
    return (path / ARTIFACT_JSON).is_file()


def is_artifact_file(name: str) -> bool:
    """Whether a file of this name is one slimkit writes into an artifact folder."""
    return (name == ARTIFACT_JSON or name in MODEL_FILES or name in STEP_FILES
            or name.endswith(".onnx.data"))


def foreign_files(path: Path) -> list[str]:
    """What in the folder `path` an artifact does not consist of (the user's own files);
    empty for an artifact folder, everything for a folder without `artifact.json`."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not is_artifact(path):
        return names
    return [n for n in names if n.endswith("/") or not is_artifact_file(n)]


def _shown(names: list[str]) -> str:
    """Names for a one-line message: control characters escaped, the whole bounded."""
    text = ", ".join(ascii(n)[1:-1] if not n.isprintable() else n for n in names)
    if len(text) <= _SHOWN_CHARS:
        return text
    return text[:_SHOWN_CHARS] + f"... ({len(names)} in all)"


def _first_line(e: object) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def check_output_folder(dst: Path) -> None:
    """Refuse an output folder that slimkit may not replace: a file, a link, or a folder
    holding anything an artifact does not consist of (the user's own files)."""
    if dst.is_symlink():
        raise ConfigError(f"output {dst}: is a symbolic link; choose a new or empty folder")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"output {dst}: exists and is not a directory")
    if dst.is_dir() and (foreign := foreign_files(dst)):
        shown = ", ".join(n if n.isprintable() else ascii(n)[1:-1] for n in foreign[:3])
        shown += ", ..." if len(foreign) > 3 else ""
        raise ConfigError(f"output {dst}: holds files slimkit did not write ({shown}); "
                          f"choose an empty or new folder")


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a finished artifact, hard-linking files where the filesystem allows.

    `dst` may be absent, empty or an earlier artifact, which is replaced; anything else is
    refused (see `check_output_folder`), so a user's folder is never deleted.
    """
    check_output_folder(dst)
    with atomic_dir(dst) as tmp:
        for f in src.rglob("*"):
            if f.is_dir():
                continue
            target = tmp / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)
