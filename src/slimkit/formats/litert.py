"""LiteRT (TFLite): one `.tflite` flatbuffer, run by the ai-edge-litert interpreter.

The interpreter and the converter print through native logging (absl, TFLite's own INFO
lines) straight to the process's file descriptors, below anything Python can filter; `quiet`
sends those to a scratch file while they work so slimkit's output stays its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slimkit.errors import ModelLoadError
from slimkit.formats.base import (
    FileFormat,
    FileModel,
    InputSpec,
    Model,
    check_io,
    first_line,
    is_file,
    register_format,
    shown,
)

INSTALL = "pip install 'slimkit[litert]'"
# A flatbuffer names its schema in bytes 4..8; a TFLite model says TFL3.
IDENTIFIER = b"TFL3"


class LitertFormat(FileFormat):
    name = "litert"
    files = ("model.tflite",)
    suffix = ".tflite"

    def read(self, path: Path, tokenizer: str | None = None) -> Model:
        return load_litert(path, tokenizer)


LITERT = register_format(LitertFormat())


def interpreter_class() -> Any:
    """The interpreter, or one line saying what to install."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ModelLoadError(f"LiteRT needs ai-edge-litert ({INSTALL})") from e
    return Interpreter


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Native and Python chatter of the LiteRT libraries kept off stdout and stderr."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # litert-torch warns through the root logger
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)
        root.setLevel(level)


def open_interpreter(path: Path, threads: int | None = None) -> Any:
    """An interpreter on XNNPACK (ai-edge-litert's default delegate), tensors not allocated."""
    interpreter = interpreter_class()
    with quiet():
        return interpreter(model_path=str(path), num_threads=threads)


def load_litert(path: Path, tokenizer: str | None = None) -> FileModel:
    text = shown(path)
    if not is_file(path):
        raise ModelLoadError(f"{text}: no such file")
    with path.open("rb") as f:
        head = f.read(8)
    if head[4:8] != IDENTIFIER:
        raise ModelLoadError(f"{text}: not a LiteRT model (no {IDENTIFIER.decode()} flatbuffer "
                             f"identifier)")
    try:
        it = open_interpreter(path)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{text}: not a valid LiteRT model ({first_line(e)})") from e
    details, outputs = it.get_input_details(), it.get_output_details()
    check_io(text, "LiteRT model", len(details), len(outputs))
    names = input_names(it)
    return FileModel("litert", path, [input_spec(k, n, d) for k, (n, d)
                                      in enumerate(zip(names, details, strict=True))], tokenizer)


def input_names(it: Any) -> list[str]:
    """The inputs in the interpreter's order, by the names their signature gives them (a
    model exported from torch keeps its arguments' names), else by their tensors' names."""
    details = it.get_input_details()
    signatures = it.get_signature_list()
    if len(signatures) == 1:
        runner = it.get_signature_runner(next(iter(signatures)))
        by_index = {d["index"]: n for n, d in runner.get_input_details().items()}
        if all(d["index"] in by_index for d in details):
            return [by_index[d["index"]] for d in details]
    return [d["name"] for d in details]


def input_spec(k: int, name: str, detail: dict[str, Any]) -> InputSpec:
    """An interpreter input as slimkit names it: -1 in the shape signature is a dynamic axis,
    the batch when it comes first."""
    import numpy as np

    sig = [int(d) for d in detail.get("shape_signature", detail["shape"])]
    shape: list[int | str] = [d if d >= 0 else ("batch" if j == 0 else f"d{k}_{j}")
                              for j, d in enumerate(sig)]
    return InputSpec(name=name, dtype=np.dtype(detail["dtype"]).name, shape=shape)
