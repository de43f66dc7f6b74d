"""TensorFlow -> ONNX with tf2onnx, run in a process of its own by `slimkit.formats.tensorflow`.

TensorFlow is imported only here. Its C++ start-up lines reach stderr whatever
TF_CPP_MIN_LOG_LEVEL says, and its thread pools and memory would stay in the process that then
times the runtimes; a child process takes both away when it exits.

    python -m slimkit.formats.tf_convert SOURCE OUTPUT OPSET

SOURCE is a `.keras` file or a SavedModel directory; OUTPUT the `.onnx` file to write. On
failure the last stderr line starting with `MARK` says why, in one line, and the exit code is 2.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from slimkit.formats.base import first_line

MARK = "tf_convert: "
# The name every converted model gives its dynamic first axis, as slimkit's own exports do.
BATCH = "batch"


class ConvertError(Exception):
    """A model this conversion cannot take, said in one line."""


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"{MARK}usage: python -m slimkit.formats.tf_convert SOURCE OUTPUT OPSET",
              file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["KERAS_BACKEND"] = "tensorflow"  # a .keras file is exported through TensorFlow
    try:
        convert(Path(argv[0]), Path(argv[1]), int(argv[2]))
    except ConvertError as e:
        print(f"{MARK}{e}", file=sys.stderr)
        return 2
    except Exception as e:  # a model tf2onnx or TensorFlow trips on: keep the whole story
        traceback.print_exc()
        print(f"{MARK}conversion failed ({type(e).__name__}: {first_line(e)})", file=sys.stderr)
        return 2
    return 0


def convert(source: Path, output: Path, opset: int) -> None:
    """A `.keras` file goes through a SavedModel, as Keras 3 exports for serving: tf2onnx's
    `from_keras` cannot read Keras 3 models, while a serving signature is what it was made for."""
    if source.is_dir():
        _convert_saved_model(source, output, opset)
        return
    model = _load_keras(source)
    with tempfile.TemporaryDirectory(prefix="slimkit-keras-") as tmp:
        try:
            model.export(tmp, format="tf_saved_model", verbose=False)
        except Exception as e:
            raise ConvertError(f"Keras cannot export it as a SavedModel ({first_line(e)})") from e
        _convert_saved_model(Path(tmp), output, opset)


def _load_keras(path: Path) -> Any:
    """Keras' safe mode stays on: a Lambda layer's Python code is not run from a file."""
    import keras

    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as e:
        text = first_line(e)
        if "safe_mode" in text:
            raise ConvertError("it holds Python code (a Lambda layer) that Keras runs only with "
                               "safe_mode off; export the model yourself (model.export(DIR)) "
                               "and give DIR as the source") from e
        raise ConvertError(f"not a loadable .keras file ({text})") from e


def _convert_saved_model(path: Path, output: Path, opset: int) -> None:
    import onnx
    import tensorflow as tf
    import tf2onnx

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise ConvertError(f"not a loadable SavedModel ({first_line(e)})") from e
    signature = _signature(loaded)
    _, named = signature.structured_input_signature
    if not named:
        raise ConvertError("its serving signature takes no named inputs")
    names = list(named)
    specs = [tf.TensorSpec(named[n].shape, named[n].dtype, name=n) for n in names]
    # tf2onnx traces a tf.function; a signature is called by keyword, so it is wrapped.
    function = tf.function(lambda *xs: signature(**dict(zip(names, xs, strict=True))))
    proto, _ = tf2onnx.convert.from_function(function, input_signature=specs, opset=opset)
    _name_batch_axis(proto)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # an operator tf2onnx left as TensorFlow's own
        raise ConvertError(f"tf2onnx could not convert it to ONNX ({first_line(e)})") from e
    onnx.save(proto, str(output))


def _signature(loaded: Any) -> Any:
    signatures = loaded.signatures
    if not signatures:
        raise ConvertError("the SavedModel has no serving signature (save it with one: "
                           "tf.saved_model.save(obj, DIR, signatures=...) or model.export(DIR))")
    return signatures.get("serving_default") or signatures[next(iter(signatures))]


def _name_batch_axis(proto: Any) -> None:
    """tf2onnx names each unknown axis `unk__N`; the first axis of the inputs is the batch, and
    every axis sharing its name is renamed to what slimkit's exports call it."""
    graph = proto.graph
    batch = {i.type.tensor_type.shape.dim[0].dim_param for i in graph.input
             if i.type.tensor_type.shape.dim and i.type.tensor_type.shape.dim[0].dim_param}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in batch:
                dim.dim_param = BATCH


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
