"""OpenVINO quantization through NNCF, the quantizer OpenVINO's makers support.

`nncf_int8` is NNCF's post-training quantization (its transformer mode keeps the
LayerNorm/Softmax paths in float and applies SmoothQuant); with a budget it becomes NNCF's
accuracy-controlled quantization, which reverts the layers that cost most back to float.
`weight_compress` stores MatMul weights in int8/int4 while activations stay float, for size
first and for speed where the model is memory-bound.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from slimkit.dataset import Dataset
from slimkit.errors import TechniqueError
from slimkit.evaluate import fidelity
from slimkit.evaluate.fidelity import Budget
from slimkit.model import FileModel, Model
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.space import Choice, Space
from slimkit.techniques.quantize.heldout import CHECK_ROWS, Split, split_data, take, without

ATTENTION_OPS = {"Softmax", "ScaledDotProductAttention"}


class NncfInt8(TechniqueConfig):
    technique: Literal["nncf_int8"] = "nncf_int8"
    family = "quantization"
    # No budget here: NNCF's accuracy control ranks every layer by a full evaluation, minutes
    # per trial on MiniLM; slimkit's own budget search (static_int8) is the cheaper way.
    # None first: a search's first trial is NNCF's own default, then the presets by name
    space: ClassVar[Space] = {"preset": Choice(None, "performance", "mixed"),
                               "fast_bias_correction": Choice(True, False)}
    # 2: attention read as ScaledDotProductAttention also selects transformer mode; 3: a budget
    # searches on part of the check rows and is checked on the held-out rest, and NNCF ranks
    # layers by the budget's score per item (given outputs it reverted the least useful first)
    version = 3
    transformer: bool | None = Field(None, description="NNCF's transformer mode; None detects "
                                                       "it from attention in the graph")
    preset: Literal["performance", "mixed"] | None = None
    samples: int = Field(300, gt=0, description="calibration examples")
    fast_bias_correction: bool = True
    smooth_quant_alpha: float | None = Field(None, description="None keeps NNCF's default")
    budget: Budget | None = Field(None, description="accuracy control on the calibration data")


class WeightCompress(TechniqueConfig):
    technique: Literal["weight_compress"] = "weight_compress"
    family = "quantization"
    space: ClassVar[Space] = {"mode": Choice("int8_asym", "int4_sym", "int4_asym"),
                               "ratio": Choice(0.6, 0.8, 1.0)}
    always_shown = ("mode",)
    mode: Literal["int8_sym", "int8_asym", "int4_sym", "int4_asym", "nf4"] = "int4_sym"
    group_size: int | None = Field(128, gt=0, description="int4/nf4 group size; None per "
                                                       "channel")
    ratio: float = Field(1.0, gt=0, le=1, description="share of layers in 4 bit, rest int8")
    all_layers: bool = Field(False, description="also compress embeddings and the last layer")


def _nncf() -> Any:
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nncf
    return nncf


def _feeds(ctx: StepContext, n: int, names: list[str],
           heldout: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """One feed per calibration row, less the rows a budget's held-out check keeps unseen."""
    if ctx.data is None:
        raise TechniqueError("needs calibration data")
    fit = ctx.data if heldout is None else without(ctx.data, heldout)
    data = fit.head(min(n, len(fit)))
    return [{k: data.inputs[k][i : i + 1] for k in names} for i in range(len(data))]


@technique(NncfInt8, format="openvino", requires_data=True, targets={"openvino"})
def nncf_int8(model: Model, config: NncfInt8, ctx: StepContext) -> StepResult:
    import openvino as ov

    nncf = _nncf()
    assert isinstance(model, FileModel)
    ir = ov.Core().read_model(str(model.path))
    names = [p.get_any_name() for p in ir.inputs]
    split = None if config.budget is None or ctx.data is None \
        else split_data(ctx.data, CHECK_ROWS)
    calib = nncf.Dataset(_feeds(ctx, config.samples, names,
                                None if split is None else split.heldout))
    transformer = config.transformer
    if transformer is None:  # OpenVINO fuses attention on reading, so look for both forms
        transformer = any(op.get_type_name() in ATTENTION_OPS for op in ir.get_ops())
    kwargs: dict[str, Any] = {"subset_size": config.samples,
                              "fast_bias_correction": config.fast_bias_correction}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if config.preset:
        kwargs["preset"] = getattr(nncf.QuantizationPreset, config.preset.upper())
    if config.smooth_quant_alpha is not None:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alpha=config.smooth_quant_alpha)
    report = None
    if config.budget is None:
        quantized = nncf.quantize(ir, calib, **kwargs)
    else:
        assert split is not None
        quantized, report = _with_accuracy_control(nncf, ir, calib, config.budget, ctx, names,
                                                   kwargs, split)
    out = ctx.workdir / "model.xml"
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    made = FileModel("openvino", out, model.inputs, model.tokenizer, dict(model.session_options))
    return StepResult(made, report=report)


