"""Refitting the output projections of a pruned encoder so each layer's output moves little.

Removing a head or a neuron drops its contribution outright, although the kept units are
correlated with it and could make up much of it. A least-squares refit of attention.output.dense
and output.dense on the kept inputs recovers that share (layer-wise reconstruction, after Kwon
et al. 2022).

The refit goes layer by layer, in forward order, on the pruned model's own inputs, and aims at
the unpruned model's residual sum: for a block LayerNorm(dense(x) + r), the target of the
pruned dense(x_p) is dense_o(x_o) + r_o - r_p. So each layer also absorbs, as far as a linear
map can, the drift that the layers before it pass on. Refitting every layer on the unpruned
inputs instead, independently, made all-MiniLM-L6-v2 worse at 65% of the FLOPs (mean cosine
0.71 against 0.80 without a refit): the refitted weights amplified the upstream deviations.
Layer by layer it reaches 0.90 at 68% of the FLOPs, against 0.83 without: the better choice
when there is no time to train. Followed by distillation it is not: three minutes of it from
the refitted model reached 0.935, from the plain pruned one 0.955, so recipes that distil
leave it off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.data import Dataset
from slimkit.techniques.prune.transformer_importance import token_batches
from slimkit.techniques.prune.transformer_surgery import encoder_blocks


class _Reached(Exception):
    """Raised by a hook once the block being refitted has its inputs: the rest of the forward
    pass is not needed."""


def reconstruct(pruned: nn.Module, original: nn.Module, names: list[str], data: Dataset,
                batch_size: int = 16, ridge: float = 1e-3) -> None:
    """Refit, in place, the attention and FFN output projections of every layer of `pruned`
    towards `original` (the same model before pruning) on the texts of `data`."""
    pairs = zip(encoder_blocks(pruned), encoder_blocks(original), strict=True)
    for (_, p_block), (_, o_block) in pairs:
        for part in ("attention", "ffn"):
            p_out = p_block.attention.output if part == "attention" else p_block.output
            o_out = o_block.attention.output if part == "attention" else o_block.output
            _refit(pruned, original, p_out, o_out, names, data, batch_size, ridge)


def _inputs(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the dense layer's input, the residual) of a BERT output block, by position or name."""
    bound = dict(zip(("hidden_states", "input_tensor"), args, strict=False)) | kwargs
    return bound["hidden_states"], bound["input_tensor"]


def _capture(model: nn.Module, block: nn.Module, inputs: list[torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(_inputs(m, args, kwargs))
        raise _Reached

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(*inputs)
    except _Reached:
        pass
    finally:
        handle.remove()
    return seen[0]


def _refit(pruned: nn.Module, original: nn.Module, p_out: nn.Module, o_out: nn.Module,
           names: list[str], data: Dataset, batch_size: int, ridge: float) -> None:
    dense: nn.Linear = p_out.dense  # type: ignore[assignment]
    width = dense.in_features + 1
    gram = torch.zeros(width, width, dtype=torch.float64)
    cross = torch.zeros(width, dense.out_features, dtype=torch.float64)
    with torch.no_grad():
        for inputs, _ in token_batches(data, names, batch_size):
            x_o, r_o = _capture(original, o_out, inputs)
            x_p, r_p = _capture(pruned, p_out, inputs)
            target = o_out.dense(x_o) + r_o - r_p
            keep = (inputs[names.index("attention_mask")] > 0 if "attention_mask" in names
                    else torch.ones(x_p.shape[:-1], dtype=torch.bool))
            x = x_p[keep].double()
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
            gram += x.T @ x
            cross += x.T @ target[keep].double()
        reg = ridge * float(torch.diagonal(gram).mean()) * torch.eye(width, dtype=torch.float64)
        solved = torch.linalg.solve(gram + reg, cross)
        dense.weight.copy_(solved[:-1].T.to(dense.weight.dtype))
        if dense.bias is not None:
            dense.bias.copy_(solved[-1].to(dense.bias.dtype))
