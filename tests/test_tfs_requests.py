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
    # a list among single values (bytes() would make b"\x01\x02" of [1, 2])
    ("user_id", ["a", [1, 2]]), ("user_id", ["a", 3]), ("hour", [1, [2]]),
    ("item_price", [1.0, [2.0]]),
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


LIST_DTYPES = {"tags": tf.string, "codes": tf.int64, "price": tf.float32}


@pytest.mark.parametrize("rows", [
    {"tags": [["a", "ü", ""], ["b", "", ""]], "codes": [(1, 2**62), (3, -1)],
     "price": [[1.5], [-2.0]]},
    {"tags": np.array([[b"a", "ü".encode(), b""], [b"b", b"", b""]], dtype=object),
     "codes": np.array([[1, 2**62], [3, -1]]), "price": np.array([[1.5], [-2.0]], np.float32)},
])
def test_2d_inputs_are_written_row_major_as_make_tensor_proto_writes_them(rows):
    request = predict_request("ranker", rows, LIST_DTYPES,
                              shapes={"tags": [None, 3], "codes": [None, 2], "price": [-1, 1]})
    for name, dtype in LIST_DTYPES.items():
        values = np.array(rows[name], dtype=object if dtype == tf.string else None)
        if dtype == tf.string:
            values = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v,
                                  otypes=[object])(values)
        reference = tf.make_tensor_proto(values, dtype=dtype)
        sent = request.inputs[name]
        assert sent.tensor_shape == reference.tensor_shape
        assert [d.size for d in sent.tensor_shape.dim] == list(values.shape)
        assert not sent.tensor_content  # the typed field, as for vectors
        np.testing.assert_array_equal(tf.make_ndarray(sent), tf.make_ndarray(reference))
    read = request_rows(request)
    assert read["tags"].tolist() == [[b"a", "ü".encode(), b""], [b"b", b"", b""]]
    assert read["codes"].tolist() == [[1, 2**62], [3, -1]]
    assert [d.size for d in request.inputs["codes"].tensor_shape.dim] == [2, 2]
    assert list(request.inputs["codes"].int64_val) == [1, 2**62, 3, -1]  # row-major


@pytest.mark.parametrize(("values", "message"), [
    ([["a", "b"], ["c"]], r"every row needs a list of one length \(pad the lists\), got rows "
                          r"of lengths \[1, 2\]"),
    ([["a"], "b"], r"every row needs a list of one length \(pad the lists\), got rows of "
                   r"lengths \['a single value', 1\]"),
    ([[["a"]], [["b"]]], r"a batch is 1-D or 2-D \(a padded list per row\), got lists nested "
                         r"deeper"),
    (np.array([[["a"]], [["b"]]]), r"a batch is 1-D or 2-D \(a padded list per row\), got "
                                   r"an array of shape \(2, 1, 1\)"),
    ([["a", "b"], ["c", "d"]], r"a batch of shape \(2, 2\), the signature takes \(None, 3\)"),
    (["a", "b"], r"a batch of shape \(2,\), the signature takes \(None, 3\)"),
])
def test_ragged_deep_or_misshapen_lists_are_refused_naming_the_input(values, message):
    rows = {"tags": values, "codes": [[1, 2], [3, 4]], "price": [[1.0], [2.0]]}
    with pytest.raises(RequestError, match=f"input 'tags': {message}"):
        predict_request("m", rows, LIST_DTYPES,
                        shapes={"tags": [None, 3], "codes": [None, 2], "price": [None, 1]})


def test_a_wrong_element_in_a_list_is_refused_like_a_wrong_value():
    rows = {"tags": [["a"], ["b"]], "codes": [[1, 2], [3, "4"]], "price": [[1.0], [2.0]]}
    with pytest.raises(RequestError, match="input 'codes': the values do not fit int64"):
        predict_request("m", rows, LIST_DTYPES)


def test_a_warmup_file_of_2d_requests_round_trips(tmp_path):
    from multitower.tfs_requests import read_warmup, write_warmup

    rows = {"tags": [["a", ""], ["b", "c"], ["d", ""]], "codes": [[1, -1], [2, 3], [-1, -1]],
            "price": [[1.0], [2.0], [3.0]]}
    requests = [predict_request("m", {n: v[:size] for n, v in rows.items()}, LIST_DTYPES)
                for size in (1, 3)]
    path = str(tmp_path / "assets.extra" / "tf_serving_warmup_requests")
    write_warmup(path, requests)
    read = read_warmup(path)
    assert read == requests
    assert [request_rows(r)["tags"].shape for r in read] == [(1, 2), (3, 2)]
    assert request_rows(read[1])["codes"].tolist() == rows["codes"]
