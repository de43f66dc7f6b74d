"""Knowledge distillation: fine-tune a compressed model to behave like the model it came from.

Pruning and low-bit quantization remove capacity; training the smaller model on the original's
outputs (and optionally its intermediate features) recovers much of what was lost, and needs no
labels, so the recipe's own calibration data is enough. Distillation changes weights only, so
a saved result rebuilds from the steps before it and then loads its weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel, check_path_text, load_model
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique

if TYPE_CHECKING:
    import torch
    from torch import nn

    from slimkit.data import Dataset
    from slimkit.train import TrainSettings
    from slimkit.train.recover import Objective

LossKind = Literal["auto", "response", "embedding", "mse", "relational", "feature"]


class Distill(TechniqueConfig):
    technique: Literal["distill"] = "distill"
    family = "distillation"
    always_shown = ("loss", "epochs")
    version = 5  # 2: teacher outputs computed once; 3: agreement on held-out rows;
    # 4: token batches grouped by length and cut to their longest text; 5: hidden states too
    teacher: str = Field("source", description="'source': the unmodified source model; or a "
                                               "model reference (path or package.module:fn)")
    loss: LossKind = Field("auto", description="auto: response (mixed with labels) for logits "
                                               "with labels, else embedding (1 - cosine)")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="teacher's share in response; 1: teacher "
                                                      "only (always so without labels)")
    features: list[tuple[str, str]] = Field(
        default_factory=list, description="[student module, teacher module] pairs to match")
    feature_loss: Literal["mse", "attention"] = Field(
        "mse", description="mse through a learned adapter, or attention transfer (conv maps)")
    feature_weight: float = Field(1.0, ge=0, description="weight of the feature and hidden-state "
                                                         "terms against the main loss")
    hidden: Literal["none", "last", "all"] = Field(
        "none", description="transformer encoders: also match every token's hidden state after "
                            "the last layer or after each layer (student and teacher of one "
                            "width and, for 'all', one depth)")
    freeze: list[str] = Field(
        default_factory=list, description="student parameters kept fixed, by name prefix (e.g. "
                                          "encoder.embeddings.word_embeddings)")
    epochs: int = Field(3, ge=0)
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(64, gt=0)
    schedule: Literal["constant", "linear"] = Field(
        "constant", description="linear: warm up, then decay towards zero over the epochs")
    weight_decay: float = Field(0.0, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    teacher_cache_gb: float = Field(8.0, ge=0, description="memory the teacher's token states, "
                                    "computed once, may take (as float16); beyond it the "
                                    "teacher runs at every step")
    max_minutes: float | None = Field(None, gt=0)
    patience: int | None = Field(None, gt=0, description="stop after this many epochs without "
                                                         "better agreement with the teacher")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="torch seeds are 64-bit; the loop "
                      "derives others from it")
    device: str = "cpu"

    def needs_data(self) -> bool:
        return True

    @field_validator("teacher")
    @classmethod
    def _teacher_reference(cls, v: str) -> str:
        # A model reference, checked as the recipe's own model is (empty, NUL, line breaks).
        return check_path_text(v)

    @model_validator(mode="after")
    def _features_for_feature_loss(self) -> Distill:
        if self.loss == "feature" and not self.features:
            raise ValueError("loss 'feature' needs features: [[student_module, teacher_module]]")
        return self


def _rebuild(model: Model, config: Distill, ctx: StepContext) -> Model:
    return model  # training changes weights only, and the artifact holds them


@technique(Distill, format="torch", requires_data=True, rebuild=_rebuild)
def distill_torch(model: Model, config: Distill, ctx: StepContext) -> StepResult:
    from slimkit.train.recover import recover

    assert isinstance(model, TorchModel)
    if ctx.data is None:
        raise TechniqueError("distill needs training data (the recipe's calibration data)")
    teacher = _teacher(model, config)
    data, view, held = _split(model, ctx.data)
    student = model.module.to(config.device)
    teacher.module.to(config.device).eval().requires_grad_(False)
    kind, token_axis = _plan(model, teacher, data, config)
    pairs = _hidden_pairs(student, teacher.module, config)
    agreement = _Agreement(teacher.module, view, kind == "response", config.device)
    frozen = _frozen(student, config.freeze)
    try:
        run = recover(student, teacher.module, data, _objective(config, kind, pairs),
                      _settings(config, ctx, token_axis), evaluate=agreement,
                      title="distillation", owner="distill")
    finally:
        for p in frozen:
            p.requires_grad_(True)
    result, teacher_once, before, after = run.fit, run.teacher_once, run.before, run.after
    student.cpu()
    report = {
        "teacher": config.teacher, "loss": kind, "features": [list(f) for f in config.features],
        "hidden_states": [list(p) for p in pairs],
        "teacher_run": "once, before training" if teacher_once else "at every step",
        "agreement": {"measure": agreement.measure, "examples": len(view),
                      "measured_on": "held-out rows" if held else "training rows",
                      "before": before, "after": after},
        "steps": result.steps, "epochs": result.epochs, "stopped_early": result.stopped_early,
        "out_of_time": result.out_of_time, "history": result.history,
    }
    return StepResult(TorchModel(student.eval(), model.inputs, model.tokenizer, ref=model.ref),
                      record=config.model_copy(update={"loss": kind}), report=report)


def _split(model: TorchModel, given: Dataset) -> tuple[Dataset, Dataset, int]:
    """The training rows, the rows agreement is measured on, and how many were held out.

    Agreement with the teacher picks the best epoch and goes into the report: with enough
    data it is measured on rows set apart from training, else on training rows (and says so)."""
    from slimkit.data import Dataset

    full = Dataset({i.name: given.inputs[i.name] for i in model.inputs}, given.labels,
                   given.name)
    held = min(512, len(full) // 10) if len(full) >= 1000 else 0
    data = full.rows(0, len(full) - held)
    view = full.rows(len(full) - held, len(full)) if held else full.head(min(len(full), 512))
    return data, view, held


def _plan(model: TorchModel, teacher: TorchModel, data: Dataset,
          config: Distill) -> tuple[str, dict[str, Any]]:
    """The loss 'auto' stands for, from the teacher's output on a first batch, and the token
    axis for the loop: per-token outputs are compared whole, so their padding stays; pooled
    ones cut it."""
    import torch

    from slimkit.train.outputs import first_tensor

    probe = {n: torch.from_numpy(v[: config.batch_size]).to(config.device)
             for n, v in data.inputs.items()}
    with torch.no_grad():
        out = first_tensor(teacher.module(**probe))
    return resolve_loss(config, out, data), _token_axis(model) if out.ndim < 3 else {}


def _objective(config: Distill, kind: str, hidden: list[tuple[str, str]]) -> Objective:
    from slimkit.train.recover import Objective

    return Objective(loss=kind, temperature=config.temperature,  # type: ignore[arg-type]
                     alpha=config.alpha, features=tuple(config.features),
                     feature_loss=config.feature_loss, feature_weight=config.feature_weight,
                     hidden=tuple(hidden), teacher_cache_bytes=config.teacher_cache_gb * 2**30)


def _settings(config: Distill, ctx: StepContext, token_axis: dict[str, Any]) -> TrainSettings:
    from slimkit.train import TrainSettings

    return TrainSettings(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                         weight_decay=config.weight_decay, seed=config.seed,
                         patience=config.patience, precision=config.precision,
                         max_minutes=config.max_minutes, checkpoint_dir=ctx.checkpoints,
                         schedule=config.schedule, device=config.device, **token_axis)


def _frozen(student: nn.Module, prefixes: list[str]) -> list[nn.Parameter]:
    """Parameters to keep fixed for this run, each prefix checked to name some. A small
    encoder's word embeddings are most of its weights: kept fixed, they cost the optimizer
    nothing (a sixth of each step distilling a pruned MiniLM) and stay the teacher's."""
    from slimkit.train.taps import like

    named = dict(student.named_parameters())
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in named):
            raise TechniqueError(f"distill: freeze names no parameter {prefix!r}"
                                 + like(prefix, named))
    fixed = [p for n, p in named.items() if p.requires_grad and n.startswith(tuple(prefixes))]
    for p in fixed:
        p.requires_grad_(False)
    return fixed


