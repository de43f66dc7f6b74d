"""Activation statistics gathered in one streaming pass, shared by every technique.

Observers update from each batch and keep memory that does not grow with the data: min/max
per tensor or per channel, max-abs per channel, a histogram for the range methods, and a
bounded seeded row sample where a technique needs raw rows. `collect` feeds them from torch
forward hooks, `collect_onnx` from an ONNX model's tensors exposed as outputs. Importing this
package imports neither torch nor ONNX Runtime.
"""

from slimkit.observe.base import Observer
from slimkit.observe.histogram import HistogramObserver
from slimkit.observe.minmax import MaxAbs, MinMax
from slimkit.observe.onnx_collect import OnnxTaps, collect_onnx
from slimkit.observe.requests import LayerStats, Request, Side
from slimkit.observe.sample import RowSample
from slimkit.observe.torch_collect import collect

__all__ = ["HistogramObserver", "LayerStats", "MaxAbs", "MinMax", "Observer", "OnnxTaps",
           "Request", "RowSample", "Side", "collect", "collect_onnx"]
