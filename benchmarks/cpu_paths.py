"""ONNX Runtime int8 operand types on this CPU: u8s8 (the default), reduce_range (7-bit
weights) and u8u8, for dynamic and static int8 on MiniLM and on the digits CNN.

Fidelity is scored against the model's own ONNX Runtime fp32 on held-out data (mean and min
cosine; for digits, top-1 agreement and accuracy); throughput is measured in one interleaved
run per model with the fp32 model as the baseline, so every ratio comes from the same run.
The last lines say which mode slimkit's `auto` picks here, and why.

    .venv/bin/python benchmarks/cpu_paths.py [--rounds 3] [--limit 128]
"""

from __future__ import annotations

import argparse
import logging

import numpy as np

from slimkit.bench import BenchOptions, Target, run_benchmark
from slimkit.data import Dataset, DataSpec, load_data
from slimkit.evaluate import collect_outputs
from slimkit.machine import capabilities, cpu_name
from slimkit.model import load_model
from slimkit.pipeline import Built, Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.runtimes import RuntimeOptions, get_runtime
from slimkit.techniques.quantize.ort_kernels import MODES, pick_int8_mode

MODELS = {
    "minilm": ("slimkit.examples.minilm:load_model", 32),
    "digits": ("slimkit.examples.digits:load_model", 64),
}


def outputs(built: Built, data: Dataset) -> np.ndarray:
    from slimkit.artifact import load_artifact

    session = get_runtime("onnxruntime", RuntimeOptions(threads=2)).load(
        load_artifact(built.path, trust_code=True))
    return collect_outputs(session, data, 32)


def fidelity(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> str:
    a, b = out.reshape(len(out), -1), ref.reshape(len(ref), -1)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                      1e-12)
    text = f"cos {cos.mean():.4f} min {cos.min():.4f}"
    if labels is not None:
        text += (f"  top-1 agree {100 * (out.argmax(1) == ref.argmax(1)).mean():5.1f}%"
                 f"  acc {100 * (out.argmax(1) == labels).mean():5.1f}%")
    return text


def one_model(name: str, rounds: int, limit: int) -> list[str]:
    source, batch = MODELS[name]
    model = load_model(source)
    test = load_data(DataSpec(source="example", name=name, limit=limit), model)
    calib = load_data(DataSpec(source="example", name=name, split="calibration"), model)
    cache, key = Cache(), model_key(model)
    rows: dict[str, Built] = {"ort-fp32": build(model, key, [], "onnx", cache)}
    for method in ("dynamic_int8", "static_int8"):
        for mode in MODES:
            step = parse_step({method: {"int8_mode": mode}})
            rows[f"{method} {mode}"] = build(model, key, [step], "onnx", cache, data=calib)
    ref = outputs(rows["ort-fp32"], test)
    quality = {n: fidelity(outputs(b, test), ref, test.labels) for n, b in rows.items()}
    opts = BenchOptions(threads=2, batch_size=batch, rounds=rounds, latency_runs=10,
                        throughput_runs=2)
    targets = [Target(n, b.path, "onnxruntime") for n, b in rows.items()]
    res = run_benchmark(targets, test, opts, "ort-fp32",
                        progress=lambda note: print("  " + note, flush=True))
    lines = [f"\n{name}: ONNX Runtime, batch {batch}, 2 threads, {rounds} interleaved rounds, "
             f"fidelity on {len(test)} held-out rows against ONNX Runtime fp32",
             f"{'setting':<28}{'thr × fp32':>11}  fidelity"]
    for n in rows:
        r = res[n]
        thr = "failed" if "error" in r else f"{r['ratios']['throughput']:.2f}×"
        lines.append(f"{n:<28}{thr:>11}  {quality[n]}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=128, help="held-out rows scored and timed")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    caps = capabilities()
    lines = []
    for name in args.models:
        lines += one_model(name, args.rounds, args.limit)
    print("\n".join(lines))
    mode, why = pick_int8_mode(caps)
    print(f"\nCPU: {cpu_name()} ({caps.kind()}; features from {caps.source})")
    print(f"slimkit picks: {mode} ({why})")


if __name__ == "__main__":
    main()
