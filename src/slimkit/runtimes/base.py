"""The runtime interface: load an artifact, run a batch, describe yourself.

Runtimes are registered by name with the module that implements them, and imported only when a
recipe asks for one, so `import slimkit` stays light.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from slimkit.errors import ConfigError
from slimkit.model import Format, Model


class RuntimeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int = Field(2, gt=0, description="intra-op threads, the same for every runtime")
    compile: bool = Field(False, description="torch only: wrap the module in torch.compile")


class Session(ABC):
    """A loaded model ready to serve batches."""

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run one batch; outputs come back as float32/int numpy arrays in model order."""


class Runtime(ABC):
    name: ClassVar[str]
    format: ClassVar[Format]

    def __init__(self, options: RuntimeOptions | None = None) -> None:
        self.options = options or RuntimeOptions()

    @abstractmethod
    def load(self, model: Model) -> Session: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Name, library version, device and threads: what a result must record."""


# name -> (module, class); imported on first use.
_RUNTIMES: dict[str, tuple[str, str, Format]] = {
    "torch": ("slimkit.runtimes.torch", "TorchRuntime", "torch"),
    "onnxruntime": ("slimkit.runtimes.onnxruntime", "OrtRuntime", "onnx"),
    "openvino": ("slimkit.runtimes.openvino", "OpenVinoRuntime", "openvino"),
    "litert": ("slimkit.runtimes.litert", "LiteRtRuntime", "litert"),
    "tensorrt": ("slimkit.runtimes.tensorrt", "TensorRtRuntime", "onnx"),
}


# Packages a runtime needs beyond the base install (extras), so a search can leave out the
# runtimes this environment cannot load instead of failing every trial on them.
_NEEDS: dict[str, tuple[str, ...]] = {"openvino": ("openvino",), "litert": ("ai_edge_litert",),
                                      "tensorrt": ("tensorrt",)}


def register_runtime(name: str, module: str, cls: str, fmt: Format,
                     needs: tuple[str, ...] = ()) -> None:
    _RUNTIMES[name] = (module, cls, fmt)
    _NEEDS[name] = needs


def runtime_installed(name: str) -> bool:
    """Whether the packages the runtime imports are installed (not whether it can run here:
    tensorrt still needs a GPU, which its `load` checks)."""
    runtime_format(name)
    return all(importlib.util.find_spec(m) is not None for m in _NEEDS.get(name, ()))


def runtime_names() -> list[str]:
    return list(_RUNTIMES)


def runtime_format(name: str) -> Format:
    if name not in _RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r} (known: {', '.join(_RUNTIMES)})")
    return _RUNTIMES[name][2]


def get_runtime(name: str, options: RuntimeOptions | None = None) -> Runtime:
    runtime_format(name)
    module, cls, _ = _RUNTIMES[name]
    return getattr(importlib.import_module(module), cls)(options)


def runtime_for_format(fmt: Format) -> str:
    return next(name for name, (_, _, f) in _RUNTIMES.items() if f == fmt)
