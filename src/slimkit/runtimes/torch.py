"""PyTorch eager (optionally torch.compile) on the CPU."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.runtimes.base import Runtime, Session


class TorchSession(Session):
    def __init__(self, model: TorchModel, compile_: bool) -> None:
        self.names = [i.name for i in model.inputs]
        if compile_:
            # torchao's tensors opt out of one of inductor's caches and it warns on every
            # compile; the compiled model is the same either way.
            warnings.filterwarnings("ignore", message=".*_stable_hash_for_caching.*")
        self.module = torch.compile(model.module) if compile_ else model.module

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.names]
        with torch.inference_mode():
            out = self.module(*args)
        return [_to_numpy(t) for t in _flatten(out)]


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    raise TypeError(f"model returned {type(out).__name__}; expected tensors")


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.detach().numpy()


class TorchRuntime(Runtime):
    name = "torch"
    format = "torch"

    def load(self, model: Model) -> Session:
        if not isinstance(model, TorchModel):
            raise TechniqueError(f"the torch runtime runs torch models, not {model.format}")
        torch.set_num_threads(self.options.threads)
        return TorchSession(model, self.options.compile)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "torch", "version": torch.__version__, "device": "cpu",
                "threads": self.options.threads, "compile": self.options.compile}