def _with_accuracy_control(nncf: Any, ir: Any, calib: Any, budget: Budget, ctx: StepContext,
                           names: list[str], kwargs: dict[str, Any], split: Split,
                           ) -> tuple[Any, dict[str, Any]]:
    """NNCF reverts layers to float until the float model's score minus the quantized one's
    is within `max_drop` on the search rows; the result is then scored on the held-out rows.
    NNCF's walk cannot be continued from outside, so a held-out failure is reported, not
    repaired. The score must be a real metric in the budget's unit, higher better: NNCF
    computes `quantized / initial` whenever the score falls, so a float score of 0 (as a
    "minus the drop" score has) divides by zero."""
    import tempfile

    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    assert ctx.data is not None
    search = take(ctx.data, split.search)
    feeds = _batches(search, names)
    float_model = ov.Core().compile_model(ir, "CPU", _F32)
    reference = _first_output(float_model, feeds)
    targets = fidelity.accuracy_targets(budget, reference, search.labels)
    score = _scorer(budget, reference, targets)

    def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
        outs, rows = [], []
        for feed, start in items:  # an item carries its rows, so any subset can be scored
            outs.append(compiled(feed)[0])
            rows.append(np.arange(start, start + len(outs[-1])))
        # A score per item, never outputs: given outputs, NNCF (3.4) ranks each group by the
        # output error left once it is reverted and then reverts the group that leaves the
        # most (its order for a score, read the wrong way round). On MobileNetV2 with
        # max_drop 2 the drop still stood at 10 to 14 points after 40 reverts; ranked by
        # score, the first revert takes it from 12 to 8.5.
        per_item = [score(o, r) for o, r in zip(outs, rows, strict=True)]
        return score(np.concatenate(outs), np.concatenate(rows)), per_item

    if budget.max_drop is not None:  # the tie-breaker alone never fails a budget
        max_drop = budget.max_drop + 2 * _TIE
    else:
        max_drop = score(reference, np.arange(len(reference))) - (budget.min_cosine or 0.0)
    kwargs = dict(kwargs)
    if "advanced_parameters" in kwargs:  # this entry point names it differently
        kwargs["advanced_quantization_parameters"] = kwargs.pop("advanced_parameters")
    with tempfile.TemporaryDirectory(prefix="slimkit-nncf-") as tmp:
        quantized = nncf.quantize_with_accuracy_control(
            ir, calib, nncf.Dataset([(f, i * _BATCH) for i, f in enumerate(feeds)],
                                    lambda x: x[0]),
            validate, max_drop=max(max_drop, 0.0), drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                intermediate_model_dir=tmp), **kwargs)
        full = _quantized_ops(ov.Core().read_model(f"{tmp}/intermediate_model.xml"))
    compiled = ov.Core().compile_model(quantized, "CPU", _F32)
    quality = fidelity.score(_first_output(compiled, feeds), reference, targets)
    report: dict[str, Any] = {
        "kept_float": sorted(full - _quantized_ops(quantized)), "layers_total": len(full),
        "budget": budget.model_dump(), "cosine": quality.cosine,
        "accuracy_drop": quality.accuracy_drop, "within_budget": quality.within(budget),
        **split.report()}
    if quality.accuracy_drop is not None:
        report["drop_against"] = "labels" if search.labels is not None else "float top-1"
    if len(split.heldout):
        held = take(ctx.data, split.heldout)
        held_feeds = _batches(held, names)
        held_ref = _first_output(float_model, held_feeds)
        held_quality = fidelity.score(
            _first_output(compiled, held_feeds), held_ref,
            fidelity.accuracy_targets(budget, held_ref, held.labels))
        report.update(heldout_cosine=held_quality.cosine,
                      heldout_accuracy_drop=held_quality.accuracy_drop,
                      within_budget_heldout=held_quality.within(budget))
    return quantized, report


