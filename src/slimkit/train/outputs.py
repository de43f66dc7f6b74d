"""What a model's output and a dataset's labels mean to a loss, decided in one place.

Distillation, pruning importance, sensitivity scans and fine-tuning all ask the same two
questions: which tensor is the model's answer, and are the labels class ids for it. Answering
them apart let an embedding model with labelled data be trained on cross entropy in one place
and not another.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from slimkit.errors import TechniqueError


def first_tensor(out: Any) -> torch.Tensor:
    """A model's main output: itself, the first of a tuple, or the first tensor of a mapping."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise TechniqueError(f"cannot find a tensor in the model's output ({type(out).__name__})")


def label_tensor(labels: np.ndarray | None) -> torch.Tensor | None:
    """Labels as a tensor: integer class ids as int64 (what cross entropy takes, whatever
    width a .npz stored), float targets as they are, anything else (strings) as None."""
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.dtype.kind in "iu":
        return torch.as_tensor(arr).long()
    if arr.dtype.kind == "f":
        return torch.as_tensor(arr)
    return None


def uses_labels(out: torch.Tensor, labels: torch.Tensor | None) -> bool:
    """Labels drive the loss only when they are class ids for a [batch, classes] output."""
    return (labels is not None and labels.numel() > 0 and out.ndim == 2
            and out.is_floating_point() and labels.ndim == 1
            and not labels.dtype.is_floating_point
            and int(labels.min()) >= 0 and int(labels.max()) < out.shape[1])
