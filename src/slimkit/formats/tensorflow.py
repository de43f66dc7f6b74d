"""TensorFlow models in: a `.keras` file or a SavedModel directory, a source only.

Loaded, such a model is converted to ONNX once (tf2onnx, in a child process: see
`slimkit.formats.tf_convert`) and is an ONNX model from then on, so every ONNX technique and
runtime applies. The ONNX file is kept in the cache under the source's content hash, so a rerun
starts no TensorFlow at all. Needs the `tf` extra: `pip install 'slimkit[tf]'`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from slimkit.errors import ModelLoadError
from slimkit.formats.base import Format, Model, ModelRef, is_file, register_format, shown
from slimkit.formats.onnx import load_onnx
from slimkit.formats.onnx_export import OPSET
from slimkit.formats.tf_convert import MARK

# Part of the converted model's cache key: bump it when the conversion changes its output.
CONVERT_VERSION = 1
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


class TensorflowFormat(Format):
    name = "tensorflow"
    suffix = ".keras"
    loads_as = "onnx"

    def claims(self, source: str) -> bool:
        # A folder that is also a Hugging Face model (config.json) stays the Hugging Face one.
        path = Path(source)
        return super().claims(source) or (is_saved_model(path)
                                          and not (path / "config.json").exists())

    def load(self, ref: ModelRef) -> Model:
        path = Path(ref.source)
        check_source(path)
        check_installed(path)
        onnx_file = converted_path(path)
        if not onnx_file.is_file():
            convert(path, onnx_file)
        try:
            return load_onnx(onnx_file)
        except ModelLoadError as e:
            raise ModelLoadError(f"{shown(path)}: its ONNX conversion does not load ({e})") from e


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and any(is_file(path / n) for n in SAVED_MODEL_FILES)


def check_source(path: Path) -> None:
    """What can be told without TensorFlow, told before its seconds-long start."""
    text = shown(path)
    if path.is_dir():
        if not is_saved_model(path):
            raise ModelLoadError(f"{text}: directory has no saved_model.pb (not a TensorFlow "
                                 f"SavedModel)")
        return
    if not is_file(path):
        raise ModelLoadError(f"{text}: no such file or directory")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{text}: not a .keras file (not a zip archive)")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelLoadError(f"{text}: not a .keras file ({e})") from e
    if "config.json" not in names:
        raise ModelLoadError(f"{text}: not a .keras file (no config.json inside)")


def check_installed(path: Path) -> None:
    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelLoadError(f"{shown(path)}: a TensorFlow model needs {' and '.join(missing)}: "
                             f"pip install 'slimkit[tf]'")


def converted_path(path: Path) -> Path:
    """Where the source's ONNX conversion is cached: keyed by the source's bytes, the opset,
    and tf2onnx's version, whose conversions differ between releases."""
    from slimkit.io import default_cache_dir, sha256_json, sha256_path

    key = sha256_json({"source": sha256_path(path), "opset": OPSET, "v": CONVERT_VERSION,
                       "tf2onnx": _version("tf2onnx")})
    return default_cache_dir() / "tensorflow" / key[:2] / key / "model.onnx"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # importable without an installed distribution
        return "unknown"


def convert(path: Path, onnx_file: Path) -> None:
    """Run the conversion in a child process and keep its file only when it finished."""
    from slimkit.io import atomic_dir
    from slimkit.progress import progress_bar

    # the child imports this very slimkit, wherever it was imported from here
    here = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    with atomic_dir(onnx_file.parent) as tmp, progress_bar("converting to ONNX", 1) as advance:
        proc = subprocess.run(
            [sys.executable, "-m", "slimkit.formats.tf_convert", str(path.resolve()),
             str(tmp / onnx_file.name), str(OPSET)],
            capture_output=True, text=True, env=env, check=False)
        advance(1)
        if proc.returncode != 0:
            raise ModelLoadError(f"{shown(path)}: {_reason(proc)}")


def _reason(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [x.strip() for x in proc.stderr.splitlines() if x.strip()]
    said = [x.removeprefix(MARK) for x in lines if x.startswith(MARK)]
    if said:
        return said[-1]
    if proc.returncode < 0:
        return f"the conversion process was killed (signal {-proc.returncode})"
    return f"the conversion failed ({lines[-1][:300] if lines else f'exit {proc.returncode}'})"


TENSORFLOW = register_format(TensorflowFormat())
