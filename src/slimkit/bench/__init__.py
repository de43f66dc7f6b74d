from slimkit.bench.harness import BenchOptions, Target, run_benchmark

__all__ = ["BenchOptions", "Target", "run_benchmark"]
