"""What techniques ask to observe, and the observers that serve the asks together."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from slimkit.observe.base import Observer

Side = Literal["input", "output"]
Factory = Callable[[], Observer]


@dataclass(frozen=True)
class Request:
    """Observers (by a key the caller reads them back with) for one side of some layers."""

    layers: Sequence[str]
    observers: Mapping[str, Factory]
    side: Side = "input"


@dataclass
class LayerStats:
    inputs: dict[str, Observer] = field(default_factory=dict)
    outputs: dict[str, Observer] = field(default_factory=dict)

    def side(self, side: Side) -> dict[str, Observer]:
        return self.inputs if side == "input" else self.outputs


def plan(requests: Sequence[Request]) -> dict[str, LayerStats]:
    """One observer per (layer, side, key): a key asked twice, by two techniques or one, is
    one statistic fed once."""
    stats: dict[str, LayerStats] = {}
    for request in requests:
        for layer in request.layers:
            chosen = stats.setdefault(layer, LayerStats()).side(request.side)
            for key, make in request.observers.items():
                if key not in chosen:
                    chosen[key] = make()
    return stats
