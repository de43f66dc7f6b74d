"""results.json as types: what a run built and measured, for the reports and for anyone who
reads the file later, on another machine, without the models.

Version 2 of the file carries `schema_version` and keys each candidate's technique reports by
step label (`"2:static_int8"`: the step's position in the lineage and its technique), each
report naming its technique. Files written before (version 1) have neither; `load_results`
upgrades them, so every reader deals with one shape. Field names are those version 1 used, so
a script that read the old file reads the new one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slimkit.errors import ConfigError
from slimkit.io import atomic_write_json
from slimkit.messages import clip, field_path, one_line
from slimkit.results_search import SearchInfo

SCHEMA_VERSION = 2
RESULTS_FILE = "results.json"


class Closed(BaseModel):
    """A block whose every field slimkit defines: a misspelt field is an error, not data."""

    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    """A block that other code fills (a runtime, a benchmark worker, a technique): fields this
    version does not know are kept, not dropped."""

    model_config = ConfigDict(extra="allow")


class DataInfo(Open):
    name: str
    examples: int
    fingerprint: str


class CudaDevice(Open):
    name: str | None = None
    compute_capability: str | None = None


class Capabilities(Open):
    arch: str | None = None
    kind: str | None = None  # the kernel path int8 and bf16 take on this CPU
    source: str | None = None
    features: list[str] | None = None
    int8_dot_product: bool | None = None
    native_bf16: bool | None = None
    native_fp16: bool | None = None
    cuda: list[CudaDevice] = Field(default_factory=list)


class Machine(Open):
    cpu: str | None = None
    cores: int | None = None
    capabilities: Capabilities | None = None
    os: str | None = None
    python: str | None = None
    packages: dict[str, str] = Field(default_factory=dict)


class BenchSettings(Open):
    """The benchmark options the run used; unset ones stay None so no report claims them."""

    threads: int | None = None
    batch_size: int | None = None
    rounds: int | None = None
    warmup: int | None = None
    latency_runs: int | None = None
    throughput_runs: int | None = None
    min_seconds: float | None = None
    timeout_s: int | float | None = None


class RuntimeInfo(Open):
    runtime: str | None = None
    version: str | None = None
    device: str | None = None
    threads: int | None = None


class Latency(Open):
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None


class Bench(Open):
    latency_ms: Latency | None = None
    throughput: float | None = None  # items per second at the serving batch
    throughput_rounds: list[float] | None = None
    load_seconds: float | None = None
    peak_rss_mb: float | None = None


class Ratios(Open):
    """Against the baseline, from the same run: throughput and latency above 1 are faster,
    size below 1 is smaller."""

    throughput: float | None = None
    latency: float | None = None
    size: float | None = None


class LineageStep(Open):
    """One step that built the candidate, as the pipeline recorded it."""

    step: str
    options: dict[str, Any] = Field(default_factory=dict)
    format: str | None = None
    key: str | None = None
    seconds: float | None = None
    cached: bool | None = None
    peak_rss_mb: float | None = None


class StepReport(Open):
    """What one step's technique reported about itself; each technique has its own fields.

    `family` (quantization, pruning, distillation, fusion, ...) is the technique's own
    declaration of what kind of account this is, so a renderer picks its facts by it and a new
    technique of a known family shows up without a change there."""

    technique: str
    family: str = ""

    @property
    def fields(self) -> dict[str, Any]:
        """The technique's own fields."""
        return dict(self.model_extra or {})


