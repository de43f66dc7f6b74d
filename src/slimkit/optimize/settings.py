"""What a search is asked for: the quality budget, what to make cheaper, and how long to look.

The same settings come from `slimkit optimize`'s options or from a recipe's `search:` section,
and are validated alike, so a wrong one names its field either way.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from slimkit.evaluate.fidelity import Budget
from slimkit.runtimes.base import runtime_names

Objective = Literal["throughput", "latency", "size", "memory"]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|min)?")


def parse_minutes(text: str | float | int) -> float:
    """`30m`, `1.5h`, `90s` or a bare number of minutes."""
    if isinstance(text, int | float):
        minutes = float(text)
    else:
        m = _DURATION.fullmatch(text.strip())
        if not m:
            raise ValueError(f"{text[:40]!r} is not a duration such as 30m, 1h or 90s")
        scale = {"s": 1 / 60, "m": 1.0, "min": 1.0, "h": 60.0, None: 1.0}[m.group(2)]
        minutes = float(m.group(1)) * scale
    if minutes <= 0:
        raise ValueError("a duration must be positive")
    return minutes


def parse_budget(text: str) -> Budget:
    """`min_cosine=0.99` or `max_drop=1.0`, as the command line writes a budget."""
    key, sep, value = text.partition("=")
    if not sep or key.strip() not in ("min_cosine", "max_drop"):
        raise ValueError(f"{text[:60]!r}: write min_cosine=C or max_drop=P")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{text[:60]!r}: {value[:20]!r} is not a number") from None
    return Budget.model_validate({key.strip(): number})


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    budget: Budget = Field(description="quality the result may lose: min_cosine or max_drop")
    objective: Objective = Field("throughput", description="what the best model makes cheaper")
    runtimes: list[str] | None = Field(None, description="runtimes to try; default all that "
                                                         "the model reaches")
    techniques: list[str] | None = Field(None, description="only advice that uses these "
                                                           "techniques")
    trials: int = Field(24, gt=0, description="trials in all, counting those of a resumed run")
    minutes: float | None = Field(None, gt=0, description="no new trial after this long")
    train_minutes: float = Field(3.0, ge=0, description="time cap of each training step in "
                                                        "a trial; 0 leaves training out")
    seed: int = 0
    batch: int = Field(2, gt=0, description="trials asked together; the same for any workers, "
                                            "so a seed gives the same trials")
    slice: int | None = Field(None, gt=0, description="rows scored first; default a quarter of "
                                                      "the data, at least 32")
    finalists: int = Field(6, gt=0, description="trials benchmarked side by side at the end")
    workers: str = Field("local", description="local, ray or ray://HOST:PORT")
    mlflow: str | None = Field(None, description="MLflow tracking URI to log every trial")

    @field_validator("runtimes")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            if name not in runtime_names():
                raise ValueError(f"unknown runtime {name!r} (known: "
                                 f"{', '.join(runtime_names())})")
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: str) -> str:
        if v not in ("local", "ray") and not v.startswith(("ray://", "ray:")):
            raise ValueError(f"{v[:60]!r}: use local, ray or ray://HOST:PORT")
        return v

    @property
    def budget_text(self) -> str:
        b = self.budget
        return f"min_cosine={b.min_cosine}" if b.min_cosine is not None \
            else f"max_drop={b.max_drop}"
