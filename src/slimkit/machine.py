"""The machine: what a result must record about where it was measured, and the processor
features that decide which kernels a runtime takes.

Features are read once per process (`capabilities()`), and techniques, warnings and reports
all ask that one object, so a decision and the report that explains it cannot disagree.
The kernel's view of the CPU (`/proc/cpuinfo`) is used because it is what a hypervisor or a
kernel boot option leaves enabled; `SLIMKIT_CPU_FEATURES` (a comma list) replaces it where
that view is wrong, as under a user-mode emulator that passes the host's file through.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

_PACKAGES = ["slimkit", "torch", "onnx", "onnxruntime", "openvino", "nncf", "torchao",
             "ai-edge-litert", "litert-torch", "transformers", "numpy"]
FEATURES_ENV = "SLIMKIT_CPU_FEATURES"

# The features that choose kernels in ONNX Runtime (MLAS), oneDNN/OpenVINO and torch.
# Keys are /proc/cpuinfo's spelling; values are what reports print.
X86_FEATURES = {
    "avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512bw": "AVX-512BW",
    "avx512vl": "AVX-512VL", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX-512 BF16", "avx512_fp16": "AVX-512 FP16", "amx_tile": "AMX",
    "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16", "amx_fp16": "AMX-FP16",
}
ARM_FEATURES = {"asimddp": "dot product", "i8mm": "int8 matmul", "bf16": "BF16",
                "fphp": "FP16", "sve": "SVE", "sve2": "SVE2"}


@dataclass(frozen=True)
class CudaDevice:
    name: str
    compute_capability: str  # "8.0": 2:4 sparse kernels need 8.0 or newer


@dataclass(frozen=True)
class Capabilities:
    arch: str
    features: frozenset[str]
    source: str
    cuda: tuple[CudaDevice, ...] = field(default_factory=tuple)

    def has(self, *names: str) -> bool:
        """Whether any of `names` is present."""
        return any(n in self.features for n in names)

    @property
    def x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i686", "i386")

    @property
    def int8_dot(self) -> bool:
        """An instruction that multiplies int8 and adds into 32 bits in one step (VNNI, AMX,
        ARM dot product). Without it x86 int8 goes through VPMADDUBSW, which saturates in
        16 bits and gains less over float."""
        return self.has("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")

    @property
    def bf16(self) -> bool:
        """Native bf16 arithmetic; without it bf16 is converted to and from fp32."""
        return self.has("avx512_bf16", "amx_bf16", "bf16")

    @property
    def fp16(self) -> bool:
        return self.has("avx512_fp16", "amx_fp16", "fphp")

    def kind(self) -> str:
        """One phrase for a log line or a test header: the path int8 and bf16 take here."""
        if not self.x86:
            return f"{self.arch}" + (" with int8 dot product" if self.int8_dot else "")
        if self.has("amx_int8"):
            base = "x86 AMX"
        elif self.has("avx512_vnni"):
            base = "x86 AVX-512 VNNI"
        elif self.has("avx_vnni"):
            base = "x86 AVX2 with AVX-VNNI"
        elif self.has("avx512f"):
            base = "x86 AVX-512 without VNNI"
        elif self.has("avx2"):
            base = "x86 AVX2 without VNNI"
        else:
            base = "x86 without AVX2"
        return base + (", native bf16" if self.bf16 else ", no native bf16")

    def to_dict(self) -> dict[str, Any]:
        names = X86_FEATURES if self.x86 else ARM_FEATURES
        return {
            "arch": self.arch, "kind": self.kind(), "source": self.source,
            "features": [label for key, label in names.items() if key in self.features],
            "int8_dot_product": self.int8_dot, "native_bf16": self.bf16,
            "native_fp16": self.fp16,
            "cuda": [{"name": d.name, "compute_capability": d.compute_capability}
                     for d in self.cuda],
        }


def _cpuinfo_lines() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _field(lines: list[str], *keys: str) -> str | None:
    for line in lines:
        name, sep, value = line.partition(":")
        if sep and name.strip() in keys:
            return value.strip()
    return None


def _cuda_devices() -> tuple[CudaDevice, ...]:
    """From nvidia-smi, so that asking does not import torch or initialise CUDA."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    devices = []
    for line in out.splitlines():
        name, _, cap = line.rpartition(",")
        if name.strip():
            devices.append(CudaDevice(name.strip(), cap.strip()))
    return tuple(devices)


def detect() -> Capabilities:
    arch = platform.machine().lower()
    override = os.environ.get(FEATURES_ENV)
    if override is not None:
        features = {f.strip().lower() for f in override.split(",") if f.strip()}
        source = FEATURES_ENV
    else:
        flags = _field(_cpuinfo_lines(), "flags", "Features") or ""
        features = set(flags.split())
        source = "/proc/cpuinfo" if flags else "unknown"
    return Capabilities(arch, frozenset(features), source, _cuda_devices())


@functools.cache
def capabilities() -> Capabilities:
    return detect()


def cpu_name() -> str:
    return (_field(_cpuinfo_lines(), "model name") or platform.processor()
            or platform.machine())


def describe_machine() -> dict[str, Any]:
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "capabilities": capabilities().to_dict(),
            "os": platform.platform(), "python": platform.python_version(),
            "packages": versions}
