"""One fidelity score for every budgeted search: the evaluator's metrics, a budget's verdict."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.errors import TechniqueError
from slimkit.evaluate import evaluate_outputs, metrics
from slimkit.evaluate.fidelity import (
    Budget,
    Fidelity,
    accuracy_targets,
    level,
    relative_error,
    score,
)
from slimkit.techniques.quantize.budget import keep_sensitive_in_float, search_report

REFERENCE = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [0.0, 1.0, 2.0]])
# the last two rows flip their top-1
CANDIDATE = np.array([[2.0, 1.0, 0.1], [0.0, 3.0, 1.2], [1.0, 2.5, 2.0], [0.0, 2.5, 2.0]])
LABELS = np.array([1, 1, 2, 2])


def test_score_agrees_with_the_evaluator() -> None:
    fid = score(CANDIDATE, REFERENCE, LABELS)
    report = evaluate_outputs("classification", CANDIDATE, REFERENCE, LABELS)
    assert fid.accuracy_drop == pytest.approx(-report["accuracy_delta"])
    assert fid.cosine == pytest.approx(report["cosine"])
    assert fid.cosine == pytest.approx(metrics.cosine_rows(CANDIDATE, REFERENCE).mean())


def test_without_labels_a_drop_budget_counts_disagreement_with_the_float_top1() -> None:
    budget = Budget(max_drop=10.0)
    targets = accuracy_targets(budget, REFERENCE, None)
    assert targets is not None
    fid = score(CANDIDATE, REFERENCE, targets)
    assert fid.accuracy_drop == pytest.approx(100 * (1 - metrics.agreement(CANDIDATE, REFERENCE)))
    assert fid.accuracy_drop == 50.0 and not fid.within(budget)
    assert fid.within(Budget(max_drop=50.0))


def test_a_cosine_budget_counts_a_drop_only_against_labels() -> None:
    budget = Budget(min_cosine=0.9)
    assert accuracy_targets(budget, REFERENCE, None) is None
    assert score(CANDIDATE, REFERENCE, None).accuracy_drop is None
    fid = score(CANDIDATE, REFERENCE, accuracy_targets(budget, REFERENCE, LABELS))
    assert fid.accuracy_drop == 50.0


def test_a_drop_budget_needs_class_scores() -> None:
    with pytest.raises(TechniqueError, match=r"class scores.*\[4, 3, 2\].*min_cosine"):
        accuracy_targets(Budget(max_drop=1.0), np.zeros((4, 3, 2)), None)


def test_within_and_error_are_in_the_budgets_unit() -> None:
    fid = Fidelity(cosine=0.99, accuracy_drop=0.5)
    assert fid.within(Budget(min_cosine=0.98)) and not fid.within(Budget(min_cosine=0.995))
    assert fid.within(Budget(max_drop=0.5)) and not fid.within(Budget(max_drop=0.4))
    assert fid.error(Budget(min_cosine=0.9)) == pytest.approx(0.01)
    assert fid.error(Budget(max_drop=1.0)) == 0.5


def test_outputs_that_are_not_finite_are_the_worst_error() -> None:
    broken = CANDIDATE.copy()
    broken[0, 0] = np.nan
    fid = score(broken, REFERENCE, None)
    assert fid.error(Budget(min_cosine=0.5)) == np.inf
    assert not fid.within(Budget(min_cosine=0.5))


def test_level_is_the_budgets_metric_higher_better() -> None:
    assert level(Budget(max_drop=1.0), CANDIDATE, REFERENCE, LABELS) == 25.0
    assert level(Budget(min_cosine=0.9), REFERENCE, REFERENCE, None) == pytest.approx(1.0)


def test_relative_error_takes_numpy_and_torch_alike() -> None:
    torch = pytest.importorskip("torch")
    expected = float(((CANDIDATE - REFERENCE) ** 2).mean() / (REFERENCE**2).mean())
    assert relative_error(CANDIDATE, REFERENCE) == pytest.approx(expected)
    as_torch = relative_error(torch.tensor(CANDIDATE), torch.tensor(REFERENCE))
    assert as_torch == pytest.approx(expected)
    assert relative_error(np.ones(3), np.zeros(3)) == 1.0  # a silent reference: plain MSE


def test_search_reverts_the_most_sensitive_layers_until_the_budget_holds() -> None:
    # each layer's error alone, and errors that add up when quantized together
    alone = {"a": 0.002, "b": 0.03, "c": 0.01}

    def evaluate(only: list[str] | None, exclude: list[str]) -> Fidelity:
        quantized = [n for n in (only or alone) if n not in exclude]
        return Fidelity(cosine=1.0 - sum(alone[n] for n in quantized))

    result = keep_sensitive_in_float(list(alone), Budget(min_cosine=0.985), evaluate)
    assert result.kept_float == ["b"] and result.tried == 1 + 3 + 1
    assert [r["layer"] for r in result.layers] == ["b", "c", "a"]
    result = keep_sensitive_in_float(list(alone), Budget(min_cosine=0.9999), evaluate)
    assert result.kept_float == ["b", "c", "a"]
    result = keep_sensitive_in_float(list(alone), Budget(min_cosine=0.9), evaluate)
    assert result.kept_float == [] and result.tried == 1


def test_search_report_counts_a_drop_without_labels_against_the_float_top1() -> None:
    """A max_drop budget on unlabelled data is checked against the float model's own
    predictions, so flipping half of them is a 50-point drop that layers must fix."""
    def outputs(only: list[str] | None, exclude: list[str]) -> np.ndarray:
        quantized = [n for n in (only or ["a", "b"]) if n not in exclude]
        return CANDIDATE if "a" in quantized else REFERENCE

    report = search_report(["a", "b"], Budget(max_drop=10.0), REFERENCE, None, outputs)
    assert report["kept_float"] == ["a"] and report["accuracy_drop"] == 0.0
    assert report["checked_on"] == 4 and report["layers"][0]["sensitivity"] == 50.0
    with pytest.raises(TechniqueError, match="class scores"):
        search_report(["a"], Budget(max_drop=1.0), REFERENCE[:, :, None], None, outputs)
