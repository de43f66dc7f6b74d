"""Weight sharing (Deep Compression's second stage): each layer keeps k distinct values.

k-means groups a layer's weights (or each group of output channels') into k clusters and every
weight becomes its cluster's centroid, so the layer is k floats and one short index per weight;
slimkit.cluster_state writes it that way, with an optional entropy coder on the indices. Zeros
left by pruning get a centroid pinned at zero and stay out of the clustering, so prune ->
cluster keeps every zero. Fine-tuning then trains the centroids with the assignments fixed (a
centroid's gradient is the sum of its weights' gradients) towards the unclustered model's
outputs. Dense runtimes decode the weights to float, so what this buys is size, not speed.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from slimkit.cluster_state import Sharing
    from slimkit.data import Dataset
    from slimkit.train import FitResult

DENSE_RUNTIME_NOTE = (
    "ONNX Runtime and OpenVINO decode shared weights to dense float tensors and run them with "
    "the usual float kernels: clustering shrinks the model on disk (slimkit stores each weight "
    "as a short index into its layer's codebook) but gives no speed-up and no memory saving "
    "once loaded.")
_ITERATIONS = 100  # Lloyd iterations at most; 1-D k-means settles in far fewer
_PLUSPLUS_SAMPLE = 20_000  # k-means++ seeding looks at this many weights at most
_PROBE = 256  # rows on which the distance to the unclustered model is reported
_HEADER_BYTES = 80  # what a safetensors header entry costs, as slimkit.sparse_state counts it


class Cluster(TechniqueConfig):
    technique: Literal["cluster"] = "cluster"
    family = "clustering"
    always_shown = ("clusters",)
    clusters: int = Field(16, ge=4, le=256, description="shared values (k) per layer or group; "
                          "a pinned zero counts as one of them")
    scope: Literal["layer", "channel_group"] = Field(
        "layer", description="one codebook per layer, or per group_size output channels")
    group_size: int | None = Field(None, gt=0, description="output channels per codebook "
                                                           "(scope channel_group)")
    init: Literal["linear", "kmeans++"] = Field(
        "linear", description="centroids start evenly spaced between the extreme weights "
                              "(Deep Compression found it best: large weights keep a centroid) "
                              "or from k-means++ seeding")
    layers: list[str] | None = Field(None, description="fnmatch globs of layers to cluster; "
                                                       "None: every Conv/Linear layer")
    embeddings: bool = Field(False, description="also cluster Embedding tables")
    coding: Literal["none", "lzma"] = Field(
        "lzma", description="entropy coder on the packed indices (lossless)")
    epochs: int = Field(0, ge=0, description="centroid fine-tuning epochs; 0: none")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(64, gt=0)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    max_minutes: float | None = Field(None, gt=0, description="fine-tuning time budget")
    chosen: list[str] | None = Field(None, description="the layers clustered, as recorded; "
                                                       "given, exactly these are clustered")

    @model_validator(mode="after")
    def _group_size_with_its_scope(self) -> Cluster:
        if self.scope == "channel_group" and self.group_size is None:
            raise ValueError("scope channel_group needs group_size (output channels per "
                             "codebook)")
        if self.scope == "layer" and self.group_size is not None:
            raise ValueError("group_size applies to scope channel_group only")
        return self

    def needs_data(self) -> bool:
        return self.epochs > 0


@dataclass
class Shared:
    """A clustered weight: `table[g, j]` is centroid j of row group g, `index` (the weight's
    shape) the flat position in `table` each weight reads; `trainable` is False for the pinned
    zero and for unused padding."""

    table: torch.Tensor
    trainable: torch.Tensor
    index: torch.Tensor

    def weight(self) -> torch.Tensor:
        import torch

        table = torch.where(self.trainable, self.table, torch.zeros((), dtype=self.table.dtype))
        return table.reshape(-1)[self.index]


def kmeans_1d(values: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    """Sorted centroids of `values` (float64). With k or fewer distinct values, those values.

    In one dimension Lloyd's assignment step is a split of the sorted values at the centroids'
    midpoints, so each iteration is k binary searches and prefix sums instead of scikit-learn's
    n x k distances; k-means++ seeding still comes from scikit-learn."""
    import numpy as np

    x = np.sort(values.astype(np.float64))
    distinct = np.unique(x)
    if distinct.size <= k:
        return distinct
    if init == "linear":
        c = np.linspace(x[0], x[-1], k)
    else:
        from sklearn.cluster import kmeans_plusplus

        rng = np.random.default_rng(seed)
        sample = x if x.size <= _PLUSPLUS_SAMPLE else rng.choice(x, _PLUSPLUS_SAMPLE, False)
        seeds, _ = kmeans_plusplus(sample[:, None], k, random_state=seed)
        c = np.sort(seeds.reshape(-1))
    sums = np.concatenate([[0.0], np.cumsum(x)])
    for _ in range(_ITERATIONS):
        cuts = np.searchsorted(x, (c[1:] + c[:-1]) / 2)
        lo, hi = np.concatenate([[0], cuts]), np.concatenate([cuts, [x.size]])
        count = hi - lo
        new = np.where(count > 0, (sums[hi] - sums[lo]) / np.maximum(count, 1), c)
        new = np.sort(new)
        if np.array_equal(new, c):
            break
        c = new
    return c


def share(weight: torch.Tensor, k: int, group_rows: int, init: str, seed: int) -> Shared:
    """k-means per group of `group_rows` rows; exact zeros get a centroid pinned at zero and
    the other k - 1 centroids fit the rest."""
    import numpy as np
    import torch

    w = weight.detach().cpu()
    rows = w.shape[0]
    flat = w.reshape(rows, -1).numpy().astype(np.float64)
    groups = -(-rows // group_rows)
    table = np.zeros((groups, k), np.float64)
    trainable = np.zeros((groups, k), bool)
    index = np.empty(flat.shape, np.int64)
    for g in range(groups):
        part = flat[g * group_rows:(g + 1) * group_rows]
        nonzero = part != 0
        pinned = not nonzero.all()
        centroids = kmeans_1d(part[nonzero], k - 1 if pinned else k, init, seed + g)
        # The stored value is the centroid in the weight's own dtype; assign by those values.
        cast = torch.from_numpy(centroids).to(w.dtype).double().numpy()
        first = 1 if pinned else 0
        table[g, first:first + cast.size] = cast
        trainable[g, first:first + cast.size] = True
        slot = np.zeros(part.shape, np.int64)  # the pinned zero is slot 0
        if cast.size:
            nearest = np.searchsorted((cast[1:] + cast[:-1]) / 2, part[nonzero], side="right")
            slot[nonzero] = first + nearest
        index[g * group_rows:(g + 1) * group_rows] = g * k + slot
    return Shared(torch.from_numpy(table).to(w.dtype), torch.from_numpy(trainable),
                  torch.from_numpy(index).reshape(w.shape))


def _kinds(embeddings: bool) -> tuple[type, ...]:
    from torch import nn

    kinds: tuple[type, ...] = (nn.Linear, nn.modules.conv._ConvNd)
    return (*kinds, nn.Embedding) if embeddings else kinds


def chosen_layers(module: nn.Module, config: Cluster) -> dict[str, nn.Module]:
    """The layers to cluster: those recorded, else those the globs match, each weight once."""
    import torch

    found = {n: m for n, m in module.named_modules() if isinstance(m, _kinds(config.embeddings))
             and type(getattr(m, "weight", None)) is torch.nn.Parameter
             and m.weight.is_floating_point() and m.weight.dim() >= 2}
    if config.chosen is not None:
        missing = [n for n in config.chosen if n not in found]
        if missing:
            raise TechniqueError(f"cluster: recorded layer {missing[0]!r} is not a clusterable "
                                 f"layer of this model")
        return {n: found[n] for n in config.chosen}
    if config.layers is not None:
        found = {n: m for n, m in found.items()
                 if any(fnmatch.fnmatchcase(n, g) for g in config.layers)}
    seen: set[int] = set()
    picked = {}
    for n, m in found.items():
        if id(m.weight) not in seen:  # a tied weight is clustered once
            seen.add(id(m.weight))
            picked[n] = m
    if not picked:
        raise TechniqueError("cluster: no Conv/Linear layer matches layers "
                             f"{config.layers!r}" if config.layers else
                             "cluster: the model has no Conv/Linear layer to cluster")
    return picked


def _sharing(layer: nn.Module, config: Cluster) -> Sharing:
    from slimkit.cluster_state import Sharing

    rows = layer.weight.shape[0]
    group = config.group_size if config.scope == "channel_group" and config.group_size else rows
    return Sharing(min(group, rows), config.coding)


def _mark_all(module: nn.Module, layers: dict[str, nn.Module], config: Cluster) -> None:
    from slimkit.cluster_state import mark

    for name, layer in layers.items():
        mark(module, f"{name}.weight", _sharing(layer, config))


def _rebuild(model: Model, config: Cluster, ctx: StepContext) -> Model:
    """Shapes do not change; the saved codebooks carry the values. The marks tell storage which
    weights to write as codebooks when this model is saved again."""
    assert isinstance(model, TorchModel)
    _mark_all(model.module, chosen_layers(model.module, config), config)
    return model


@technique(Cluster, format="torch", rebuild=_rebuild)
def cluster_torch(model: Model, config: Cluster, ctx: StepContext) -> StepResult:
    import torch

    from slimkit.progress import progress_bar
    from slimkit.torch_state import encoded_state

    assert isinstance(model, TorchModel)
    if config.epochs > 0 and ctx.data is None:
        raise TechniqueError("cluster: fine-tuning (epochs > 0) needs training data")
    module = model.module
    layers = chosen_layers(module, config)
    before_bytes = len(encoded_state(module))
    teacher = copy.deepcopy(module).eval() if config.epochs > 0 else None
    before = {n: layer.weight.detach().clone() for n, layer in layers.items()}
    shared: dict[str, Shared] = {}
    with progress_bar("clustering weights", total=len(layers)) as advance:
        for name, layer in layers.items():
            shared[name] = share(layer.weight, config.clusters, _sharing(layer, config).group_rows,
                                 config.init, config.seed)
            with torch.no_grad():
                layer.weight.copy_(shared[name].weight())
            advance(1, name)
    probe = _probe(ctx.data)
    reference = _outputs(teacher, probe)
    mse_before = _distance(module, probe, reference)
    fit = _fine_tune(module, layers, shared, teacher, config, ctx) if teacher else None
    mse_after = _distance(module, probe, reference)
    _mark_all(module, layers, config)
    module.eval()
    report = _report(module, layers, before, config, before_bytes, fit)
    report.update({"distill_mse_before": mse_before, "distill_mse_after": mse_after})
    return StepResult(TorchModel(module, model.inputs, model.tokenizer, ref=model.ref),
                      record=config.model_copy(update={"chosen": list(layers)}), report=report)


def _fine_tune(module: nn.Module, layers: dict[str, nn.Module], shared: dict[str, Shared],
               teacher: nn.Module, config: Cluster, ctx: StepContext) -> FitResult:
    """Train the centroids (and the 1-D parameters: biases, norms) towards the unclustered
    model; each weight reads its centroid through a parametrization, so autograd sums the
    weights' gradients into it and the assignments cannot move. Other weights stay frozen, so
    zeros a pruning step left in unclustered layers stay too."""
    from torch import nn
    from torch.nn.utils import parametrize

    from slimkit.train import TrainSettings
    from slimkit.train.recover import Objective, recover

    assert ctx.data is not None
    frozen = [p for p in module.parameters() if p.requires_grad and p.dim() > 1]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for name, layer in layers.items():
            parametrize.register_parametrization(layer, "weight", _decoder(shared[name]),
                                                 unsafe=True)
        # train_mode False: the student trains as it will run, as the teacher runs (batch
        # statistics would train centroids for other inputs than eval mode gives)
        settings = TrainSettings(epochs=config.epochs, lr=config.lr,
                                 batch_size=config.batch_size, seed=config.seed,
                                 max_minutes=config.max_minutes, checkpoint_dir=ctx.checkpoints,
                                 train_mode=False)
        result = recover(module, teacher, ctx.data, Objective(loss="mse"), settings,
                         title="centroid fine-tuning", owner="cluster").fit
    finally:
        for layer in layers.values():
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        for p in frozen:
            p.requires_grad_(True)
    for layer in layers.values():
        assert isinstance(layer.weight, nn.Parameter)
    return result


def _decoder(s: Shared) -> nn.Module:
    """The parametrization that reads each weight from its centroid (defined here so that
    registering the technique does not import torch)."""
    from torch import nn

    class Decode(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(s.table.clone())
            self.register_buffer("trainable", s.trainable.clone())
            self.register_buffer("index", s.index.clone())

        def forward(self, _original: torch.Tensor) -> torch.Tensor:
            return Shared(self.table, self.trainable, self.index).weight()

    return Decode()


def _probe(data: Dataset | None) -> dict[str, torch.Tensor] | None:
    import torch

    if data is None:
        return None
    return {k: torch.from_numpy(v[:_PROBE]) for k, v in data.inputs.items()}


def _outputs(module: nn.Module | None, probe: dict[str, torch.Tensor] | None
             ) -> torch.Tensor | None:
    import torch

    from slimkit.train.outputs import first_tensor

    if module is None or probe is None:
        return None
    with torch.no_grad():
        return first_tensor(module.eval()(**probe)).float()


def _distance(module: nn.Module, probe: dict[str, torch.Tensor] | None,
              reference: torch.Tensor | None) -> float | None:
    """Mean squared distance of the outputs to the unclustered model's, on a few rows."""
    out = _outputs(module, probe)
    if out is None or reference is None:
        return None
    return float(((out - reference) ** 2).mean())


