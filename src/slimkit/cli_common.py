"""What every command shares: one line and exit code 2 for a user's mistake, and data named
on the command line turned into a data spec."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from slimkit.data import DataSpec
from slimkit.errors import SlimkitError


def fail(e: SlimkitError) -> None:
    print(f"error: {e}", file=sys.stderr)
    raise typer.Exit(2)


def data_spec(text: str, calib: bool = False) -> DataSpec:
    from slimkit.examples import EXAMPLES

    if text in EXAMPLES:
        return DataSpec(source="example", name=text, split="calibration" if calib else "test")
    path = Path(text)
    if path.is_dir():
        return DataSpec(source="images", path=text)
    if path.suffix == ".npz":
        return DataSpec(source="npz", path=text)
    if path.suffix in (".jsonl", ".txt"):
        return DataSpec(source="text", path=text)
    raise SlimkitError(f"--data {text!r}: not an example name, .npz, image folder, .jsonl or .txt")
