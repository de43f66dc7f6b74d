"""Finding the encoder layers of a BERT-like model, counting their FLOPs, and shrinking them.

Pruning only pays off on a runtime when the removed heads and neurons are gone from the weight
matrices: masked weights still cost their multiply-adds. Shrinking edits the Linear layers in
place, so the Hugging Face forward, which infers the head count from the projection width, keeps
working and the exported graph is simply smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from slimkit.errors import TechniqueError


@dataclass
class EncoderLayer:
    """Handles on the parts of one transformer layer that pruning changes."""

    attention: nn.Module  # holds query, key, value; its output goes to `attn_out`
    attn_out: nn.Linear
    ffn_in: nn.Linear
    ffn_out: nn.Linear

    @property
    def head_size(self) -> int:
        return int(self.attention.attention_head_size)

    @property
    def heads(self) -> int:
        return self.attention.query.out_features // self.head_size

    @property
    def ffn(self) -> int:
        return self.ffn_in.out_features

    @property
    def hidden(self) -> int:
        return self.attn_out.out_features


def encoder_layers(module: nn.Module) -> list[EncoderLayer]:
    """Every BERT-style layer (attention.self.{query,key,value}, attention.output.dense,
    intermediate.dense, output.dense) inside `module`, in forward order."""
    found = []
    for m in module.modules():
        att = getattr(m, "attention", None)
        inner = getattr(att, "self", None)
        if inner is None or not all(hasattr(inner, n) for n in ("query", "key", "value")):
            continue
        if not hasattr(inner, "attention_head_size"):
            continue
        try:
            layer = EncoderLayer(inner, att.output.dense, m.intermediate.dense, m.output.dense)
        except AttributeError:
            continue
        found.append(layer)
    if not found:
        raise TechniqueError("prune_transformer: no BERT-like encoder layers found in the model")
    return found


def encoder_blocks(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The whole transformer layers (attention and FFN, the residual stream's stations), by
    module name in forward order: where per-token hidden states can be read."""
    inner = {id(la.attention) for la in encoder_layers(module)}
    return [(name, m) for name, m in module.named_modules()
            if id(getattr(getattr(m, "attention", None), "self", None)) in inner]


def layer_macs(heads: int, ffn: int, hidden: int, head_size: int, seq: int) -> int:
    """Multiply-adds of one layer for one sequence of `seq` tokens (Linear layers and the two
    attention products; LayerNorm, softmax and biases are a rounding error)."""
    per_head = seq * head_size * (4 * hidden + 2 * seq)
    per_neuron = 2 * seq * hidden
    return heads * per_head + ffn * per_neuron


def head_macs(layer: EncoderLayer, seq: int) -> int:
    return layer_macs(1, 0, layer.hidden, layer.head_size, seq)


def neuron_macs(layer: EncoderLayer, seq: int) -> int:
    return layer_macs(0, 1, layer.hidden, layer.head_size, seq)


def encoder_flops(layers: list[EncoderLayer], seq: int) -> int:
    return 2 * sum(layer_macs(la.heads, la.ffn, la.hidden, la.head_size, seq) for la in layers)


def _take(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping only `index` along its output (dim 0) or input (dim 1) features."""
    w = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias
    b = None if bias is None else (bias.detach().index_select(0, index).clone() if dim == 0
                                   else bias.detach().clone())
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _replace(parent: nn.Module, old: nn.Linear, new: nn.Linear) -> None:
    for name, child in parent.named_children():
        if child is old:
            setattr(parent, name, new)
            return
    raise TechniqueError("prune_transformer: a Linear layer is not where it was found")


def shrink(layer: EncoderLayer, parents: dict[int, nn.Module], keep_heads: list[int],
           keep_neurons: list[int]) -> EncoderLayer:
    """Keep only the given heads and FFN neurons of `layer`; returns the updated handles."""
    if not keep_heads:
        raise TechniqueError("prune_transformer: every layer keeps at least one head")
    if not keep_neurons:
        raise TechniqueError("prune_transformer: every layer keeps at least one FFN neuron")
    size = layer.head_size
    cols = torch.tensor([h * size + k for h in sorted(keep_heads) for k in range(size)])
    att = layer.attention
    for name in ("query", "key", "value"):
        setattr(att, name, _take(getattr(att, name), cols, 0))
    # The forward reshapes by head size alone; these keep the module's own record consistent.
    att.num_attention_heads = len(keep_heads)
    att.all_head_size = len(keep_heads) * size
    attn_out = _take(layer.attn_out, cols, 1)
    _replace(parents[id(layer.attn_out)], layer.attn_out, attn_out)
    rows = torch.tensor(sorted(keep_neurons))
    ffn_in = _take(layer.ffn_in, rows, 0)
    ffn_out = _take(layer.ffn_out, rows, 1)
    _replace(parents[id(layer.ffn_in)], layer.ffn_in, ffn_in)
    _replace(parents[id(layer.ffn_out)], layer.ffn_out, ffn_out)
    return EncoderLayer(att, attn_out, ffn_in, ffn_out)


def parent_map(module: nn.Module) -> dict[int, nn.Module]:
    """id(child) -> parent, to swap a Linear layer for its smaller copy."""
    return {id(c): m for m in module.modules() for c in m.children()}
