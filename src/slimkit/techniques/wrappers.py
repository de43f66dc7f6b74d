"""Small modules that adapt a model's dtype at its boundary."""

from __future__ import annotations

import torch
from torch import nn


class CastIO(nn.Module):
    """Run `inner` in `dtype` while callers keep passing and getting float32.

    Integer inputs (token ids, masks) pass through untouched.
    """

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        cast = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
        out = self.inner(*cast)
        return out.float() if isinstance(out, torch.Tensor) else out
