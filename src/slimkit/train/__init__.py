"""Training shared by every technique that fine-tunes a model (distillation, QAT, pruning)."""

from slimkit.train.loop import FitResult, LossFn, TrainSettings, fit

__all__ = ["FitResult", "LossFn", "TrainSettings", "fit"]
