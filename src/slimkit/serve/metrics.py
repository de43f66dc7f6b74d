"""Prometheus text exposition, written by hand: three counters and three histograms do not
justify a dependency, and the format (version 0.0.4) is small and stable."""

from __future__ import annotations

import bisect
import threading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus histograms are."""

    def __init__(self, name: str, help_: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        total = 0
        for bound, c in zip([*self.buckets, float("inf")], self.counts, strict=True):
            total += c
            le = "+Inf" if bound == float("inf") else _num(bound)
            out.append(f'{self.name}_bucket{{le="{le}"}} {total}')
        out += [f"{self.name}_sum {_num(self.sum)}", f"{self.name}_count {total}"]
        return out


class Metrics:
    """What an operator watches: traffic and failures per route, how full batches are, and
    where a request's time goes (waiting in the queue or running the model)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.batch_size = Histogram("slimkit_batch_size", "rows per model call", _ROWS)
        self.queue_time = Histogram("slimkit_queue_seconds",
                                    "time a request waited before its batch ran", _SECONDS)
        self.inference_time = Histogram("slimkit_inference_seconds",
                                        "time one batch spent in the runtime", _SECONDS)

    def count(self, route: str, status: int) -> None:
        with self._lock:
            key = (route, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def observe_batch(self, rows: int, queued: list[float], seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(rows)
            for q in queued:
                self.queue_time.observe(q)
            self.inference_time.observe(seconds)

    def render(self) -> str:
        with self._lock:
            out = ["# HELP slimkit_requests_total requests answered, by route and status",
                   "# TYPE slimkit_requests_total counter"]
            items = sorted(self.requests.items())
            out += [f'slimkit_requests_total{{route="{r}",status="{s}"}} {n}'
                    for (r, s), n in items]
            out += ["# HELP slimkit_errors_total requests answered with a 4xx or 5xx status",
                    "# TYPE slimkit_errors_total counter"]
            out += [f'slimkit_errors_total{{route="{r}",status="{s}"}} {n}'
                    for (r, s), n in items if s >= 400]
            for h in (self.batch_size, self.queue_time, self.inference_time):
                out += h.lines()
        return "\n".join(out) + "\n"


def _num(x: float) -> str:
    return repr(float(x)) if x != int(x) else str(int(x))
