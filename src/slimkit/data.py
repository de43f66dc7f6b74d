"""Datasets for calibration, evaluation and benchmarking, and the sources they come from.

Each kind of source (a bundled example, `.npz`, a folder of images, `.jsonl`/`.txt` texts, a
Python factory) is a reader registered in one table under the name a recipe gives as
`source`; a new kind is one more `@source(...)` function, and no chain of cases grows.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slimkit.dataset import Dataset, cut_tokens, synthetic, token_lengths, tokenize
from slimkit.errors import DataError, ModelLoadError
from slimkit.examples import EXAMPLES, SPLITS
from slimkit.formats.base import InputSpec, Model, import_object

__all__ = ["SOURCES", "DataSpec", "Dataset", "Source", "check_fits", "check_values",
           "cut_tokens", "load_data", "source", "synthetic", "token_lengths", "tokenize"]


class DataSpec(BaseModel):
    """Where the data comes from; which field is needed depends on `source`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="example, npz, images, text or factory")
    name: str | None = Field(None, description="bundled example: minilm, digits")
    path: str | None = None
    factory: str | None = Field(None, description="package.module:function returning a Dataset")
    split: str = "test"
    limit: int | None = Field(None, gt=0, description="use at most this many examples")
    max_length: int = Field(128, gt=0, description="tokens per text, padded and truncated")
    text_field: str = "text"
    label_field: str = "label"
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(f"unknown source {v!r} (known: {', '.join(SOURCES)})")
        return v

    @model_validator(mode="after")
    def _has_required_field(self) -> DataSpec:
        kind = SOURCES[self.source]
        if getattr(self, kind.needs) is None:
            raise ValueError(f"source {self.source!r} needs the field {kind.needs!r}")
        if kind.check is not None:  # found when the recipe is read, not minutes into a run
            kind.check(self)
        return self


_DEFAULT_SPLIT = DataSpec.model_fields["split"].default

Reader = Callable[[DataSpec, Model], Dataset]


@dataclass(frozen=True)
class Source:
    """One kind of source: the DataSpec field it needs, how it reads, what it checks early."""

    name: str
    needs: str
    read: Reader
    check: Callable[[DataSpec], None] | None = None


SOURCES: dict[str, Source] = {}


def source(name: str, needs: str,
           check: Callable[[DataSpec], None] | None = None) -> Callable[[Reader], Reader]:
    """Register the decorated reader for the source kind `name`."""

    def register(read: Reader) -> Reader:
        if name in SOURCES:
            raise ValueError(f"data source {name!r} is registered already")
        SOURCES[name] = Source(name, needs, read, check)
        return read

    return register


def load_data(spec: DataSpec, model: Model) -> Dataset:
    """Read a dataset and check it against the model's inputs."""
    ds = SOURCES[spec.source].read(spec, model)
    if spec.limit:
        ds = ds.head(spec.limit)
    check_fits(ds, model.inputs)
    return ds


def _existing_path(spec: DataSpec) -> Path:
    path = Path(spec.path or "")
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    return path


def _check_example(spec: DataSpec) -> None:
    if spec.name not in EXAMPLES:
        raise ValueError(f"unknown example {spec.name!r} (known: {', '.join(EXAMPLES)})")
    if spec.split not in SPLITS[spec.name]:
        raise ValueError(f"example {spec.name!r} has no split {spec.split!r} "
                         f"(it has: {', '.join(SPLITS[spec.name])})")


@source("example", needs="name", check=_check_example)
def _read_example(spec: DataSpec, model: Model) -> Dataset:
    from slimkit.examples import example

    return example(spec.name or "").load_data(split=spec.split, max_length=spec.max_length,
                                              **spec.kwargs)


@source("npz", needs="path")
def _read_npz(spec: DataSpec, model: Model) -> Dataset:
    return _load_npz(_existing_path(spec), model.inputs, spec.limit)


@source("images", needs="path")
def _read_images(spec: DataSpec, model: Model) -> Dataset:
    return _load_images(_existing_path(spec), model.inputs)


@source("text", needs="path")
def _read_texts(spec: DataSpec, model: Model) -> Dataset:
    return _load_texts(_existing_path(spec), spec, model)


@source("factory", needs="factory")
def _read_factory(spec: DataSpec, model: Model) -> Dataset:
    try:
        factory = import_object(spec.factory or "", "data factory")
    except ModelLoadError as e:
        raise DataError(str(e)) from None
    ds = factory(**_factory_kwargs(factory, spec))
    if not isinstance(ds, Dataset):
        raise DataError(f"{spec.factory}: returned {type(ds).__name__}, not slimkit.Dataset")
    return ds


