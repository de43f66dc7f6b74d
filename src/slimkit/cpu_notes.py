"""What is known to go wrong for a step on this CPU, written as data.

Each rule names a technique (with option values it must have), the runtimes it concerns, the
capability whose absence makes it lose, and the one line a user reads beside the figure. The
figures quoted were measured with slimkit's interleaved benchmark; a search reads the same
rules to skip or down-rank such candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from slimkit.machine import Capabilities, capabilities


@dataclass(frozen=True)
class Rule:
    technique: str
    runtimes: frozenset[str]
    lacking: Callable[[Capabilities], bool]  # True where this CPU lacks what the step needs
    note: str
    options: dict[str, Any] = field(default_factory=dict)  # the step's options must match


def _no_bf16(c: Capabilities) -> bool:
    return not c.bf16


def _no_fp16(c: Capabilities) -> bool:
    return not c.fp16


def _no_int8_dot(c: Capabilities) -> bool:
    return not c.int8_dot


def _always(c: Capabilities) -> bool:
    return True


RULES: tuple[Rule, ...] = (
    Rule("cast", frozenset({"torch", "openvino"}), _no_bf16,
         "bf16 is emulated here (no AVX-512 BF16 or AMX): expect it slower than fp32 "
         "(torch bf16 ran at 0.17× fp32 on an AVX2-only EPYC)", {"dtype": "bf16"}),
    Rule("cast", frozenset({"torch", "onnxruntime"}), _always,
         "fp16 has no fast CPU kernels in this runtime: values are converted back to fp32; "
         "expect a size gain, not a speed gain", {"dtype": "fp16"}),
    Rule("cast", frozenset({"openvino"}), _no_fp16,
         "OpenVINO computes fp16 weights in fp32 without AVX-512 FP16 or AMX-FP16: a size "
         "gain, not a speed gain", {"dtype": "fp16"}),
    Rule("torchao", frozenset({"torch"}), _no_int8_dot,
         "torchao int8 without VNNI or AMX: it ran at 0.05× torch fp32 on an AVX2-only EPYC "
         "(3.39× with AVX-512 VNNI)", {"scheme": "dynamic_int8"}),
    Rule("torchao", frozenset({"torch"}), _no_int8_dot,
         "torchao int8 without VNNI or AMX: expect it slower than fp32",
         {"scheme": "static_int8"}),
    Rule("nncf_int8", frozenset({"openvino"}), _no_int8_dot,
         "OpenVINO int8 without VNNI or AMX: it ran at 0.81-0.84× OpenVINO fp32 on an "
         "AVX2-only EPYC"),
)


def _matches(rule: Rule, technique: str, options: dict[str, Any], runtime: str) -> bool:
    return (rule.technique == technique and runtime in rule.runtimes
            and all(options.get(k) == v for k, v in rule.options.items()))


def step_notes(steps: Iterable[Any], runtime: str,
               caps: Capabilities | None = None) -> list[str]:
    """Notes for a candidate's steps (technique configs) on `runtime`, each once."""
    caps = caps or capabilities()
    notes: list[str] = []
    for step in steps:
        options = step.model_dump()
        for rule in RULES:
            if (_matches(rule, step.technique, options, runtime) and rule.lacking(caps)
                    and rule.note not in notes):
                notes.append(rule.note)
    return notes
