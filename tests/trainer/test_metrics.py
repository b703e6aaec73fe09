import numpy as np

from trainer.metrics import auc, rmse


def test_auc_by_hand_with_ties():
    # positives at 0.8 and 0.4, negatives at 0.4 and 0.1: pairs (0.8>0.4, 0.8>0.1, 0.4=0.4, 0.4>0.1)
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == (1 + 1 + 0.5 + 1) / 4
    assert auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert np.isnan(auc([1, 1], [0.2, 0.3]))


def test_rmse_by_hand():
    assert rmse([1.0, 2.0], [2.0, 4.0]) == np.sqrt((1 + 4) / 2)


def test_mae_logloss_and_calibration_by_hand():
    from trainer.metrics import calibration, logloss, mae

    assert mae([1.0, 2.0], [2.0, 4.0]) == 1.5
    assert np.isclose(logloss([1, 0], [0.8, 0.25]), -(np.log(0.8) + np.log(0.75)) / 2)
    assert calibration([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]) == 2.0  # predicts 0.5, rate 0.25
