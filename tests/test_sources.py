"""Data sources as a table of registered readers, chosen by the recipe's `source`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from pydantic import ValidationError

from slimkit.data import SOURCES, Dataset, DataSpec, load_data, source
from slimkit.model import load_model


def test_the_table_holds_every_kind_of_source() -> None:
    needs = {name: kind.needs for name, kind in SOURCES.items()}
    assert needs == {"example": "name", "npz": "path", "images": "path", "text": "path",
                     "factory": "factory"}


def test_an_unknown_source_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValidationError, match=r"unknown source 'csv' \(known: example, npz"):
        DataSpec(source="csv", path="x.csv")


@pytest.fixture
def constant_source() -> Iterator[None]:
    @source("constant", needs="name")
    def _read(spec: DataSpec, model: object) -> Dataset:
        return Dataset({"x": np.full((4, 16), float(spec.name or 0), np.float32)}, None, "const")

    try:
        yield
    finally:
        del SOURCES["constant"]


def test_a_registered_source_is_read_through_the_table(constant_source: None) -> None:
    model = load_model("tests.models:tiny_mlp")
    ds = load_data(DataSpec(source="constant", name="2", limit=3), model)
    assert len(ds) == 3 and float(ds.inputs["x"][0, 0]) == 2.0
    with pytest.raises(ValidationError, match="source 'constant' needs the field 'name'"):
        DataSpec(source="constant")


def test_a_source_is_not_registered_twice() -> None:
    with pytest.raises(ValueError, match="registered already"):
        source("npz", needs="path")(SOURCES["npz"].read)
