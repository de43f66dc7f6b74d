"""Fold BatchNorm into the convolution before it.

Quantizing a convolution and then a BatchNorm would quantize weights that the runtime folds
away anyway; folding first quantizes the weights that really run.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold `bn` (eval statistics) into `conv` in place."""
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    with torch.no_grad():
        conv.weight.mul_(factor.reshape(-1, *[1] * (conv.weight.dim() - 1)))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (bias - bn.running_mean) * factor + beta
    conv.bias = nn.Parameter(new_bias.detach().clone())


def fold_batchnorms(module: nn.Module) -> int:
    """Fold every Conv2d directly followed by a BatchNorm2d inside an nn.Sequential; the
    BatchNorm becomes an Identity. Returns how many were folded."""
    folded = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                fold_conv_bn(conv, bn)
                seq._modules[b] = nn.Identity()
                folded += 1
    return folded
