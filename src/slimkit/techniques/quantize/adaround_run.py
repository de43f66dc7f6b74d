"""One run of the AdaRound step: layer by layer, with a checkpoint after each layer.

The checkpoint holds the rounded weights so far (safetensors, through `slimkit.train.checkpoint`,
whose index file is written last, so a run killed while writing leaves the previous one whole)
and the report rows; a rerun with the same settings, weights and data carries on after the last
finished layer and, its random streams being per layer, ends with the very same weights.

With float inputs one pass over the data feeds every layer at once (as many as fit in
CAPTURE_BYTES); with quantized inputs each layer needs the model rounded up to it, so each takes
a pass of its own, through the float and the rounded model side by side.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from slimkit.hooks import forward_hooks
from slimkit.registry import StepContext
from slimkit.techniques.quantize.adaround_data import (
    Moments,
    Rows,
    layer_data,
    layer_rows,
    positions,
    shape_of,
)
from slimkit.techniques.quantize.calibrate import Method
from slimkit.techniques.quantize.grid import layer_grid
from slimkit.techniques.quantize.weight_layers import Feed, inputs_at, run_with


class AdaRound(Protocol):
    """What a run reads of the step's config (the technique module imports this one, so the
    config class cannot be imported back)."""

    iterations: int
    learning_rate: float
    batch_size: int
    inputs: str
    activations: bool
    activation_calibration: Method
    percentile: float
    minutes: float | None

    def model_dump(self, **kwargs: Any) -> dict[str, Any]: ...

log = logging.getLogger(__name__)

CAPTURE_BYTES = 2**30  # what one pass may collect for the layers it feeds
Advance = Callable[..., None]


class Run:
    """The step's state: a float copy of the model (for targets and float inputs), the
    checkpoint it resumes from and writes after each layer, and the report rows so far."""

    def __init__(self, module: nn.Module, feed: Feed, config: AdaRound,
                 layers: dict[str, nn.Module], grid: str, first_convs: set[str],
                 ctx: StepContext) -> None:
        self.module, self.feed, self.config, self.layers = module, feed, config, layers
        self.grids = {n: layer_grid(grid, n in first_convs) for n in layers}
        self.floats = copy.deepcopy(module)  # before any rounding
        self.float_layers = dict(self.floats.named_modules())
        self.own_dir = ctx.checkpoints is None  # then it must not end up in the artifact
        self.dir: Path = ctx.checkpoints or ctx.workdir / "adaround-checkpoint"
        self.fingerprint = _fingerprint(config, layers, feed)
        self.rows: list[dict[str, Any]] = []
        self.before = 0.0
        self.started = time.monotonic()
        self._resume()
        self.resumed = len(self.rows)
        self.acts_simulated = config.inputs == "quantized" and config.activations

    def _resume(self) -> None:
        from slimkit.train import checkpoint

        saved = checkpoint.read(self.dir)
        if saved is None:
            return
        if saved.meta.get("fingerprint") != self.fingerprint:
            log.warning("%s: checkpoint is from another adaround run; starting over", self.dir)
            return
        with torch.no_grad():
            for row in saved.meta["rows"]:
                self.layers[row["layer"]].weight.copy_(saved.tensors[f"weight/{row['layer']}"])
        self.rows, self.before = list(saved.meta["rows"]), float(saved.meta["seconds"])

    def seconds(self) -> float:
        return self.before + time.monotonic() - self.started

    def _late(self) -> bool:
        minutes = self.config.minutes
        return minutes is not None and time.monotonic() - self.started > minutes * 60

    def go(self, advance: Advance) -> None:
        """Round every layer not in the checkpoint, until done or out of time."""
        names = list(self.layers)
        todo = names[len(self.rows):]
        hooks: list[Any] = []
        if todo and self.acts_simulated:
            from slimkit.techniques.quantize.adaround_acts import input_ranges, rounding_hooks

            advance(0, "activation ranges")
            c = self.config
            ranges = input_ranges(self.floats, self.feed, names, c.activation_calibration,
                                  c.percentile)
            hooks = rounding_hooks(self.layers, ranges)
        with forward_hooks(hooks, pre=True):
            for chunk in self._chunks(todo):
                if self._late():
                    return
                advance(0, f"collecting inputs of {chunk[0]}"
                        + (" and on" if len(chunk) > 1 else ""))
                data = self._collect(chunk, names)
                for name in chunk:
                    if self._late():
                        return
                    self._round(name, data.pop(name), advance)

    def _chunks(self, todo: list[str]) -> Iterator[list[str]]:
        if self.config.inputs == "quantized":
            yield from ([n] for n in todo)
            return
        chunk: list[str] = []
        used = 0
        for name in todo:
            size = _bytes(self.layers[name], len(self.feed.data), self.config.batch_size)
            if chunk and used + size > CAPTURE_BYTES:
                yield chunk
                chunk, used = [], 0
            chunk.append(name)
            used += size
        if chunk:
            yield chunk

    def _collect(self, chunk: list[str], names: list[str]) -> dict[str, Moments | Rows]:
        """What each layer of `chunk` is fitted on, from one pass over the data."""
        from slimkit.techniques.quantize.adaround_fit import seed_of

        examples = len(self.feed.data)
        data = {n: layer_data(self.layers[n], self.config.batch_size) for n in chunk}
        count = {n: positions(self.layers[n], examples, isinstance(data[n], Moments))
                 for n in chunk}
        gens = {n: torch.Generator().manual_seed(seed_of(names.index(n))) for n in chunk}
        if self.config.inputs == "float":
            run_with(self.floats, self.feed, {self.float_layers[n]: (
                lambda x, n=n: data[n].add(layer_rows(self.layers[n], x, gens[n], count[n]),
                                           None)) for n in chunk})
        else:
            (name,) = chunk
            twin = torch.Generator().manual_seed(seed_of(names.index(name)))  # same positions
            layer = self.layers[name]
            for xq, xf in zip(inputs_at(self.module, self.feed, layer),
                              inputs_at(self.floats, self.feed, self.float_layers[name]),
                              strict=True):
                data[name].add(layer_rows(layer, xq, gens[name], count[name]),
                               layer_rows(layer, xf, twin, count[name]))
        for n in chunk:
            data[n].finish(seed_of(names.index(n)))
        return data

    def _round(self, name: str, data: Moments | Rows, advance: Advance) -> None:
        from slimkit.techniques.quantize.adaround_fit import Fit, learn

        t0 = time.monotonic()
        layer, grid, c = self.layers[name], self.grids[name], self.config
        w = layer.weight.detach().float()
        nearest = grid.nearest(w)
        learned = learn(w, grid, data, Fit(c.iterations, c.learning_rate),
                        lambda loss: advance(0, f"{name} loss {loss:.4g}"))
        loss_nearest, loss_learned = data.mse(nearest - w), data.mse(learned - w)
        better = loss_learned <= loss_nearest
        with torch.no_grad():  # never worse than nearest on the calibration data
            layer.weight.copy_(learned if better else nearest)
        self.rows.append({"layer": name, "loss_nearest": loss_nearest,
                          "loss_adaround": loss_learned,
                          "rounding": "learned" if better else "nearest",
                          "seconds": round(time.monotonic() - t0, 2)})
        self._save()
        advance(1, f"{name} {loss_nearest:.3g} -> {min(loss_learned, loss_nearest):.3g}")

    def _save(self) -> None:
        from slimkit.train import checkpoint

        tensors = {f"weight/{r['layer']}": self.layers[r["layer"]].weight for r in self.rows}
        checkpoint.write(self.dir, len(self.rows), tensors,
                         {"fingerprint": self.fingerprint, "rows": self.rows,
                          "seconds": self.seconds()})

    def close(self) -> None:
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _bytes(layer: nn.Module, examples: int, batch_size: int) -> int:
    """About what collecting for `layer` holds: its moments, or its rows."""
    groups, k = shape_of(layer)
    if k <= batch_size:
        return groups * k * k * 8
    return examples * positions(layer, examples, False) * groups * k * 4


def _fingerprint(config: AdaRound, layers: dict[str, nn.Module], feed: Feed) -> dict[str, Any]:
    """What a checkpoint must share with this run to be resumed by it: the settings (the time
    budget aside), the layers and their float weights, and the data."""
    digest = hashlib.sha256()
    for name, layer in layers.items():
        digest.update(name.encode())
        digest.update(layer.weight.detach().float().contiguous().numpy().tobytes())
    return {"config": config.model_dump(mode="json", exclude={"minutes"}),
            "layers": list(layers), "weights": digest.hexdigest(),
            "data": feed.data.fingerprint()}
