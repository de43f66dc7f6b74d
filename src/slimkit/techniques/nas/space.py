"""What a student architecture is, and the choices a search makes about it.

An architecture is a small readable record of what the student keeps of its teacher: for a CNN
the channels of each coupled channel group and which repeatable blocks of each stage stay; for a
BERT-like encoder which layers stay and the (uniform) heads, FFN width and hidden size of the
layers left. It names the teacher's own modules, so it rebuilds the student from a fresh copy of
the source model without data, and it keys a candidate's scores so none is scored twice.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slimkit.io import sha256_json

Count = Annotated[int, Field(ge=1)]


class Architecture(BaseModel):
    """A student as kept counts and kept blocks of its teacher."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["cnn", "bert"]
    # cnn: channel group (named by its first conv or Linear) -> kept channels
    widths: dict[str, Count] = Field(default_factory=dict)
    # cnn: stage (an nn.Sequential) -> indices of its repeatable blocks that stay
    blocks: dict[str, list[Annotated[int, Field(ge=0)]]] = Field(default_factory=dict)
    # bert: indices of the teacher's layers that stay, in order
    layers: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    heads: Count | None = None
    ffn: Count | None = None
    hidden: Count | None = None

    def key(self) -> str:
        return sha256_json(self.model_dump(mode="json"))[:16]

    def short(self) -> str:
        """One line for a progress note and a report row."""
        if self.family == "bert":
            return (f"layers={len(self.layers)} heads={self.heads} ffn={self.ffn} "
                    f"hidden={self.hidden}")
        depth = ",".join(f"{s}:{len(b)}" for s, b in self.blocks.items())
        return f"widths={json.dumps(list(self.widths.values()))}" + (f" blocks={depth}"
                                                                      if depth else "")


def rounded(share: float, total: int, step: int) -> int:
    """`share` of `total` units as a multiple of `step` (never below one step or one unit)."""
    from slimkit.techniques.prune.channels import rounded as channels_rounded

    return max(1, channels_rounded(share, total, step))


def suggest(trial: Any, shape: Architecture, shares: list[float], round_to: int,
            layer_order: list[int], block_order: dict[str, list[int]],
            head_step: int = 1) -> Architecture:
    """Ask an Optuna trial for one architecture inside the teacher's `shape`.

    Widths are drawn as shares (the same few choices for every group, so the sampler learns
    one scale); depth as a count, and which layers or blocks stay follows `layer_order` /
    `block_order` (most important, or evenly spaced, first), so a count names one student."""
    if shape.family == "bert":
        assert shape.heads is not None and shape.ffn is not None and shape.hidden is not None
        n = trial.suggest_int("layers", 1, len(shape.layers))
        return Architecture(
            family="bert", layers=sorted(layer_order[:n]),
            heads=rounded(trial.suggest_categorical("heads", shares), shape.heads, head_step),
            ffn=rounded(trial.suggest_categorical("ffn", shares), shape.ffn, round_to),
            hidden=rounded(trial.suggest_categorical("hidden", shares), shape.hidden, round_to))
    widths = {root: rounded(trial.suggest_categorical(f"width:{root}", shares), n, round_to)
              for root, n in shape.widths.items()}
    blocks = {stage: sorted(block_order[stage][:trial.suggest_int(f"depth:{stage}", 0,
                                                                  len(kept))])
              for stage, kept in shape.blocks.items()}
    return Architecture(family="cnn", widths=widths, blocks=blocks)


def uniform_params(shape: Architecture, share: float) -> dict[str, Any]:
    """Optuna parameters of the student that keeps `share` of every width and all its depth:
    the first guesses a search is seeded with."""
    if shape.family == "bert":
        return {"layers": len(shape.layers), "heads": share, "ffn": share, "hidden": 1.0}
    return {**{f"width:{root}": share for root in shape.widths},
            **{f"depth:{stage}": len(kept) for stage, kept in shape.blocks.items()}}


def even(n: int, k: int) -> list[int]:
    """`k` of `n` indices spread evenly, first and last included."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def selection_order(n: int, importance: list[float] | None) -> list[int]:
    """Indices in the order a growing count keeps them: most important first, or (without
    scores) so that every prefix is spread evenly over the depth."""
    if importance is not None:
        return sorted(range(n), key=lambda i: -importance[i])
    order: list[int] = []
    for k in range(1, n + 1):
        order += [i for i in even(n, k) if i not in order]
    return order


def nearest(shares: list[float], value: float) -> float:
    return min(shares, key=lambda s: (abs(s - value), -s))


def seeds(shape: Architecture, budget: float, shares: list[float]) -> list[dict[str, Any]]:
    """First guesses near the budget, so a short search starts where students fit: compute
    shrinks with the square of a CNN's width and with depth times width in an encoder, and
    latency rarely shrinks faster than compute, so the widest share under that bound first,
    then the next one up."""
    below = [s for s in shares if s <= budget**0.5]
    root = max(below) if below else min(shares)
    above = min([s for s in shares if s > root] or [root])
    if shape.family == "cnn":
        return [uniform_params(shape, root), uniform_params(shape, above)]
    full = len(shape.layers)
    return [{**uniform_params(shape, root), "layers": max(1, round(full * budget**0.5))},
            {**uniform_params(shape, nearest(shares, budget)), "layers": full}]
