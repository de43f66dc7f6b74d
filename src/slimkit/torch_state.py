"""A torch module's weights as plain tensors in safetensors.

safetensors holds plain tensors only, so quantized Linear layers (whose packed weights are
opaque objects in a state_dict) are stored as their int8 values, scales and zero points, and
packed again on load. The bytes on disk are then the honest size of the quantized model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from slimkit import cluster_state, subclass_state
from slimkit.errors import ModelLoadError
from slimkit.io import atomic_write_bytes
from slimkit.sparse_state import decode, encode

_QUANT_SUFFIXES = ("weight_int8", "weight_scale", "weight_zero_point", "weight_axis", "bias")


def _quantized_linears(module: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    return {n: m for n, m in module.named_modules() if isinstance(m, DynLinear)}


def flatten_state(module: nn.Module) -> dict[str, torch.Tensor]:
    qlin = _quantized_linears(module)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        owner = key.rsplit(".", 2)[0] if "_packed_params" in key else key.rsplit(".", 1)[0]
        if owner in qlin or not isinstance(value, torch.Tensor):
            continue
        if subclass_state.is_subclass(value):  # torchao's quantized weights
            tensors.update(subclass_state.flatten(key, value))
            continue
        tensors[key] = value
    for name, m in qlin.items():
        w = m.weight()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scale, zp = w.q_per_channel_scales(), w.q_per_channel_zero_points()
            axis = torch.tensor([w.q_per_channel_axis()])
        else:
            scale, zp = torch.tensor([w.q_scale()]), torch.tensor([w.q_zero_point()])
            axis = torch.tensor([-1])
        tensors[f"{name}.weight_int8"] = w.int_repr()
        tensors[f"{name}.weight_scale"] = scale.double()
        tensors[f"{name}.weight_zero_point"] = zp.long()
        tensors[f"{name}.weight_axis"] = axis
        if m.bias() is not None:
            tensors[f"{name}.bias"] = m.bias()
    # safetensors refuses tensors that share storage; weights tied across layers are copied.
    return {k: v.detach().contiguous().clone() for k, v in tensors.items()}


def encoded_state(module: nn.Module) -> bytes:
    """The bytes `save_state` writes."""
    from safetensors.torch import save

    # Weights a clustering step shared are stored as codebooks and indices; the rest as before.
    shared, rest = cluster_state.encode(flatten_state(module), cluster_state.marks(module))
    return save({**shared, **encode(rest)})


def save_state(module: nn.Module, path: Path) -> None:
    atomic_write_bytes(path, encoded_state(module))


def load_state(module: nn.Module, path: Path) -> None:
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path}: cannot read weights ({e})") from e
    # mostly-zero weights are stored as values and a bitmask, shared ones as codebooks
    tensors = decode(cluster_state.decode(tensors))
    qlin = _quantized_linears(module)
    # Start from the rebuilt module's own state (quantized layers hold opaque packed params
    # there) and overwrite every plain tensor from the file; then repack the int8 layers.
    state = module.state_dict()
    wrapped = {k: state.pop(k) for k in list(state) if subclass_state.is_subclass(state[k])}
    try:
        used = subclass_state.restore(wrapped, tensors)
    except KeyError as e:
        raise ModelLoadError(f"{path}: weights do not fit the rebuilt model "
                             f"(missing {e.args[0]})") from e
    tensors = {k: v for k, v in tensors.items() if k not in used}
    quant_keys = {f"{n}.{s}" for n in qlin for s in _QUANT_SUFFIXES}
    plain = {k: v for k, v in tensors.items() if k not in quant_keys}
    unexpected = sorted(set(plain) - set(state))
    missing = sorted(k for k, v in state.items() if isinstance(v, torch.Tensor)
                     and k not in plain and k.rsplit(".", 1)[0] not in qlin)
    if missing or unexpected:
        raise ModelLoadError(f"{path}: weights do not fit the rebuilt model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    state.update(plain)
    try:
        module.load_state_dict(state, strict=not wrapped)
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: weights do not fit the rebuilt model "
                             f"({str(e).splitlines()[-1].strip()[:300]})") from e
    for name, m in qlin.items():
        q = tensors[f"{name}.weight_int8"]
        scale, zp = tensors[f"{name}.weight_scale"], tensors[f"{name}.weight_zero_point"]
        axis = int(tensors[f"{name}.weight_axis"][0])
        with warnings.catch_warnings():  # torch.ao's quantized tensors warn of deprecation
            warnings.simplefilter("ignore")
            if axis >= 0:
                w = torch._make_per_channel_quantized_tensor(q, scale, zp, axis)
            else:
                w = torch._make_per_tensor_quantized_tensor(q, float(scale[0]), int(zp[0]))
            m.set_weight_bias(w, tensors.get(f"{name}.bias"))

