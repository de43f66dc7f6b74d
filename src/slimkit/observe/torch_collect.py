"""One pass of a torch model over data, feeding observers from forward hooks.

Every request of every technique is served by the same pass; each batch's activations are
handed to the observers and dropped, so memory does not grow with the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.observe.base import Observer
from slimkit.observe.requests import LayerStats, Request, plan

if TYPE_CHECKING:
    from slimkit.data import Dataset


def first_tensor(value: Any) -> Any:
    """The tensor a layer's statistics are about: its first positional input or its first
    output, looking inside tuples, lists and dicts (Hugging Face outputs)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value
    if isinstance(items, (tuple, list)) or isinstance(value, dict):
        for item in items:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def _feed(observers: dict[str, Observer], value: Any) -> None:
    tensor = first_tensor(value)
    if tensor is None or not tensor.is_floating_point():
        return
    x: np.ndarray = tensor.detach().float().cpu().numpy()
    for obs in observers.values():
        obs.update(x)


def _hooks(module: Any, stats: dict[str, LayerStats]) -> list[Any]:
    named = dict(module.named_modules())
    unknown = [n for n in stats if n not in named]
    if unknown:
        raise KeyError(f"no module named {', '.join(unknown[:3])}")
    hooks = []
    try:
        for name, st in stats.items():
            if st.inputs:
                hooks.append(named[name].register_forward_pre_hook(
                    lambda _m, args, kwargs, o=st.inputs: _feed(o, (args, kwargs)),
                    with_kwargs=True))
            if st.outputs:
                hooks.append(named[name].register_forward_hook(
                    lambda _m, _args, out, o=st.outputs: _feed(o, out)))
    except BaseException:
        for h in hooks:
            h.remove()
        raise
    return hooks


def collect(module: Any, data: Dataset, names: list[str], requests: Sequence[Request], *,
            batch_size: int = 16, title: str = "calibrating") -> dict[str, LayerStats]:
    """Run `data` (inputs `names`, passed positionally) through `module` once, under
    inference mode, and return the requested observers by layer. Hooks never outlive it."""
    import torch

    from slimkit.progress import progress_bar

    stats = plan(requests)
    hooks = _hooks(module, stats)
    try:
        with torch.inference_mode(), progress_bar(title, total=len(data)) as advance:
            for batch in data.batches(batch_size):
                module(*[torch.from_numpy(batch[n]) for n in names])
                advance(len(batch[names[0]]))
    finally:
        for h in hooks:
            h.remove()
    return stats
