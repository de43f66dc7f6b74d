"""Training shared by every technique that fine-tunes a model (distillation, QAT, pruning)."""

from slimkit.train.loop import TrainRun, fit
from slimkit.train.settings import FitResult, LossFn, TrainSettings

__all__ = ["FitResult", "LossFn", "TrainRun", "TrainSettings", "fit"]
