"""int8/int4 on MiniLM: slimkit's candidates beside the peers' default settings, in one run.

Peer rows are made by calling each quantizer with its defaults, as a user following its
documentation would: ONNX Runtime `quantize_dynamic` and `quantize_static` (calibrated on the
same paragraphs), and NNCF `quantize` with `model_type=TRANSFORMER`. slimkit's rows come from
examples/minilm-quantize.yaml. "× own fp32" compares a row with the float model on its own
runtime: ONNX Runtime, OpenVINO, or compiled torch for torchao's rows. Every row is evaluated
on the same test paragraphs against torch fp32 and benchmarked in the same interleaved run.
The last line is a summary.

    .venv/bin/python benchmarks/minilm_quantization.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from slimkit.artifact import load_artifact, save_artifact
from slimkit.bench import BenchOptions, Target, run_benchmark
from slimkit.config import load_recipe
from slimkit.data import Dataset, load_data
from slimkit.evaluate import collect_outputs, evaluate_outputs
from slimkit.model import FileModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.run import model_bytes
from slimkit.runtimes import RuntimeOptions, get_runtime, runtime_format

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "minilm-quantize.yaml"
OUT = Path("runs/bench-minilm-quantization")


def peer_ort(fp32: FileModel, calib: Dataset, out: Path, kind: str) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    dest = out / f"peer-ort-{kind}-defaults"
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / "model.onnx"
        if kind == "dynamic":
            quantize_dynamic(fp32.path, q)
        else:
            batches = iter([calib.slice(i, i + 8) for i in range(0, len(calib), 8)])

            class Reader(CalibrationDataReader):
                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(batches, None)

            quantize_static(fp32.path, q, Reader())
        save_artifact(FileModel("onnx", q, fp32.inputs, fp32.tokenizer), dest)
    return dest


def peer_nncf(ov_fp32: FileModel, calib: Dataset, out: Path, transformer: bool = True) -> Path:
    import nncf
    import openvino as ov

    ir = ov.Core().read_model(str(ov_fp32.path))
    names = [p.get_any_name() for p in ir.inputs]
    items = [{k: calib.inputs[k][i : i + 1] for k in names} for i in range(len(calib))]
    kind = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    q = nncf.quantize(ir, nncf.Dataset(items), **kind)
    dest = out / "peer-nncf-defaults"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.xml"
        ov.save_model(q, str(path), compress_to_fp16=False)
        save_artifact(FileModel("openvino", path, ov_fp32.inputs, ov_fp32.tokenizer), dest)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)

    recipe = load_recipe(RECIPE)
    base = load_model(recipe.model)
    test = load_data(recipe.data, base)
    calib_spec = recipe.calibration_spec
    assert calib_spec is not None
    calib = load_data(calib_spec, base)
    cache, key = Cache(), model_key(base)
    targets: list[Target] = []
    for c in recipe.candidates:
        built = build(base, key, list(c.steps), runtime_format(c.runtime), cache, data=calib)
        targets.append(Target(c.name, built.path, c.runtime, c.compile))
    by_name = {t.name: t for t in targets}
    ort_fp32 = load_artifact(by_name["ort-fp32"].artifact)
    ov_fp32 = load_artifact(by_name["openvino-fp32"].artifact)
    assert isinstance(ort_fp32, FileModel) and isinstance(ov_fp32, FileModel)
    OUT.mkdir(parents=True, exist_ok=True)
    peers = [Target("peer: ort quantize_dynamic defaults",
                    peer_ort(ort_fp32, calib, OUT, "dynamic"), "onnxruntime"),
             Target("peer: ort quantize_static defaults",
                    peer_ort(ort_fp32, calib, OUT, "static"), "onnxruntime"),
             Target("peer: nncf quantize (transformer)", peer_nncf(ov_fp32, calib, OUT),
                    "openvino")]
    targets += peers

    quality: dict[str, dict[str, float]] = {}
    reference = None
    for t in targets:
        session = get_runtime(t.runtime, RuntimeOptions(threads=2)).load(
            load_artifact(t.artifact))
        out = collect_outputs(session, test, 32)
        reference = out if reference is None else reference
        quality[t.name] = evaluate_outputs("embedding", out, reference, None)
    opts = BenchOptions(threads=2, batch_size=32, rounds=args.rounds, latency_runs=10,
                        throughput_runs=2)
    print(f"minilm, sequence 128, batch 32, 2 threads, {args.rounds} interleaved rounds; "
          f"fidelity on {len(test)} test paragraphs against torch fp32")
    res = run_benchmark(targets, test, opts, "torch-fp32",
                        progress=lambda note: print("  " + note, flush=True))
    ort_thr = res["ort-fp32"]["throughput"]
    ov_thr = res["openvino-fp32"]["throughput"]
    own_fp32 = {"onnxruntime": ort_thr, "openvino": ov_thr,
                "torch": res["torch-fp32-compiled"]["throughput"]}
    base_size = model_bytes(by_name["torch-fp32"].artifact)
    print(f"\n{'candidate':<38}{'thr ×':>7}{'× own fp32':>11}{'cosine':>8}{'min cos':>9}"
          f"{'top-10':>8}{'size ×':>8}")
    summary = []
    for t in targets:
        r, q = res[t.name], quality[t.name]
        if "error" in r:
            print(f"{t.name:<38}failed: {r['error']}")
            continue
        own = r["throughput"] / own_fp32[t.runtime]
        own_txt = "-" if t.name.startswith("torch-fp32") else f"{own:.2f}×"
        print(f"{t.name:<38}{r['ratios']['throughput']:>6.2f}×{own_txt:>11}"
              f"{q['mean_cosine']:>8.4f}{q['min_cosine']:>9.4f}{q['top10_agreement']:>8.3f}"
              f"{model_bytes(t.artifact) / base_size:>7.2f}×")
        summary.append(f"{t.name} {r['ratios']['throughput']:.2f}x/{q['mean_cosine']:.4f}")
    print("\nminilm int8 (throughput vs torch fp32 / mean cosine): " + "; ".join(summary))


if __name__ == "__main__":
    main()
