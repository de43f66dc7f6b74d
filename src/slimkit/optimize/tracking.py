"""Every trial of a search logged to MLflow (`--mlflow URI`), as it is told, for teams whose
experiments live there; one MLflow run per trial, and one for the answer."""

from __future__ import annotations

from typing import Any

from slimkit.errors import ConfigError


def _flat(steps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, step in enumerate(steps):
        (name, options), = step.items()
        out[f"step{k}"] = name
        for key, value in (options or {}).items():
            out[f"step{k}.{key}"] = str(value)[:250]
    return out


class Tracker:
    def __init__(self, uri: str, experiment: str) -> None:
        try:
            import mlflow
        except ImportError:
            raise ConfigError("--mlflow: MLflow is not installed (pip install "
                              "'slimkit[mlflow]')") from None
        self.mlflow = mlflow
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(experiment)
        except Exception as e:  # a bad URI, a store that cannot be opened
            raise ConfigError(f"--mlflow {uri[:100]}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None

    def trial(self, frozen: Any) -> None:
        """One finished trial: its chain as parameters, its figures as metrics."""
        a = frozen.user_attrs
        fid = a.get("fidelity") or a.get("slice") or {}
        est = a.get("estimate") or {}
        metrics = {"cosine": fid.get("cosine"), "accuracy_drop": fid.get("accuracy_drop"),
                   "size_mb": (a.get("size_bytes") or 0) / 1e6 or None,
                   "throughput_estimate": est.get("throughput"),
                   "latency_ms_estimate": est.get("latency_ms"),
                   "peak_rss_mb_estimate": est.get("peak_rss_mb"), "seconds": a.get("seconds")}
        with self.mlflow.start_run(run_name=f"trial {frozen.number}"):
            self.mlflow.log_params({"idea": a.get("idea"), "runtime": a.get("runtime"),
                                    **_flat(a.get("steps") or [])})
            self.mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
            self.mlflow.set_tags({"state": frozen.state.name.lower(),
                                  "within_budget": str(fid.get("within")),
                                  "error": str(a.get("error") or "")[:500]})

    def answer(self, results: Any) -> None:
        s = results.search
        best = next((c for c in results.candidates if c.name == s.best), None)
        with self.mlflow.start_run(run_name="answer"):
            self.mlflow.set_tags({"best": str(s.best), "front": ", ".join(s.front)})
            if best is not None and best.ratios is not None:
                self.mlflow.log_metrics({f"best_{k}": float(v) for k, v in
                                         best.ratios.model_dump().items() if v is not None})
