"""The nouns every format shares, and the table formats register into.

A model is held as an eager module (`TorchModel`) or as files (`FileModel`); both carry their
input signature. Each format is a `Format` object registered here by name, so the loaders, the
artifact writer, the cache key and the size report ask the object instead of branching on a
name. This module imports no format: a format module registers itself, and the package
`slimkit.formats` imports every built-in one.
"""

from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slimkit.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

FormatName = Literal["torch", "onnx", "openvino", "litert"]
SourceFormat = Literal["torch", "hf", "onnx", "openvino", "litert", "tensorflow"]
Head = Literal["embedding", "classification", "base"]

# Longest path Linux accepts; anything longer fails only when a file is opened.
MAX_PATH_CHARS = 4096


class InputSpec(BaseModel):
    """One model input; a string in `shape` names a dynamic axis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    dtype: str = "float32"
    shape: list[int | str]


class ModelRef(BaseModel):
    """Where a model comes from and how to build it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="path to a file or directory, or `package.module:function`")
    format: SourceFormat | None = Field(None, description="inferred from `source` when left out")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="a factory's arguments")
    inputs: list[InputSpec] | None = Field(None, description="input signature of a bare nn.Module")
    head: Head = Field("embedding", description="what a Hugging Face encoder returns")

    @field_validator("source")
    @classmethod
    def _usable_source(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty: give a model file, a directory or package.module:function")
        return check_path_text(v)

    def resolved_format(self) -> SourceFormat:
        return self.format or infer_format(self.source)


def check_path_text(v: str) -> str:
    """A path as written in a recipe, refused early when no file system would take it: a NUL
    byte crashes `open`, a line break or other control character makes a name no one can type
    or read back from a log."""
    if not v:
        raise ValueError("empty: give a path")
    if len(v) > MAX_PATH_CHARS:
        raise ValueError(f"a path of {len(v)} characters; at most {MAX_PATH_CHARS}")
    bad = next((c for c in v if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"contains the control character {bad!r} at {v.index(bad)}; not a "
                         f"usable path")
    return v


@dataclass
class TorchModel:
    """An eager PyTorch module with its input signature."""

    module: torch.nn.Module
    inputs: list[InputSpec]
    tokenizer: str | None = None
    # Where the module came from and the steps applied since: enough to rebuild its structure
    # in another process before its weights are loaded from the artifact.
    ref: ModelRef | None = None
    steps: list[Any] = field(default_factory=list)
    format: FormatName = "torch"


@dataclass
class FileModel:
    """A model that lives in files (ONNX, OpenVINO IR, LiteRT) with its input signature.

    `session_options` are runtime settings that belong to the artifact, such as OpenVINO's
    inference precision for a bf16 candidate.
    """

    format: FormatName
    path: Path
    inputs: list[InputSpec]
    tokenizer: str | None = None
    session_options: dict[str, Any] = field(default_factory=dict)


Model = TorchModel | FileModel


class Format:
    """One model format: the files it is, how it loads, what it weighs, what keys it.

    Subclasses fill in what applies; a method that does not apply says so in one line.
    """

    name: ClassVar[str]
    # The names the model's files take in an artifact folder, the one a FileModel points at
    # first. Empty for a format that is only ever a source (a Hugging Face directory).
    files: ClassVar[tuple[str, ...]] = ()
    # How a source path names this format, when its suffix alone does (".onnx").
    suffix: ClassVar[str | None] = None
    # The format a source of this format is once loaded, when not this one (a Hugging Face
    # directory loads as a torch model); the planner starts from it.
    loads_as: ClassVar[FormatName | None] = None

    def claims(self, source: str) -> bool:
        """Whether `source`, as a user wrote it, is a model of this format."""
        return self.suffix is not None and Path(source).suffix == self.suffix

    def load(self, ref: ModelRef) -> Model:
        """The model a user's source names."""
        raise ModelLoadError(f"a {self.name} model cannot be loaded from a source")

    def read(self, path: Path, tokenizer: str | None = None) -> Model:
        """The model whose main file is `path`, checked before any runtime sees it."""
        raise ModelLoadError(f"a {self.name} model is not read from one file")

    def owns(self, name: str) -> bool:
        """Whether a file of this name in an artifact folder is part of the model."""
        return name in self.files

    def size(self, folder: Path) -> int:
        """Bytes a deployment ships: the model's files, not the reports kept beside them."""
        return sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and self.owns(f.name))

    def key(self, model: Model) -> str:
        """Content hash of the model, the root of every cache key built on it."""
        raise ModelLoadError(f"a {self.name} model has no cache key")

    def save(self, model: Model, dest: Path) -> tuple[Model, dict[str, Any]]:
        """Write the model's files into the folder `dest`: the model as it is there, and the
        fields its record needs beyond format, inputs and tokenizer."""
        raise ModelLoadError(f"a {self.name} model cannot be saved as an artifact")

    def missing(self, folder: Path) -> list[str]:
        """The files an artifact folder of this format needs and lacks."""
        return [n for n in self.files[:1] if not (folder / n).is_file()]


class FileFormat(Format):
    """A format that is its files: copied, hashed and weighed as they are."""

    # Files renamed with the main one and needed beside it, by suffix (".bin" of an IR).
    companions: ClassVar[tuple[str, ...]] = ()

    def load(self, ref: ModelRef) -> Model:
        return self.read(Path(ref.source))

    def extras(self, main: Path) -> list[Path]:
        """Files the model at `main` names by their own names, present only for some models
        (ONNX weights kept outside the graph)."""
        return []

    def model_files(self, main: Path) -> list[Path]:
        """The files of the model whose main file is `main`, that one first."""
        return [main] + [main.with_suffix(s) for s in self.companions] + self.extras(main)

    def key(self, model: Model) -> str:
        from slimkit.io import sha256_json, sha256_path

        assert isinstance(model, FileModel)
        return sha256_json({"files": [sha256_path(f) for f in self.model_files(model.path)],
                            "session": model.session_options})

    def save(self, model: Model, dest: Path) -> tuple[Model, dict[str, Any]]:
        assert isinstance(model, FileModel)
        main = dest / self.files[0]
        if model.path.resolve() != main.resolve():
            shutil.copy2(model.path, main)
            for s in self.companions:
                shutil.copy2(model.path.with_suffix(s), main.with_suffix(s))
            for f in self.extras(model.path):
                shutil.copy2(f, dest / f.name)
        saved = FileModel(model.format, main, model.inputs, model.tokenizer,
                          model.session_options)
        return saved, {"session_options": model.session_options}

    def missing(self, folder: Path) -> list[str]:
        main = folder / self.files[0]
        return [f.name for f in [main] + [main.with_suffix(s) for s in self.companions]
                if not f.is_file()]


_FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Make `fmt` known by its name; a second format of the same name is refused."""
    if fmt.name in _FORMATS:
        raise ValueError(f"format {fmt.name!r} is registered already")
    _FORMATS[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> None:
    _FORMATS.pop(name, None)


def get_format(name: str) -> Format:
    fmt = _FORMATS.get(name)
    if fmt is None:
        raise ModelLoadError(f"unknown format {name!r} (known: {', '.join(_FORMATS)})")
    return fmt


def format_names() -> list[str]:
    return list(_FORMATS)


def infer_format(source: str) -> SourceFormat:
    try:
        return _infer_format(source)
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, no permission
        raise ModelLoadError(f"{shown(source)}: not a usable path ({first_line(e)})") from e


def _infer_format(source: str) -> SourceFormat:
    # Formats named by a suffix answer first: `pkg.mod:fn.onnx` is a file, not a factory.
    for fmt in sorted(_FORMATS.values(), key=lambda f: f.suffix is None):
        if fmt.claims(source):
            return fmt.name  # type: ignore[return-value]
    path = Path(source)
    if path.is_dir():
        raise ModelLoadError(f"{shown(source)}: directory has no config.json (not a Hugging "
                             f"Face model) nor saved_model.pb (not a TensorFlow SavedModel)")
    if not path.exists():
        raise ModelLoadError(f"{shown(source)}: no such file or directory")
    known = ", ".join(f.suffix for f in _FORMATS.values() if f.suffix)
    raise ModelLoadError(f"{shown(source)}: unknown model format (expected {known}, a Hugging "
                         f"Face directory or package.module:function)")


def import_object(spec: str, what: str = "factory") -> Any:
    """Resolve `package.module:attribute`, with one clear line when it does not exist."""
    text = shown(spec)
    if ":" not in spec:
        raise ModelLoadError(f"{text}: a {what} is written package.module:function")
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except (ImportError, ValueError, TypeError) as e:  # ValueError, TypeError: '' or '.x'
        raise ModelLoadError(f"{text}: cannot import module {mod_name[:80]!r} "
                             f"({first_line(e)})") from e
    try:
        return getattr(mod, attr)
    except AttributeError as e:
        raise ModelLoadError(f"{text}: module {mod_name[:80]!r} has no attribute "
                             f"{attr[:80]!r}") from e


def shown(source: str | Path) -> str:
    """A source as quoted in a message: one line, and short even when the path is not."""
    text = " ".join(str(source).splitlines()).replace("\x00", " ")
    return text if len(text) <= 160 else "..." + text[-157:]


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def check_io(text: str, what: str, inputs: int, outputs: int) -> None:
    """A graph without inputs or outputs passes the checkers, but there is nothing to feed or
    to measure, and the first batch would fail far from the cause."""
    if not inputs:
        raise ModelLoadError(f"{text}: the {what} has no inputs")
    if not outputs:
        raise ModelLoadError(f"{text}: the {what} has no outputs")


def first_line(e: BaseException) -> str:
    """The line of a library's message that says what is wrong: OpenVINO's begins with
    `Exception from src/...cpp:84:` and `Check '...' failed at ...` lines naming its sources."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    said = [x for x in lines if not x.startswith(("Exception from ", "Check '"))]
    text = (said or lines or [type(e).__name__])[0]
    return text[:300]
