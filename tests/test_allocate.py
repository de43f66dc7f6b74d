"""The greedy allocator on small made-up sensitivity tables, away from any model."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from slimkit.techniques.allocate import buy_while_it_helps, cut_to, greedy, total

# Two layers, options cheapest first, with the damage each was measured to do.
DAMAGE = {"conv": {4: 1.0, 8: 0.1, 16: 0.0},   # sensitive
          "fc": {4: 0.05, 8: 0.01, 16: 0.0}}   # robust
BITS = {"conv": {4: 400, 8: 800, 16: 1600}, "fc": {4: 400, 8: 800, 16: 1600}}
NARROW = {"conv": 4, "fc": 4}


def test_buying_goes_where_it_removes_most_damage_per_cost() -> None:
    assert buy_while_it_helps(DAMAGE, NARROW, BITS, 800) == NARROW
    assert buy_while_it_helps(DAMAGE, NARROW, BITS, 1200, adjacent=True) == {"conv": 8, "fc": 4}
    assert buy_while_it_helps(DAMAGE, NARROW, BITS, 3200, adjacent=True) == {"conv": 16,
                                                                             "fc": 16}


def test_steps_are_yielded_in_order_with_their_rate_and_cost() -> None:
    steps = list(greedy(DAMAGE, NARROW, BITS, buy=True, budget=2000, adjacent=True))
    # fc 4 -> 8 would remove 0.04 per 400 bits, less than conv 8 -> 16, and then no longer fits
    assert [(s.unit, s.option) for s in steps] == [("conv", 8), ("conv", 16)]
    assert steps[0].rate == 0.9 / 400 and steps[-1].cost == 2000
    assert steps[-1].choice == {"conv": 16, "fc": 4}


def test_adjacent_moves_one_option_at_a_time() -> None:
    # 8 bits do not help this layer, 16 do: only a move past the next option finds that
    plateau = {"conv": {4: 1.0, 8: 1.0, 16: 0.0}}
    bits = {"conv": {4: 4, 8: 8, 16: 16}}
    assert buy_while_it_helps(plateau, {"conv": 4}, bits, 16, adjacent=True) == {"conv": 4}
    assert buy_while_it_helps(plateau, {"conv": 4}, bits, 16) == {"conv": 16}


def test_buying_stops_when_nothing_helps() -> None:
    flat = {"a": {0: 0.5, 1: 0.5}, "b": {0: 0.2, 1: 0.3}}
    cost = {"a": {0: 0, 1: 1}, "b": {0: 0, 1: 1}}
    assert buy_while_it_helps(flat, {"a": 0, "b": 0}, cost, 10) == {"a": 0, "b": 0}


def test_cutting_takes_least_damage_per_cost_saved_until_the_target() -> None:
    # channels kept per group: 2, 4 or 8 (unpruned, no damage)
    damage = {"early": {2: 1.0, 4: 0.25, 8: 0.0}, "late": {2: 0.375, 4: 0.125, 8: 0.0}}
    flops = {"early": {2: 2, 4: 4, 8: 8}, "late": {2: 4, 4: 8, 8: 16}}
    full = {"early": 8, "late": 8}
    assert cut_to(damage, full, flops, 24) == full
    # late saves 8 for 0.125, early 4 for 0.25: late goes first
    assert cut_to(damage, full, flops, 16) == {"early": 8, "late": 4}
    # then late 4 -> 2 and early 8 -> 4 both lose 0.25 for 4: the first unit goes
    assert cut_to(damage, full, flops, 12) == {"early": 4, "late": 4}
    assert cut_to(damage, full, flops, 8) == {"early": 4, "late": 2}
    assert cut_to(damage, full, flops, 5) is None


def test_a_whole_choice_cost_scores_coupled_units() -> None:
    """FLOPs of a layer depend on the next one's width too: the cost may be a function of the
    whole choice, and the allocator scores every move on it."""
    damage = {"a": {1: 0.5, 2: 0.0}, "b": {1: 0.4, 2: 0.0}}

    def flops(c: Mapping[str, Any]) -> float:
        return c["a"] * c["b"] + c["b"]

    assert total(flops, {"a": 2, "b": 2}) == 6
    # cutting b saves 3 for 0.4, a saves 2 for 0.5
    assert cut_to(damage, {"a": 2, "b": 2}, flops, 4) == {"a": 2, "b": 1}


def test_ties_go_to_the_first_unit_and_nan_is_never_chosen() -> None:
    damage = {"x": {0: 1.0, 1: 0.0}, "y": {0: 1.0, 1: 0.0}, "z": {0: math.nan, 1: 0.0}}
    cost = {u: {0: 0, 1: 1} for u in damage}
    order = [s.unit for s in greedy(damage, dict.fromkeys(damage, 0), cost, buy=True)]
    assert order == ["x", "y"]


def test_absolute_gain_when_not_per_cost() -> None:
    damage = {"a": {1: 1.0, 2: 0.0}, "b": {1: 0.3, 2: 0.0}}
    cost = {"a": {1: 1, 2: 10}, "b": {1: 1, 2: 2}}
    start = {"a": 1, "b": 1}
    assert buy_while_it_helps(damage, start, cost, 11) == {"a": 1, "b": 2}
    assert buy_while_it_helps(damage, start, cost, 11, per_cost=False) == {"a": 2, "b": 1}
