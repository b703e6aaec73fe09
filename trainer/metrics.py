"""Offline quality metrics on numpy arrays (the demo's and evaluation's summaries).

AUC, log loss, RMSE, MAE and the calibration curve are scikit-learn's; this module adds what it
lacks: NaN instead of an error when a metric is undefined, the mean-over-mean calibration ratio,
the rows per calibration bin, and the group (user-level) AUC.
"""

from __future__ import annotations

import numpy as np
from sklearn.calibration import calibration_curve as _sklearn_calibration_curve
from sklearn.metrics import (
    log_loss,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
)


def _binary(labels: np.ndarray) -> np.ndarray:
    return np.asarray(labels).astype(bool).ravel()


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (tied scores count half); NaN when only one class is present."""
    labels = _binary(labels)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64).ravel()))


def rmse(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Root mean squared error, in float64."""
    return float(root_mean_squared_error(np.asarray(labels, dtype=np.float64),
                                         np.asarray(predictions, dtype=np.float64)))


def mae(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean absolute error, in float64."""
    return float(mean_absolute_error(np.asarray(labels, dtype=np.float64),
                                     np.asarray(predictions, dtype=np.float64)))


def logloss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy (probabilities clipped away from 0 and 1 by scikit-learn)."""
    return float(log_loss(_binary(labels), np.asarray(probabilities, dtype=np.float64).ravel(),
                          labels=[False, True]))


def calibration(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean prediction over mean label: 1.0 is calibrated, above 1 over-predicts."""
    positive_rate = float(np.mean(labels))
    return float(np.mean(probabilities)) / positive_rate if positive_rate > 0 else float("nan")


def calibration_curve(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10
                      ) -> list[dict]:
    """The reliability diagram's points: one per non-empty bin of `bins` equal-width bins.

    A probability on an inner edge falls in the lower bin, as in scikit-learn's
    `calibration_curve` (`strategy="uniform"`), which gives the means.

    Returns:
        `[{"low", "high", "rows", "mean_prediction", "positive_rate"}]`, in probability order.
    """
    y = _binary(labels)
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if len(y) == 0:
        return []
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = np.bincount(np.searchsorted(edges[1:-1], p), minlength=bins)
    positive_rate, mean_prediction = _sklearn_calibration_curve(y, p, n_bins=bins,
                                                                strategy="uniform")
    filled = np.flatnonzero(rows)
    return [
        {"low": float(edges[b]), "high": float(edges[b + 1]), "rows": int(rows[b]),
         "mean_prediction": float(m), "positive_rate": float(r)}
        for b, m, r in zip(filled, mean_prediction, positive_rate, strict=True)
    ]


def group_auc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict:
    """The group (e.g. user-level) AUC: per-group AUCs averaged with the groups' rows as weights.

    Only groups holding both classes count (a group of one class has no AUC); their number
    and rows are reported beside the value. Each group's AUC is the rank-sum (Mann-Whitney)
    statistic over its rows, ties counted half, as scikit-learn's `roc_auc_score` gives it:
    all groups at once from one sort, since one `roc_auc_score` call per group costs ~1 ms
    (40 s for a day of 40k users).

    Returns:
        `{"gauc": value (NaN if no group counts), "groups": groups counted, "groups_total":
        distinct groups, "rows": rows of the groups counted}`.
    """
    y = _binary(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    _, group = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    order = np.lexsort((s, group.ravel()))  # by group, then by score
    g, s, y = group.ravel()[order], s[order], y[order]
    rows = np.bincount(g)
    positives = np.bincount(g, weights=y, minlength=len(rows))
    negatives = rows - positives
    # 1-based rank within the group, then the mean rank of each run of tied scores.
    rank = np.arange(1, len(g) + 1) - np.concatenate([[0], np.cumsum(rows)])[g]
    run = np.cumsum(np.concatenate([[True], (g[1:] != g[:-1]) | (s[1:] != s[:-1])])) - 1
    rank = (np.bincount(run, weights=rank) / np.bincount(run))[run]
    mixed = (positives > 0) & (negatives > 0)
    if not mixed.any():
        return {"gauc": float("nan"), "groups": 0, "groups_total": int(len(rows)), "rows": 0}
    rank_sum = np.bincount(g, weights=rank * y, minlength=len(rows))[mixed]
    p, n = positives[mixed], negatives[mixed]
    values = (rank_sum - p * (p + 1) / 2) / (p * n)
    weights = rows[mixed]
    return {"gauc": float(np.average(values, weights=weights)), "groups": int(mixed.sum()),
            "groups_total": int(len(rows)), "rows": int(weights.sum())}
