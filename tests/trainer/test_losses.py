"""Loss terms on tiny batches worked out by hand: masking, Huber, log1p, ESMM's CTCVR label."""

import copy

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import yaml

from multitower.config import ConfigError, parse_config
from tests.small_project import EXAMPLE
from trainer.heads import build_heads
from trainer.losses import (
    LossTerm,
    elementwise_loss,
    invert_output,
    loss_terms,
    term_label,
    term_losses,
    transform_label,
)

RAW = yaml.safe_load(EXAMPLE.read_text())


def _config(**model):
    raw = copy.deepcopy(RAW)
    raw["model"].update(model)
    return parse_config(raw)


def _col(*values):
    return tf.constant(np.array(values, dtype=np.float32)[:, None])


def test_a_masked_label_contributes_nothing_to_its_task():
    term = LossTerm("watch", "watch", "mse", 1.0, ("watch",))
    labels = {"watch": _col(1.0, np.nan, 3.0)}
    for wild in (0.0, 100.0):  # the prediction on the unlabelled row does not matter
        loss = term_losses([term], labels, {"watch": _col(2.0, wild, 1.0)})["watch"]
        assert float(loss) == pytest.approx((1.0 + 4.0) / 2)  # mean over the 2 labelled rows
    empty = term_losses([term], {"watch": _col(np.nan)}, {"watch": _col(5.0)})["watch"]
    assert float(empty) == 0.0


def test_binary_cross_entropy_and_huber_by_hand():
    p = _col(0.8, 0.25)
    bce = elementwise_loss(LossTerm("c", "c", "binary", 1, ("c",)), _col(1.0, 0.0), p)
    np.testing.assert_allclose(bce.numpy()[:, 0], [-np.log(0.8), -np.log(0.75)], rtol=1e-5)
    huber = LossTerm("w", "w", "huber", 1, ("w",), huber_delta=2.0)
    out = elementwise_loss(huber, _col(0.0, 0.0), _col(1.0, 5.0)).numpy()[:, 0]
    np.testing.assert_allclose(out, [0.5, 0.5 * 4 + 2 * 3])  # quadratic, then linear past 2


def test_log1p_transform_and_its_inverse():
    y = _col(0.0, 9.0, 99.0)
    np.testing.assert_allclose(transform_label(y, "log1p").numpy()[:, 0],
                               np.log1p([0, 9, 99]), rtol=1e-6)
    np.testing.assert_allclose(invert_output(transform_label(y, "log1p"), "log1p").numpy(),
                               y.numpy(), rtol=1e-5)
    assert transform_label(y, "none") is y


def test_esmm_terms_train_ctr_and_ctcvr_not_cvr():
    config = _config(heads="esmm", esmm={"ctr_task": "click", "cvr_task": "conversion"})
    terms = {t.name: t for t in loss_terms(config)}
    assert set(terms) == {"click", "ctcvr", "watch_time"}  # no term on the clicked subset
    assert terms["ctcvr"].labels == ("click", "conversion")
    labels = {"click": _col(1.0, 1.0, 0.0, 1.0), "conversion": _col(1.0, 0.0, 0.0, np.nan)}
    y, mask = term_label(terms["ctcvr"], labels)
    np.testing.assert_array_equal(y.numpy()[:, 0], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(mask.numpy()[:, 0], [1.0, 1.0, 1.0, 0.0])


def test_esmm_head_outputs_pctcvr_as_the_product():
    config = _config(heads="esmm", esmm={"ctr_task": "click", "cvr_task": "conversion"})
    per_task = [keras.Input(shape=(4,)) for _ in config.data.tasks]
    outputs = build_heads(config, per_task)
    model = keras.Model(per_task, outputs)
    x = [np.random.default_rng(i).normal(size=(6, 4)).astype("float32") for i in range(3)]
    out = model.predict(x, verbose=0)
    assert set(out) == {"click", "conversion", "watch_time", "ctcvr"}
    np.testing.assert_allclose(out["ctcvr"], out["click"] * out["conversion"], rtol=1e-6)


def test_esmm_and_task_options_are_validated():
    with pytest.raises(ConfigError, match="needs an 'esmm' block"):
        _config(heads="esmm")
    with pytest.raises(ConfigError, match="is not a binary task"):
        _config(heads="esmm", esmm={"ctr_task": "click", "cvr_task": "watch_time"})
    raw = copy.deepcopy(RAW)
    raw["data"]["tasks"][0]["label_transform"] = "log1p"
    with pytest.raises(ConfigError, match="regression tasks only"):
        parse_config(raw)
