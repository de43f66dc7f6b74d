"""TensorRT on an NVIDIA GPU: an engine built from the ONNX artifact when a session loads.

The network is built strongly typed, so the engine runs in the precision the graph says: an
fp32 graph in fp32, a graph the `cast` step turned to fp16 in fp16, a graph with Q/DQ pairs in
int8 (explicit quantization). TensorRT takes only symmetric int8 Q/DQ (zero point 0); an
ONNX Runtime style uint8 graph is refused with a line saying so rather than built wrongly.
Buffers are torch CUDA tensors, which spares a second CUDA binding (pycuda, cuda-python).
Without CUDA the runtime refuses in one line, before importing TensorRT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slimkit.errors import ModelLoadError, TechniqueError
from slimkit.model import FileModel, Model
from slimkit.runtimes.base import Runtime, Session

# Optimization profile for axes the graph leaves dynamic: (min, opt, max). Batch axes are the
# first dimension; the others are sequence lengths.
BATCH = (1, 32, 256)
OTHER = (1, 128, 512)
WORKSPACE = 1 << 30


def cuda_or_refuse() -> None:
    from slimkit.machine import capabilities

    if not capabilities().cuda:
        raise TechniqueError("tensorrt needs an NVIDIA GPU with CUDA; this machine has none "
                             "(nvidia-smi lists no GPU)")
    import torch

    if not torch.cuda.is_available():
        raise TechniqueError(f"tensorrt needs a CUDA build of torch for its buffers; this "
                             f"one ({torch.__version__}) has no CUDA")


def check_qdq(path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            continue
        values = numpy_helper.to_array(zp)
        if values.dtype != np.int8 or np.any(values != 0):
            raise TechniqueError(
                f"tensorrt: {node.name or node.output[0]} quantizes to {values.dtype} with a "
                f"non-zero zero point; TensorRT takes symmetric int8 Q/DQ only")


class TrtSession(Session):
    def __init__(self, engine: Any) -> None:
        import tensorrt as trt
        import torch

        self.torch = torch
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        io = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        # numpy dtypes of the inputs, torch dtypes of the outputs: looked up once, not per batch
        self.inputs = {n: trt.nptype(engine.get_tensor_dtype(n)) for n in io
                       if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self.outputs = {n: torch.from_numpy(np.zeros(1, trt.nptype(engine.get_tensor_dtype(n))
                                                     )).dtype
                        for n in io if n not in self.inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch, ctx = self.torch, self.context
        keep = []
        for name, want in self.inputs.items():
            t = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=want)).cuda()
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
            keep.append(t)
        outs = []
        for name, dtype in self.outputs.items():
            t = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=dtype, device="cuda")
            ctx.set_tensor_address(name, t.data_ptr())
            outs.append(t)
        with torch.cuda.stream(self.stream):
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise TechniqueError("tensorrt: the engine failed to run this batch")
        self.stream.synchronize()
        return [o.float().cpu().numpy() if o.dtype == torch.float16 else o.cpu().numpy()
                for o in outs]


class TensorRtRuntime(Runtime):
    name = "tensorrt"
    format = "onnx"

    def load(self, model: Model) -> Session:
        if not isinstance(model, FileModel) or model.format != "onnx":
            raise TechniqueError(f"tensorrt builds engines from ONNX models, not {model.format}")
        cuda_or_refuse()
        try:
            import tensorrt as trt
        except ImportError:
            raise TechniqueError("tensorrt is not installed: pip install 'slimkit[tensorrt]'"
                                 ) from None
        check_qdq(model.path)
        return TrtSession(build_engine(trt, model.path))

    def describe(self) -> dict[str, Any]:
        from slimkit.machine import capabilities

        try:
            import tensorrt as trt

            version = trt.__version__
        except ImportError:
            version = None
        gpus = [d.name for d in capabilities().cuda]
        return {"runtime": "tensorrt", "version": version, "device": gpus[0] if gpus else None,
                "threads": self.options.threads}


def build_engine(trt: Any, path: Path) -> Any:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"{path}: TensorRT cannot parse it ({errors[:300]})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            lo, opt, hi = ([d if d >= 0 else (BATCH if k == 0 else OTHER)[j]
                            for k, d in enumerate(shape)] for j in range(3))
            profile.set_shape(tensor.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelLoadError(f"{path}: TensorRT could not build an engine (see its log above)")
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise ModelLoadError(f"{path}: TensorRT could not load the engine it built")
    return engine
