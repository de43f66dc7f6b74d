"""Mostly-zero tensors stored as their non-zero values and a bitmask.

A pruned model written densely is as large as the model it came from, which hides the one
thing unstructured sparsity buys on dense runtimes. Here a tensor that is at least half zeros
is written as plain tensors (values, np.packbits of the non-zero mask, shape), which
safetensors holds like any other, and made dense again on load. Only the bytes on disk change:
the tensors a model is hashed by (`flatten_state`) stay dense.
"""

from __future__ import annotations

import numpy as np
import torch

VALUES, MASK, SHAPE = "::sparse_values", "::sparse_mask", "::sparse_shape"
# Which of the zeros were -0.0 (written only when there are any), so the bytes come back.
NEGATIVE = "::sparse_negative_zeros"
# Each stored tensor also costs a header entry (name, dtype, shape, offsets) of about this much.
_HEADER_BYTES = 80
MIN_ZERO_SHARE = 0.5


def encoded_bytes(t: torch.Tensor) -> int:
    nonzero = int(torch.count_nonzero(t))
    return nonzero * t.element_size() + (t.numel() + 7) // 8 + 8 * t.dim() + 3 * _HEADER_BYTES


def should_encode(t: torch.Tensor, min_zero_share: float = MIN_ZERO_SHARE) -> bool:
    if t.dtype == torch.bool or t.numel() == 0 or t.is_quantized:
        return False
    zeros = t.numel() - int(torch.count_nonzero(t))
    return (zeros >= min_zero_share * t.numel()
            and encoded_bytes(t) < t.numel() * t.element_size() + _HEADER_BYTES)


def encode(tensors: dict[str, torch.Tensor],
           min_zero_share: float = MIN_ZERO_SHARE) -> dict[str, torch.Tensor]:
    """The same tensors, those at least `min_zero_share` zeros replaced by their encoding."""
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if not should_encode(t, min_zero_share):
            out[key] = t
            continue
        flat = t.detach().cpu().reshape(-1)
        nonzero = flat != 0
        out[key + VALUES] = flat[nonzero].contiguous()
        out[key + MASK] = torch.from_numpy(np.packbits(nonzero.numpy()))
        out[key + SHAPE] = torch.tensor(list(t.shape), dtype=torch.int64)
        negative = torch.signbit(flat[~nonzero])
        if negative.any():
            out[key + NEGATIVE] = torch.from_numpy(np.packbits(negative.numpy()))
    return out


def decode(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dense tensors again; tensors that were stored densely pass through unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key.endswith((MASK, SHAPE, NEGATIVE)):
            continue
        if not key.endswith(VALUES):
            out[key] = t
            continue
        name = key[: -len(VALUES)]
        shape = [int(s) for s in tensors[name + SHAPE].tolist()]
        numel = int(np.prod(shape)) if shape else 1
        nonzero = np.unpackbits(tensors[name + MASK].numpy(), count=numel).astype(bool)
        dense = torch.zeros(numel, dtype=t.dtype)
        dense[torch.from_numpy(nonzero)] = t
        if name + NEGATIVE in tensors:
            zero_at = np.flatnonzero(~nonzero)
            negative = np.unpackbits(tensors[name + NEGATIVE].numpy(), count=len(zero_at))
            dense[torch.from_numpy(zero_at[negative.astype(bool)])] = -0.0
        out[name] = dense.reshape(shape)
    return out
