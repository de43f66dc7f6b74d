"""Eager PyTorch models: built by a factory, stored as a readable record plus safetensors."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from slimkit.errors import ModelLoadError
from slimkit.formats.base import (
    Format,
    Model,
    ModelRef,
    TorchModel,
    import_object,
    register_format,
)


class TorchFormat(Format):
    name = "torch"
    files = ("model.safetensors",)

    def claims(self, source: str) -> bool:
        return ":" in source and not Path(source).exists()

    def load(self, ref: ModelRef) -> Model:
        model = load_factory(ref)
        model.ref = ref
        return model

    def key(self, model: Model) -> str:
        """The source, the steps and every weight: two modules that compute the same thing
        from the same record share a key, whatever Python objects hold them."""
        import torch

        from slimkit.io import sha256_json
        from slimkit.torch_state import flatten_state

        assert isinstance(model, TorchModel)
        h = hashlib.sha256()
        for name, t in sorted(flatten_state(model.module).items()):
            h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.contiguous().view(-1).view(dtype=torch.uint8).numpy())
        ref = model.ref.model_dump() if model.ref else None
        return sha256_json({"ref": ref, "weights": h.hexdigest(),
                            "steps": [s.model_dump() for s in model.steps]})

    def save(self, model: Model, dest: Path) -> tuple[Model, dict[str, Any]]:
        """Weights only; the structure is rebuilt from the record, so nothing is pickled."""
        from slimkit.torch_state import save_state

        assert isinstance(model, TorchModel)
        if model.ref is None:
            raise ModelLoadError("a torch model without a source (ModelRef) cannot be saved")
        save_state(model.module, dest / self.files[0])
        return model, {"ref": model.ref.model_dump(),
                       "steps": [s.model_dump() for s in model.steps]}


def load_factory(ref: ModelRef) -> TorchModel:
    import torch

    fn = import_object(ref.source)
    try:
        obj = fn(**ref.kwargs)
    except TypeError as e:
        raise ModelLoadError(f"{ref.source}: factory rejected its arguments ({e})") from e
    if isinstance(obj, TorchModel):
        obj.module.eval()
        return obj
    if isinstance(obj, torch.nn.Module):
        if not ref.inputs:
            raise ModelLoadError(
                f"{ref.source}: returns a bare nn.Module; give model.inputs (name, dtype, shape)"
            )
        return TorchModel(obj.eval(), list(ref.inputs))
    raise ModelLoadError(f"{ref.source}: returned {type(obj).__name__}, not a torch module")


TORCH = register_format(TorchFormat())