def _token_axis(model: TorchModel) -> dict[str, Any]:
    """Text inputs: the loop groups texts by length and cuts padding, by the attention mask
    and the inputs that share its token axis."""
    from slimkit.train.recover import MASK

    spec = {i.name: i.shape for i in model.inputs}
    if MASK not in spec or len(spec[MASK]) < 2:
        return {}
    axis = spec[MASK][1]
    if not isinstance(axis, str):
        return {}  # a fixed length: the model may depend on it
    return {"mask": MASK, "sequence_columns": tuple(
        n for n, shape in spec.items() if n != MASK and len(shape) >= 2 and shape[1] == axis)}


def _hidden_pairs(student: nn.Module, teacher: nn.Module,
                  config: Distill) -> list[tuple[str, str]]:
    if config.hidden == "none":
        return []
    from slimkit.techniques.prune.transformer_surgery import encoder_blocks

    try:
        s, t = encoder_blocks(student), encoder_blocks(teacher)
    except TechniqueError:
        raise TechniqueError("distill: hidden needs BERT-like encoder layers in student and "
                             "teacher") from None
    if config.hidden == "last":
        return [(s[-1][0], t[-1][0])]
    if len(s) != len(t):
        raise TechniqueError(f"distill: hidden 'all' needs as many layers in the student as in "
                             f"the teacher ({len(s)} and {len(t)}); use 'last'")
    return [(a[0], b[0]) for a, b in zip(s, t, strict=True)]


