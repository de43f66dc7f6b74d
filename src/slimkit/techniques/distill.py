"""Knowledge distillation: fine-tune a compressed model to behave like the model it came from.

Pruning and low-bit quantization remove capacity; training the smaller model on the original's
outputs (and optionally its intermediate features) recovers much of what was lost, and needs no
labels, so the recipe's own calibration data is enough. Distillation changes weights only, so
a saved result rebuilds from the steps before it and then loads its weights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from slimkit.errors import TechniqueError
from slimkit.io import atomic_write_json
from slimkit.model import Model, TorchModel, check_path_text, load_model
from slimkit.registry import StepContext, TechniqueConfig, technique
from slimkit.techniques.teacher_cache import OUTPUT, teacher_columns
from slimkit.train.outputs import first_tensor, label_tensor, uses_labels

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch
    from torch import nn

    from slimkit.data import Dataset

LossKind = Literal["auto", "response", "embedding", "mse", "relational", "feature"]
REPORT = "distill.json"
_MASK = "attention_mask"


class Distill(TechniqueConfig):
    technique: Literal["distill"] = "distill"
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
    assert isinstance(model, TorchModel)
    return replace(model, steps=[*model.steps, config])


@technique(Distill, format="torch", requires_data=True, rebuild=_rebuild)
def distill_torch(model: Model, config: Distill, ctx: StepContext) -> Model:
    import torch

    from slimkit.data import Dataset
    from slimkit.train import TrainSettings, fit

    assert isinstance(model, TorchModel)
    if ctx.data is None:
        raise TechniqueError("distill needs training data (the recipe's calibration data)")
    teacher = _teacher(model, config)
    names = [i.name for i in model.inputs]
    full = Dataset({n: ctx.data.inputs[n] for n in names}, ctx.data.labels, ctx.data.name)
    # Agreement with the teacher picks the best epoch and goes into the report: with enough
    # data it is measured on rows set apart from training, else on training rows (and says so).
    held = min(512, len(full) // 10) if len(full) >= 1000 else 0
    data = full.rows(0, len(full) - held)
    view = full.rows(len(full) - held, len(full)) if held else full.head(min(len(full), 512))
    student = model.module.to(config.device)
    frozen: list[nn.Parameter] = []
    teacher.module.to(config.device).eval().requires_grad_(False)
    probe = {n: torch.from_numpy(v[: config.batch_size]).to(config.device)
             for n, v in data.inputs.items()}
    with torch.no_grad():
        out = first_tensor(teacher.module(**probe))
    kind = resolve_loss(config, out, data)
    taps = _Taps(student, teacher.module, config.features)
    hidden = _Taps(student, teacher.module, [])
    try:
        adapters = taps.adapters(probe, config) if config.features else None
        hidden = _Taps(student, teacher.module,
                       _hidden_pairs(student, teacher.module, config))
        main = _main_loss(kind, config)
        # Per-token outputs are compared whole, so their padding stays; pooled ones cut it.
        token_axis = _token_axis(model) if out.ndim < 3 else {}

        # Without adapters the teacher is only ever run to read its outputs: computed once, they
        # ride along with the inputs and each step runs the student alone.
        cached = None if config.features else teacher_columns(
            lambda x: (first_tensor(teacher.module(**x)), hidden.teacher_states()), data,
            config.device, config.teacher_cache_gb * 2**30, precision=config.precision,
            **token_axis)
        train_data, states = data, []
        if cached is not None:
            train_data = Dataset({**data.inputs, **cached}, data.labels, data.name)
            states = [c for c in cached if c != OUTPUT]
            if token_axis:
                token_axis["sequence_columns"] += tuple(states)

        def loss_fn(net: nn.Module, x: dict[str, torch.Tensor],
                    y: torch.Tensor | None) -> torch.Tensor:
            t = x.pop(OUTPUT, None)
            targets = [x.pop(c) for c in states] or None
            s = first_tensor(net(**x))
            if t is None:
                with torch.no_grad():
                    t = first_tensor(teacher.module(**x))
            total = main(s, t, y) if main is not None else s.new_zeros(())
            if adapters is not None:
                total = total + config.feature_weight * taps.loss(adapters, config.feature_loss)
            if hidden.pairs:
                total = total + config.feature_weight * hidden.hidden_loss(x.get(_MASK),
                                                                           targets)
            return total

        agreement = _Agreement(teacher.module, view, kind == "response", config.device)
        before = agreement(student.to(config.device).eval())
        settings = TrainSettings(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                                 weight_decay=config.weight_decay, seed=config.seed,
                                 patience=config.patience, precision=config.precision,
                                 max_minutes=config.max_minutes, checkpoint_dir=ctx.checkpoints,
                                 schedule=config.schedule,
                                 device=config.device, **token_axis)
        frozen = _frozen(student, config.freeze)
        result = fit(student, loss_fn, train_data, settings,
                     extra_params=adapters.parameters() if adapters is not None else (),
                     evaluate=agreement, title="distillation")
        teacher_once = cached is not None
        del cached, train_data  # the teacher's token states can take gigabytes
    finally:
        taps.remove()
        hidden.remove()
        for p in frozen:
            p.requires_grad_(True)
    after = agreement(student)
    student.cpu()
    atomic_write_json(ctx.workdir / REPORT, {
        "teacher": config.teacher, "loss": kind, "features": [list(f) for f in config.features],
        "hidden_states": [list(p) for p in hidden.pairs],
        "teacher_run": "once, before training" if teacher_once else "at every step",
        "agreement": {"measure": agreement.measure, "examples": len(view),
                      "measured_on": "held-out rows" if held else "training rows",
                      "before": before, "after": after},
        "steps": result.steps, "epochs": result.epochs, "stopped_early": result.stopped_early,
        "out_of_time": result.out_of_time, "history": result.history,
    })
    return TorchModel(student.eval(), model.inputs, model.tokenizer, ref=model.ref,
                      steps=[*model.steps, config.model_copy(update={"loss": kind})])


def _frozen(student: nn.Module, prefixes: list[str]) -> list[nn.Parameter]:
    """Parameters to keep fixed for this run, each prefix checked to name some. A small
    encoder's word embeddings are most of its weights: kept fixed, they cost the optimizer
    nothing (a sixth of each step distilling a pruned MiniLM) and stay the teacher's."""
    named = dict(student.named_parameters())
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in named):
            raise TechniqueError(f"distill: freeze names no parameter {prefix!r}"
                                 + _like(prefix, named))
    fixed = [p for n, p in named.items() if p.requires_grad and n.startswith(tuple(prefixes))]
    for p in fixed:
        p.requires_grad_(False)
    return fixed


