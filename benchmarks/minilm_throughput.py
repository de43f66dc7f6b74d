"""Throughput of every minilm candidate vs torch fp32, sequence length 128, measured in one run.

Builds (or reuses from the cache) the candidates of examples/minilm.yaml, benchmarks them in
interleaved rounds, each turn in a fresh process, and prints per candidate the median of the
per-round throughput ratios with their spread, latency, and the share of the cores'
nominal peak (in the candidate's own arithmetic) that it reaches. The last line is a summary.

    .venv/bin/python benchmarks/minilm_throughput.py [--rounds 7] [--batch-size 32]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slimkit.bench import BenchOptions, Target, run_benchmark
from slimkit.config import load_recipe
from slimkit.data import load_data
from slimkit.machine import cpu_flags
from slimkit.model import load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.runtimes import runtime_format

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "minilm.yaml"


def flops_per_sequence(model: object, seq_len: int) -> float:
    """FLOPs of one sequence through the fp32 torch model, counted by torch itself."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.ones(1, seq_len, dtype=torch.int64)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.module(ids, torch.ones_like(ids))  # type: ignore[attr-defined]
    return float(counter.get_total_flops())


# Peak multiplier of the arithmetic a candidate mostly runs in, relative to fp32 FMA:
# bf16 dot products (avx512_bf16) do twice the work per instruction, int8 (VNNI) four times.
DTYPE_FACTOR = {"cast": 2, "dynamic_int8": 4}


def peak_factor(steps: list[object]) -> int:
    return max([DTYPE_FACTOR.get(getattr(s, "technique", ""), 1) for s in steps] or [1])


def nominal_peak_gflops(threads: int) -> tuple[float, str]:
    """fp32 FMA peak of the cores used: lanes x 2 flops x 2 FMA units x clock.

    The clock is what /proc/cpuinfo reports now, not the boost clock, so a very efficient
    candidate can show more than 100%: read the column as a relative gauge of headroom.
    """
    mhz = 0.0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                mhz = max(mhz, float(line.split(":")[1]))
    lanes = 16 if any(f.startswith("avx512") for f in cpu_flags()) else 8
    peak = threads * mhz / 1000 * lanes * 2 * 2
    return peak, f"{threads} cores x {mhz / 1000:.2f} GHz x {lanes} lanes x 2 FMA units x 2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    recipe = load_recipe(RECIPE)
    base = load_model(recipe.model)
    data = load_data(recipe.data.model_copy(update={"max_length": 128}), base)
    cache = Cache()
    key = model_key(base)
    targets = []
    factors = {}
    for c in recipe.candidates:
        factors[c.name] = peak_factor(list(c.steps))
        built = build(base, key, list(c.steps), runtime_format(c.runtime), cache)
        targets.append(Target(c.name, built.path, c.runtime))
    opts = BenchOptions(threads=args.threads, batch_size=args.batch_size, rounds=args.rounds,
                        latency_runs=10, throughput_runs=2)
    print(f"minilm, sequence 128, batch {args.batch_size}, {args.threads} threads, "
          f"{args.rounds} interleaved rounds, each turn in a fresh process")
    res = run_benchmark(targets, data, opts, recipe.baseline.name,
                        progress=lambda note: print("  " + note, flush=True))
    flops = flops_per_sequence(base, 128)
    peak, how = nominal_peak_gflops(args.threads)
    base_rounds = res[recipe.baseline.name]["throughput_rounds"]
    print(f"\n{'candidate':<22}{'thr ×':>8}{'spread':>16}{'seq/s':>9}{'p50 ms':>9}"
          f"{'GFLOP/s':>9}{'% of peak':>11}")
    summary = []
    for t in targets:
        r = res[t.name]
        if "error" in r:
            print(f"{t.name:<22}failed: {r['error']}")
            continue
        per_round = [c / b for c, b in zip(r["throughput_rounds"], base_rounds, strict=True)]
        gflops = r["throughput"] * flops / 1e9
        print(f"{t.name:<22}{r['ratios']['throughput']:>7.2f}×"
              f"{f'{min(per_round):.2f}–{max(per_round):.2f}':>16}{r['throughput']:>9.1f}"
              f"{r['latency_ms']['p50']:>9.2f}{gflops:>9.0f}"
              f"{100 * gflops / (peak * factors[t.name]):>10.0f}%")
        summary.append(f"{t.name} {r['ratios']['throughput']:.2f}x")
    print(f"\n{flops / 1e9:.2f} GFLOP per sequence (padding included, as the runtimes compute "
          f"it); nominal fp32 peak {peak:.0f} GFLOP/s ({how}); bf16 rows against 2x that, "
          "int8 rows against 4x")
    print("minilm seq128 throughput vs torch-fp32: " + ", ".join(summary))


if __name__ == "__main__":
    main()
