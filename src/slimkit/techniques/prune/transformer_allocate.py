"""Which heads and FFN neurons each layer keeps under an encoder FLOPs budget.

Layers differ a lot in how much they can lose (in MiniLM the last layers' FFNs matter less than
the first layers' heads), so one ratio for all layers wastes the budget. The global allocation
removes, one unit at a time, whichever head or block of FFN neurons costs the least importance
per FLOP saved, anywhere in the encoder; the uniform one keeps the same share everywhere and is
there to compare against.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from slimkit.techniques.prune.transformer_importance import Scores
from slimkit.techniques.prune.transformer_surgery import EncoderLayer, head_macs, neuron_macs


@dataclass
class Plan:
    heads: list[list[int]]  # kept head indices per layer
    neurons: list[list[int]]  # kept FFN neuron indices per layer


def _units(layers: list[EncoderLayer], scores: Scores, seq: int, multiple: int) -> list[
        tuple[list[tuple[float, int, list[int]]], list[tuple[float, int, list[int]]]]]:
    """Per layer, the removable heads and FFN neuron blocks in the order they would go, each as
    (importance, MACs saved, unit indices)."""
    head_norm = neuron_norm = 1.0
    if not scores.comparable:
        # An average unit of either kind is then taken to matter in proportion to its cost.
        head_norm = float(np.mean(np.concatenate(scores.heads))) / head_macs(layers[0], seq)
        neuron_norm = float(np.mean(np.concatenate(scores.neurons))) / neuron_macs(layers[0], seq)
    out = []
    for la, hs, ns in zip(layers, scores.heads, scores.neurons, strict=True):
        heads = [(float(hs[h]) / head_norm, head_macs(la, seq), [int(h)])
                 for h in np.argsort(hs, kind="stable")]
        order = [int(j) for j in np.argsort(ns, kind="stable")]
        first = la.ffn % multiple or multiple
        blocks, start = [], 0
        while start < len(order):
            size = first if start == 0 else multiple
            idx = order[start:start + size]
            blocks.append((float(ns[idx].sum()) / neuron_norm, neuron_macs(la, seq) * len(idx),
                           idx))
            start += size
        out.append((heads[:-1], blocks[:-1]))  # at least one head and one block stay
    return out


def allocate_global(layers: list[EncoderLayer], scores: Scores, seq: int, keep_ratio: float,
                    multiple: int, heads_share: float | None = None) -> Plan:
    """The greedy rule of `slimkit.techniques.allocate` (least damage per cost saved), run on
    its own here: the damage is an importance score per unit, not a measured trial, so each
    layer's heads and neuron blocks leave in a fixed order, one at a time, at costs that add
    up. A heap over each chain's next unit then finds the cheapest step in log time among the
    thousands of units of a BERT-sized encoder, and the saving is counted as removed rather
    than recomputed, where the general allocator rescans every option of every unit."""
    units = _units(layers, scores, seq, multiple)
    total = sum(head_macs(la, seq) * la.heads + neuron_macs(la, seq) * la.ffn for la in layers)
    need = total * (1 - keep_ratio)
    removed_heads: list[set[int]] = [set() for _ in layers]
    removed_neurons: list[set[int]] = [set() for _ in layers]
    pos = {(i, k): 0 for i in range(len(layers)) for k in (0, 1)}
    saved = 0.0
    # With a fixed heads share, heads alone go first up to their part of the saving.
    phases: list[tuple[int, ...]] = [(0, 1)] if heads_share is None else [(0,), (1,), (0, 1)]
    goals = [need] if heads_share is None else [need * heads_share, need, need]
    for kinds, goal in zip(phases, goals, strict=True):
        heap = []
        for (i, k), p in pos.items():
            if k in kinds and p < len(units[i][k]):
                imp, cost, _ = units[i][k][p]
                heap.append((imp / cost, i, k))
        heapq.heapify(heap)
        while saved < goal and heap:
            _, i, k = heapq.heappop(heap)
            _, cost, idx = units[i][k][pos[i, k]]
            (removed_heads if k == 0 else removed_neurons)[i].update(idx)
            saved += cost
            pos[i, k] += 1
            if pos[i, k] < len(units[i][k]):
                imp, cost, _ = units[i][k][pos[i, k]]
                heapq.heappush(heap, (imp / cost, i, k))
    return Plan([[h for h in range(la.heads) if h not in removed_heads[i]]
                 for i, la in enumerate(layers)],
                [[j for j in range(la.ffn) if j not in removed_neurons[i]]
                 for i, la in enumerate(layers)])


def top(scores: np.ndarray, count: int) -> list[int]:
    """Indices of the `count` highest scores, in index order."""
    return sorted(int(j) for j in np.argsort(-scores, kind="stable")[:count])


def allocate_uniform(layers: list[EncoderLayer], scores: Scores, seq: int, keep_ratio: float,
                     multiple: int) -> Plan:
    def counts(r: float) -> list[tuple[int, int]]:
        return [(max(1, round(la.heads * r)),
                 max(multiple, round(la.ffn * r / multiple) * multiple)) for la in layers]

    def macs(c: list[tuple[int, int]]) -> float:
        return sum(head_macs(la, seq) * h + neuron_macs(la, seq) * f
                   for la, (h, f) in zip(layers, c, strict=True))

    target = keep_ratio * macs([(la.heads, la.ffn) for la in layers])
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(counts(mid)) <= target else (lo, mid)
    chosen = counts(lo)
    return Plan([top(s, h) for s, (h, _) in zip(scores.heads, chosen, strict=True)],
                [top(s, min(f, len(s))) for s, (_, f) in zip(scores.neurons, chosen, strict=True)])


def allocate_counts(scores: Scores, heads: list[int], ffn: list[int]) -> Plan:
    """The most important units up to counts given per layer."""
    return Plan([top(s, h) for s, h in zip(scores.heads, heads, strict=True)],
                [top(s, f) for s, f in zip(scores.neurons, ffn, strict=True)])
