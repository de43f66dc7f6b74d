"""Which int8 operand types ONNX Runtime should get on this CPU.

On x86 without VNNI, MLAS multiplies uint8 activations by int8 weights with VPMADDUBSW, which
adds two products into a saturating 16-bit lane: with full-range weights large activations
clip, and fidelity falls (MiniLM-sized MLP layers lost 5 dB of SQNR, the suite's tolerances
failed). ONNX Runtime's own answers are 7-bit weights (`reduce_range`), which keep that
kernel and its speed, or uint8 weights (u8u8), which take another kernel. With VNNI, AMX or an
ARM dot product the sum goes straight to 32 bits and full-range int8 weights are exact.
`benchmarks/cpu_paths.py` measures all three on the machine at hand.
"""

from __future__ import annotations

from typing import Any, Literal

from slimkit.machine import Capabilities, capabilities

Int8Mode = Literal["auto", "u8s8", "reduce_range", "u8u8"]
MODES: tuple[str, ...] = ("u8s8", "reduce_range", "u8u8")


def pick_int8_mode(caps: Capabilities | None = None) -> tuple[str, str]:
    """The mode `auto` means here, and the reason in one line."""
    caps = caps or capabilities()
    if not caps.x86:
        return "u8s8", f"{caps.arch}: int8 products accumulate in 32 bits"
    if caps.int8_dot:
        return "u8s8", "VNNI/AMX: int8 products accumulate in 32 bits"
    # reduce_range keeps the u8s8 kernel, so its speed is the default's by construction; u8u8
    # scored higher SQNR under emulation but its speed on such CPUs is not measured here.
    return "reduce_range", ("no VNNI: u8s8 kernels saturate in 16 bits, so weights use 7 "
                            "bits")


def resolve_mode(mode: str) -> str:
    return pick_int8_mode()[0] if mode == "auto" else mode


def ort_type_options(mode: str) -> dict[str, Any]:
    """Keyword arguments for onnxruntime.quantization's quantize_dynamic / quantize_static."""
    from onnxruntime.quantization import QuantType

    if mode == "auto":
        raise ValueError("resolve 'auto' before quantizing")
    return {"weight_type": QuantType.QUInt8 if mode == "u8u8" else QuantType.QInt8,
            "reduce_range": mode == "reduce_range"}


def mode_report(mode: str) -> dict[str, str]:
    """What the step's report says about the choice."""
    picked, why = pick_int8_mode()
    return {"int8_mode": mode,
            "int8_mode_reason": why if mode == picked else f"set in the recipe (auto: {picked})"}
