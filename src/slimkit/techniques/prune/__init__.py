"""Structured pruning: parts of a network removed, leaving a smaller dense model."""

from typing import Literal

# How channels are ranked within a layer (here, so configs name it without loading torch).
Method = Literal["l1", "l2", "bn_scale", "taylor"]