class ServedLevel(Closed):
    """One concurrency level of a candidate behind `slimkit serve` (a recipe's `loadtest`)."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float  # answered requests per second
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    dollars_per_million: float | None = None
    first_error: str | None = None


class Candidate(Closed):
    name: str
    runtime: str
    runtime_info: RuntimeInfo | None = None
    steps: list[LineageStep] = Field(default_factory=list)
    key: str | None = None
    artifact: str | None = None  # relative to the run folder
    size_bytes: int | None = None
    quality: dict[str, float | None] | None = None
    bench: Bench | None = None
    ratios: Ratios | None = None
    error: str | None = None
    details: dict[str, StepReport] | None = None  # by step label, e.g. "2:static_int8"
    cpu_notes: list[str] = Field(default_factory=list)  # what is known to lose on this CPU
    served: list[ServedLevel] | None = None  # a recipe's loadtest, one entry per level

    @property
    def failed(self) -> bool:
        return bool(self.error)


class RunResults(Closed):
    schema_version: Literal[2] = SCHEMA_VERSION
    name: str
    slimkit_version: str | None = None
    created: str | None = None  # ISO 8601, UTC
    task: str | None = None
    primary_metric: str | None = None
    data: DataInfo | None = None
    machine: Machine | None = None
    benchmark: BenchSettings | None = None
    baseline: str | None = None
    # The recipe as the run read it; kept untyped so an older recipe still loads.
    recipe: dict[str, Any] | None = None
    warnings: list[str] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list)
    search: SearchInfo | None = None  # what `slimkit optimize` tried, found and chose
    loadtest: dict[str, Any] | None = None  # the recipe's loadtest settings, when it had one

    def to_document(self) -> dict[str, Any]:
        """The JSON document; a value JSON has no type for (in a technique's options, say)
        is written as its text rather than failing a finished run."""
        return self.model_dump(mode="json", fallback=str)


def step_label(position: int, technique: str) -> str:
    """A technique report's key: its step's index in the lineage and its technique, so two
    steps of one technique both keep their reports."""
    return f"{position}:{technique}"


def step_report(label: str, report: Mapping[str, Any]) -> StepReport:
    """A report as a technique left it; one that does not name its technique is named by the
    label it is filed under (`"2:static_int8"` or a bare `"static_int8"`)."""
    return StepReport.model_validate({"technique": label.rpartition(":")[2], **report})


# Version 1 reports said neither their technique nor its family; these were its techniques.
_V1_FAMILIES = {
    **dict.fromkeys(["static_int8", "dynamic_int8", "nncf_int8", "weight_compress", "torchao",
                     "weight_only_int4", "mixed_precision", "qat"], "quantization"),
    **dict.fromkeys(["prune_channels", "prune_transformer", "prune_magnitude",
                     "prune_semi_structured"], "pruning"),
    "distill": "distillation", "fuse_transformer": "fusion", "smooth_quant": "smoothing"}


def _details_v1(details: Any, steps: list[Any]) -> dict[str, Any] | None:
    """Version 1 keyed reports by bare technique name and left `technique` out of them."""
    if not isinstance(details, Mapping) or not details:
        return None
    names = [s.get("step") if isinstance(s, Mapping) else None for s in steps]
    out: dict[str, Any] = {}
    for name, report in details.items():
        if not isinstance(report, Mapping):
            continue
        label = step_label(names.index(name), name) if name in names else name
        out[label] = {"technique": name, "family": _V1_FAMILIES.get(name, ""), **report}
    return out or None


def _candidate_v1(cand: Any) -> Any:
    if not isinstance(cand, Mapping):
        return cand  # left for validation to name
    steps = list(cand.get("steps") or [])
    return {**cand, "runtime": cand.get("runtime") or "", "steps": steps,
            "cpu_notes": cand.get("cpu_notes") or [],
            "details": _details_v1(cand.get("details"), steps)}


def upgrade_v1(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 document in the version-2 shape. Version 1 wrote null for some empty
    lists, and hand-made or partial documents may lack a name or a runtime."""
    return {**doc, "schema_version": SCHEMA_VERSION, "name": doc.get("name") or "",
            "warnings": doc.get("warnings") or [],
            "candidates": [_candidate_v1(c) for c in doc.get("candidates") or []]}


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(clip(p, 40) for p in field_path(err["loc"]))
    return f"{loc}: {err['msg']}" if loc else err["msg"]


def parse_results(doc: Any, where: str = "results") -> RunResults:
    """A results document of any version this slimkit reads, as the current types."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: not a results document (a JSON object)")
    version = doc.get("schema_version", 1)
    if version == 1:
        doc = upgrade_v1(doc)
    elif version != SCHEMA_VERSION:
        raise ConfigError(f"{where}: schema_version {repr(version)[:20]}; this slimkit reads "
                          f"versions 1 to {SCHEMA_VERSION}")
    try:
        return RunResults.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(one_line(f"{where}: {_one_line(e)}", 300)) from None


def as_results(doc: RunResults | Mapping[str, Any]) -> RunResults:
    """The typed results, from the model itself or from a document (what `slimkit.run`
    returns, or an older file's contents)."""
    return doc if isinstance(doc, RunResults) else parse_results(doc)


def load_results(path: Path | str) -> RunResults:
    """Read a run's results.json (or the run folder holding it), upgrading older versions."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({type(e).__name__})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return parse_results(doc, str(path))


def save_results(path: Path, results: RunResults) -> None:
    atomic_write_json(path, results.to_document())
