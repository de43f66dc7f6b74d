"""Search spaces: the options of a technique worth trying, declared beside its config.

A technique's config class lists the options a search may vary (`space = {"per_channel":
Choice(True, False)}`); `slimkit optimize` turns them into Optuna parameters. Kept free of
heavy imports so that declaring a space costs a technique nothing when no search runs.
`SEARCH_BUDGET` as a choice means "the search's own quality budget": an accuracy-aware
technique then keeps layers in float until the budget holds on the calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

SEARCH_BUDGET = "<search budget>"


class Suggests(Protocol):
    """What an Optuna trial offers (kept as a protocol: optuna is imported only to search)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int: ...


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]

    def __init__(self, *values: Any) -> None:
        if not values:
            raise ValueError("a Choice needs at least one value")
        object.__setattr__(self, "values", tuple(values))

    def suggest(self, trial: Suggests, name: str) -> Any:
        # Optuna's categorical choices must be None, bool, int, float or str: anything else
        # (a list of operator types) is offered by its index.
        if all(v is None or isinstance(v, bool | int | float | str) for v in self.values):
            return trial.suggest_categorical(name, self.values)
        return self.values[trial.suggest_categorical(name, tuple(range(len(self.values))))]


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    step: float | None = None
    log: bool = False

    def suggest(self, trial: Suggests, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    step: int = 1

    def suggest(self, trial: Suggests, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step)


Param = Choice | Float | Int
Space = dict[str, Param]


def suggest_options(trial: Suggests, prefix: str, space: dict[str, Param],
                    fixed: dict[str, Any]) -> dict[str, Any]:
    """The options a trial tries for one step: what the rule fixed, plus one value for every
    other option of the technique's space, each named `prefix.option` in the study."""
    options = dict(fixed)
    for option, param in space.items():
        if option not in fixed:
            options[option] = param.suggest(trial, f"{prefix}.{option}")
    return options
