"""N:M semi-structured sparsity (2:4 by default): N weights kept in every M along the input.

The pattern is the one NVIDIA's sparse tensor cores (Ampere and later) execute at up to twice
the dense rate, so unlike unstructured sparsity it can pay off in time, but only there. On the
CPU runtimes slimkit measures it runs dense, which the step's report says. `accelerate` packs
the pruned Linear weights with torch.sparse.to_sparse_semi_structured (CUDA, fp16); the dense
weights stay the module's state, so saving, hashing and loading are those of a plain Linear.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, technique
from slimkit.techniques.prune.schedule import (
    DENSE_RUNTIME_NOTE,
    PruneTraining,
    apply_masks,
    candidate_layers,
    fine_tune,
    history,
    layer_table,
    overall,
    prunable_kinds,
    training_target,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


class PruneSemiStructured(PruneTraining):
    technique: Literal["prune_semi_structured"] = "prune_semi_structured"
    family = "pruning"
    always_shown = ("n", "m")
    n: int = Field(2, gt=0, description="weights kept in each group")
    m: int = Field(4, gt=1, description="consecutive weights along the input dimension")
    conv: bool = Field(False, description="also Conv layers, over their flattened input "
                                          "(in_channels x kernel)")
    accelerate: bool = Field(False, description="CUDA fp16 sparse kernels for the pruned "
                                                "Linear layers (2:4 only)")

    @model_validator(mode="after")
    def _pattern(self) -> PruneSemiStructured:
        if self.n >= self.m:
            raise ValueError(f"n ({self.n}) must be smaller than m ({self.m})")
        if self.accelerate and (self.n, self.m) != (2, 4):
            raise ValueError("accelerate needs the 2:4 pattern the sparse tensor cores run")
        return self


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest |w| in every group of m consecutive input weights of each output."""
    import torch

    rows = weight.detach().reshape(weight.shape[0], -1)
    groups = rows.abs().reshape(rows.shape[0], -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(weight.shape)


def _fits(layer: nn.Module, m: int) -> bool:
    return layer.weight[0].numel() % m == 0


def _pruned_layers(module: nn.Module, config: PruneSemiStructured) -> dict[str, nn.Module]:
    found = candidate_layers(module, prunable_kinds(conv=config.conv), config.exclude)
    return {n: layer for n, layer in found.items() if _fits(layer, config.m)}


class SemiSparseLinear:
    """Builds a Linear whose forward uses the 2:4 compressed copy of its (dense) weight."""

    @staticmethod
    def wrap(linear: nn.Linear) -> nn.Linear:
        import torch
        from torch.nn import functional as F

        class _SemiSparse(torch.nn.Linear):
            def __init__(self) -> None:
                super().__init__(linear.in_features, linear.out_features,
                                 bias=linear.bias is not None, device="cuda",
                                 dtype=torch.float16)
                with torch.no_grad():
                    self.weight.copy_(linear.weight)
                    if linear.bias is not None:
                        self.bias.copy_(linear.bias)
                self.packed: Any = None
                # Loaded weights replace the dense ones; pack again on the next call.
                self.register_load_state_dict_post_hook(
                    lambda mod, _keys: setattr(mod, "packed", None))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                from torch.sparse import to_sparse_semi_structured

                if self.packed is None:
                    self.packed = to_sparse_semi_structured(self.weight.detach())
                flat = x.to(self.weight.device, self.weight.dtype).reshape(-1, x.shape[-1])
                y = F.linear(flat, self.packed, self.bias)
                return y.reshape(*x.shape[:-1], -1).to(x.device, x.dtype)

        return _SemiSparse()


def _check_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise TechniqueError("prune_semi_structured: accelerate needs a CUDA GPU "
                             "(to_sparse_semi_structured runs on CUDA fp16); none is available")
    if torch.cuda.get_device_capability()[0] < 8:
        raise TechniqueError("prune_semi_structured: accelerate needs an Ampere or newer GPU "
                             "(compute capability 8.0+) for 2:4 sparse kernels")


def _accelerate(module: nn.Module, layers: dict[str, nn.Module]) -> list[str]:
    from torch import nn
    from torch.sparse import to_sparse_semi_structured

    _check_cuda()
    named = dict(module.named_modules())
    done = []
    for name, layer in layers.items():
        if not isinstance(layer, nn.Linear):
            continue
        fast = SemiSparseLinear.wrap(layer)
        try:  # pack now, so that a shape the kernels refuse is reported here, not at serving
            fast.packed = to_sparse_semi_structured(fast.weight.detach())
        except (RuntimeError, ValueError) as e:
            raise TechniqueError(f"prune_semi_structured: {name} {tuple(layer.weight.shape)} "
                                 f"cannot use 2:4 sparse kernels ({str(e).splitlines()[0]})"
                                 ) from e
        parent, _, attr = name.rpartition(".")
        setattr(named[parent] if parent else module, attr, fast)
        done.append(name)
    return done


def _rebuild(model: Model, config: PruneSemiStructured, ctx: StepContext) -> Model:
    """Shapes do not change; only the accelerated layers need their sparse form again."""
    assert isinstance(model, TorchModel)
    if config.accelerate:
        _accelerate(model.module, _pruned_layers(model.module, config))
    return TorchModel(model.module, model.inputs, model.tokenizer, ref=model.ref)


@technique(PruneSemiStructured, format="torch", rebuild=_rebuild)
def prune_semi_structured_torch(model: Model, config: PruneSemiStructured,
                                ctx: StepContext) -> StepResult:
    assert isinstance(model, TorchModel)
    if config.accelerate:
        _check_cuda()  # before any work
    kinds = prunable_kinds(conv=config.conv)
    every = {n: m for n, m in model.module.named_modules() if isinstance(m, prunable_kinds())}
    considered = candidate_layers(model.module, kinds, config.exclude)
    layers = _pruned_layers(model.module, config)
    if not layers:
        raise TechniqueError(f"prune_semi_structured: no {'Conv/' if config.conv else ''}Linear "
                             f"layer with an input size divisible by {config.m} is left to prune")
    tuning = training_target(model, config, ctx)
    masks = {n: nm_mask(layer.weight, config.n, config.m) for n, layer in layers.items()}
    apply_masks(layers, masks)
    result = fine_tune(model.module, tuning, config, ctx,
                       lambda _step, _total: apply_masks(layers, masks), "N:M fine-tuning")
    apply_masks(layers, masks)
    model.module.eval()
    rows = layer_table(every, set(layers))
    accelerated = _accelerate(model.module, layers) if config.accelerate else []
    report = {
        "method": f"semi-structured {config.n}:{config.m}",
        "sparsity": overall(rows, only_pruned=True),
        "sparsity_all_layers": overall(rows, only_pruned=False),
        "layers": rows,
        "skipped": sorted(set(considered) - set(layers)),
        "accelerated": accelerated, **history(result),
        "note": (f"{len(accelerated)} layer(s) packed for CUDA's semi-structured sparse kernels."
                 if accelerated else
                 "Runs dense on CPU: the N:M pattern is only faster on GPUs with sparse tensor "
                 "cores (NVIDIA Ampere or newer, fp16/bf16/int8). " + DENSE_RUNTIME_NOTE),
    }
    return StepResult(TorchModel(model.module, model.inputs, model.tokenizer, ref=model.ref),
                      report=report)
