"""Tensor subclasses (torchao's quantized weights) as plain tensors for safetensors.

A torchao weight is a wrapper whose data lives in inner tensors (int8 values, scales, zero
points). Each inner tensor is stored under `<key>::<inner>`; on load the wrapper that the
rebuild re-created receives them in place. int4 values, which torchao keeps one per byte, are
stored two per byte so the bytes on disk are the honest size.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

SEP = "::"
_INT4 = "int4x2"


def is_subclass(t: object) -> bool:
    return isinstance(t, torch.Tensor) and is_traceable_wrapper_subclass(t)


def _is_int4(t: torch.Tensor) -> bool:
    return getattr(t, "target_dtype", None) == torch.int4


def flatten(key: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    names, _ = t.__tensor_flatten__()  # type: ignore[attr-defined]
    out = {}
    for inner in names:
        value = getattr(t, inner)
        if inner == "qdata" and _is_int4(t) and value.numel() % 2 == 0:
            nib = (value.reshape(-1).to(torch.int16) & 0xF).to(torch.uint8)
            out[f"{key}{SEP}{inner}{SEP}{_INT4}"] = nib[0::2] | (nib[1::2] << 4)
        else:
            out[f"{key}{SEP}{inner}"] = value
    return out


def restore(state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> set[str]:
    """Copy the stored inner tensors into the wrappers of `state`; return the keys used."""
    used: set[str] = set()
    for key, t in state.items():
        if not is_subclass(t):
            continue
        names, _ = t.__tensor_flatten__()  # type: ignore[attr-defined]
        for inner in names:
            target = getattr(t, inner)
            plain, packed = f"{key}{SEP}{inner}", f"{key}{SEP}{inner}{SEP}{_INT4}"
            if packed in tensors:
                b = tensors[packed]
                lo = (b & 0xF).to(torch.int8)
                hi = (b >> 4).to(torch.int8)
                vals = torch.stack([lo, hi], 1).reshape(-1)
                vals = torch.where(vals > 7, vals - 16, vals)
                target.copy_(vals.reshape(target.shape).to(target.dtype))
                used.add(packed)
            elif plain in tensors:
                target.copy_(tensors[plain])
                used.add(plain)
            else:
                raise KeyError(plain)
    return used
