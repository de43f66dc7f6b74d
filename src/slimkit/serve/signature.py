"""JSON rows checked against a model's input signature before they reach a batch.

A batch merges requests from many clients; one request with a wrong name, rank or dtype must be
refused on its own (400, one line) rather than fail the batch it would have joined. So every
check a runtime would make is made here, per request.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slimkit.model import InputSpec
from slimkit.serve.errors import BadRequest


def numpy_dtype(spec: InputSpec) -> np.dtype:
    """The numpy dtype a request's values are cast to; bfloat16 inputs take float32 values
    (numpy has no bfloat16), which the runtime then sees as it would from any caller."""
    return np.dtype("float32" if spec.dtype == "bfloat16" else spec.dtype)


def parse_inputs(body: Any, specs: list[InputSpec], max_rows: int
                 ) -> tuple[dict[str, np.ndarray], int]:
    """The feeds of one request and its row count, or BadRequest naming the first problem.

    Each input is either one row (the signature's rank less the batch axis) or many rows; a
    named axis must have one size across the request's inputs (`sequence` of ids and mask)."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
        raise BadRequest('the body must be a JSON object {"inputs": {name: nested list}}')
    given: dict[str, Any] = body["inputs"]
    names = [s.name for s in specs]
    for name in given:
        if name not in names:
            raise BadRequest(f"unknown input {_short(name)} (the model takes: {', '.join(names)})")
    feeds: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}
    for spec in specs:
        if spec.name not in given:
            raise BadRequest(f"missing input {spec.name!r} (the model takes: {', '.join(names)})")
        arr = _array(spec, given[spec.name])
        rank = len(spec.shape)
        if arr.ndim == rank - 1:
            arr = arr[None]
        elif arr.ndim != rank:
            raise BadRequest(f"input {spec.name!r}: {arr.ndim} dimensions; the model takes "
                             f"{rank - 1} (one row) or {rank} (rows of shape {spec.shape[1:]})")
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if got == 0:
                raise BadRequest(f"input {spec.name!r}: axis {axis} is empty")
            if isinstance(want, int) and got != want:
                raise BadRequest(f"input {spec.name!r}: shape {list(arr.shape)}; axis {axis} "
                                 f"must be {want} (signature {spec.shape})")
            if isinstance(want, str) and sizes.setdefault(want, got) != got:
                raise BadRequest(f"input {spec.name!r}: axis {axis} ({want}) is {got}, another "
                                 f"input has {sizes[want]}")
        feeds[spec.name] = arr
    rows = {len(a) for a in feeds.values()}
    if len(rows) != 1:
        raise BadRequest(f"inputs disagree on the number of rows ({sorted(rows)})")
    n = rows.pop()
    if n > max_rows:
        raise BadRequest(f"{n} rows; at most {max_rows} per request (--max-batch)")
    return feeds, n


def _array(spec: InputSpec, value: Any) -> np.ndarray:
    """`value` as an array of the input's dtype, refused when the cast would change it."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise BadRequest(f"input {spec.name!r}: not a rectangular nested list of numbers"
                         ) from None
    if arr.dtype.kind not in "biuf":
        raise BadRequest(f"input {spec.name!r}: holds {_kind(arr)}, not numbers")
    target = numpy_dtype(spec)
    whole = arr.dtype.kind != "f" or (np.isfinite(arr).all() and (arr == np.round(arr)).all())
    if target.kind in "iub" and not whole:
        raise BadRequest(f"input {spec.name!r}: the model takes {spec.dtype}; got fractions")
    if target.kind in "iu" and arr.size and arr.dtype.kind != "b":
        info = np.iinfo(target)
        if arr.min() < info.min or arr.max() > info.max:
            raise BadRequest(f"input {spec.name!r}: values outside {spec.dtype}'s range")
    if target.kind == "b" and arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
        raise BadRequest(f"input {spec.name!r}: the model takes bool; got values other than 0/1")
    return arr.astype(target)


def _kind(arr: np.ndarray) -> str:
    return "text" if arr.dtype.kind in "US" else "a mix of types (or null)"


def _short(name: str) -> str:
    return repr(name[:60] + ("..." if len(name) > 60 else ""))


def plain(value: np.ndarray) -> Any:
    """An output as JSON-ready lists; NaN and infinities (which JSON lacks) become null."""
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        obj = value.astype(object)
        obj[~np.isfinite(value)] = None
        return obj.tolist()
    return value.tolist()
