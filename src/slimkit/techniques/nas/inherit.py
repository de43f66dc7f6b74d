"""Candidates cut from the teacher, for whichever family the model belongs to.

The teacher is analysed once (importance of channels, heads, neurons, hidden dimensions, layers
and blocks); every candidate is then a copy of it cut to its architecture, so a candidate starts
from the teacher's knowledge rather than from scratch, and one equal to the teacher computes
exactly what the teacher does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from slimkit.errors import TechniqueError
from slimkit.techniques.nas import bert, cnn
from slimkit.techniques.nas.space import Architecture

if TYPE_CHECKING:
    from slimkit.data import Dataset
    from slimkit.model import TorchModel
    from slimkit.techniques.prune import Method


@dataclass
class Teacher:
    family: str
    shape: Architecture
    names: list[str]
    sample: Dataset  # what importance was measured on; BatchNorm statistics are refreshed on it
    cnn: cnn.CnnTeacher | None = None
    bert: bert.BertTeacher | None = None

    def layer_order(self) -> list[int] | None:
        return None if self.bert is None else self.bert.layer_importance

    def block_importance(self) -> dict[str, list[float]] | None:
        return None if self.cnn is None else self.cnn.block_importance


def family_of(module: nn.Module) -> str:
    if bert.find_bert(module) is not None:
        return "bert"
    if any(isinstance(m, nn.Conv2d) for m in module.modules()):
        return "cnn"
    raise TechniqueError("nas: searches BERT-like encoders and CNNs; this model is neither")


def analyse(model: TorchModel, sample: Dataset, *, channel_importance: Method,
            head_importance: str, layers_by_importance: bool, ignore: list[str]) -> Teacher:
    names = [i.name for i in model.inputs]
    family = family_of(model.module)
    if family == "bert":
        found = bert.analyse(model, sample, head_importance, layers_by_importance)
        return Teacher(family, found.shape, names, sample, bert=found)
    found_cnn = cnn.analyse(model, sample, channel_importance, layers_by_importance, ignore)
    if not found_cnn.shape.widths and not found_cnn.shape.blocks:
        raise TechniqueError("nas: the CNN has no channel group or block a student could lose")
    return Teacher(family, found_cnn.shape, names, sample, cnn=found_cnn)


def inherit(teacher: Teacher, arch: Architecture) -> nn.Module:
    """A copy of the teacher cut to `arch`; BatchNorm statistics re-estimated where channels or
    blocks went, since the layers after them now see other activations."""
    from slimkit.techniques.prune.channels import recalibrate

    if teacher.bert is not None:
        module = bert.inherit(teacher.bert, arch)
    else:
        assert teacher.cnn is not None
        module = cnn.inherit(teacher.cnn, arch)
        if arch != teacher.shape:
            recalibrate(module, teacher.sample, teacher.names)
    # The teacher is frozen while it teaches; its copy is the one that learns.
    return module.requires_grad_(True)


def rebuild(model: TorchModel, arch: Architecture) -> None:
    """Cut a fresh copy of the source model to `arch` in place, without data."""
    from slimkit.techniques.prune import graph

    family = family_of(model.module)
    if family != arch.family:
        raise TechniqueError(f"nas: the record is for a {arch.family}, the model is a {family}")
    if family == "bert":
        bert.rebuild(model.module, arch)
    else:
        cnn.rebuild(model.module, graph.example_inputs(model.inputs), arch)


def flops(module: nn.Module, teacher: Teacher) -> float:
    from slimkit.techniques.prune import graph

    return graph.total_flops(module, {n: _first_row(teacher, n) for n in teacher.names})


def _first_row(teacher: Teacher, name: str) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(teacher.sample.inputs[name][:1]))
