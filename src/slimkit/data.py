"""Datasets for calibration, evaluation and benchmarking.

A dataset is held as whole arrays, one per model input, already padded to a fixed shape, so a
batch is a slice and every runtime sees the very same numbers. One adapter per source: bundled
examples, `.npz`, a folder of images, `.jsonl`/`.txt` texts, or a Python factory.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimkit.errors import DataError, ModelLoadError
from slimkit.examples import EXAMPLES, SPLITS
from slimkit.model import InputSpec, Model, import_object

Source = Literal["example", "npz", "images", "text", "factory"]
_NEEDS = {"example": "name", "npz": "path", "images": "path", "text": "path",
          "factory": "factory"}


class DataSpec(BaseModel):
    """Where the data comes from; which field is needed depends on `source`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Source
    name: str | None = Field(None, description="bundled example: minilm, digits")
    path: str | None = None
    factory: str | None = Field(None, description="package.module:function returning a Dataset")
    split: str = "test"
    limit: int | None = Field(None, gt=0, description="use at most this many examples")
    max_length: int = Field(128, gt=0, description="tokens per text, padded and truncated")
    text_field: str = "text"
    label_field: str = "label"
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_required_field(self) -> DataSpec:
        need = _NEEDS[self.source]
        if getattr(self, need) is None:
            raise ValueError(f"source {self.source!r} needs the field {need!r}")
        if self.source == "example":  # found when the recipe is read, not minutes into a run
            if self.name not in EXAMPLES:
                raise ValueError(f"unknown example {self.name!r} (known: {', '.join(EXAMPLES)})")
            if self.split not in SPLITS[self.name]:
                raise ValueError(f"example {self.name!r} has no split {self.split!r} "
                                 f"(it has: {', '.join(SPLITS[self.name])})")
        return self


_DEFAULT_SPLIT = DataSpec.model_fields["split"].default


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    name: str = "data"

    def __post_init__(self) -> None:
        sizes = {len(v) for v in self.inputs.values()}
        if self.labels is not None:
            sizes.add(len(self.labels))
        if len(sizes) > 1:
            raise DataError(f"{self.name}: inputs and labels differ in length ({sorted(sizes)})")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def slice(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.inputs.items()}

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self), batch_size):
            yield self.slice(i, i + batch_size)

    def rows(self, start: int, stop: int) -> Dataset:
        labels = None if self.labels is None else self.labels[start:stop]
        return Dataset(self.slice(start, stop), labels, self.name)

    def head(self, n: int) -> Dataset:
        return self.rows(0, n)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.inputs):
            v = np.ascontiguousarray(self.inputs[k])
            h.update(f"{k}{v.dtype}{v.shape}".encode())
            h.update(v.tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()

    def save_npz(self, path: Path) -> None:
        arrays = dict(self.inputs)
        if self.labels is not None:
            arrays["labels"] = self.labels
        np.savez(path, **arrays)


def load_data(spec: DataSpec, model: Model) -> Dataset:
    """Read a dataset and check it against the model's inputs."""
    if spec.source == "example":
        from slimkit.examples import example

        ds = example(spec.name or "").load_data(split=spec.split, max_length=spec.max_length,
                                                **spec.kwargs)
    elif spec.source == "factory":
        try:
            factory = import_object(spec.factory or "", "data factory")
        except ModelLoadError as e:
            raise DataError(str(e)) from None
        ds = factory(**_factory_kwargs(factory, spec))
        if not isinstance(ds, Dataset):
            raise DataError(f"{spec.factory}: returned {type(ds).__name__}, not slimkit.Dataset")
    else:
        path = Path(spec.path or "")
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        if spec.source == "npz":
            ds = _load_npz(path, model.inputs, spec.limit)
        elif spec.source == "images":
            ds = _load_images(path, model.inputs)
        else:
            ds = _load_texts(path, spec, model)
    if spec.limit:
        ds = ds.head(spec.limit)
    check_fits(ds, model.inputs)
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


def token_lengths(mask: np.ndarray) -> np.ndarray:
    """Per row, one past the last position a padding mask uses (0 for an empty row): the
    width a batch of such rows can be cut to, whether padded on the right or the left."""
    used = np.asarray(mask) != 0
    return np.where(used.any(1), used.shape[1] - used[:, ::-1].argmax(1), 0)


def cut_tokens(batch: dict[str, Any], width: int, columns: set[str]) -> dict[str, Any]:
    """The batch with its token-axis `columns` (arrays or tensors) cut to `width`."""
    return {k: v[:, :width] if k in columns else v for k, v in batch.items()}


def tokenize(texts: list[str], tokenizer: str, max_length: int,
             names: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_length,
              return_tensors="np")
    return {n: np.asarray(enc[n], dtype=np.int64) for n in names if n in enc}


def synthetic(inputs: list[InputSpec], n: int, dims: dict[str, int] | None = None,
              seed: int = 0) -> Dataset:
    """Inputs from the signature alone, for `slimkit bench MODEL` without data.

    Integer inputs get small positive ids (valid token ids and masks of ones would be better
    than random; real data is better still and should be given when there is any).
    """
    rng = np.random.default_rng(seed)
    dims = dims or {}
    arrays = {}
    for spec in inputs:
        shape = [n] + [d if isinstance(d, int) else dims.get(d, 128) for d in spec.shape[1:]]
        if "mask" in spec.name:
            arrays[spec.name] = np.ones(shape, dtype=spec.dtype)
        elif spec.dtype.startswith(("int", "uint")):
            arrays[spec.name] = rng.integers(1000, 2000, shape).astype(spec.dtype)
        else:
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return Dataset(arrays, None, "synthetic")
