"""Built-in techniques; importing this package registers them.

Each module imports its heavy libraries inside the functions, so registering costs nothing.
"""

from slimkit.techniques import cast, dynamic_int8
from slimkit.techniques.cast import Cast
from slimkit.techniques.distill import Distill  # noqa: F401  (registers it)
from slimkit.techniques.dynamic_int8 import DynamicInt8
from slimkit.techniques.fuse import FuseTransformer
from slimkit.techniques.prune import channels as prune_channels  # noqa: F401
from slimkit.techniques.prune import magnitude, semi  # noqa: F401  (registers them)
from slimkit.techniques.prune import transformer as prune_transformer  # noqa: F401
from slimkit.techniques.quantize.mixed import MixedPrecision
from slimkit.techniques.quantize.openvino import NncfInt8, WeightCompress
from slimkit.techniques.quantize.ort_static import StaticInt8
from slimkit.techniques.quantize.ort_weight_only import WeightOnlyInt4
from slimkit.techniques.quantize.qat import QAT
from slimkit.techniques.quantize.smooth import SmoothQuant
from slimkit.techniques.quantize.torchao_ptq import TorchAO

__all__ = ["QAT", "Cast", "DynamicInt8", "FuseTransformer", "MixedPrecision", "NncfInt8",
           "SmoothQuant", "StaticInt8", "TorchAO",
           "WeightCompress", "WeightOnlyInt4", "cast", "dynamic_int8"]
