"""Greedy allocation of options to units (bits to layers, channels to groups, float to layers)
by damage per cost, the one rule every budgeted search here shares.

A unit's options are listed cheapest first, each with the damage it was measured to do. From a
starting choice, `greedy` repeatedly moves one unit to another option: when buying, the costlier
option that removes most damage per cost added and still fits the budget; when cutting, the
cheaper option that adds least damage per cost saved. It yields every step, so the caller
decides when to stop: at no more gain, at the cost target, or when a measured model (whose
damages need not add up) is good enough.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# A unit's options by name, cheapest first, with their damage.
Damage = Mapping[Any, Mapping[Any, float]]
# Per unit and option, a cost that adds up over units; or the total of a whole choice, for
# costs that do not (a channel's FLOPs depend on the next layer's channels too).
Cost = Mapping[Any, Mapping[Any, float]] | Callable[[Mapping[Any, Any]], float]


@dataclass(frozen=True)
class Step:
    unit: Hashable
    option: Hashable
    # buying: damage removed per cost added; cutting: damage added per cost saved (absolute
    # damage changes instead when not per cost)
    rate: float
    choice: dict[Any, Any]
    cost: float


def total(cost: Cost, choice: Mapping[Any, Any]) -> float:
    if callable(cost):
        return cost(choice)
    return sum(cost[u][o] for u, o in choice.items())


def _candidates(options: list[Any], current: Any, buy: bool, adjacent: bool) -> list[Any]:
    """The options a unit may move to, costliest first, so that exact ties go to the first."""
    at = options.index(current)
    side = options[at + 1:] if buy else options[:at]
    if adjacent:
        side = side[:1] if buy else side[-1:]
    return side[::-1]


def greedy(damage: Damage, start: Mapping[Any, Any], cost: Cost, *, buy: bool,
           budget: float = math.inf, adjacent: bool = False, per_cost: bool = True,
           ) -> Iterator[Step]:
    """Each greedy step from `start` until no unit can move. Buying, a move must keep the
    total within `budget`; cutting, it must save cost. `adjacent` allows only the next option
    along; units are scanned in `damage`'s order and the first of exact ties wins. A move
    whose rate is NaN (a trial that measured NaN) is never taken."""
    choice = dict(start)
    now = total(cost, choice)
    while True:
        best: tuple[float, Any, Any, float] | None = None
        for unit, options in damage.items():
            for option in _candidates(list(options), choice[unit], buy, adjacent):
                move = _move(damage, cost, choice, now, unit, option, buy, budget, per_cost)
                if move is None or math.isnan(move[0]):
                    continue
                if best is None or (move[0] > best[0] if buy else move[0] < best[0]):
                    best = move
        if best is None:
            return
        rate, unit, option, now = best
        choice = {**choice, unit: option}
        yield Step(unit, option, rate, choice, now)


def _move(damage: Damage, cost: Cost, choice: dict[Any, Any], now: float, unit: Any,
          option: Any, buy: bool, budget: float, per_cost: bool,
          ) -> tuple[float, Any, Any, float] | None:
    """(rate, unit, option, total after) of one move, or None where it is not allowed."""
    current = choice[unit]
    if callable(cost):
        after = cost({**choice, unit: option})
    else:
        after = now + (cost[unit][option] - cost[unit][current])
    if buy:  # damage removed for cost added
        change, spent = damage[unit][current] - damage[unit][option], after - now
        if after > budget or (per_cost and spent <= 0):
            return None
    else:  # damage added for cost saved
        change, spent = damage[unit][option] - damage[unit][current], now - after
        if spent <= 0:
            return None
    return (change / spent if per_cost else change), unit, option, after


def buy_while_it_helps(damage: Damage, start: Mapping[Any, Any], cost: Cost, budget: float,
                       *, adjacent: bool = False, per_cost: bool = True) -> dict[Any, Any]:
    """Buy the best move within `budget` while it still removes damage."""
    choice = dict(start)
    for step in greedy(damage, choice, cost, buy=True, budget=budget, adjacent=adjacent,
                       per_cost=per_cost):
        if not step.rate > 0:
            break
        choice = step.choice
    return choice


def cut_to(damage: Damage, start: Mapping[Any, Any], cost: Cost, budget: float,
           ) -> dict[Any, Any] | None:
    """Cut the least harmful cost until the total is within `budget`; None if no sequence of
    moves gets there."""
    choice = dict(start)
    if total(cost, choice) <= budget:
        return choice
    for step in greedy(damage, choice, cost, buy=False):
        if step.cost <= budget:
            return step.choice
    return None
