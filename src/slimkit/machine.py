"""What a result must record about where it was measured."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

_PACKAGES = ["slimkit", "torch", "onnx", "onnxruntime", "openvino", "transformers", "numpy"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx512_bf16", "avx512_vnni",
                                                                    "avx_vnni", "amx", "avx2")))
    except OSError:
        pass
    return []


def describe_machine() -> dict[str, Any]:
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(),
            "os": platform.platform(), "python": platform.python_version(),
            "packages": versions}
