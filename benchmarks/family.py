"""Low-rank, clustering, architecture search and early exits, each claim beside its figure.

The techniques just added each come with a claim that only a runtime can settle (a factorised
or searched model is faster only if ONNX Runtime says so; clustering is worth it only in bytes
on disk; early exits only in measured per-request latency). This script builds every row through
the pipeline cache (a rerun only measures again), evaluates all rows of a model on its test split
against ONNX Runtime fp32, times them in one interleaved run against that baseline, and sets
each technique beside the established one at the same FLOPs or the same measured latency:

- digits CNN: `low_rank` flops 0.5 + distillation vs `prune_channels` at low_rank's model FLOPs
  (same distillation); `prune_magnitude` 0.8 -> `cluster` 16 (lzma-coded indices) by artifact
  bytes; `nas` under latency 0.4 vs `prune_channels` at the FLOPs whose measured latency is
  nearest nas's; `early_exit`'s threshold curve on ONNX Runtime at batch 1 (`exit_curve`).
- MiniLM: `low_rank` on the encoder's Linear layers at 0.7 vs `prune_transformer` at the same
  model FLOPs, each distilled for at most --minutes; `cluster` 16 on the encoder; `nas` under
  latency 0.6 vs `prune_transformer` at the nearest measured latency. No claim on which wins.

Data, seeds and batch sizes are the examples' (examples/digits-prune.yaml, minilm-prune.yaml).
The last line is a summary.

    .venv/bin/python benchmarks/family.py [--models digits,minilm] [--rounds 5] [--minutes 15]
    .venv/bin/python benchmarks/family.py --quick     # digits only, tiny epochs: a smoke check
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
from typing import Any

from family_rows import BASELINE, THREADS, Bench, Claims, Row, closest, model_flops_ratio, out_dir

from slimkit.artifact import load_artifact
from slimkit.machine import capabilities, cpu_name
from slimkit.techniques.early_exit import CURVE
from slimkit.techniques.early_exit.curve import exit_curve

DIGITS: dict[str, Any] = {
    "source": "slimkit.examples.digits:load_model", "task": "classification", "batch_size": 64,
    "test": {"source": "example", "name": "digits", "split": "test"},
    "calib": {"source": "example", "name": "digits", "split": "train"}}
MINILM: dict[str, Any] = {
    "source": "slimkit.examples.minilm:load_model", "task": "embedding", "batch_size": 32,
    "test": {"source": "example", "name": "minilm", "split": "test", "max_length": 128,
             "limit": 256},
    "calib": {"source": "example", "name": "minilm", "split": "train", "max_length": 128}}
ENCODER = "encoder.encoder"  # MeanPoolEmbedder.encoder (BertModel) .encoder: the layer stack


def _same(b: Bench, name: str, steps: list[dict[str, Any]], note: str = "") -> Row:
    """A row by name, built once even when two comparisons land on the same setting."""
    return b.rows[name] if name in b.rows else b.add(name, steps, note=note)


def _flops(value: float | None, default: float) -> float:
    return round(min(1.0, max(0.05, value if value is not None else default)), 2)


def digits(claims: Claims, rounds: int, quick: bool) -> None:
    b = Bench("digits", **DIGITS)
    recover = {"distill": {"epochs": 1 if quick else 10, "lr": 0.001}}  # digits-prune's

    def channels(f: float, note: str = "") -> Row:
        return _same(b, f"prune_channels {f:g} + distill",
                     [{"prune_channels": {"flops_ratio": f}}, recover], note)

    b.add(BASELINE, [])
    low = b.add("low_rank 0.5 + distill", [{"low_rank": {"flops": 0.5}}, recover])
    f_low = _flops(model_flops_ratio(b.report(low, "low_rank")), 0.5)
    low.note = f"model FLOPs {f_low:.2f}"
    same_flops = channels(f_low, "at low_rank's model FLOPs")
    search = {"latency": 0.4} | ({"trials": 3, "proxy_steps": 5, "epochs": 1, "rounds": 1}
                                 if quick else {})
    nas = b.add("nas latency 0.4", [{"nas": search}])
    nas_report = b.report(nas, "nas")
    f_nas = nas_report.get("flops_ratio")
    if nas_report:
        nas.note = f"{nas_report.get('winner_summary', '')}, FLOPs {_flops(f_nas, 0.4):.2f}"
    # at batch 1 a small CNN's latency falls slower than its FLOPs: try well below nas's
    tries = {_flops(f_nas, 0.3)} | (set() if quick else {0.3, 0.2, 0.15})
    matches = [channels(f, "latency match try") for f in sorted(tries)]
    b.add("torch-fp32", [], runtime="torch")
    sparse = {"sparsity": 0.8, "schedule": "polynomial", "epochs": 1 if quick else 8,
              "lr": 0.001}
    sparse_only = b.add("prune_magnitude 0.8", [{"prune_magnitude": sparse}], runtime="torch",
                        note="the cluster row's first step (cached)")
    shared = b.add("prune_magnitude 0.8 -> cluster 16", [
        {"prune_magnitude": sparse},
        {"cluster": {"clusters": 16, "coding": "lzma", "epochs": 1 if quick else 3}}],
        runtime="torch", note="lzma-coded indices")
    exits = b.add("early_exit", [{"early_exit": {"epochs": 1 if quick else 8}}],
                  note="at its default threshold 0.9")
    b.evaluate()
    b.time([r.name for r in b.rows.values() if r.runtime == "onnxruntime" and r is not exits],
           rounds, latency_runs=20, throughput_runs=3)
    b.print_rows({r: "torch-fp32" for r in ("torch-fp32", sparse_only.name, shared.name)})

    print("\ndigits claims:")
    thr, drop = low.throughput(), b.accuracy_drop(low)
    claims.add(None if thr is None else thr >= 1.4,
               f"low_rank 0.5 + distill: ORT throughput >= 1.4x unfactorised: "
               f"{_x(thr)} (prune_channels {f_low:g}: {_x(same_flops.throughput())})")
    claims.add(None if drop is None else drop <= 1.0,
               f"low_rank 0.5 + distill: accuracy drop <= 1 point: {_pt(drop)} "
               f"(prune_channels {f_low:g}: {_pt(b.accuracy_drop(same_flops))})")
    size, drop = b.size(shared, "torch-fp32"), b.accuracy_drop(shared, "torch-fp32")
    claims.add(None if size is None else size <= 1 / 15,
               f"prune_magnitude 0.8 -> cluster 16: artifact <= 1/15 of fp32: "
               f"{_x(size, 4)} (1/{1 / size:.1f})" if size else "prune -> cluster: no size")
    claims.add(None if drop is None else drop <= 1.0,
               f"prune_magnitude 0.8 -> cluster 16: accuracy drop <= 1 point: {_pt(drop)} "
               f"(prune_magnitude alone: {_pt(b.accuracy_drop(sparse_only, 'torch-fp32'))})")
    drop, lat = b.accuracy_drop(nas), nas.latency()
    claims.add(None if drop is None else drop <= 1.0,
               f"nas latency 0.4: accuracy drop <= 1 point: {_pt(drop)}")
    claims.info(f"nas winner measured here at {_x(lat)} the teacher's batch-1 latency "
                f"(its own search: {_x(nas_report.get('latency_ratio'))}; budget 0.40x)")
    match = closest(matches, lat)
    if match is not None:
        claims.info(f"{match.name} at the nearest latency {_x(match.latency())}: accuracy drop "
                    f"{_pt(b.accuracy_drop(match))} (tried FLOPs {sorted(tries)})")
    early_exit(b, exits, claims, rounds)


def early_exit(b: Bench, exits: Row, claims: Claims, rounds: int) -> None:
    """The threshold curve on the test split, batch 1, median ratio over `rounds` curves."""
    if not exits.ok or not b.rows[BASELINE].ok:
        claims.add(None, f"early_exit: no model ({exits.error})")
        return
    assert exits.built is not None and b.rows[BASELINE].built is not None
    model = load_artifact(exits.built.path, trust_code=True)
    full = load_artifact(b.rows[BASELINE].built.path)
    curves = [exit_curve(model, b.test, CURVE, runtime="onnxruntime", threads=THREADS,
                         workdir=out_dir("digits") / "early-exit", full=full)
              for _ in range(rounds)]
    base = curves[0]["full_model"]["accuracy"]
    print(f"\nearly_exit on ONNX Runtime, batch 1, {len(b.test)} test rows, {rounds} curve(s); "
          f"full model {base:.2%}, {curves[0]['full_model']['mean_ms']:.3f} ms")
    best: tuple[float, float, float] | None = None
    for i, row in enumerate(curves[0]["thresholds"]):
        ratio = statistics.median(c["thresholds"][i]["mean_ms"] / c["full_model"]["mean_ms"]
                                  for c in curves)
        lost = 100 * (base - row["accuracy"])
        rate = "/".join(f"{r:.0%}" for r in row["exit_rate"])
        print(f"  threshold {row['threshold']:<5g} accuracy {row['accuracy']:.2%} "
              f"({lost:+.2f} pt lost)  latency {ratio:.2f}x  exits {rate}")
        if lost <= 0.5 and (best is None or ratio < best[1]):
            best = (row["threshold"], ratio, lost)
    if best is None:
        claims.add(False, "early_exit: no threshold loses <= 0.5 points")
        return
    claims.add(best[1] <= 0.7, f"early_exit at threshold {best[0]:g} (loses {best[2]:.2f} pt "
               f"<= 0.5): mean batch-1 latency <= 0.7x the full model's: {best[1]:.2f}x")


def minilm(claims: Claims, rounds: int, minutes: float) -> None:
    b = Bench("minilm", **MINILM)
    recover = {"distill": {"loss": "embedding", "hidden": "all", "precision": "bf16",
                           "schedule": "linear", "epochs": 4, "lr": 0.0003, "batch_size": 32,
                           "max_minutes": minutes}}  # minilm-prune's, capped at --minutes

    def pruned(f: float, note: str = "") -> Row:
        return _same(b, f"prune_transformer {f:g} + distill", [
            {"prune_transformer": {"flops_ratio": f, "heads_share": 0.3, "samples": 1024}},
            recover], note)

    b.add(BASELINE, [])
    low = b.add("low_rank encoder 0.7 + distill",
                [{"low_rank": {"flops": 0.7, "layers": [ENCODER],
                                  # the scan runs the encoder once per layer and level:
                                  # 36 layers x 5 levels x 256 texts was 20+ minutes
                                  "samples": 64, "levels": [0.5, 0.25]}}, recover])
    f_low = _flops(model_flops_ratio(b.report(low, "low_rank")), 0.7)
    low.note = f"model FLOPs {f_low:.2f}"
    same_flops = pruned(f_low, "at low_rank's model FLOPs")
    nas = b.add("nas latency 0.6", [{"nas": {"latency": 0.6, "epochs": 4, "minutes": minutes,
                                             "lr": 0.0003, "batch_size": 32}}])
    nas_report = b.report(nas, "nas")
    nas.note = str(nas_report.get("winner_summary", ""))
    tries = {_flops(nas_report.get("flops_ratio"), 0.6), 0.6}
    matches = [pruned(f, "latency match try") for f in sorted(tries)]
    b.add("torch-fp32", [], runtime="torch")
    shared = b.add("cluster 16 (encoder)", [{"cluster": {"clusters": 16,
                                                         "layers": [f"{ENCODER}.*"]}}],
                   runtime="torch", note="embeddings left float")
    b.evaluate()
    b.time([r.name for r in b.rows.values() if r.runtime == "onnxruntime"], rounds,
           latency_runs=10, throughput_runs=2)
    b.print_rows({r: "torch-fp32" for r in ("torch-fp32", shared.name)})

    print("\nminilm figures (no claim on which wins):")
    cos = {r.name: r.quality.get("mean_cosine") for r in b.rows.values()}
    claims.info(f"low_rank encoder 0.7 + distill ({minutes:g} min): ORT throughput "
                f"{_x(low.throughput())}, mean cosine {_c(cos[low.name])}; prune_transformer "
                f"{f_low:g}: {_x(same_flops.throughput())}, {_c(cos[same_flops.name])}")
    claims.info(f"cluster 16 on the encoder: size {_x(b.size(shared, 'torch-fp32'), 3)}, "
                f"mean cosine {_c(cos[shared.name])}")
    match = closest(matches, nas.latency())
    claims.info(f"nas latency 0.6 ({minutes:g} min): measured latency {_x(nas.latency())}, "
                f"mean cosine {_c(cos[nas.name])}; " + (
                    f"{match.name} at {_x(match.latency())}: {_c(cos[match.name])}"
                    if match is not None else "no prune_transformer row timed"))


def _x(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def _pt(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f} pt"


def _c(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,minilm")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; "
                    "1 with --quick)")
    ap.add_argument("--minutes", type=float, default=15.0,
                    help="training cap of every MiniLM row, minutes")
    ap.add_argument("--quick", action="store_true", help="digits only, tiny epochs")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    rounds = args.rounds or (1 if args.quick else 5)
    models = ["digits"] if args.quick else args.models.split(",")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {capabilities().kind()}; "
          f"{THREADS} threads per runtime, {rounds} round(s)", flush=True)
    claims = Claims()
    for model in models:
        if model == "digits":
            digits(claims, rounds, args.quick)
        elif model == "minilm":
            minilm(claims, rounds, args.minutes)
        else:
            raise SystemExit(f"unknown model {model!r} (digits, minilm)")
    print(f"\nfamily ({', '.join(models)}): {claims.held} of {claims.total} claims hold"
          + (" (quick: tiny epochs, not the claims' settings)" if args.quick else ""))


if __name__ == "__main__":
    main()
