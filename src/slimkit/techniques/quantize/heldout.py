"""Rows an accuracy-aware search may choose layers on, and rows it must not see until the end.

A search that keeps layers in float until a budget holds on some rows fits those rows: on
MobileNetV2, `max_drop: 2.0` held on the rows it searched on and the drop on other crops was
5.9 points. So the check data is split once, seeded: layers are chosen on the search rows, and
the result must hold on the held-out rows as well. The held-out rows are also left out of
whatever the quantizer fits to data (activation ranges), so that they are data it has not seen.

A third of the rows is held out, but at least 64 (half of them under 128 rows). Under
`MIN_ROWS` rows a held-out verdict would hang on one or two examples (one row of twelve is 8
accuracy points), so tiny data gets no held-out check, and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimkit.dataset import Dataset

# Rows a budget is checked on, search and held-out together, for searches that run a runtime
CHECK_ROWS = 384
MIN_ROWS = 24
MIN_HELDOUT = 64
SEED = 0


@dataclass(frozen=True)
class Split:
    """Row indices into the data the check rows were drawn from."""

    search: np.ndarray
    heldout: np.ndarray
    by: str = "rows"  # or "groups": whole sources held out

    @property
    def checked(self) -> int:
        return len(self.search) + len(self.heldout)

    def report(self) -> dict[str, object]:
        out: dict[str, object] = {"checked_on": self.checked, "search_rows": len(self.search),
                                  "heldout_rows": len(self.heldout), "heldout_by": self.by}
        if not len(self.heldout):
            out["heldout_note"] = (f"only {self.checked} check rows (under {MIN_ROWS}): "
                                   "no held-out check")
        return out


def split_rows(n: int, seed: int = SEED, groups: np.ndarray | None = None) -> Split:
    """The first `n` rows, split into search and held-out rows, each list in row order.

    With `groups` (where each row came from), whole groups are held out until the held-out
    share is reached: crops of one photo are so alike that holding out a crop whose sisters
    were searched on says little about other photos. With fewer than three groups the rows
    are split one by one, and so they are where one group would take most of the rows."""
    if n < MIN_ROWS:
        return Split(np.arange(n), np.arange(0))
    held = max(round(n / 3), min(MIN_HELDOUT, n // 2))
    rng = np.random.default_rng(seed)
    if groups is not None and len(np.unique(groups[:n])) >= 3:
        g = np.asarray(groups[:n])
        out = np.zeros(n, bool)
        for name in rng.permutation(np.unique(g)):
            if out.sum() >= held:
                break
            out |= g == name
        if (~out).sum() >= n - 2 * held:  # a dominant group would leave too little to search
            return Split(np.flatnonzero(~out), np.flatnonzero(out), "groups")
    order = rng.permutation(n)
    return Split(np.sort(order[held:]), np.sort(order[:held]))


def split_data(data: Dataset, rows: int) -> Split:
    """`split_rows` over the first `rows` rows of `data`, by its groups where it has them."""
    return split_rows(min(len(data), rows), groups=data.groups)


def take(data: Dataset, rows: np.ndarray) -> Dataset:
    labels = None if data.labels is None else data.labels[rows]
    groups = None if data.groups is None else data.groups[rows]
    return Dataset({k: v[rows] for k, v in data.inputs.items()}, labels, data.name, groups)


def without(data: Dataset, rows: np.ndarray) -> Dataset:
    """The data less the held-out rows: what the quantizer may fit its ranges to."""
    keep = np.setdiff1d(np.arange(len(data)), rows)
    return take(data, keep) if len(rows) else data
