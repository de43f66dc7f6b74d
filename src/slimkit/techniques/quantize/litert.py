"""int8 LiteRT models through litert-torch's PT2E quantizer, converted as they are quantized.

LiteRT's int8 kernels come from the converter reading PT2E's quantize/dequantize pairs, so the
quantizer needs the torch model and gives a `.tflite`: the step takes torch and makes litert.
`dynamic` stores int8 weights and quantizes activations per batch at run time (no data);
`static` calibrates activation ranges on the step's calibration data for a fully int8 graph.
Both are symmetric, per output channel by default, as the XNNPACK int8 kernels expect.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from slimkit.dataset import Dataset
from slimkit.errors import TechniqueError
from slimkit.formats.base import first_line
from slimkit.formats.litert import quiet
from slimkit.formats.litert_export import EXPORT_BATCH, litert_torch, sample_args, to_litert
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.space import Choice, Space


class LitertInt8(TechniqueConfig):
    technique: Literal["litert_int8"] = "litert_int8"
    family = "quantization"
    space: ClassVar[Space] = {"mode": Choice("dynamic", "static"),
                               "per_channel": Choice(True, False)}
    always_shown = ("mode",)
    version = 1
    mode: Literal["dynamic", "static"] = Field(
        "dynamic", description="dynamic: int8 weights, activations quantized per batch; "
                               "static: activations too, calibrated on the calibration data")
    per_channel: bool = Field(True, description="one weight scale per output channel")
    samples: int = Field(256, ge=EXPORT_BATCH, description="static: calibration examples")

    def needs_data(self) -> bool:
        return self.mode == "static"


@technique(LitertInt8, format="torch", makes="litert", targets={"litert"})
def litert_int8(model: Model, config: LitertInt8, ctx: StepContext) -> StepResult:
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    assert isinstance(model, TorchModel)
    static = config.mode == "static"
    if static and ctx.data is None:
        raise TechniqueError("litert_int8 static needs calibration data")
    litert_torch()  # one line naming the extra when it is missing
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(
        is_per_channel=config.per_channel, is_dynamic=not static))
    kwargs = sample_args(model, ctx.data)
    try:
        with quiet():
            graph = torch.export.export(model.module.eval(), (), kwargs).module()
            graph = prepare_pt2e(graph, quantizer)
    except Exception as e:
        raise TechniqueError(f"litert_int8: torch.export failed ({first_line(e)})") from e
    if static:
        rows = _calibrate(graph, model, ctx.data, config.samples)
    else:  # weight observers record their ranges only when the graph runs
        with torch.no_grad():
            graph(**kwargs)
    with quiet():
        graph = convert_pt2e(graph, fold_quantize=False)
        move_exported_model_to_eval(graph)
    made = to_litert(model, ctx.workdir / "model.tflite", ctx.data, graph=graph,
                     quant_config=QuantConfig(pt2e_quantizer=quantizer))
    report: dict[str, Any] = {"mode": config.mode, "per_channel": config.per_channel}
    if static:
        report["calibration_rows"] = rows
    return StepResult(made, report=report)


def _calibrate(graph: Any, model: TorchModel, data: Dataset | None, samples: int) -> int:
    """Observe activation ranges in batches of the export batch, the only shape the exported
    graph takes; an odd row left over is not seen."""
    import numpy as np
    import torch

    from slimkit.progress import progress_bar

    assert data is not None
    n = min(samples, len(data)) // EXPORT_BATCH * EXPORT_BATCH
    if n == 0:
        raise TechniqueError(f"litert_int8 static needs at least {EXPORT_BATCH} calibration "
                             f"rows, got {len(data)}")
    names = [i.name for i in model.inputs]
    with torch.no_grad(), progress_bar("calibrating", total=n) as advance:
        for start in range(0, n, EXPORT_BATCH):
            graph(**{k: torch.from_numpy(np.ascontiguousarray(
                data.inputs[k][start : start + EXPORT_BATCH])) for k in names})
            advance(EXPORT_BATCH)
    return n