def _report(module: nn.Module, layers: dict[str, nn.Module], before: dict[str, torch.Tensor],
            config: Cluster, before_bytes: int, fit: FitResult | None) -> dict[str, Any]:
    from slimkit import cluster_state
    from slimkit.torch_state import encoded_state

    rows = []
    for name, layer in layers.items():
        w = layer.weight.detach()
        sharing = _sharing(layer, config)
        parts = cluster_state.encode_one(w, sharing)
        codes = cluster_state.group_codes(w, sharing.group_rows)
        old = _plain_bytes(before[name])
        new = cluster_state.stored_bytes(parts) if parts is not None else _plain_bytes(w)
        rows.append({
            "layer": name, "params": int(w.numel()),
            "groups": -(-w.shape[0] // sharing.group_rows), "k": config.clusters,
            "distinct": int(max(len(set(r.tolist())) for r in codes[0])) if codes else None,
            "index_bits": cluster_state.bits_for(codes[0].shape[1]) if codes else None,
            "bits_per_weight": round(8 * new / w.numel(), 3),
            "bytes_before": old, "bytes_after": new, "size_x": round(old / new, 2)})
    old_total = sum(r["bytes_before"] for r in rows)
    new_total = sum(r["bytes_after"] for r in rows)
    fp32 = sum(4 * r["params"] for r in rows)
    after_bytes = len(encoded_state(module))
    return {
        "method": "k-means weight sharing", "scope": config.scope, "init": config.init,
        "coding": config.coding, "layers": rows,
        "bytes_before": old_total, "bytes_after": new_total,
        "size_x": round(old_total / max(new_total, 1), 2),
        "size_x_vs_fp32": round(fp32 / max(new_total, 1), 2),
        "model_bytes_before": before_bytes, "model_bytes_after": after_bytes,
        "model_size_x": round(before_bytes / max(after_bytes, 1), 2),
        "fine_tuning": None if fit is None else {
            "steps": fit.steps, "epochs": fit.epochs, "out_of_time": fit.out_of_time,
            "history": fit.history},
        "note": DENSE_RUNTIME_NOTE}


def _plain_bytes(t: torch.Tensor) -> int:
    """What slimkit's storage writes for an unshared tensor: dense, or values and a bitmask."""
    from slimkit import sparse_state

    if sparse_state.should_encode(t):
        return sparse_state.encoded_bytes(t)
    return t.numel() * t.element_size() + _HEADER_BYTES
