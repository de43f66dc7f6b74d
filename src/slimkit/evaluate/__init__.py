from slimkit.evaluate.evaluator import collect_outputs, evaluate_outputs, primary_metric

__all__ = ["collect_outputs", "evaluate_outputs", "primary_metric"]
