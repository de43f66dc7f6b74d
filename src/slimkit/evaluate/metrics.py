"""Quality metrics as pure numpy functions, checked by threshold, never by exact floats."""

from __future__ import annotations

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


def agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Share of examples whose predicted class matches the reference model's."""
    return float((logits.argmax(-1) == reference.argmax(-1)).mean())


def _rows(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float64)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = _rows(a), _rows(b)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def sqnr_db(signal: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB; capped at 200 dB for identical outputs.

    NaN or infinite outputs are infinite noise, -inf dB, the worst score: the cap alone would
    give them 200 dB, since `min(200.0, nan)` is 200. A reference that is not finite has no
    ratio to give (NaN).
    """
    s = signal.astype(np.float64)
    if not np.isfinite(s).all():
        return float("nan")
    if not np.isfinite(approx).all():
        return float("-inf")
    noise = float(((s - approx.astype(np.float64)) ** 2).sum())
    power = float((s**2).sum())
    if noise == 0.0:
        return 200.0
    return float(min(200.0, 10 * np.log10(max(power, 1e-30) / noise)))


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k nearest rows by cosine, itself excluded."""
    x = _rows(emb)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def topk_agreement(emb: np.ndarray, reference: np.ndarray, k: int = 10) -> float:
    """Mean overlap of each item's k nearest neighbours with the reference model's.

    This is what retrieval users feel: a cosine of 0.99 can still reorder search results.
    """
    k = min(k, len(emb) - 1)
    if k < 1:
        return float("nan")
    a, b = neighbours(emb, k), neighbours(reference, k)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(a, b, strict=True)]))


def fidelity(output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    cos = cosine_rows(output, reference)
    return {"sqnr_db": sqnr_db(reference, output), "cosine": float(cos.mean()),
            "max_abs_error": max_abs_error(output, reference)}
