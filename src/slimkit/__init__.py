"""slimkit: compress trained networks, export them, and prove on the real runtime what it bought.

The public API is imported lazily so that `import slimkit` stays cheap and loads none of the
heavy backends (onnxruntime, openvino, transformers); they load when a function needs them.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

# transformers imports torchao whenever it is installed; on a CPU-only machine torchao then logs
# a warning for each CUDA extension it cannot load, and torch one for each enum torchao
# registers. None of it concerns the user, and it buries progress and summaries.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

_API = {
    "load_model": "slimkit.model",
    "ModelRef": "slimkit.model",
    "InputSpec": "slimkit.model",
    "TorchModel": "slimkit.model",
    "Dataset": "slimkit.data",
    "DataSpec": "slimkit.data",
    "load_data": "slimkit.data",
    "Recipe": "slimkit.config",
    "load_recipe": "slimkit.config",
    "compress": "slimkit.api",
    "export": "slimkit.api",
    "evaluate": "slimkit.api",
    "benchmark": "slimkit.api",
    "run": "slimkit.api",
    "quantize": "slimkit.api",
    "prune": "slimkit.api",
    "distill": "slimkit.api",
    "fit": "slimkit.train",
    "SlimkitError": "slimkit.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")