def _like(name: str, names: Iterable[str]) -> str:
    """Up to three names sharing the last part of a name that was not found, for the error."""
    close = [n for n in names if n and name.split(".")[-1] in n][:3]
    return f" (like: {', '.join(close)})" if close else ""


def _token_axis(model: TorchModel) -> dict[str, Any]:
    """Text inputs: the loop groups texts by length and cuts padding, by the attention mask
    and the inputs that share its token axis."""
    spec = {i.name: i.shape for i in model.inputs}
    if _MASK not in spec or len(spec[_MASK]) < 2:
        return {}
    axis = spec[_MASK][1]
    if not isinstance(axis, str):
        return {}  # a fixed length: the model may depend on it
    return {"mask": _MASK, "sequence_columns": tuple(
        n for n, shape in spec.items() if n != _MASK and len(shape) >= 2 and shape[1] == axis)}


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


def _main_loss(kind: str, config: Distill) -> Any:
    from slimkit.train import losses

    if kind == "response":
        return lambda s, t, y: losses.response_loss(s, t, y, config.temperature, config.alpha)
    table = {"embedding": losses.cosine_loss, "mse": losses.embedding_mse,
             "relational": losses.relational_loss}
    fn = table.get(kind)
    return None if fn is None else (lambda s, t, _y: fn(s, t))


