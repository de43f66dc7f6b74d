"""CNN int8 that keeps accuracy: slimkit's int8 beside the peers' defaults, in one run per model.

Two models: MobileNetV2 with ImageNet weights (a real depthwise-separable CNN; labels are the
float model's top-1 on natural-photo crops, so accuracy there is top-1 agreement) and the bundled
digits CNN (real labels). The rows are examples/mobilenet-quantize.yaml's, the same rows on
both models, plus the peers as a user following their documentation would call them: ONNX
Runtime `quantize_static` and NNCF `quantize`, each with its defaults and the same calibration
data. Every row is evaluated on the same test data against torch fp32 and benchmarked in the
same interleaved run; the claims are printed beside their figures.

    .venv/bin/python benchmarks/cnn_quantization.py [--rounds 3] [--models mobilenet,digits]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml
from minilm_quantization import peer_nncf, peer_ort

from slimkit.artifact import REPORT_JSON, load_artifact
from slimkit.bench import BenchOptions, Target, run_benchmark
from slimkit.config import parse_recipe
from slimkit.data import load_data
from slimkit.evaluate import collect_outputs, metrics
from slimkit.machine import capabilities, cpu_name
from slimkit.messages import one_line
from slimkit.model import FileModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.run import model_bytes
from slimkit.runtimes import RuntimeOptions, get_runtime, runtime_format

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "mobilenet-quantize.yaml"
OUT = Path("runs/bench-cnn-quantization")
AGREEMENT = 0.97
# Rows with `budget: {max_drop: 1.0}`, by runtime
BUDGET_ROWS = {"onnxruntime": "ort-int8-cle-adaround-budget",
               "openvino": "openvino-int8-cle-adaround-budget"}
# Rows without training that must beat plain int8's agreement on each runtime
NO_TRAINING = {"onnxruntime": ("ort-int8-cle-bc", "ort-int8-static"),
               "openvino": ("openvino-int8-cle-bc", "openvino-int8-nncf")}
PEER_STATIC, PEER_NNCF = "peer: ort quantize_static defaults", "peer: nncf quantize defaults"


def recipe_for(model: str) -> dict[str, Any]:
    raw = yaml.safe_load(RECIPE.read_text())
    if model == "digits":
        raw["name"] = "digits-cnn-int8"
        raw["model"] = {"source": "slimkit.examples.digits:load_model"}
        raw["data"] = {"source": "example", "name": "digits", "split": "test"}
        raw["calibration"] = {"source": "example", "name": "digits", "split": "train"}
        raw["benchmark"]["batch_size"] = 64
    return raw


def measure(model: str, rounds: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    recipe = parse_recipe(recipe_for(model), f"{model} rows")
    base = load_model(recipe.model)
    test = load_data(recipe.data, base)
    assert recipe.calibration_spec is not None
    calib = load_data(recipe.calibration_spec, base)
    cache, key = Cache(), model_key(base)
    targets, budget, failed = [], {}, {}
    for c in recipe.candidates:
        print(f"  building {c.name}", flush=True)
        try:
            built = build(base, key, list(c.steps), runtime_format(c.runtime), cache, data=calib)
        except Exception as e:  # a row that cannot be built is a result too
            failed[c.name] = {"runtime": c.runtime, "error": one_line(str(e))}
            continue
        targets.append(Target(c.name, built.path, c.runtime, c.compile))
        if c.name in BUDGET_ROWS.values():
            budget[c.name] = json.loads(
                (cache.path(built.steps[-1].key) / REPORT_JSON).read_text())
    by_name = {t.name: t for t in targets}
    ort_fp32, ov_fp32 = (load_artifact(by_name[n].artifact) for n in ("ort-fp32", "openvino-fp32"))
    assert isinstance(ort_fp32, FileModel) and isinstance(ov_fp32, FileModel)
    out = OUT / model
    out.mkdir(parents=True, exist_ok=True)
    peer_calib = calib.head(min(len(calib), 300))
    targets += [Target(PEER_STATIC, peer_ort(ort_fp32, peer_calib, out, "static"), "onnxruntime"),
                Target(PEER_NNCF, peer_nncf(ov_fp32, peer_calib, out, transformer=False),
                       "openvino")]
    rows: dict[str, dict[str, Any]] = {}
    reference = None
    for t in targets:
        session = get_runtime(t.runtime, RuntimeOptions(threads=2)).load(load_artifact(t.artifact))
        outputs = collect_outputs(session, test, 32)
        reference = outputs if reference is None else reference
        row: dict[str, Any] = {"runtime": t.runtime,
                               "agreement": metrics.agreement(outputs, reference)}
        if test.labels is not None and model == "digits":
            row["accuracy"] = metrics.accuracy(outputs, test.labels)
        rows[t.name] = row
    opts = BenchOptions(threads=2, batch_size=recipe.benchmark.batch_size, rounds=rounds)
    res = run_benchmark(targets, test, opts, "torch-fp32",
                        progress=lambda note: print("  " + note, flush=True))
    base_size = model_bytes(by_name["torch-fp32"].artifact)
    for t in targets:
        r = res[t.name]
        rows[t.name]["error"] = r.get("error")
        rows[t.name]["throughput"] = r.get("ratios", {}).get("throughput")
        rows[t.name]["size"] = model_bytes(t.artifact) / base_size
    return {**rows, **failed}, budget


def print_rows(model: str, rows: dict[str, dict[str, Any]]) -> None:
    acc = "accuracy" in next(iter(rows.values()))
    print(f"\n{model}: throughput against torch fp32, top-1 agreement with it"
          + (", accuracy on the labels" if acc else ""))
    print(f"{'row':<36}{'runtime':<13}{'thr ×':>7}{'agree':>8}" + (f"{'acc':>8}" if acc else "")
          + f"{'size ×':>8}")
    for name, r in rows.items():
        if r["error"]:
            print(f"{name:<36}{r['runtime']:<13}failed: {r['error']}")
            continue
        print(f"{name:<36}{r['runtime']:<13}{r['throughput']:>6.2f}×{r['agreement']:>8.2%}"
              + (f"{r['accuracy']:>8.2%}" if acc else "") + f"{r['size']:>7.2f}×")


def ours(rows: dict[str, dict[str, Any]], runtime: str) -> dict[str, dict[str, Any]]:
    return {n: r for n, r in rows.items() if r["runtime"] == runtime and "int8" in n
            and not n.startswith("peer") and not r["error"]}


def claims(model: str, rows: dict[str, dict[str, Any]], budget: dict[str, Any]) -> None:
    print(f"\n{model} claims:")
    nncf = rows[PEER_NNCF]
    for runtime in ("onnxruntime", "openvino"):
        mine = ours(rows, runtime)
        best = max(mine, key=lambda n: mine[n]["agreement"])
        a = mine[best]["agreement"]
        print(f"  [{'holds' if a >= AGREEMENT else 'fails'}] {runtime}: slimkit int8 with >= "
              f"{AGREEMENT:.0%} agreement: best {best} {a:.2%}")
        good = {n: r for n, r in mine.items() if r["agreement"] >= AGREEMENT}
        if good:
            fast = max(good, key=lambda n: good[n]["throughput"])
            t = good[fast]["throughput"]
            print(f"  [{'holds' if t >= nncf['throughput'] else 'fails'}] {runtime}: at >= "
                  f"{AGREEMENT:.0%}, {fast} {t:.2f}× vs NNCF's default {nncf['throughput']:.2f}× "
                  f"({nncf['agreement']:.2%})")
        else:
            print(f"        no row reaches {AGREEMENT:.0%}")
        at_speed = {n: r for n, r in mine.items() if r["throughput"] >= nncf["throughput"]}
        if at_speed:
            top = max(at_speed, key=lambda n: at_speed[n]["agreement"])
            print(f"        best agreement at NNCF's speed or faster: {top} "
                  f"{at_speed[top]['agreement']:.2%} ({at_speed[top]['throughput']:.2f}×)")
        else:
            fast = max(mine, key=lambda n: mine[n]["throughput"])
            print(f"        no row as fast as NNCF's default ({nncf['throughput']:.2f}×); fastest "
                  f"{fast} {mine[fast]['throughput']:.2f}× at {mine[fast]['agreement']:.2%}")
        cle, plain = NO_TRAINING[runtime]
        if rows[cle].get("error") or rows[plain].get("error"):
            print(f"  [fails] {runtime}: {cle} or {plain} did not build")
            continue
        gain = rows[cle]["agreement"] - rows[plain]["agreement"]
        # both at 100 % leaves nothing to beat
        verdict = "holds" if gain > 0 else "ceiling" if rows[plain]["agreement"] == 1 else "fails"
        print(f"  [{verdict}] {runtime}: equalization + bias correction "
              f"{rows[cle]['agreement']:.2%} vs {plain} {rows[plain]['agreement']:.2%}")
    for name in BUDGET_ROWS.values():
        if rows.get(name, {}).get("error"):
            print(f"  [fails] {name}: {rows[name]['error']}")
            continue
        drop = 100 * (1 - rows[name]["agreement"])
        r = budget.get(name) or {}
        kept = len(r.get("kept_float") or r.get("reverted") or [])
        print(f"  [{'holds' if drop <= 1.0 else 'fails'}] {name}, budget max_drop 1.0: "
              f"evaluation drop {drop:.2f} points at {rows[name]['throughput']:.2f}× (on its "
              f"calibration rows: search {r.get('accuracy_drop')}, held out "
              f"{r.get('heldout_accuracy_drop')} by {r.get('heldout_by')}; {kept} layers kept "
              f"in float)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="mobilenet,digits")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {capabilities().kind()}")
    results = {m: measure(m, args.rounds) for m in args.models.split(",")}
    for model, (rows, budget) in results.items():
        print_rows(model, rows)
        claims(model, rows, budget)


if __name__ == "__main__":
    main()
