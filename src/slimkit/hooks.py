"""Forward hooks that are removed however the pass ends, for the scans that count or check
layers by running the model once."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch import nn


@contextlib.contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable[..., Any]]],
                  pre: bool = False) -> Iterator[None]:
    """`pre`: hooks that see each module's inputs before it runs, not its output."""
    handles = [m.register_forward_pre_hook(f) if pre else m.register_forward_hook(f)
               for m, f in hooks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