def _teacher(model: TorchModel, config: Distill) -> TorchModel:
    if config.teacher == "source":
        if model.ref is None:
            raise TechniqueError("distill: teacher 'source' needs a model loaded from a "
                                 "reference; name the teacher instead")
        teacher = load_model(model.ref)
    else:
        teacher = load_model(config.teacher)
    if not isinstance(teacher, TorchModel):
        raise TechniqueError(f"distill: the teacher {config.teacher!r} is not a torch model")
    missing = {i.name for i in model.inputs} - {i.name for i in teacher.inputs}
    if missing:
        raise TechniqueError(f"distill: the teacher takes no input(s) {', '.join(sorted(missing))}")
    return teacher


def resolve_loss(config: Distill, teacher_out: torch.Tensor, data: Dataset) -> str:
    """What 'auto' means for this model and data; an explicit choice is checked, not changed."""
    from slimkit.train.outputs import label_tensor, uses_labels

    labels = data.labels
    logits = (teacher_out.ndim == 2 and teacher_out.shape[1] > 1
              and teacher_out.is_floating_point())
    if config.loss == "auto":
        fits = uses_labels(teacher_out, label_tensor(labels))
        return "response" if logits and fits else "embedding"
    if config.loss == "response" and not logits:
        raise TechniqueError(f"distill: loss 'response' needs logits [batch, classes]; the "
                             f"teacher returns {list(teacher_out.shape)}")
    return config.loss


class _Agreement:
    """How closely the student follows the teacher on a fixed slice: top-1 agreement for
    classifiers, mean cosine for anything else. Higher is better (early stopping's metric)."""

    def __init__(self, teacher: nn.Module, view: Dataset, classes: bool, device: str) -> None:
        import torch

        from slimkit.train.outputs import first_tensor

        self.view, self.device = view, device
        self.measure = "top1" if classes else "cosine"
        with torch.no_grad():
            self.target = torch.cat([first_tensor(teacher(**self._tensors(b))).float()
                                     for b in view.batches(64)])

    def _tensors(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        import torch

        return {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}

    def __call__(self, module: nn.Module) -> float:
        import torch
        from torch.nn import functional as F

        from slimkit.train.outputs import first_tensor

        with torch.no_grad():
            out = torch.cat([first_tensor(module(**self._tensors(b))).float()
                             for b in self.view.batches(64)])
        if self.measure == "top1":
            return float((out.argmax(1) == self.target.argmax(1)).float().mean())
        return float(F.cosine_similarity(out.flatten(1), self.target.flatten(1)).mean())
