"""Training checkpoints that a resumed run trusts, without pickle.

A checkpoint is one safetensors file of every tensor (weights, optimizer moments, RNG states,
the best weights so far) and `checkpoint.json` for the rest (counters, history, scalar optimizer
fields). The JSON is written last and names its tensor file, so it is the commit point: a run
killed while writing leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from slimkit.errors import TechniqueError
from slimkit.io import atomic_write_bytes, atomic_write_json

INDEX = "checkpoint.json"


@dataclass
class Checkpoint:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors saved under `prefix/`, with the prefix taken off."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.tensors.items() if k.startswith(prefix + "/")}


def write(directory: Path, step: int, tensors: dict[str, torch.Tensor],
          meta: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    name = f"state-{step:08d}.safetensors"
    # safetensors refuses views and shared storage; copies cost little next to a training step.
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write_bytes(directory / name, save(plain))
    atomic_write_json(directory / INDEX, {**meta, "tensors": name})
    for old in directory.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def read(directory: Path | None) -> Checkpoint | None:
    if directory is None or not (directory / INDEX).is_file():
        return None
    try:
        meta = json.loads((directory / INDEX).read_text())
        if Path(meta["tensors"]).name != meta["tensors"]:
            raise ValueError(f"tensor file {meta['tensors']!r} is not a file of this folder")
        tensors = load_file(str(directory / meta["tensors"]))
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise TechniqueError(f"{directory}: unreadable training checkpoint ({e}); "
                             "remove the folder to start over") from e
    return Checkpoint(tensors, meta)


def optimizer_parts(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's per-parameter state split into tensors and JSON-able scalars."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, scalars


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   scalars: dict[str, dict[str, Any]]) -> None:
    """Restore per-parameter state; the parameter groups come from the current settings, which
    the checkpoint's fingerprint has already matched."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in scalars.items():
        state.setdefault(int(idx), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


def weights(module: torch.nn.Module,
            extras: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The module's state and the extra parameters under one set of names (not copies)."""
    return {**prefixed("model", module.state_dict()),
            **{f"extra/{i}": p.data for i, p in enumerate(extras)}}


def snapshot(module: torch.nn.Module,
             extras: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Copies of `weights`, kept while training goes on (the best epoch so far)."""
    return {k: v.detach().clone() for k, v in weights(module, extras).items()}


def load_snapshot(snap: dict[str, torch.Tensor], module: torch.nn.Module,
                  extras: list[torch.nn.Parameter]) -> None:
    module.load_state_dict({k[6:]: v for k, v in snap.items() if k.startswith("model/")})
    with torch.no_grad():
        for i, p in enumerate(extras):
            p.copy_(snap[f"extra/{i}"])
