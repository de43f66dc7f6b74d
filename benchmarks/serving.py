"""Served throughput and latency: fp32 and the best int8 behind `slimkit serve`, in one run.

Models: the digits CNN (ort-fp32 and ort-int8-static from examples/digits-quantize.yaml:
`static_int8` with its default conv_chain) and MiniLM (ort-fp32 and ort-int8-dynamic from
examples/minilm-quantize.yaml; `--minilm-int8 ort-int8-static-budget` takes the static row
instead: neither the recipe nor benchmarks/minilm_quantization.py names a winner, and the
plain dynamic row needs no calibration search). Rows are built through slimkit.pipeline.build
with the shared Cache, so a rerun serves the same artifacts.

Each artifact is served by `slimkit serve` in its own process on 127.0.0.1 (a free port; ready
when /health answers; stopped with SIGTERM), with dynamic batching (--max-batch 32, the
default) and without (--max-batch 1). fp32 and int8 are up at the same time, idle in turn, and
each load level alternates which goes first, so the two are measured side by side. Load comes
from slimkit.serve.loadtest's `run_level` at concurrency 1, 8 and 32, after a warm-up level;
every request carries one real test row (digits test images; MiniLM test paragraphs at their
own token lengths), turning over the rows.

MiniLM padding. The server cannot be told to pad to max_length: /v1/embed pads each request to
its longest text and the batcher pads a batch to its longest member (`--max-tokens` only bounds
rows x width); max_length padding happens only for a model with a fixed sequence axis. So the
"pad 128" rows send the same paragraphs already tokenized and padded to 128 (as the offline
data is) to /v1/predict, whose batches merge rows of equal shape; MiniLM's output is already
pooled, so both routes answer one 384-vector per text. The two routes differ in more than
padding: /v1/embed tokenizes on the server, /v1/predict parses 2 x 128 ids of JSON.
/v1/embed truncates at the tokenizer's limit, not at 128, so a paragraph over 128 tokens costs
more on "longest" than on "pad 128" (the token lengths are printed).

Offline, slimkit.bench.run_benchmark times the same two artifacts interleaved (batch 32, the
same threads). Claims: no request fails; on digits at concurrency 32 batching gives >= 2x the
throughput of no batching (MiniLM: printed, no claim); served at concurrency 32 with batching
(MiniLM: padding to longest), int8 keeps >= 80 % of its offline speed-up: fp32's cost per
million requests over int8's, divided by the offline throughput ratio. Cost is at $1/hour.
Beside them, what explains them, measured in the same run: what one 32-row call gains over
one-row calls offline (the runtime's part of batching's gain; the server adds the per-call work
it saves, a thread handoff per call), and what a served request costs beyond its model rows (a
fixed cost per request caps the speed-up a faster model can show).

    .venv/bin/python benchmarks/serving.py [--models digits,minilm] [--requests 100000]
        [--duration 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.bench import BenchOptions, Target, run_benchmark
from slimkit.config import load_recipe
from slimkit.data import Dataset, load_data
from slimkit.dataset import tokenize
from slimkit.machine import capabilities, cpu_name
from slimkit.model import load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.runtimes import runtime_format
from slimkit.serve import loadtest
from slimkit.serve.under_load import row_bodies, serving

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
OUT = Path("runs/bench-serving")
DOLLARS_PER_HOUR = 1.0
LEVELS = (1, 8, 32)
BATCHING_GAIN = 2.0  # digits, concurrency 32: batched over unbatched throughput
KEPT = 0.80  # served int8 speed-up over the offline one
JSON = {"Content-Type": "application/json"}
ROWS = {"digits": ("digits-quantize.yaml", "ort-fp32", "ort-int8-static"),
        "minilm": ("minilm-quantize.yaml", "ort-fp32", "ort-int8-dynamic")}


@dataclass
class Payload:
    name: str  # shown in the rows: "rows", "longest", "pad 128"
    path: str
    bodies: list[bytes]


def payloads(model: str, test: Dataset, tokenizer: str | None, limit: int | None
             ) -> tuple[list[Payload], str]:
    """The request bodies, one real row each, and a line describing them."""
    if model != "minilm":
        return [Payload("rows", "/v1/predict", row_bodies(test))], f"{len(test)} test images"
    from slimkit.examples.minilm import paragraphs

    texts = paragraphs()
    texts = texts[len(texts) // 4:][:limit]  # the test split, as load_data reads it
    assert tokenizer is not None
    names = list(test.inputs)
    padded = tokenize(texts, tokenizer, 128, names)
    own = tokenize(texts, tokenizer, 512, ["attention_mask"])["attention_mask"].sum(1)
    embed = [json.dumps({"texts": [t]}).encode() for t in texts]
    pad = [json.dumps({"inputs": {k: padded[k][i].tolist() for k in names}}).encode()
           for i in range(len(texts))]
    note = (f"{len(texts)} test paragraphs, tokens median {int(np.median(own))}, p90 "
            f"{int(np.percentile(own, 90))}, max {int(own.max())}, "
            f"{(own > 128).mean():.0%} over 128")
    return [Payload("longest", "/v1/embed", embed), Payload("pad 128", "/v1/predict", pad)], note


def measure(model: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    recipe_file, fp32_name, int8_name = ROWS[model]
    if model == "minilm":
        int8_name = args.minilm_int8
    recipe = load_recipe(EXAMPLES / recipe_file)
    base = load_model(recipe.model)
    test = load_data(recipe.data, base)
    assert recipe.calibration_spec is not None
    calib = load_data(recipe.calibration_spec, base)
    cache, key = Cache(), model_key(base)
    wanted = {c.name: c for c in recipe.candidates}
    targets = []
    for name in (fp32_name, int8_name):
        c = wanted[name]
        print(f"  building {model} {name}", flush=True)
        built = build(base, key, list(c.steps), runtime_format(c.runtime), cache, data=calib)
        targets.append(Target(name, built.path, c.runtime))
    kinds, note = payloads(model, test, base.tokenizer, recipe.data.limit)
    print(f"  {model} requests: {note}", flush=True)

    opts = BenchOptions(threads=args.threads, batch_size=32, rounds=args.rounds,
                        latency_runs=10, throughput_runs=2)
    res = run_benchmark(targets, test, opts, fp32_name,
                        progress=lambda s: print(f"  offline {s}", flush=True))
    offline = {"ratio": res[int8_name].get("ratios", {}).get("throughput"),
               "error": res[int8_name].get("error") or res[fp32_name].get("error"),
               "fp32": fp32_name, "int8": int8_name,
               # rows/s at batch 32 and ms for one row: their product is what one call of 32
               # rows gains over 32 calls of one row, the runtime's part of batching's gain
               "rows_per_s": {n: res[n].get("throughput") for n in (fp32_name, int8_name)},
               "p50_ms": {n: res[n].get("latency_ms", {}).get("p50")
                          for n in (fp32_name, int8_name)}}

    out = OUT / model
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for max_batch in (32, 1):
        ports: dict[str, int] = {}
        with serving(targets[0].artifact, out / f"{fp32_name}-b{max_batch}.log",
                     max_batch=max_batch, threads=args.threads) as ports[fp32_name], \
                serving(targets[1].artifact, out / f"{int8_name}-b{max_batch}.log",
                        max_batch=max_batch, threads=args.threads) as ports[int8_name]:
            for p in kinds:
                for i, c in enumerate(LEVELS):
                    order = [fp32_name, int8_name] if i % 2 == 0 else [int8_name, fp32_name]
                    for name in order:
                        t = loadtest.Target("http", "127.0.0.1", ports[name], p.path,
                                            p.bodies[0], JSON, p.bodies)
                        warm = min(args.duration, 3.0)
                        loadtest.run_level(t, min(c, 8), 4 * max_batch, warm)
                        lv = loadtest.run_level(t, c, args.requests, args.duration)
                        print(f"  {model} {name} batch {max_batch} {p.name} c={c}: "
                              f"{lv.throughput:.1f} req/s", flush=True)
                        rows.append({"model": model, "artifact": name, "batch": max_batch,
                                     "payload": p.name, "level": lv})
    return rows, offline


def pick(rows: list[dict[str, Any]], name: str, batch: int, payload: str, c: int
         ) -> loadtest.Level:
    return next(r["level"] for r in rows if r["artifact"] == name and r["batch"] == batch
                and r["payload"] == payload and r["level"].concurrency == c)


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'model':<7}{'artifact':<24}{'batch':>6} {'padding':<8}{'conc':>5}{'requests':>9}"
          f"{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}{'$/1M req':>10}")
    for r in rows:
        lv: loadtest.Level = r["level"]
        pad = r["payload"] if r["model"] == "minilm" else "-"
        print(f"{r['model']:<7}{r['artifact']:<24}{r['batch']:>6} {pad:<8}{lv.concurrency:>5}"
              f"{lv.requests:>9}{lv.throughput:>9.1f}{lv.percentile(50) * 1e3:>9.2f}"
              f"{lv.percentile(99) * 1e3:>9.2f}{lv.errors:>7}"
              f"{lv.cost_per_million(DOLLARS_PER_HOUR):>10.4f}")
    for r in rows:
        if r["level"].error_example:
            print(f"first error, {r['model']} {r['artifact']} batch {r['batch']} "
                  f"{r['payload']} c={r['level'].concurrency}: {r['level'].error_example}")


def claims(model: str, rows: list[dict[str, Any]], offline: dict[str, Any]) -> list[str]:
    print(f"\n{model} claims:")
    summary = []
    errors = sum(r["level"].errors for r in rows)
    sent = sum(r["level"].requests for r in rows)
    print(f"  [{'holds' if errors == 0 else 'fails'}] no request fails: {errors} errors in "
          f"{sent} requests")
    top = max(LEVELS)
    main_payload = "longest" if model == "minilm" else "rows"
    for name in (offline["fp32"], offline["int8"]):
        thr, p50 = offline["rows_per_s"][name], offline["p50_ms"][name]
        ceiling = (f"; offline, one call of 32 rows gives {thr * p50 / 1e3:.2f}x the rows/s of "
                   f"one-row calls" if thr and p50 else "")
        for p in sorted({r["payload"] for r in rows}):
            on, off = pick(rows, name, 32, p, top), pick(rows, name, 1, p, top)
            gain = on.throughput / off.throughput if off.throughput else float("inf")
            text = (f"{name}{'' if model != 'minilm' else ' ' + p}, concurrency {top}: batching "
                    f"{on.throughput:.1f} req/s vs {off.throughput:.1f} without, {gain:.2f}x"
                    f"{ceiling if model != 'minilm' else ''}")
            if model == "digits":
                print(f"  [{'holds' if gain >= BATCHING_GAIN else 'fails'}] {text} "
                      f"(>= {BATCHING_GAIN:g}x)")
            else:
                print(f"  [figure] {text}")
            if p == main_payload:
                summary.append(f"{name} batching {gain:.2f}x")
    fp32, int8 = (pick(rows, n, 32, main_payload, top) for n in (offline["fp32"], offline["int8"]))
    served = fp32.cost_per_million(DOLLARS_PER_HOUR) / int8.cost_per_million(DOLLARS_PER_HOUR)
    if offline["ratio"] is None:
        print(f"  [fails] offline benchmark gave no ratio: {offline['error']}")
        summary.append("offline ratio missing")
        return summary
    kept = served / offline["ratio"]
    print(f"  [{'holds' if kept >= KEPT else 'fails'}] served int8 speed-up (concurrency {top}, "
          f"batching{', ' + main_payload if model == 'minilm' else ''}): fp32 "
          f"${fp32.cost_per_million(DOLLARS_PER_HOUR):.4f} / int8 "
          f"${int8.cost_per_million(DOLLARS_PER_HOUR):.4f} per 1M = {served:.2f}x vs offline "
          f"{offline['ratio']:.2f}x: {kept:.0%} kept (>= {KEPT:.0%})")
    summary.append(f"int8 served {served:.2f}x / offline {offline['ratio']:.2f}x = {kept:.0%}")
    same = "pad 128" if model == "minilm" else main_payload  # the rows the offline run timed
    overhead(*(pick(rows, n, 32, same, top) for n in (offline["fp32"], offline["int8"])), offline,
             same)
    return summary


def overhead(fp32: loadtest.Level, int8: loadtest.Level, offline: dict[str, Any],
             payload: str) -> None:
    """What a served request costs beyond its row's share of a 32-row call (HTTP, JSON, the
    load generator on the same cores), and the int8 speed-up that leaves room for: a fixed cost
    per request caps how much a faster model can show."""
    rates = offline["rows_per_s"]
    if not (fp32.throughput and int8.throughput and all(rates.values())):
        return
    row = {n: 1e3 / rates[n] for n in rates}  # ms per row, offline
    extra = {offline["fp32"]: 1e3 / fp32.throughput - row[offline["fp32"]],
             offline["int8"]: 1e3 / int8.throughput - row[offline["int8"]]}
    h = max(0.0, extra[offline["fp32"]])
    cap = (h + row[offline["fp32"]]) / (h + row[offline["int8"]])
    print(f"  [figure] {payload}, concurrency 32, batching: per request beyond the model's rows: "
          + ", ".join(f"{n} {v:.3f} ms" for n, v in extra.items())
          + f" (model: {', '.join(f'{n} {v:.3f} ms/row' for n, v in row.items())}); "
          f"with fp32's {h:.3f} ms per request, int8 can show at most {cap:.2f}x served, "
          f"{cap / offline['ratio']:.0%} of its offline speed-up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,minilm")
    ap.add_argument("--requests", type=int, default=100_000, help="per level at most")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per level at most")
    ap.add_argument("--rounds", type=int, default=3, help="offline interleaved rounds")
    ap.add_argument("--threads", type=int, default=2, help="runtime threads, served and offline")
    ap.add_argument("--minilm-int8", default="ort-int8-dynamic",
                    choices=["ort-int8-dynamic", "ort-int8-static-budget"])
    ap.add_argument("--quick", action="store_true",
                    help="200 requests and 5 s per level, 1 offline round")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.duration, args.rounds = min(args.requests, 200), \
            min(args.duration, 5.0), 1
    logging.getLogger().setLevel(logging.ERROR)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {capabilities().kind()}; "
          f"{args.threads} runtime threads; at most {args.requests} requests or "
          f"{args.duration:g} s per level; ${DOLLARS_PER_HOUR:g}/hour")
    results = {m: measure(m, args) for m in args.models.split(",")}
    summary = []
    for model, (rows, offline) in results.items():
        print_rows(rows)
        summary += [f"{model}: " + s for s in claims(model, rows, offline)]
    print("\nserving: " + "; ".join(summary))


if __name__ == "__main__":
    main()
