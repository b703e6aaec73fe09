import numpy as np
import pytest

from trainer.metrics import auc, calibration, calibration_curve, group_auc, logloss, mae, rmse


def test_auc_by_hand_with_ties():
    # positives at 0.8 and 0.4, negatives at 0.4 and 0.1: pairs (0.8>0.4, 0.8>0.1, 0.4=0.4, 0.4>0.1)
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == (1 + 1 + 0.5 + 1) / 4
    assert auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert np.isnan(auc([1, 1], [0.2, 0.3]))
    assert np.isnan(auc([], []))


def test_rmse_by_hand():
    assert rmse([1.0, 2.0], [2.0, 4.0]) == np.sqrt((1 + 4) / 2)


def test_mae_logloss_and_calibration_by_hand():
    assert mae([1.0, 2.0], [2.0, 4.0]) == 1.5
    assert np.isclose(logloss([1, 0], [0.8, 0.25]), -(np.log(0.8) + np.log(0.75)) / 2)
    assert np.isfinite(logloss([1, 0], [0.0, 1.0]))  # clipped, not infinite
    assert np.isclose(logloss([1, 1], [0.8, 0.5]), -(np.log(0.8) + np.log(0.5)) / 2)
    assert calibration([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]) == 2.0  # predicts 0.5, rate 0.25


def test_group_auc_by_hand_leaves_out_groups_of_one_class():
    #            user a: 4 rows, both classes      b: one class      c: 2 rows, both classes
    groups = ["a", "a", "a", "a", "b", "b", "b", "c", "c"]
    labels = [1, 0, 1, 0, 1, 1, 1, 0, 1]
    scores = [0.9, 0.8, 0.3, 0.1, 0.5, 0.2, 0.7, 0.6, 0.4]
    # a: positives 0.9, 0.3 vs negatives 0.8, 0.1 -> pairs won 0.9>0.8, 0.9>0.1, 0.3>0.1 = 3/4
    # c: the positive 0.4 below the negative 0.6 -> 0
    found = group_auc(labels, scores, groups)
    assert found["gauc"] == pytest.approx((4 * 0.75 + 2 * 0.0) / 6)
    assert (found["groups"], found["groups_total"], found["rows"]) == (2, 3, 6)
    # integer keys, and the rows in any order
    order = np.random.default_rng(0).permutation(len(groups))
    ids = np.array([ord(g) for g in groups])[order]
    shuffled = group_auc(np.array(labels)[order], np.array(scores)[order], ids)
    assert shuffled == found


def test_group_auc_without_a_group_of_both_classes():
    found = group_auc([1, 0, 1], [0.1, 0.2, 0.3], [7, 8, 9])
    assert np.isnan(found["gauc"]) and (found["groups"], found["groups_total"]) == (0, 3)


def test_calibration_curve_bins_by_hand():
    probabilities = [0.05, 0.15, 0.18, 0.2, 0.55, 0.95, 0.99]
    labels = [0, 0, 1, 1, 1, 1, 0]
    # 5 bins of width 0.2; 0.2 sits on an inner edge and falls in the lower bin [0, 0.2]
    bins = calibration_curve(labels, probabilities, bins=5)
    assert [(b["low"], b["high"], b["rows"]) for b in bins] == [
        (0.0, pytest.approx(0.2), 4), (pytest.approx(0.4), pytest.approx(0.6), 1),
        (pytest.approx(0.8), 1.0, 2)]
    assert bins[0]["mean_prediction"] == pytest.approx((0.05 + 0.15 + 0.18 + 0.2) / 4)
    assert bins[0]["positive_rate"] == pytest.approx(2 / 4)
    assert (bins[1]["mean_prediction"], bins[1]["positive_rate"]) == (pytest.approx(0.55), 1.0)
    assert bins[2]["mean_prediction"] == pytest.approx(0.97)
    assert bins[2]["positive_rate"] == pytest.approx(0.5)
    assert calibration_curve([], [], bins=5) == []


def test_group_auc_equals_scikit_learn_per_group():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    groups = rng.integers(0, 40, 2_000)
    labels = rng.random(2_000) < 0.3
    scores = np.round(rng.random(2_000), 2)  # many ties, within and across groups
    found = group_auc(labels, scores, groups)
    values, weights = [], []
    for g in np.unique(groups):
        rows = groups == g
        if 0 < labels[rows].sum() < rows.sum():
            values.append(roc_auc_score(labels[rows], scores[rows]))
            weights.append(rows.sum())
    assert found["gauc"] == pytest.approx(np.average(values, weights=weights), abs=1e-12)
    assert (found["groups"], found["rows"]) == (len(values), sum(weights))