_BATCH = 32


def _batches(data: Dataset, names: list[str]) -> list[dict[str, np.ndarray]]:
    return [{k: data.inputs[k][i : i + _BATCH] for k in names}
            for i in range(0, len(data), _BATCH)]


_F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def _first_output(compiled: Any, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([compiled(f)[0] for f in feeds])


# Accuracy moves a whole row at a time, so NNCF's ranking, which reverts the group whose
# reversal scores best, would meet ties everywhere; a thousandth of a point per unit of mean
# cosine lost orders them by how close the outputs stay. It adds at most 0.002 points to a
# drop, which NNCF's bound allows for; a drop is a whole number of rows, far coarser.
_TIE = 1e-3


def _scorer(budget: Budget, reference: np.ndarray, targets: np.ndarray | None,
            ) -> Callable[[np.ndarray, np.ndarray], float]:
    """Score outputs for rows `rows` of the check data in the budget's unit, higher better:
    accuracy points (ties broken by the cosine), or mean cosine to the float model."""
    def score(out: np.ndarray, rows: np.ndarray) -> float:
        ref = reference[rows]
        level = fidelity.level(budget, out, ref, None if targets is None else targets[rows])
        if budget.max_drop is None:
            return level
        return level - _TIE * (1.0 - fidelity.score(out, ref, None).cosine)
    return score


_WEIGHT_PATH = {"Constant", "Convert", "Multiply", "Subtract", "Reshape", "Transpose",
                "Unsqueeze"}
_LOW_BIT = {"i8", "u8", "i4", "u4"}


def _quantized_ops(model: Any) -> set[str]:
    """Names of the operations NNCF quantized: of a type it quantizes, fed by a quantizer (a
    FakeQuantize, or int8 weights decompressed on the fly) through value-preserving operations
    such as MaxPool or Reshape. Both the fully quantized model and the final one are read this
    way, so their difference is what accuracy control reverted to float."""
    from nncf.openvino.graph.metatypes.groups import INPUTS_QUANTIZABLE_OPERATIONS as QUANT
    from nncf.openvino.graph.metatypes.groups import QUANTIZE_AGNOSTIC_OPERATIONS as AGNOSTIC

    quantizable = {n for m in QUANT for n in m.get_all_aliases()}
    agnostic = {n for m in AGNOSTIC for n in m.get_all_aliases()} | {"Convert"}
    constant: dict[str, bool] = {}

    def parents(node: Any) -> list[Any]:
        return [i.get_source_output().get_node() for i in node.inputs()]

    def is_constant(node: Any) -> bool:  # weights and what decompresses them
        name = node.get_friendly_name()
        if name not in constant:
            constant[name] = node.get_type_name() in _WEIGHT_PATH and (
                node.get_type_name() == "Constant" or all(map(is_constant, parents(node))))
        return constant[name]

    def low_bit(node: Any) -> bool:
        if node.get_type_name() == "Constant":
            return node.get_output_element_type(0).get_type_name() in _LOW_BIT
        return any(map(low_bit, parents(node)))

    def quantizer(node: Any) -> bool:
        if node.get_type_name() == "FakeQuantize":
            return True
        if is_constant(node):
            return low_bit(node)
        return node.get_type_name() in agnostic and quantizer(parents(node)[0])

    return {op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() in quantizable and not is_constant(op)
            and any(map(quantizer, parents(op)))}


@technique(WeightCompress, format="openvino", targets={"openvino"})
def weight_compress_openvino(model: Model, config: WeightCompress, ctx: StepContext) -> Model:
    import openvino as ov

    nncf = _nncf()
    assert isinstance(model, FileModel)
    ir = ov.Core().read_model(str(model.path))
    kwargs: dict[str, Any] = {"mode": getattr(nncf.CompressWeightsMode, config.mode.upper())}
    if config.mode not in ("int8_sym", "int8_asym"):
        kwargs.update(group_size=config.group_size or -1, ratio=config.ratio,
                      all_layers=config.all_layers)
    compressed = nncf.compress_weights(ir, **kwargs)
    out = ctx.workdir / "model.xml"
    ov.save_model(compressed, str(out), compress_to_fp16=False)
    return FileModel("openvino", out, model.inputs, model.tokenizer, dict(model.session_options))
