"""The model card written beside the chosen model: what it is, how to load and call it, what
it was measured at, and how it was made, so `best/` can be handed on alone."""

from __future__ import annotations

from slimkit.results import Candidate, RunResults

_LOAD = {
    "onnxruntime": ('import onnxruntime as ort\n'
                    'session = ort.InferenceSession("best/model.onnx")\n'
                    'outputs = session.run(None, inputs)  # inputs: name -> numpy array'),
    "openvino": ('import openvino as ov\n'
                 'compiled = ov.Core().compile_model("best/model.xml", "CPU")\n'
                 'outputs = compiled(inputs)  # inputs: name -> numpy array'),
    "litert": ('from ai_edge_litert.interpreter import Interpreter\n'
               'runner = Interpreter(model_path="best/model.tflite").get_signature_runner()\n'
               'outputs = runner(**inputs)  # inputs: argument name -> numpy array'),
    "torch": ('from slimkit.artifact import load_artifact\n'
              'model = load_artifact("best", trust_code=True)  # rebuilds the module\n'
              'outputs = model.module(**inputs)'),
}


def _figure(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def model_card(results: RunResults, c: Candidate) -> str:
    s = results.search
    assert s is not None
    budget = ", ".join(f"{k}={v}" for k, v in s.budget.items() if v is not None)
    r = c.ratios
    quality = ", ".join(f"{k} {_figure(v, '.4f')}" for k, v in (c.quality or {}).items())
    speed = (f"throughput {_figure(r.throughput if r else None, '.2f')}×, latency "
             f"{_figure(r.latency if r else None, '.2f')}×, size "
             f"{_figure(r.size if r else None, '.2f')}×")
    lines = [
        f"# {c.name}",
        "",
        f"Chosen by `slimkit optimize` ({results.slimkit_version}) on {results.created}: the "
        f"best {s.objective} within the budget {budget}, among {len(s.trials)} trials.",
        "",
        f"- runtime: **{c.runtime}**",
        f"- quality: {quality}",
        f"- against the baseline, measured side by side: {speed}",
        f"- size: {_figure((c.size_bytes or 0) / 1e6, '.2f')} MB",
        f"- measured on: {results.machine.cpu if results.machine else 'unknown'}, "
        f"{results.benchmark.threads if results.benchmark else '?'} threads",
        "",
        "## How to load and call it",
        "",
        "```python",
        _LOAD.get(c.runtime, _LOAD["torch"]),
        "```",
        "",
        "Or with slimkit, on any runtime it serves: `slimkit bench best -r " + c.runtime + "`.",
        "",
        "## How it was made",
        "",
    ]
    for k, step in enumerate(c.steps, 1):
        opts = ", ".join(f"{key}={value}" for key, value in step.options.items())
        lines.append(f"{k}. `{step.step}`" + (f" ({opts})" if opts else "")
                     + (f" → {step.format}" if step.format else ""))
    return "\n".join(lines) + "\n"
