"""Weights that share a few values, stored as a codebook and packed indices.

A clustered layer written densely is as large as the layer it came from; what weight sharing
buys is that each weight is only an index into a short table. The clustering step marks the
tensors it shared on the root module (`mark`), and here each marked tensor is written as plain
tensors safetensors holds like any other: per group of output rows, the distinct values (taken
by their bits, so -0.0 and NaN come back as they were), the index of every weight packed to
ceil(log2 k) bits, optionally entropy coded, and a small header. Decoding gives the very same
floats. Only the bytes on disk change: the tensors a model is hashed by stay dense.

The codebook is recomputed from the values at save time, so a later step that changed a marked
tensor never loses data: a tensor with too many distinct values is simply left to the other
encoders.
"""

from __future__ import annotations

import lzma
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from slimkit import sparse_state
from slimkit.errors import ModelLoadError

CODEBOOK, INDICES, META = "::shared_codebook", "::shared_indices", "::shared_meta"
MARK = "_slimkit_shared_weights"  # root-module attribute: tensor key -> Sharing
MAX_BITS = 8
# Each stored tensor also costs a header entry (name, dtype, shape, offsets) of about this much.
_HEADER_BYTES = 80
_INT_VIEW = {2: torch.int16, 4: torch.int32, 8: torch.int64}

# The entropy coder after the packed indices. Deep Compression's third stage is a Huffman code,
# which spends at least one bit on every index; after heavy pruning the zero index is most of
# them, and lzma's adaptive range coder (the previous byte as context) spends well under a bit
# there, so it beats the Huffman figure where it matters and costs nothing where it does not.
# It is in the standard library and decodes at C speed.
Coding = Literal["none", "lzma"]
_CODINGS: tuple[Coding, ...] = ("none", "lzma")


@dataclass(frozen=True)
class Sharing:
    """How a marked tensor is stored: rows (output channels) per codebook, and the coder."""

    group_rows: int
    coding: Coding


def mark(module: nn.Module, key: str, sharing: Sharing) -> None:
    marks = dict(getattr(module, MARK, {}))
    marks[key] = sharing
    object.__setattr__(module, MARK, marks)  # a plain attribute, not a submodule or buffer


def marks(module: nn.Module) -> dict[str, Sharing]:
    return dict(getattr(module, MARK, {}))


def _rows(t: torch.Tensor) -> int:
    return t.shape[0] if t.dim() else 1


def group_codes(t: torch.Tensor, group_rows: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per group of `group_rows` rows, the distinct value bits, and every weight's index into
    its group's table; None when a group has more than 2**MAX_BITS distinct values."""
    if not t.is_floating_point() or t.element_size() not in _INT_VIEW or t.numel() == 0:
        return None
    flat = t.detach().cpu().contiguous().view(_INT_VIEW[t.element_size()]).reshape(-1).numpy()
    rows = _rows(t)
    per_group = min(group_rows, rows) * (t.numel() // rows)
    tables: list[np.ndarray] = []
    indices = np.empty(flat.size, np.uint8)
    for start in range(0, flat.size, per_group):
        values, inverse = np.unique(flat[start:start + per_group], return_inverse=True)
        if values.size > 2**MAX_BITS:
            return None
        tables.append(values)
        indices[start:start + per_group] = inverse.reshape(-1)
    width = max(v.size for v in tables)
    codebook = np.stack([np.pad(v, (0, width - v.size), mode="edge") for v in tables])
    return codebook, indices


def bits_for(distinct: int) -> int:
    return max(1, math.ceil(math.log2(max(distinct, 1))))


def pack(indices: np.ndarray, bits: int) -> np.ndarray:
    """Each index as its `bits` low bits, back to back."""
    return np.packbits(np.unpackbits(indices[:, None], axis=1)[:, 8 - bits:])


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    low = np.unpackbits(packed, count=count * bits).reshape(count, bits)
    return np.packbits(np.pad(low, ((0, 0), (8 - bits, 0))), axis=1).reshape(-1)


def encode_one(t: torch.Tensor, sharing: Sharing) -> dict[str, torch.Tensor] | None:
    """The tensors that store `t` as a codebook and indices; None where that is not smaller
    than writing it densely (or `t` has too many distinct values)."""
    codes = group_codes(t, sharing.group_rows)
    if codes is None:
        return None
    codebook, indices = codes
    bits = bits_for(codebook.shape[1])
    packed = pack(indices, bits)
    coding = sharing.coding
    if coding == "lzma":  # kept only where it helps (a coder's header outweighs tiny layers)
        coded = np.frombuffer(lzma.compress(packed.tobytes()), np.uint8)
        packed, coding = (coded, coding) if coded.size < packed.size else (packed, "none")
    rows = _rows(t)
    meta = [bits, _CODINGS.index(coding), min(sharing.group_rows, rows), t.numel(), *t.shape]
    out = {
        CODEBOOK: torch.from_numpy(codebook).view(t.dtype),
        INDICES: torch.from_numpy(packed.copy()),
        META: torch.tensor(meta, dtype=torch.int64),
    }
    other = t.numel() * t.element_size() + _HEADER_BYTES
    if sparse_state.should_encode(t):
        other = min(other, sparse_state.encoded_bytes(t))
    return out if stored_bytes(out) < other else None


def stored_bytes(parts: dict[str, torch.Tensor]) -> int:
    """What `encode_one`'s tensors cost on disk, headers included."""
    return sum(v.numel() * v.element_size() for v in parts.values()) \
        + len(parts) * _HEADER_BYTES


def encode(tensors: dict[str, torch.Tensor], marked: dict[str, Sharing]
           ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the marked tensors stored as codebooks and indices, every other tensor unchanged)."""
    shared: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        parts = encode_one(t, marked[key]) if key in marked else None
        if parts is None:
            rest[key] = t
        else:
            shared.update({key + suffix: v for suffix, v in parts.items()})
    return shared, rest


def decode_one(codebook: torch.Tensor, packed: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    bits, coding, group_rows, count, *shape = (int(v) for v in meta.tolist())
    raw = packed.numpy()
    if _CODINGS[coding] == "lzma":
        raw = np.frombuffer(lzma.decompress(raw.tobytes()), np.uint8)
    if raw.size * 8 < count * bits or math.prod(shape) != count:
        raise ValueError(f"{raw.size} bytes of indices for {count} weights of {bits} bits")
    indices = unpack(raw, bits, count).astype(np.int64)
    rows = shape[0] if shape else 1
    per_group = group_rows * (count // rows) if rows else count
    width = codebook.shape[1]
    if count and (indices.max() >= width or (count - 1) // max(per_group, 1) >= len(codebook)):
        raise ValueError("indices point past the codebook")
    group = np.arange(count, dtype=np.int64) // max(per_group, 1)
    table = codebook.view(_INT_VIEW[codebook.element_size()]).reshape(-1).numpy()
    values = torch.from_numpy(table[group * width + indices].copy())
    return values.view(codebook.dtype).reshape(shape)


def decode(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dense tensors again; tensors stored otherwise pass through unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key.endswith((CODEBOOK, INDICES)):
            continue
        if key.endswith(META):
            name = key[: -len(META)]
            try:
                out[name] = decode_one(tensors[name + CODEBOOK], tensors[name + INDICES], t)
            except (KeyError, ValueError, IndexError, RuntimeError, lzma.LZMAError) as e:
                raise ModelLoadError(f"{name}: its shared weights cannot be decoded "
                                     f"({type(e).__name__}: {e})") from None
        else:
            out[key] = t
    return out
