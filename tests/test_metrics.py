from __future__ import annotations

import math

import numpy as np
import pytest

from slimkit.evaluate import metrics
from slimkit.evaluate.evaluator import evaluate_outputs, primary_metric


def _circle(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_cosine_rows_of_known_vectors() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [0.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [4.0, 3.0], [1.0, 0.0]])
    cos = metrics.cosine_rows(a, b)
    np.testing.assert_allclose(cos, [0.0, 1.0, 24 / 25, 0.0], atol=1e-12)


def test_cosine_rows_flattens_each_example() -> None:
    a = np.array([[[1.0, 0.0], [0.0, 0.0]]])  # one example of shape (2, 2)
    b = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    assert metrics.cosine_rows(a, b) == pytest.approx([1 / math.sqrt(2)])


def test_sqnr_of_known_noise() -> None:
    signal = np.ones(100, dtype=np.float32)
    assert metrics.sqnr_db(signal, signal + 0.1) == pytest.approx(20.0, abs=1e-4)
    assert metrics.sqnr_db(signal, signal - 0.01) == pytest.approx(40.0, abs=1e-3)
    # power 25, noise 0.25 -> 100x -> 20 dB
    assert metrics.sqnr_db(np.array([3.0, 4.0]), np.array([3.0, 4.5])) == pytest.approx(20.0)
    # the noise is as strong as the signal
    assert metrics.sqnr_db(np.array([3.0, 4.0]), np.zeros(2)) == pytest.approx(0.0)


def test_sqnr_identical_and_tiny_noise_are_capped_at_200() -> None:
    x = np.linspace(-1, 1, 50)
    assert metrics.sqnr_db(x, x.copy()) == 200.0
    assert metrics.sqnr_db(x, x + 1e-15) == 200.0


def test_sqnr_of_nan_or_infinite_outputs_is_the_worst_score() -> None:
    x = np.linspace(-1, 1, 50)
    for bad in (np.nan, np.inf, -np.inf):
        broken = x.copy()
        broken[3] = bad
        assert metrics.sqnr_db(x, broken) == -math.inf  # not 200 dB, as min(200, nan) gave
        assert math.isnan(metrics.sqnr_db(broken, x))  # a broken reference has no ratio
    nan_out = np.full((4, 3), np.nan, dtype=np.float32)
    scores = evaluate_outputs("generic", nan_out, np.ones((4, 3), dtype=np.float32), None)
    assert scores["sqnr_db"] == -math.inf
    assert math.isnan(scores["cosine"]) and math.isnan(scores["max_abs_error"])


def test_max_abs_error() -> None:
    a = np.array([[1.0, -2.0], [0.5, 0.0]])
    b = np.array([[1.5, -2.0], [0.5, -3.0]])
    assert metrics.max_abs_error(a, b) == pytest.approx(3.0)
    assert metrics.max_abs_error(a, a) == 0.0


def test_fidelity_uses_the_reference_as_signal() -> None:
    reference = np.array([[3.0, 4.0]])
    output = np.array([[3.0, 4.5]])
    fid = metrics.fidelity(output, reference)
    # 20 dB with the reference as signal; the other way round would be ~20.68 dB
    assert fid["sqnr_db"] == pytest.approx(20.0, abs=1e-9)
    assert fid["max_abs_error"] == pytest.approx(0.5)
    assert fid["cosine"] == pytest.approx((9 + 18) / (5 * math.sqrt(9 + 20.25)))


def test_accuracy_and_agreement() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert metrics.accuracy(logits, np.array([1, 1, 1])) == pytest.approx(2 / 3)
    assert metrics.accuracy(logits, np.array([1, 0, 1])) == 1.0
    reference = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert metrics.agreement(logits, reference) == pytest.approx(1 / 3)
    assert metrics.agreement(logits, logits) == 1.0


def test_neighbours_exclude_self() -> None:
    emb = _circle([0, 10, 90, 100])
    np.testing.assert_array_equal(metrics.neighbours(emb, 1), [[1], [0], [3], [2]])
    np.testing.assert_array_equal(metrics.neighbours(emb, 2)[:, 0], [1, 0, 3, 2])


def test_topk_agreement_on_hand_built_neighbour_sets() -> None:
    emb = _circle([0, 10, 90, 100])  # nearest: 0<->1, 2<->3
    ref = _circle([0, 10, 90, 180])  # nearest: 0->1, 1->0, 2->1, 3->2
    assert metrics.topk_agreement(emb, ref, k=1) == pytest.approx(0.75)
    swapped = _circle([0, 90, 10, 100])  # nearest: 0->2, 1->3, 2->0, 3->1
    assert metrics.topk_agreement(emb, swapped, k=1) == 0.0


def test_topk_agreement_identical_and_scaled() -> None:
    emb = np.random.default_rng(0).standard_normal((12, 5))
    assert metrics.topk_agreement(emb, emb.copy(), k=3) == 1.0
    # cosine neighbours do not change with the scale of each row
    scaled = emb * np.arange(1, 13)[:, None]
    assert metrics.topk_agreement(scaled, emb, k=3) == 1.0


def test_topk_agreement_clamps_k_and_needs_two_items() -> None:
    emb = _circle([0, 10, 90, 100])
    other = _circle([0, 90, 10, 100])
    # k beyond n-1 compares every other item: the sets are then equal
    assert metrics.topk_agreement(emb, other, k=10) == 1.0
    assert math.isnan(metrics.topk_agreement(emb[:1], other[:1], k=3))


def test_evaluate_outputs_classification_with_reference() -> None:
    labels = np.array([1, 0, 1, 0])
    reference = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # all right
    outputs = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # one wrong
    res = evaluate_outputs("classification", outputs, reference, labels)
    assert res["accuracy"] == pytest.approx(0.75)
    assert res["accuracy_delta"] == pytest.approx(-25.0)  # percentage points
    assert res["agreement"] == pytest.approx(0.75)
    assert res["cosine"] == pytest.approx(0.75)
    assert "mean_cosine" not in res


def test_evaluate_outputs_embedding_and_primary_metric() -> None:
    emb = np.random.default_rng(1).standard_normal((6, 4))
    res = evaluate_outputs("embedding", emb, emb.copy(), None, top_k=2)
    assert res["mean_cosine"] == pytest.approx(1.0)
    assert res["min_cosine"] == pytest.approx(1.0)
    assert res["top2_agreement"] == 1.0
    assert res["sqnr_db"] == 200.0
    assert primary_metric("embedding", False) == "mean_cosine"
    assert primary_metric("classification", True) == "accuracy"
    assert primary_metric("classification", False) == "agreement"


def test_evaluate_outputs_user_metric() -> None:
    def hits(outputs: np.ndarray, labels: np.ndarray | None,
             reference: np.ndarray | None) -> dict[str, float]:
        assert labels is not None
        return {"hits": float((outputs.argmax(-1) == labels).sum())}

    out = np.array([[0.0, 1.0], [0.0, 1.0]])
    res = evaluate_outputs("generic", out, None, np.array([1, 0]), user_metric=hits)
    assert res == {"hits": 1.0}
