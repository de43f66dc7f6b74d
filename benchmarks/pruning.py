"""Pruning and distillation, proven on the runtime: the figures issue-style claims rest on.

Runs examples/digits-prune.yaml and examples/minilm-prune.yaml (each one run: every candidate
built, evaluated on held-out data and benchmarked in interleaved rounds against its baseline),
then prints each claim beside its measured figure and whether it holds. Built steps are cached,
so a second run only measures again. The last line is a summary.

    .venv/bin/python benchmarks/pruning.py [--only digits|minilm] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from slimkit.api import run
from slimkit.config import load_recipe

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(name: str, rounds: int | None) -> dict[str, Any]:
    recipe = load_recipe(EXAMPLES / f"{name}.yaml")
    if rounds is not None:
        bench = recipe.benchmark.model_copy(update={"rounds": rounds})
        recipe = recipe.model_copy(update={"benchmark": bench})
    doc = run(recipe)
    by_name = {c["name"]: c for c in doc["candidates"]}
    failed = [f"{n}: {c['error']}" for n, c in by_name.items() if c.get("error")]
    if failed:
        raise SystemExit(f"{name}: candidates failed:\n  " + "\n  ".join(failed))
    return by_name


def _ratio(c: dict[str, Any], key: str) -> float:
    return float(c["ratios"][key])


def _flops(c: dict[str, Any]) -> float | None:
    for rep in (c.get("details") or {}).values():
        if isinstance(rep, dict) and rep.get("flops_ratio") is not None:
            return float(rep["flops_ratio"])
    return None


class Claims:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, bool]] = []

    def add(self, claim: str, figure: str, holds: bool) -> None:
        self.rows.append((claim, figure, holds))
        print(f"  {'holds' if holds else 'FAILS':<6} {claim:<58} {figure}", flush=True)


def digits(claims: Claims, rounds: int | None) -> None:
    c = _run("digits-prune", rounds)
    base = c["ort-fp32"]
    acc0 = base["quality"]["accuracy"]
    ch = c["ort-channels-half-flops"]
    drop = 100 * (acc0 - ch["quality"]["accuracy"])
    flops = _flops(ch)
    claims.add("digits channels: FLOPs about half", f"{flops:.2f}× the FLOPs" if flops else "?",
               flops is not None and 0.4 <= flops <= 0.6)
    claims.add("digits channels: ORT throughput >= 1.5× unpruned",
               f"{_ratio(ch, 'throughput'):.2f}×", _ratio(ch, "throughput") >= 1.5)
    claims.add("digits channels: accuracy drop <= 1 point", f"{drop:+.2f} points", drop <= 1)
    sp = c["torch-unstructured-80"]
    sp_drop = 100 * (acc0 - sp["quality"]["accuracy"])
    size = sp["size_bytes"] / c["torch-fp32"]["size_bytes"]
    claims.add("digits 80% unstructured: accuracy drop <= 1 point", f"{sp_drop:+.2f} points",
               sp_drop <= 1)
    claims.add("digits 80% unstructured: artifact <= 35% of dense", f"{size:.1%}", size <= 0.35)
    ort_sp = c["ort-unstructured-80"]
    print(f"         (80% sparse on ORT's dense kernels: {_ratio(ort_sp, 'throughput'):.2f}× "
          "throughput: sparsity alone buys size, not speed, here)")
    labels = [c[f"ort-student-labels-seed{s}"]["quality"]["accuracy"] for s in range(3)]
    kd = [c[f"ort-student-distilled-seed{s}"]["quality"]["accuracy"] for s in range(3)]
    claims.add("digits student on 144 labels: distilled beats labels-only (mean of 3 seeds)",
               f"{100 * statistics.mean(kd):.2f}% vs {100 * statistics.mean(labels):.2f}% "
               f"(seeds {', '.join(f'{100 * a:.1f}' for a in kd)} vs "
               f"{', '.join(f'{100 * a:.1f}' for a in labels)})",
               statistics.mean(kd) > statistics.mean(labels))


def minilm(claims: Claims, rounds: int | None) -> None:
    c = _run("minilm-prune", rounds)
    pruned = c["ort-pruned-distilled"]
    flops = _flops(pruned)
    claims.add("minilm: >= 30% fewer encoder FLOPs", f"{flops:.2f}× the FLOPs" if flops else "?",
               flops is not None and flops <= 0.7)
    cos = pruned["quality"]["mean_cosine"]
    claims.add("minilm pruned+distilled: mean cosine >= 0.98", f"{cos:.4f}", cos >= 0.98)
    claims.add("minilm pruned: ORT throughput >= 1.3× unpruned fp32",
               f"{_ratio(pruned, 'throughput'):.2f}×", _ratio(pruned, "throughput") >= 1.3)
    ov, ov_pruned = c["openvino-int8"], c["openvino-pruned-int8"]
    gain = _ratio(ov_pruned, "throughput") / _ratio(ov, "throughput")
    cos8 = ov_pruned["quality"]["mean_cosine"]
    claims.add("minilm pruned+int8 on OpenVINO: >= 1.25× unpruned int8", f"{gain:.2f}×",
               gain >= 1.25)
    claims.add("minilm pruned+int8 on OpenVINO: cosine >= 0.98", f"{cos8:.4f}", cos8 >= 0.98)
    step = next(s for s in pruned["steps"] if s["step"] == "distill")
    if step["cached"]:
        print("         (distillation came from the cache: run with a fresh cache to time it)")
    else:
        minutes = step["seconds"] / 60
        claims.add("minilm: distillation within 15 minutes", f"{minutes:.1f} min", minutes <= 15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["digits", "minilm"])
    ap.add_argument("--rounds", type=int)
    args = ap.parse_args()
    claims = Claims()
    if args.only in (None, "digits"):
        digits(claims, args.rounds)
    if args.only in (None, "minilm"):
        minilm(claims, args.rounds)
    held = sum(h for _, _, h in claims.rows)
    print(f"\npruning and distillation: {held} of {len(claims.rows)} claims hold; "
          + "; ".join(f"{c.split(':')[0]} {f}" for c, f, _ in claims.rows))


if __name__ == "__main__":
    main()
