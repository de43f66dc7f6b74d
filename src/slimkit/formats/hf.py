"""Hugging Face model directories: a source only; loaded, they are torch models."""

from __future__ import annotations

import json
from pathlib import Path

from slimkit.errors import ModelLoadError
from slimkit.formats.base import Format, Model, ModelRef, first_line, register_format, shown


class HfFormat(Format):
    name = "hf"
    loads_as = "torch"

    def claims(self, source: str) -> bool:
        path = Path(source)
        return path.is_dir() and (path / "config.json").exists()

    def load(self, ref: ModelRef) -> Model:
        from slimkit.hf import load_hf

        path = Path(ref.source)
        check_config(path)
        try:
            model = load_hf(path, ref.head)
        except ModelLoadError as e:  # it quotes transformers, whose text spans lines
            raise ModelLoadError(" ".join(str(e).split())[:400]) from e
        model.ref = ref
        return model


def check_config(path: Path) -> None:
    """A config.json that is not a JSON object, found before transformers reads it (and
    answers with a paragraph)."""
    try:
        config = json.loads((path / "config.json").read_bytes())
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError included
        raise ModelLoadError(f"{shown(path)}: config.json is not readable JSON "
                             f"({first_line(e)})") from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{shown(path)}: config.json is not a JSON object")


HF = register_format(HfFormat())
