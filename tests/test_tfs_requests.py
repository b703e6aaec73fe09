"""Predict requests over raw rows: the tensors TF Serving reads, and the refusals."""

import numpy as np
import pytest
import tensorflow as tf

from multitower.tfs_requests import RequestError, predict_request, request_rows

DTYPES = {"user_id": tf.string, "hour": tf.int64, "item_price": tf.float32}


@pytest.mark.parametrize("rows", [
    {"user_id": ["u1", "ü2"], "hour": [7, 2**62], "item_price": [19.5, -1e30]},
    {"user_id": np.array([b"u1", "ü2".encode()]), "hour": np.array([7, 2**62]),
     "item_price": np.array([19.5, -1e30], dtype=np.float32)},
])
def test_request_tensors_equal_what_make_tensor_proto_builds(rows):
    request = predict_request("ranker", rows, DTYPES, version=3)
    assert request.model_spec.name == "ranker" and request.model_spec.version.value == 3
    assert request.model_spec.signature_name == "serving_default"
    for name, dtype in DTYPES.items():
        values = rows[name]
        if dtype == tf.string:
            values = [v.encode() if isinstance(v, str) else v for v in values]
        reference = tf.make_tensor_proto(values, dtype=dtype, shape=[2])
        sent = request.inputs[name]
        assert sent.dtype == reference.dtype
        assert sent.tensor_shape == reference.tensor_shape
        np.testing.assert_array_equal(tf.make_ndarray(sent), tf.make_ndarray(reference))
    assert request_rows(request)["user_id"].tolist() == [b"u1", "ü2".encode()]


@pytest.mark.parametrize(("name", "values"), [
    ("hour", ["7", 8]), ("hour", [7.5, 1]), ("hour", [True, 1]), ("hour", [2**63, 1]),
    ("item_price", ["x", 1.0]),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_input(name, values):
    rows = {"user_id": ["a", "b"], "hour": [1, 2], "item_price": [1.0, 2.0], name: values}
    with pytest.raises(RequestError, match=f"input '{name}': the values do not fit"):
        predict_request("ranker", rows, DTYPES)


def test_missing_unknown_and_uneven_inputs_are_refused():
    with pytest.raises(RequestError, match=r"missing inputs \['item_price'\], unknown inputs "
                                           r"\['price'\]"):
        predict_request("m", {"user_id": ["a"], "hour": [1], "price": [1.0]}, DTYPES)
    with pytest.raises(RequestError, match="the same number of rows"):
        predict_request("m", {"user_id": ["a"], "hour": [1, 2], "item_price": [1.0]}, DTYPES)
