"""Which techniques are worth trying for this model, machine, objective and budget, and why.

The rules live in `rules.yaml` as data; this module only computes the facts they test (from
the profile, the machine's capabilities and the search settings) and applies them. What the
advice proposes is exactly the search space of `slimkit optimize`: each idea is a chain of
steps on one or more runtimes, and the options it does not fix are searched.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slimkit.errors import ConfigError
from slimkit.machine import Capabilities, capabilities
from slimkit.optimize.settings import SearchConfig

RULES_FILE = Path(__file__).with_name("rules.yaml")
_TIME_OPS = {"matmul": ("MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "QLinearMatMul",
                        "FullyConnected", "aten::linear", "aten::matmul", "aten::addmm",
                        "aten::bmm", "Linear"),
             "conv": ("Conv", "ConvInteger", "QLinearConv", "Convolution", "GroupConvolution",
                      "aten::conv2d", "aten::convolution", "Conv2d", "Conv1d"),
             "attention": ("Softmax", "Attention", "MultiHeadAttention", "SoftMax",
                           "aten::softmax", "aten::scaled_dot_product_attention")}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


@dataclass
class Idea:
    """A chain of steps worth trying on some runtimes, with every reason that proposed it."""

    id: str
    steps: list[Any]  # as a recipe writes them: "dynamic_int8" or {"cast": {"dtype": "bf16"}}
    runtimes: list[str]
    reasons: list[str] = field(default_factory=list)

    def techniques(self) -> list[str]:
        return [s if isinstance(s, str) else next(iter(s)) for s in self.steps]


@dataclass
class Advice:
    ideas: list[Idea]
    notes: list[str]
    skipped: list[str]  # what a rule left out, and why
    facts: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"ideas": [{"id": i.id, "steps": i.steps, "runtimes": i.runtimes,
                           "reasons": i.reasons} for i in self.ideas],
                "notes": self.notes, "skipped": self.skipped, "facts": self.facts}


@functools.cache
def load_rules(path: Path = RULES_FILE) -> tuple[dict[str, Any], ...]:
    try:
        rules = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the advice rules ({type(e).__name__})") from None
    if not isinstance(rules, list) or not all(isinstance(r, dict) and "id" in r for r in rules):
        raise ConfigError(f"{path}: the advice rules are a list of mappings with an id")
    return tuple(rules)


def _share(shares: Mapping[str, float], kind: str) -> float:
    names = _TIME_OPS[kind]
    return float(sum(v for k, v in shares.items() if k in names or k.split(".")[-1] in names))


def _attention(profile: Any, shares: Mapping[str, float]) -> float:
    """Time in attention blocks (by module path), or in attention operators where the
    layers carry no such names."""
    by_layer = sum(float(layer.time_share) for layer in getattr(profile, "layers", [])
                   if "attention" in layer.name.rsplit(".", 1)[-1].lower()
                   or ".attention" in layer.name.lower())
    return by_layer or _share(shares, "attention")


def facts(profile: Any, settings: SearchConfig, caps: Capabilities | None = None
          ) -> dict[str, Any]:
    """What the rules may test, each a plain value a rule can compare and cite."""
    caps = caps or capabilities()
    shares = dict(profile.op_time_share)
    b = settings.budget
    tight = (b.min_cosine is not None and b.min_cosine >= 0.995) or \
        (b.max_drop is not None and b.max_drop <= 0.5)
    return {
        "family": profile.family,
        "torch_source": profile.source_format in ("torch", "hf"),
        "labels": bool(profile.has_labels),
        "int8_dot": caps.int8_dot, "bf16": caps.bf16, "fp16": caps.fp16, "x86": caps.x86,
        "cpu": caps.kind(),
        "matmul_time": _share(shares, "matmul"), "conv_time": _share(shares, "conv"),
        "attention_time": _attention(profile, shares),
        "embedding_bytes": float(profile.kind_bytes_share.get("embedding", 0.0)),
        "linear_bytes": float(profile.kind_bytes_share.get("linear", 0.0)),
        "objective": settings.objective,
        "budget": "cosine" if b.min_cosine is not None else "drop",
        "tight": tight,
        "train_minutes": settings.train_minutes,
        "model_mb": profile.bytes / 1e6, "params_m": profile.params / 1e6,
    }


def _holds(when: Mapping[str, Any], known: Mapping[str, Any]) -> bool:
    for name, want in (when or {}).items():
        if name not in known:
            raise ConfigError(f"advice rule tests an unknown fact {name!r}")
        have = known[name]
        if isinstance(want, list):
            if have not in want:
                return False
        elif isinstance(want, str) and want[:1] in "<>":
            op = want[:2] if want[1:2] == "=" else want[:1]
            if not _COMPARE[op](float(have), float(want[len(op):])):
                return False
        elif have != want:
            return False
    return True


def _technique(step: Any) -> str:
    return step if isinstance(step, str) else next(iter(step))


def advise(profile: Any, settings: SearchConfig, reachable: list[str],
           caps: Capabilities | None = None,
           rules: tuple[dict[str, Any], ...] | None = None) -> Advice:
    """The ideas worth trying on the runtimes in `reachable`, notes, and what was left out."""
    known = facts(profile, settings, caps)
    allowed = [r for r in reachable if settings.runtimes is None or r in settings.runtimes]
    ideas: dict[str, Idea] = {}
    notes: list[str] = []
    skips: list[tuple[str, list[str], str]] = []
    for rule in rules or load_rules():
        if not _holds(rule.get("when", {}), known):
            continue
        why = str(rule.get("why") or rule.get("note") or "").format(**known)
        if "note" in rule:
            notes.append(why)
        elif "skip" in rule:
            skips.append((rule["skip"], list(rule.get("runtimes") or allowed), why))
        else:
            runtimes = [r for r in rule.get("runtimes") or allowed if r in allowed]
            steps = list(rule.get("try") or [])
            if settings.techniques is not None and not all(
                    _technique(s) in settings.techniques for s in steps):
                continue
            if runtimes:
                idea = ideas.setdefault(rule["id"], Idea(rule["id"], steps, []))
                idea.runtimes += [r for r in runtimes if r not in idea.runtimes]
                idea.reasons.append(why)
    skipped = []
    for technique, runtimes, why in skips:
        for idea in ideas.values():
            if technique in idea.techniques():
                dropped = [r for r in idea.runtimes if r in runtimes]
                if dropped:
                    idea.runtimes = [r for r in idea.runtimes if r not in runtimes]
                    skipped.append(f"{idea.id} on {', '.join(dropped)}: {why}")
    return Advice([i for i in ideas.values() if i.runtimes], notes, skipped, known)