class _Taps:
    """Forward hooks that keep the outputs of the named student and teacher modules."""

    def __init__(self, student: nn.Module, teacher: nn.Module,
                 pairs: list[tuple[str, str]]) -> None:
        self.pairs, self.student, self.teacher = pairs, student, teacher
        self.seen: dict[tuple[str, str], Any] = {}
        self.hooks = []
        for side, module, names in (("s", student, [p[0] for p in pairs]),
                                    ("t", teacher, [p[1] for p in pairs])):
            found = dict(module.named_modules())
            for name in names:
                if name not in found:
                    raise TechniqueError(f"distill: no module {name!r} in the "
                                         f"{'student' if side == 's' else 'teacher'}"
                                         + _like(name, found))
                self.hooks.append(found[name].register_forward_hook(
                    lambda _m, _a, out, key=(side, name): self.seen.__setitem__(key, out)))

    def adapters(self, probe: dict[str, torch.Tensor], config: Distill) -> nn.ModuleList:
        """One adapter per pair, sized by a probe batch; seeded, so a resumed run makes the
        same ones before the checkpoint overwrites them."""
        import torch

        from slimkit.train.losses import FeatureAdapter

        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(config.seed)
            self.student(**probe)  # the hooks keep both sides' features, sized
            self.teacher(**probe)
            made = []
            for s_name, t_name in self.pairs:
                s, t = self.pair(s_name, t_name)
                if config.feature_loss == "attention" and (s.ndim != 4 or t.ndim != 4):
                    raise TechniqueError(f"distill: attention transfer needs [batch, channels, "
                                         f"h, w] maps; {s_name} gives {list(s.shape)}")
                made.append(FeatureAdapter(s.shape, t.shape).to(s.device))
        return torch.nn.ModuleList(made)

    def pair(self, s_name: str, t_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return first_tensor(self.seen[("s", s_name)]), first_tensor(self.seen[("t", t_name)])

    def loss(self, adapters: nn.ModuleList, kind: str) -> torch.Tensor:
        from slimkit.train.losses import attention_loss, feature_loss

        total = []
        for (s_name, t_name), adapter in zip(self.pairs, adapters, strict=True):
            s, t = self.pair(s_name, t_name)
            t = t.detach()
            total.append(attention_loss(s, t) if kind == "attention"
                         else feature_loss(adapter, s, t))  # type: ignore[arg-type]
        return sum(total[1:], total[0])

    def teacher_states(self) -> list[torch.Tensor]:
        return [first_tensor(self.seen[("t", t)]) for _, t in self.pairs]

    def hidden_loss(self, mask: torch.Tensor | None,
                    cached: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Mean over the pairs of the per-token hidden-state error against the teacher's states
        (`cached` in pair order, else those its hooks kept; detached either way)."""
        from slimkit.train.losses import hidden_state_loss

        total = []
        for i, (s_name, t_name) in enumerate(self.pairs):
            s, t = self.pair(s_name, t_name) if cached is None else (
                first_tensor(self.seen[("s", s_name)]), cached[i])
            if s.shape != t.shape:
                raise TechniqueError(f"distill: hidden states of {s_name} {list(s.shape)} and "
                                     f"the teacher's {list(t.shape)} differ in shape")
            total.append(hidden_state_loss(s, t.detach(), mask))
        return sum(total[1:], total[0]) / len(total)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


class _Agreement:
    """How closely the student follows the teacher on a fixed slice: top-1 agreement for
    classifiers, mean cosine for anything else. Higher is better (early stopping's metric)."""

    def __init__(self, teacher: nn.Module, view: Dataset, classes: bool, device: str) -> None:
        import torch

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

        with torch.no_grad():
            out = torch.cat([first_tensor(module(**self._tensors(b))).float()
                             for b in self.view.batches(64)])
        if self.measure == "top1":
            return float((out.argmax(1) == self.target.argmax(1)).float().mean())
        return float(F.cosine_similarity(out.flatten(1), self.target.flatten(1)).mean())
