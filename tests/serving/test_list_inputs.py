"""List-valued inputs, `(batch, L)`, through the client and the TF Serving double, both protocols.

The served model is `tests.serving.list_model`'s hand-made SavedModel, whose outputs count and
weigh every element by its position, so each score shows whether a list was cut, padded and
ordered as the signature takes it; the expected scores are worked out by hand from the raw rows.
The double loads the model (replaying its warmup file of `(batch, L)` requests) and is reached
over loopback with the real clients, and with hand-written JSON and protos for TF Serving's own
rules (row format: every instance's list of one length; columnar: no ragged lists).
"""

import json

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from multitower.config import ServingConfig
from multitower.tfs_requests import predict_request, read_warmup, request_rows, warmup_path
from serving.client import RowsError, ServingError
from serving.grpc_client import GrpcClient
from serving.lists import ListInput
from serving.rest_client import RestClient
from tests.serving.double_server import model_config_text
from tests.serving.list_model import (
    CODES_LENGTH,
    MODEL,
    OUTPUTS,
    PADS,
    ROWS,
    TAGS_LENGTH,
    expected,
    padded,
    write_list_model,
)

pytestmark = pytest.mark.integration
CLIENTS = ["grpc", "rest-columnar", "rest-row"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_list_model(tmp_path_factory.mktemp("list_model"))


@pytest.fixture(scope="module")
def server(base, tmp_path_factory):
    from serving.double import read_model_config_file, start_server

    path = tmp_path_factory.mktemp("list_config") / "models.config"
    path.write_text(model_config_text([{"name": MODEL, "base_path": base}]))
    running = start_server(read_model_config_file(str(path)), serving_config=ServingConfig(),
                           source=str(path))
    yield running
    running.stop()


def client_for(server, kind: str, **options):
    if kind == "grpc":
        return GrpcClient(server.grpc_target, MODEL, **options)
    return RestClient(server.rest_url, MODEL, json_format=kind.split("-")[1], **options)


def expected_columns(rows: list[dict]) -> dict[str, list[float]]:
    by_row = [expected(row) for row in rows]
    return {name: [scores[name] for scores in by_row] for name in OUTPUTS}


@pytest.mark.parametrize("kind", CLIENTS)
def test_lists_shorter_equal_longer_and_empty_score_as_worked_out_by_hand(server, kind):
    with client_for(server, kind, pads=PADS, batch_size=3) as client:
        info = client.describe()
        assert info.lists == {"tags": ListInput(TAGS_LENGTH, ""),
                              "codes": ListInput(CODES_LENGTH, 0)}
        assert info.signature.shapes["user"] == (-1,)
        assert [client.check_row(row)[0] for row in ROWS] == [padded(row) for row in ROWS]
        scores = client.predict(ROWS)  # batches of 3 and 1
    assert scores.scores == expected_columns(ROWS)


@pytest.mark.parametrize("kind", CLIENTS)
def test_without_the_configured_pad_the_default_pads_and_the_model_counts_it(server, kind):
    """TF Serving's metadata has no pad value: a client left at the default -1 sends -1s."""
    with client_for(server, kind) as client:
        assert client.describe().lists["codes"] == ListInput(CODES_LENGTH, -1)
        assert client.check_row(ROWS[0])[0]["codes"] == [5, -1, -1]
        scores = client.predict(ROWS[:1]).scores
    assert scores["codes_count"] == [3.0]  # 5, -1, -1: the model pads with 0, not -1
    assert scores["tags_count"] == [2.0]   # strings: the default "" is the model's pad


BAD = [
    ({"tags": ["a", 5]}, "field 'tags': element 1: expected a string, got int 5"),
    ({"codes": [1, "2"]}, "field 'codes': element 1: expected an integer, got str '2'"),
    ({"codes": [1, 2.5]}, "field 'codes': element 1: expected an integer, got float 2.5"),
    ({"tags": ["a", None]}, "field 'tags': element 1: null value"),
    # an element past max_length is checked too
    ({"tags": ["a", "b", "c", "d", 9]}, "field 'tags': element 4: expected a string, got int 9"),
    ({"tags": ["a", ""]},
     "field 'tags': element 1: equals the pad value '', which marks padding"),
    ({"codes": [3, 0]},
     "field 'codes': element 1: equals the pad value 0, which marks padding"),
    ({"tags": "a"}, "field 'tags': expected a list, got str 'a'"),
    ({"tags": None}, "field 'tags': null value"),
    ({"user": ["u"]}, "field 'user': expected a string, got list ['u']"),
]


@pytest.mark.parametrize("kind", ["grpc", "rest-row"])
def test_bad_lists_are_refused_naming_field_and_element(server, kind):
    rows = [{**ROWS[0], **bad} for bad, _ in BAD]
    with client_for(server, kind, pads=PADS) as client, pytest.raises(RowsError) as caught:
        client.predict([ROWS[1], *rows])
    assert caught.value.bad == [(i + 2, reason) for i, (_, reason) in enumerate(BAD)]


def test_the_default_pad_is_refused_as_an_element_when_no_pad_is_configured(server):
    with client_for(server, "grpc") as client:
        features, reason = client.check_row({**ROWS[0], "codes": [4, -1]})
        assert features is None
        assert reason == "field 'codes': element 1: equals the pad value -1, which marks padding"
        assert client.check_row({**ROWS[0], "codes": [0]})[0]["codes"] == [0, -1, -1]


@pytest.mark.parametrize(("pads", "message"), [
    ({"codes": "0"}, "input 'codes': the pad value '0' is not a int64 value"),
    ({"codes": True}, "input 'codes': the pad value True is not a int64 value"),
    ({"tags": 0}, "input 'tags': the pad value 0 is not a string value"),
])
def test_a_pad_that_does_not_fit_its_input_is_refused_before_any_row(server, pads, message):
    with client_for(server, "rest-row", pads=pads) as client, \
            pytest.raises(ServingError, match=message):
        client.describe()


def test_unfitted_lists_are_refused_by_score_batch(server):
    unfitted = [{**padded(ROWS[0]), "tags": ["a"]}]
    with client_for(server, "rest-columnar", pads=PADS) as client, pytest.raises(
            ServingError, match=r"row 1: input 'tags' takes a list of 4 values, got list "
                                r"\['a'\]"):
        client.score_batch(unfitted)


# --- TF Serving's own protocol, on the double ------------------------------------------------

def post(server, body):
    answer = requests.post(f"{server.rest_url}/v1/models/{MODEL}:predict", data=json.dumps(body))
    return answer.status_code, answer.json()


def test_rest_row_and_columnar_take_nested_lists(server):
    rows = [padded(row) for row in ROWS]
    status, body = post(server, {"instances": rows})
    assert status == 200
    assert [{n: p[n] for n in OUTPUTS} for p in body["predictions"]] == [
        expected(row) for row in ROWS]
    status, body = post(server, {"inputs": {n: [row[n] for row in rows] for n in rows[0]}})
    assert status == 200 and body["outputs"] == expected_columns(ROWS)


def test_rest_refuses_lists_of_unequal_lengths_as_tf_serving(server):
    first, second = padded(ROWS[0]), padded(ROWS[1])
    short = {**second, "tags": second["tags"][:3]}
    assert post(server, {"instances": [first, short]}) == (400, {"error": (
        "Failed to process element: 1 key: tags of 'instances' list. Error: INVALID_ARGUMENT: "
        "Expecting tensor size: 4 but got: 3")})
    columns = {n: [first[n], short[n]] for n in first}
    assert post(server, {"inputs": columns}) == (400, {"error": (
        "Encountered list at unexpected size: 3 at level: 1 expected size: 4")})
    # an empty list is a tensor of size 0, the others are of size 4
    empty = {**second, "tags": []}
    assert post(server, {"instances": [first, empty]})[1]["error"].endswith(
        "Expecting tensor size: 4 but got: 0")
    nested = {**second, "tags": [["a", "b", "c", "d"]] * 4}
    assert post(server, {"instances": [first, nested]})[1]["error"].endswith(
        "Expecting tensor size: 4 but got: 16")


def test_shapes_are_not_checked_against_the_signature_as_in_tf_serving(server):
    """TF Serving checks no request shape against the signature's (tensorflow/serving#1527):
    the graph runs, and here fails in its ops, which is the request's INVALID_ARGUMENT."""
    row = padded(ROWS[1])
    status, body = post(server, {"instances": [{**row, "tags": [*row["tags"], "eeeee"]}]})
    assert status == 400 and "Incompatible shapes: [1,5] vs. [4]" in body["error"]
    status, body = post(server, {"inputs": {**{n: [row[n]] for n in row}, "tags": ["a"]}})
    assert status == 400 and "Invalid reduction dimension" in body["error"]


def test_grpc_takes_2d_tensors_in_typed_fields_and_in_tensor_content(server):
    rows = [padded(row, codes_pad=0) for row in ROWS]
    dtypes = {"tags": tf.string, "codes": tf.int64, "user": tf.string, "price": tf.float32}
    request = predict_request(MODEL, {n: [row[n] for row in rows] for n in dtypes}, dtypes)
    assert [d.size for d in request.inputs["codes"].tensor_shape.dim] == [4, CODES_LENGTH]
    # tf.make_tensor_proto writes an int64 matrix as tensor_content: TF Serving reads both
    content = predict_request(MODEL, {n: [row[n] for row in rows] for n in dtypes}, dtypes)
    content.inputs["codes"].CopyFrom(tf.make_tensor_proto(
        np.array([row["codes"] for row in rows], np.int64)))
    assert content.inputs["codes"].tensor_content
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for sent in (request, content):
            answer = stub.Predict(sent, timeout=30)
            assert {n: list(answer.outputs[n].float_val) for n in OUTPUTS} == \
                expected_columns(ROWS)


def test_the_warmup_file_carries_2d_requests_that_the_double_replayed(server, base):
    requests_ = read_warmup(warmup_path(f"{base}/1"))
    assert [request_rows(r)["tags"].shape for r in requests_] == [(1, 4), (3, 4)]
    largest = request_rows(requests_[1])
    assert largest["codes"].tolist() == [padded(row)["codes"] for row in ROWS[:3]]
    assert largest["tags"].tolist() == [[t.encode() for t in padded(row)["tags"]]
                                        for row in ROWS[:3]]
    assert [(s.version, s.state) for s in server.statuses(MODEL)] == [(1, "AVAILABLE")]


def test_a_version_whose_2d_warmup_fails_in_the_graph_never_serves(base, tmp_path):
    """The double replays `(batch, L)` warmup requests through the graph: one of 5 tags for a
    `(None, 4)` input fails there, so the version does not load, as in TF Serving."""
    import shutil

    from multitower.tfs_requests import write_warmup
    from serving.double import read_model_config_file, start_server

    shutil.copytree(f"{base}/1", tmp_path / "models" / "2")
    row = padded(ROWS[1], codes_pad=0)
    dtypes = {"tags": tf.string, "codes": tf.int64, "user": tf.string, "price": tf.float32}
    wide = {**{n: [row[n]] for n in dtypes}, "tags": [[*row["tags"], "e"]]}
    write_warmup(warmup_path(str(tmp_path / "models" / "2")),
                 [predict_request(MODEL, wide, dtypes)])
    path = tmp_path / "models.config"
    path.write_text(model_config_text([{"name": MODEL, "base_path": str(tmp_path / "models")}]))
    with start_server(read_model_config_file(str(path)), serving_config=ServingConfig(),
                      source=str(path)) as running:
        (status,) = running.statuses(MODEL)
    assert (status.version, status.state, status.error_code) == (2, "END", "INVALID_ARGUMENT")
    assert "Incompatible shapes: [1,5] vs. [4]" in status.error_message
