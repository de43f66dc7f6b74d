"""A frozen teacher's outputs, computed once before a student trains towards them.

The teacher is frozen and in eval mode, so it gives the same outputs every epoch; running it at
every step repeats work (a fifth of each step distilling a pruned MiniLM in bf16). Computed
once, its outputs travel with the inputs as extra data columns, so the loop's shuffling, length
grouping, cutting, resume and data-parallel split treat them like any input. Token hidden states
are large (rows x tokens x width per layer), so they are kept as float16 (finer than bf16
autocast's own rounding) and only while they fit a memory cap; beyond it the teacher runs at
every step as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import psutil

from slimkit.dataset import Dataset, cut_tokens, token_lengths

if TYPE_CHECKING:
    import torch

OUTPUT = "__teacher_output__"  # extra columns of the training data, never model inputs
HIDDEN = "__teacher_hidden_{}__"
_BATCH = 64

# (inputs by name) -> (the teacher's main output, its hidden states in pair order)
RunTeacher = Callable[[dict[str, "torch.Tensor"]], tuple["torch.Tensor", list["torch.Tensor"]]]


def teacher_columns(run: RunTeacher, data: Dataset, device: str, cap_bytes: float,
                    mask: str | None = None, sequence_columns: tuple[str, ...] = (),
                    precision: str = "fp32") -> dict[str, np.ndarray] | None:
    """The teacher's outputs for every row, as columns to add to `data`; None when the hidden
    states would take more than `cap_bytes`, or all of it more than half the available memory.

    Rows run in batches of similar length cut to their longest text (`mask` names the padding
    mask), so the pass costs about one epoch of teacher forwards. Padding positions hold zeros
    or whatever the teacher gives there: the hidden-state loss masks them out."""
    import torch

    from slimkit.progress import progress_bar

    n = len(data)
    lengths = token_lengths(data.inputs[mask]) if mask is not None else None
    cut = {mask, *sequence_columns} if mask is not None else set()
    full = data.inputs[mask].shape[1] if mask is not None else None
    order = np.argsort(lengths, kind="stable") if lengths is not None else np.arange(n)
    columns: dict[str, np.ndarray] = {}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None)
    with torch.no_grad(), autocast, progress_bar("teacher outputs", total=n) as advance:
        for start in range(0, n, _BATCH):
            rows = np.sort(order[start:start + _BATCH])
            width = int(lengths[rows].max()) if lengths is not None else None
            x = {name: column[rows] for name, column in data.inputs.items()}
            if width:
                x = cut_tokens(x, width, cut)
            out, states = run({k: torch.from_numpy(np.ascontiguousarray(v)).to(device)
                               for k, v in x.items()})
            if not columns and not _allocate(columns, n, out, states, full, cap_bytes):
                return None
            columns[OUTPUT][rows] = out.float().cpu().numpy()
            for i, state in enumerate(states):
                columns[HIDDEN.format(i)][rows, :state.shape[1]] = \
                    state.float().cpu().numpy().astype(np.float16)
            advance(len(rows))
    return columns


def _allocate(columns: dict[str, np.ndarray], n: int, out: torch.Tensor,
              states: list[torch.Tensor], full: int | None, cap_bytes: float) -> bool:
    """Make the zeroed columns, sized from the first batch (`full`: the uncut token width),
    if the token states fit the cap and everything fits in half the available memory (a
    per-token output is as large as a layer's states)."""
    shapes = [(n, full or s.shape[1], *s.shape[2:]) for s in states]
    need = sum(int(np.prod(shape)) * 2 for shape in shapes)
    outputs = n * int(np.prod(out.shape[1:])) * 4
    if (states and need > cap_bytes) or need + outputs > psutil.virtual_memory().available / 2:
        return False
    columns[OUTPUT] = np.zeros((n, *out.shape[1:]), dtype=np.float32)
    for i, shape in enumerate(shapes):
        columns[HIDDEN.format(i)] = np.zeros(shape, dtype=np.float16)
    return True
