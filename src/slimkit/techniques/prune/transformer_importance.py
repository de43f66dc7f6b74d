"""How much each attention head and FFN neuron matters, measured on data.

A gate of ones multiplies every head's context vector and every FFN activation, one gate per
sample. The gradient of the output with respect to a gate is the first-order change of the
output when that unit is removed (Michel et al. 2019 for heads; activation x gradient for
neurons). Without labels the output is a sentence embedding and the loss is its distance to the
unpruned embedding, whose gradient is zero at the unpruned model; its second-order term is the
squared norm of that first-order change, which a few random projections of the embedding
estimate without a backward pass per embedding dimension. With labels the per-sample
cross-entropy gradient is used the same way (a diagonal Fisher estimate, as in Kwon et al. 2022).
Either way head and neuron scores share one unit, so one ranking can trade heads for neurons.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from slimkit.data import Dataset, token_lengths
from slimkit.techniques.prune.transformer_surgery import EncoderLayer
from slimkit.train.outputs import first_tensor, label_tensor, uses_labels


@dataclass
class Scores:
    heads: list[np.ndarray]  # per layer, one score per head
    neurons: list[np.ndarray]  # per layer, one score per FFN neuron
    comparable: bool  # whether head and neuron scores share a unit


def magnitude_scores(layers: list[EncoderLayer]) -> Scores:
    """Weight norms: the value and output projection of a head, the two FFN weights of a
    neuron. Cheap and data-free, but heads and neurons are then on different scales."""
    heads, neurons = [], []
    with torch.no_grad():
        for la in layers:
            size = la.head_size
            v = la.attention.value.weight.reshape(la.heads, size, -1).norm(dim=(1, 2))
            o = la.attn_out.weight.reshape(la.hidden, la.heads, size).norm(dim=(0, 2))
            heads.append((v * o).numpy().astype(np.float64))
            w_in = la.ffn_in.weight.norm(dim=1)
            w_out = la.ffn_out.weight.norm(dim=0)
            neurons.append((w_in * w_out).numpy().astype(np.float64))
    return Scores(heads, neurons, comparable=False)


def trimmed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the padding columns that no sequence of the batch uses."""
    mask = batch.get("attention_mask")
    if mask is None or mask.ndim != 2:
        return batch
    used = int(token_lengths(mask).max()) or mask.shape[1]
    return {k: v[:, :used] if v.ndim == 2 and v.shape[1] == mask.shape[1] else v
            for k, v in batch.items()}


def token_batches(data: Dataset, names: list[str], size: int) -> Iterator[
        tuple[list[torch.Tensor], torch.Tensor | None]]:
    for start in range(0, len(data), size):
        batch = trimmed(data.slice(start, start + size))
        labels = None if data.labels is None else label_tensor(data.labels[start:start + size])
        yield [torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names], labels


def taylor_scores(module: nn.Module, layers: list[EncoderLayer], names: list[str],
                  data: Dataset, batch_size: int = 16, projections: int = 4,
                  seed: int = 0) -> Scores:
    """Squared first-order output change per unit, summed over the samples of `data`."""
    gen = torch.Generator().manual_seed(seed)
    heads = [np.zeros(la.heads) for la in layers]
    neurons = [np.zeros(la.ffn) for la in layers]
    gates: list[tuple[torch.Tensor, torch.Tensor]] = []

    def head_gate(i: int) -> object:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            x = args[0]
            g = gates[i][0]
            shaped = x.reshape(*x.shape[:-1], g.shape[1], -1) * g[:, None, :, None]
            return (shaped.reshape(x.shape), *args[1:])
        return hook

    def neuron_gate(i: int) -> object:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return (args[0] * gates[i][1][:, None, :], *args[1:])
        return hook

    handles = [h for i, la in enumerate(layers) for h in (
        la.attn_out.register_forward_pre_hook(head_gate(i)),  # type: ignore[arg-type]
        la.ffn_out.register_forward_pre_hook(neuron_gate(i)))]  # type: ignore[arg-type]
    was_training = module.training
    frozen = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    module.eval()
    try:
        for inputs, labels in token_batches(data, names, batch_size):
            n = len(inputs[0])
            gates[:] = [(torch.ones(n, la.heads, requires_grad=True),
                         torch.ones(n, la.ffn, requires_grad=True)) for la in layers]
            flat = [g for pair in gates for g in pair]
            with torch.enable_grad():
                out = module(*inputs)
                out = first_tensor(out).reshape(n, -1).float()
                if labels is not None and uses_labels(out, labels):
                    losses = [nn.functional.cross_entropy(out, labels, reduction="sum")]
                else:
                    losses = [(out * torch.randn(out.shape, generator=gen)).sum()
                              for _ in range(projections)]
                for k, loss in enumerate(losses):
                    grads = torch.autograd.grad(loss, flat, retain_graph=k < len(losses) - 1)
                    for i in range(len(layers)):
                        heads[i] += (grads[2 * i] ** 2).sum(0).double().numpy() / len(losses)
                        neurons[i] += (grads[2 * i + 1] ** 2).sum(0).double().numpy() / len(losses)
    finally:
        for h in handles:
            h.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
        module.train(was_training)
    return Scores(heads, neurons, comparable=True)
