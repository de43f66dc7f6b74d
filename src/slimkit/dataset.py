"""A dataset held as whole arrays, one per model input, already padded to a fixed shape.

A batch is then a slice, and every runtime sees the very same numbers. This module knows no
source: the bundled examples and the readers in `slimkit.data` both build on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.errors import DataError
from slimkit.formats.base import InputSpec


@dataclass
class Dataset:
    """Arrays by input name, with labels when the task has them; rows line up across all."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    name: str = "data"
    # Where each row came from (a photo, a document) where rows of one source are alike:
    # held-out checks then hold out whole groups, so "unseen" means from an unseen source.
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        sizes = {len(v) for v in self.inputs.values()}
        if self.labels is not None:
            sizes.add(len(self.labels))
        if self.groups is not None:
            sizes.add(len(self.groups))
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
        groups = None if self.groups is None else self.groups[start:stop]
        return Dataset(self.slice(start, stop), labels, self.name, groups)

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
        if self.groups is not None:
            h.update(b"groups" + np.ascontiguousarray(self.groups).tobytes())
        return h.hexdigest()

    def save_npz(self, path: Path) -> None:
        arrays = dict(self.inputs)
        if self.labels is not None:
            arrays["labels"] = self.labels
        np.savez(path, **arrays)


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
