from slimkit.runtimes.base import (
    Runtime,
    RuntimeOptions,
    Session,
    get_runtime,
    register_runtime,
    runtime_format,
    runtime_installed,
    runtime_names,
)

__all__ = ["Runtime", "RuntimeOptions", "Session", "get_runtime", "register_runtime",
           "runtime_format", "runtime_installed", "runtime_names"]
