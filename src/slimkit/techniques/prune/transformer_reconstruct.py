"""Refitting the output projections of a pruned layer so its output moves as little as possible.

Removing a head or a neuron drops its contribution outright, although the kept units are
correlated with it and could make up much of it. A least-squares refit of attention.output.dense
and output.dense on the kept inputs recovers that share (layer-wise reconstruction as in Kwon et
al. 2022), from Gram matrices of the unpruned layer inputs gathered on calibration tokens: with
X the full input (plus a column of ones for the bias), the kept columns K and the weights W,
the refit is (X_K'X_K + r I)^-1 X_K'X W', which needs only X'X.

Each layer is refitted on the unpruned model's inputs, independently of the others. That helps
small encoders, but on all-MiniLM-L6-v2 at 65% of the FLOPs the embedding ended up further
from the original than without the refit, presumably because the refitted weights amplify the
deviations that earlier pruned layers pass on; hence it is off by default.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.data import Dataset
from slimkit.techniques.prune.transformer_importance import token_batches
from slimkit.techniques.prune.transformer_surgery import EncoderLayer


def gram_matrices(module: nn.Module, layers: list[EncoderLayer], names: list[str],
                  data: Dataset, batch_size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, X'X of the inputs of the attention and FFN output projections over the
    unpadded tokens of `data`, each with a trailing column of ones, in float64."""
    grams = [[torch.zeros(la.attn_out.in_features + 1, la.attn_out.in_features + 1,
                          dtype=torch.float64),
              torch.zeros(la.ffn + 1, la.ffn + 1, dtype=torch.float64)] for la in layers]
    keep: list[torch.Tensor] = []

    def collect(i: int, k: int) -> object:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            if keep:
                x = x[keep[0]]
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
            grams[i][k] += x.T @ x
        return hook

    handles = [h for i, la in enumerate(layers) for h in (
        la.attn_out.register_forward_pre_hook(collect(i, 0)),  # type: ignore[arg-type]
        la.ffn_out.register_forward_pre_hook(collect(i, 1)))]  # type: ignore[arg-type]
    try:
        with torch.no_grad():
            for inputs, _ in token_batches(data, names, batch_size):
                keep[:] = []
                if "attention_mask" in names:
                    keep.append(inputs[names.index("attention_mask")].reshape(-1) > 0)
                module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return [(a, f) for a, f in grams]


def refit(new: nn.Linear, old_weight: torch.Tensor, old_bias: torch.Tensor | None,
          gram: torch.Tensor, kept: list[int], ridge: float = 1e-3) -> None:
    """Set `new` (the projection on the kept inputs) to the least-squares fit of the old one."""
    d = old_weight.shape[1]
    full = torch.cat([old_weight.double().T,
                      (old_bias.double() if old_bias is not None
                       else torch.zeros(old_weight.shape[0], dtype=torch.float64))[None, :]])
    cols = torch.tensor([*kept, d])
    g_kk = gram[cols][:, cols]
    reg = ridge * float(torch.diagonal(g_kk).mean()) * torch.eye(len(cols), dtype=torch.float64)
    solved = torch.linalg.solve(g_kk + reg, gram[cols] @ full)
    with torch.no_grad():
        new.weight.copy_(solved[:-1].T.to(new.weight.dtype))
        if new.bias is not None:
            new.bias.copy_(solved[-1].to(new.bias.dtype))


def head_columns(heads: list[int], size: int) -> list[int]:
    return [h * size + k for h in sorted(heads) for k in range(size)]


def clone_weights(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = None if linear.bias is None else linear.bias.detach().clone()
    return linear.weight.detach().clone(), bias
