"""Early exits: small classifier heads after chosen blocks answer the inputs they are sure of.

Easy inputs make up most of a real stream; a head after an early block that is confident
(max softmax probability >= `threshold`) answers them and the rest of the network never runs.
The heads learn from the final head's logits (KL divergence, the backbone frozen), so no labels
are needed and the final answer of an input that goes all the way is unchanged. The model
exports to one ONNX file whose `If` nodes skip the remaining segments (see `onnx_graph`), so
ONNX Runtime, OpenVINO and torch all run it through the usual artifact and session.

Each row is decided on its own, whatever the batch: it takes the answer of its first confident
exit. The batch goes on through the network while any row is undecided (splitting it would
cost a gather and a scatter per exit and give every runtime ragged batches), so the work saved
is per input at batch size 1, the latency-bound case early exits are for, and smaller in
larger batches. Outputs: the logits, and per row the exit that answered (the number of exits
when the final head did).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique

if TYPE_CHECKING:
    import torch

    from slimkit.data import Dataset
    from slimkit.techniques.early_exit.net import EarlyExitNet

CURVE = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class EarlyExit(TechniqueConfig):
    technique: Literal["early_exit"] = "early_exit"
    family = "dynamic"
    always_shown = ("threshold",)
    after: list[str] | None = Field(None, description="modules an exit follows, in call order; "
                                    "default: each top-level block but the last two")
    head: Literal["pool", "conv"] = Field("conv", description="pool: global pool + Linear; "
                                          "conv: a 3x3 convolution first")
    head_width: int = Field(64, gt=0, le=4096, description="channels of a conv head")
    threshold: float = Field(0.9, ge=0, le=1, description="max softmax probability at which "
                             "an exit answers; 1.0 never exits early")
    epochs: int = Field(8, ge=0)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(64, gt=0)
    temperature: float = Field(2.0, gt=0)
    max_minutes: float | None = Field(None, gt=0)
    feature_cache_gb: float = Field(2.0, ge=0, description="memory the frozen backbone's "
                                    "outputs, computed once, may take; beyond it the backbone "
                                    "runs at every step")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    curve: list[float] = Field(default_factory=lambda: list(CURVE), max_length=32,
                               description="thresholds the report measures (empty: none)")
    curve_rows: int = Field(300, ge=0, description="held-out rows run one at a time per "
                            "threshold on ONNX Runtime for the report (0: not measured)")

    def needs_data(self) -> bool:
        return True

    @field_validator("after")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not n.strip() for n in v)):
            raise ValueError("give module names such as [stem, body], or leave it out")
        if v is not None and len(set(v)) != len(v):
            raise ValueError("names a module twice")
        return v

    @field_validator("curve")
    @classmethod
    def _probabilities(cls, v: list[float]) -> list[float]:
        bad = [t for t in v if not 0 <= t <= 1]
        if bad:
            raise ValueError(f"thresholds are probabilities in [0, 1], not {bad[0]}")
        return v


def build(model: TorchModel, config: EarlyExit) -> tuple[EarlyExitNet, EarlyExit]:
    """The network with untrained heads, and the config naming where its exits are: the
    structure from the record alone, so a rebuild makes the same one before weights load."""
    import torch

    from slimkit.dataset import synthetic
    from slimkit.techniques.early_exit.net import EarlyExitNet, default_cuts, make_head, split

    module = model.module
    after = config.after or default_cuts(module)
    segments, taps = split(module, after)
    sample = synthetic(model.inputs, 2, {"sequence": 16})
    vals: tuple[torch.Tensor, ...] = tuple(torch.from_numpy(sample.inputs[i.name])
                                           for i in model.inputs)
    features = []
    with torch.no_grad():
        for seg, tap in zip(segments, [*taps, None], strict=True):
            out = seg(*vals)
            if tap is None:
                final = out
            else:
                features.append(out[tap])
                vals = out
    if not isinstance(final, torch.Tensor) or final.ndim != 2 or final.shape[1] < 2:
        shape = list(final.shape) if isinstance(final, torch.Tensor) else type(final).__name__
        raise TechniqueError(f"early_exit: needs a classifier returning logits [batch, classes]; "
                             f"the model returns {shape}")
    with torch.random.fork_rng():  # seeded heads, the caller's random stream untouched
        torch.manual_seed(config.seed)
        heads = torch.nn.ModuleList(make_head(f, final.shape[1], config.head, config.head_width)
                                    for f in features)
    net = EarlyExitNet(segments, taps, heads, config.threshold).eval()
    net.requires_grad_(False)
    heads.requires_grad_(True)
    return net, config.model_copy(update={"after": after})


def _rebuild(model: Model, config: EarlyExit, ctx: StepContext) -> Model:
    assert isinstance(model, TorchModel)
    net, _ = build(model, config)
    return TorchModel(net, model.inputs, model.tokenizer, ref=model.ref)


@technique(EarlyExit, format="torch", requires_data=True, rebuild=_rebuild)
def early_exit_torch(model: Model, config: EarlyExit, ctx: StepContext) -> StepResult:
    from slimkit.techniques.early_exit.curve import in_words, report_curve
    from slimkit.techniques.early_exit.train import agreement, train_heads

    assert isinstance(model, TorchModel)
    if ctx.data is None:
        raise TechniqueError("early_exit needs training data (the recipe's calibration data)")
    net, record = build(model, config)
    train, held = _split(model, ctx.data)
    before = agreement(net, held)
    fit = train_heads(net, train, config, ctx)
    made = TorchModel(net.eval(), model.inputs, model.tokenizer, ref=model.ref)
    report = {
        "after": record.after, "head": config.head, "threshold": config.threshold,
        "agreement_with_final": {"measured_on": f"{len(held)} held-out rows",
                                 "before": before, "after": agreement(net, held)},
        "steps": fit.steps, "epochs": fit.epochs, "out_of_time": fit.out_of_time,
        "history": fit.history,
    }
    if config.curve and config.curve_rows:
        report["curve"] = report_curve(model, made, held.head(config.curve_rows), config.curve,
                                       ctx)
        report["curve_summary"] = in_words(report["curve"])
    return StepResult(made, record=record, report=report)


def _split(model: TorchModel, given: Dataset) -> tuple[Dataset, Dataset]:
    """Training rows and the rows set apart to measure agreement and the curve on: a tenth,
    at least 32 rows and at most 1000."""
    from slimkit.data import Dataset

    full = Dataset({i.name: given.inputs[i.name] for i in model.inputs}, given.labels,
                   given.name)
    if len(full) < 64:
        raise TechniqueError(f"early_exit: needs at least 64 rows of data, got {len(full)}")
    held = min(1000, max(32, len(full) // 10))
    return full.rows(0, len(full) - held), full.rows(len(full) - held, len(full))