def _factory_kwargs(factory: Any, spec: DataSpec) -> dict[str, Any]:
    """The recipe's `kwargs`, plus `split` and a set `limit` where the factory takes them. A
    split the factory cannot take is refused: dropping it made calibrating steps read the
    evaluation data. A factory whose signature cannot be read is given both."""
    try:
        params = inspect.signature(factory).parameters.values()
        named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        anything = any(p.kind is p.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):
        named, anything = set(), True
    given = dict(spec.kwargs)
    unknown = [k for k in given if not anything and k not in named]
    if unknown:
        raise DataError(f"{spec.factory}: takes no parameter(s) {', '.join(unknown)}")
    split_asked = "split" in spec.model_fields_set or spec.split != _DEFAULT_SPLIT
    for key, value, asked in (("split", spec.split, split_asked),
                              ("limit", spec.limit, spec.limit is not None)):
        if key in given:
            if asked:
                raise DataError(f"{spec.factory}: {key} is given both as a field and in kwargs")
        elif (anything or key in named) and value is not None:
            given[key] = value
        elif asked and key == "split":
            raise DataError(f"{spec.factory}: takes no `split` parameter, so it cannot give "
                            f"the split {spec.split!r}")
    return given


def check_fits(ds: Dataset, inputs: list[InputSpec]) -> None:
    """Refuse data the model cannot take, or whose numbers would silently poison every
    figure computed from it (NaN or infinite values, no rows at all)."""
    missing = [i.name for i in inputs if i.name not in ds.inputs]
    if missing:
        raise DataError(f"{ds.name}: has no array for model input(s) {', '.join(missing)} "
                        f"(it has {', '.join(ds.inputs) or 'none'})")
    if not ds.inputs or len(ds) == 0:
        raise DataError(f"{ds.name}: has no rows")
    for spec in inputs:
        arr = ds.inputs[spec.name]
        if arr.ndim != len(spec.shape):
            raise DataError(f"{ds.name}: input {spec.name!r} has {arr.ndim} dims, the model "
                            f"expects {len(spec.shape)} ({spec.shape})")
        for axis, (want, got) in enumerate(zip(spec.shape[1:], arr.shape[1:], strict=True), 1):
            if isinstance(want, int) and want != got:
                raise DataError(f"{ds.name}: input {spec.name!r} axis {axis} is {got}, "
                                f"the model expects {want}")
        check_values(ds.name, spec.name, arr)


def check_values(where: str, name: str, arr: np.ndarray) -> None:
    """Numbers only (strings or objects fail deep inside a runtime), and all finite."""
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where}: input {name!r} holds {arr.dtype} values, not numbers")
    if arr.dtype.kind == "f" and arr.size:
        bad = int((~np.isfinite(arr.reshape(len(arr), -1))).any(1).sum())
        if bad:
            raise DataError(f"{where}: input {name!r} has NaN or infinite values in {bad} of "
                            f"{len(arr)} rows")


def _load_npz(path: Path, inputs: list[InputSpec], limit: int | None = None) -> Dataset:
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single array, not an .npz file of named arrays")
    arrays = {}
    with z:
        for k in z.files:
            try:
                arrays[k] = z[k]
            except (ValueError, OSError) as e:  # object arrays need pickle, which is unsafe
                raise DataError(f"{path}: array {k!r} is not readable as numbers "
                                f"({str(e).splitlines()[0][:120]})") from e
    arrays = {k: v[:limit] if v.ndim else v for k, v in arrays.items()}
    labels = arrays.pop("labels", None)
    wanted = [i for i in inputs if i.name in arrays]
    for i in wanted:  # before the cast, which would turn NaN into arbitrary integers
        check_values(path.name, i.name, arrays[i.name])
    named = {i.name: arrays[i.name].astype(i.dtype, copy=False) for i in wanted}
    return Dataset(named or arrays, labels, path.name)


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _load_images(root: Path, inputs: list[InputSpec]) -> Dataset:
    """Class-per-subfolder images, resized to the model's static height and width."""
    from PIL import Image

    spec = inputs[0]
    if len(spec.shape) != 4 or not all(isinstance(d, int) for d in spec.shape[1:]):
        raise DataError(f"{root}: images need a model input shaped [batch, C, H, W] with static "
                        f"C, H, W; the model's first input is {spec.shape}")
    _, channels, height, width = spec.shape
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(f, k) for k, c in enumerate(classes) for f in sorted((root / c).iterdir())
             if f.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{root}: no images found in class subfolders")
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for f, _ in files:
        try:
            img = Image.open(f).convert(mode).resize((int(width), int(height)))
        except OSError as e:
            raise DataError(f"{f}: not a readable image ({e})") from e
        a = np.asarray(img, dtype=np.float32) / 255.0
        arrays.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
    x = np.stack(arrays).astype(spec.dtype)
    return Dataset({spec.name: x}, np.array([k for _, k in files]), root.name)


def _load_texts(path: Path, spec: DataSpec, model: Model) -> Dataset:
    labels: list[Any] = []
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                texts.append(str(row[spec.text_field]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{n}: expected a JSON object with field "
                                f"{spec.text_field!r} ({e})") from e
            if spec.label_field in row:
                labels.append(row[spec.label_field])
    else:
        texts = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    if not texts:
        raise DataError(f"{path}: no texts")
    if not model.tokenizer:
        raise DataError(f"{path}: texts need a tokenizer, and the model has none")
    arrays = tokenize(texts, model.tokenizer, spec.max_length, [i.name for i in model.inputs])
    y = np.asarray(labels) if len(labels) == len(texts) else None
    return Dataset(arrays, y, path.name)
