"""Memory of activation statistics for torchao static int8 on MiniLM: every activation kept
(how calibration used to work, reproduced here as the reference) against the streaming
observers of `slimkit.observe` (what the torchao technique runs now).

Each method runs in a fresh subprocess twice: once for peak RSS of the calibration phase
(the kernel's high-water mark reset just before it, minus the RSS at that moment) and once
under tracemalloc (numpy buffers are traced; torch's own allocations are not). The table
also gives the largest relative difference between the two methods' activation scales.

    .venv/bin/python benchmarks/observe_memory.py [--samples 128] [--calibration mse]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Linux resets VmHWM to the current RSS on writing 5 to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def kept_calibrate(module: Any, layers: list[str], data: Any, names: list[str],
                   calibration: str) -> dict[str, tuple[float, int]]:
    """The previous method: every input activation of every layer kept, then one histogram."""
    import torch

    from slimkit.techniques.quantize.calibrate import Histogram, compute_range

    named = dict(module.named_modules())
    seen: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    ranks: dict[str, int] = {}

    def keep(n: str, x: torch.Tensor) -> None:
        seen[n].append(x.detach().float().numpy().ravel())
        ranks[n] = x.ndim

    hooks = [named[n].register_forward_pre_hook(lambda _m, a, n=n: keep(n, a[0]))
             for n in layers]
    try:
        with torch.no_grad():
            for batch in data.batches(16):
                module(*[torch.from_numpy(batch[n]) for n in names])
    finally:
        for h in hooks:
            h.remove()
    scales = {}
    for n in layers:
        lo, hi = compute_range(Histogram.of(np.concatenate(seen[n])), calibration)  # type: ignore
        scales[n] = (max(abs(lo), abs(hi), 1e-8) / 127.0, ranks[n])
    return scales


def child(method: str, measure: str, samples: int, calibration: str) -> None:
    import torch

    from slimkit.examples import minilm
    from slimkit.registry import StepContext
    from slimkit.techniques.quantize.torchao_ptq import TorchAO, _calibrate, linear_layers

    torch.set_num_threads(2)
    model = minilm.load_model()
    data = minilm.load_data("calibration", max_length=128).head(samples)
    names = [i.name for i in model.inputs]
    layers = linear_layers(model.module)
    config = TorchAO(scheme="static_int8", calibration=calibration, samples=samples)  # type: ignore
    before = rss_kib("VmRSS")
    if measure == "tracemalloc":
        tracemalloc.start()
    exact_peak = reset_peak()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if method == "kept":
            scales = kept_calibrate(model.module, layers, data, names, calibration)
        else:
            ctx = StepContext(Path(tmp), data=data)
            scales = _calibrate(model.module, layers, config, ctx, names)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"seconds": seconds, "scales": scales, "layers": len(layers),
                              "tokens": int(data.inputs["attention_mask"].size)}
    if measure == "tracemalloc":
        result["peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
    else:
        result["peak_mib"] = (rss_kib("VmHWM") - before) / 1024
        result["exact_peak"] = exact_peak
    print(json.dumps(result))


def run_child(method: str, measure: str, args: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", method, "--measure", measure,
                          "--samples", str(args.samples), "--calibration", args.calibration],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--calibration", default="mse",
                        choices=["minmax", "percentile", "entropy", "mse"])
    parser.add_argument("--child", choices=["kept", "observers"])
    parser.add_argument("--measure", choices=["rss", "tracemalloc"], default="rss")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.measure, args.samples, args.calibration)
        return
    runs = {(m, k): run_child(m, k, args) for m in ("kept", "observers")
            for k in ("rss", "tracemalloc")}
    first = runs[("kept", "rss")]
    print(f"torchao static_int8 calibration ({args.calibration}) on MiniLM: {args.samples} "
          f"texts, {first['tokens']} token positions, {first['layers']} Linear inputs")
    print(f"{'method':<28}{'peak RSS MiB':>14}{'tracemalloc MiB':>17}{'seconds':>10}")
    for method, title in (("kept", "every activation kept"), ("observers", "streaming observers")):
        rss, traced = runs[(method, "rss")], runs[(method, "tracemalloc")]
        print(f"{title:<28}{rss['peak_mib']:>14.1f}{traced['peak_mib']:>17.1f}"
              f"{rss['seconds']:>10.1f}")
    ratio_rss = first["peak_mib"] / max(runs[("observers", "rss")]["peak_mib"], 1e-9)
    ratio_traced = (runs[("kept", "tracemalloc")]["peak_mib"]
                    / max(runs[("observers", "tracemalloc")]["peak_mib"], 1e-9))
    print(f"{'ratio kept / observers':<28}{ratio_rss:>13.1f}x{ratio_traced:>16.1f}x")
    old, new = first["scales"], runs[("observers", "rss")]["scales"]
    diff = max(abs(new[n][0] - old[n][0]) / old[n][0] for n in old)
    print(f"largest relative difference of a layer's activation scale: {diff:.2e}")
    if not first.get("exact_peak", False):
        print("(peak RSS could not be reset before calibration: it may include model loading)")


if __name__ == "__main__":
    main()
