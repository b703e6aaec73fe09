"""The REST client against hand-written exchanges of TF Serving's REST API (`api_rest.md`).

Every request and answer below is written by hand from TF Serving's documentation and sources
(`g3doc/api_rest.md`; the status answer of its example; the metadata answer's shape from
`servables/tensorflow/testdata/saved_model_half_plus_two_2_versions_metadata.json`; the error
shape `{"error": ...}` and HTTP codes from `http_rest_api_handler.cc` / `http_server.cc`),
adapted to a model of the example config's inputs (strings, int64, float32) and outputs.
A recording server (a test double, not TF Serving) checks that the client sends exactly the
hand-written request and gives the hand-written answer.
"""

import json

import pytest

from serving.client import (
    DeadlineError,
    RetryPolicy,
    RowsError,
    ServerError,
    ServingError,
    UnavailableError,
)
from serving.rest_client import RestClient, base_url
from tests.serving.recording_servers import (
    HttpExchange,
    RecordingHttpServer,
    scripted_http,
    unused_port,
)

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.01)

STATUS = json.loads("""
{
 "model_version_status": [
  {
   "version": "2",
   "state": "AVAILABLE",
   "status": {
    "error_code": "OK",
    "error_message": ""
   }
  },
  {
   "version": "1",
   "state": "AVAILABLE",
   "status": {
    "error_code": "OK",
    "error_message": ""
   }
  }
 ]
}
""")

_DIM = '{"dim": [{"size": "-1", "name": ""}], "unknown_rank": false}'
METADATA = json.loads("""
{
 "model_spec": {
  "name": "ranker",
  "signature_name": "",
  "version": "2"
 },
 "metadata": {
  "signature_def": {
   "signature_def": {
    "serving_default": {
     "inputs": {
      "user_id": {"dtype": "DT_STRING", "tensor_shape": DIM, "name": "serving_default_user_id:0"},
      "item_id": {"dtype": "DT_STRING", "tensor_shape": DIM, "name": "serving_default_item_id:0"},
      "hour": {"dtype": "DT_INT64", "tensor_shape": DIM, "name": "serving_default_hour:0"},
      "position": {"dtype": "DT_INT64", "tensor_shape": DIM,
                   "name": "serving_default_position:0"},
      "item_price": {"dtype": "DT_FLOAT", "tensor_shape": DIM,
                     "name": "serving_default_item_price:0"}
     },
     "outputs": {
      "click": {"dtype": "DT_FLOAT", "tensor_shape": DIM, "name": "StatefulPartitionedCall:0"},
      "conversion": {"dtype": "DT_FLOAT", "tensor_shape": DIM,
                     "name": "StatefulPartitionedCall:1"},
      "ranking_score": {"dtype": "DT_FLOAT", "tensor_shape": DIM,
                        "name": "StatefulPartitionedCall:2"},
      "watch_time": {"dtype": "DT_FLOAT", "tensor_shape": DIM,
                     "name": "StatefulPartitionedCall:3"}
     },
     "method_name": "tensorflow/serving/predict",
     "defaults": {}
    },
    "predict_examples": {
     "inputs": {
      "examples": {"dtype": "DT_STRING", "tensor_shape": DIM,
                   "name": "predict_examples_examples:0"}
     },
     "outputs": {
      "click": {"dtype": "DT_FLOAT", "tensor_shape": DIM, "name": "StatefulPartitionedCall_1:0"}
     },
     "method_name": "tensorflow/serving/predict",
     "defaults": {}
    },
    "__saved_model_init_op": {
     "inputs": {},
     "outputs": {
      "__saved_model_init_op": {"dtype": "DT_INVALID",
                                "tensor_shape": {"dim": [], "unknown_rank": true},
                                "name": "NoOp"}
     },
     "method_name": "",
     "defaults": {}
    }
   }
  }
 }
}
""".replace("DIM", _DIM))

ROWS = [
    {"user_id": "u1", "item_id": "i9", "hour": 7, "position": 2, "item_price": 19.5},
    {"user_id": "u2", "item_id": "i4", "hour": 22, "position": 1, "item_price": 3},
]
COLUMNAR_REQUEST = json.loads("""
{
 "signature_name": "serving_default",
 "inputs": {
  "hour": [7, 22],
  "item_id": ["i9", "i4"],
  "item_price": [19.5, 3.0],
  "position": [2, 1],
  "user_id": ["u1", "u2"]
 }
}
""")
COLUMNAR_ANSWER = json.loads("""
{
    "outputs": {
        "click": [0.25, 0.5],
        "conversion": [0.125, 0.0625],
        "ranking_score": [0.3, 0.6],
        "watch_time": [12.5, 30.0]
    }
}
""")
ROW_REQUEST = json.loads("""
{
 "signature_name": "serving_default",
 "instances": [
  {"hour": 7, "item_id": "i9", "item_price": 19.5, "position": 2, "user_id": "u1"},
  {"hour": 22, "item_id": "i4", "item_price": 3.0, "position": 1, "user_id": "u2"}
 ]
}
""")
ROW_ANSWER = json.loads("""
{
    "predictions": [
        {"click": 0.25, "conversion": 0.125, "ranking_score": 0.3, "watch_time": 12.5},
        {"click": 0.5, "conversion": 0.0625, "ranking_score": 0.6, "watch_time": 30.0}
    ]
}
""")
SCORES = {"click": [0.25, 0.5], "conversion": [0.125, 0.0625], "ranking_score": [0.3, 0.6],
          "watch_time": [12.5, 30.0]}


def _describe(path: str = "/v1/models/ranker") -> list[HttpExchange]:
    return [HttpExchange("GET", path, None, 200, STATUS),
            HttpExchange("GET", f"{path}/metadata", None, 200, METADATA)]


def test_columnar_predict_sends_and_reads_the_documented_json():
    script = _describe() + [HttpExchange("POST", "/v1/models/ranker:predict",
                                         COLUMNAR_REQUEST, 200, COLUMNAR_ANSWER)]
    with RecordingHttpServer(scripted_http(script)) as server, \
            RestClient(server.address, "ranker", retry=FAST) as client:
        info = client.describe()
        scores = client.predict(ROWS)
    assert [(r.method, r.path, r.body) for r in server.requests] == [s[:3] for s in script]
    assert [(v.version, v.state) for v in info.versions] == [(2, "AVAILABLE"), (1, "AVAILABLE")]
    assert info.version == 2
    assert info.signature.inputs == {"user_id": "DT_STRING", "item_id": "DT_STRING",
                                     "hour": "DT_INT64", "position": "DT_INT64",
                                     "item_price": "DT_FLOAT"}
    assert info.signature.outputs == ("click", "conversion", "ranking_score", "watch_time")
    assert scores.scores == SCORES
    assert scores.versions == ()  # a REST answer does not name its version
    # a float input goes out as a JSON decimal even when the row holds an integer
    assert b'"item_price": [19.5, 3.0]' in server.requests[-1].raw


def test_row_predict_sends_instances_and_reads_predictions():
    script = _describe() + [HttpExchange("POST", "/v1/models/ranker:predict", ROW_REQUEST, 200,
                                         ROW_ANSWER)]
    with RecordingHttpServer(scripted_http(script)) as server, \
            RestClient(server.address, "ranker", json_format="row", retry=FAST) as client:
        scores = client.predict(ROWS)
    assert [(r.method, r.path, r.body) for r in server.requests] == [s[:3] for s in script]
    assert scores.scores == SCORES


def _with_recent_items(metadata: dict) -> dict:
    """The metadata with a list input `recent_items` of shape (-1, 3), as TF Serving prints it."""
    metadata = json.loads(json.dumps(metadata))
    inputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    inputs["recent_items"] = json.loads("""
      {"dtype": "DT_STRING",
       "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}],
                        "unknown_rank": false},
       "name": "serving_default_recent_items:0"}""")
    return metadata


LIST_ROWS = [{**ROWS[0], "recent_items": ["i7", "i8", "i9", "i10"]},  # cut to 3
             {**ROWS[1], "recent_items": ["i4"]}]  # padded with ""
LIST_COLUMNAR_REQUEST = json.loads("""
{
 "signature_name": "serving_default",
 "inputs": {
  "hour": [7, 22],
  "item_id": ["i9", "i4"],
  "item_price": [19.5, 3.0],
  "position": [2, 1],
  "recent_items": [["i7", "i8", "i9"], ["i4", "", ""]],
  "user_id": ["u1", "u2"]
 }
}
""")
LIST_ROW_REQUEST = json.loads("""
{
 "signature_name": "serving_default",
 "instances": [
  {"hour": 7, "item_id": "i9", "item_price": 19.5, "position": 2,
   "recent_items": ["i7", "i8", "i9"], "user_id": "u1"},
  {"hour": 22, "item_id": "i4", "item_price": 3.0, "position": 1,
   "recent_items": ["i4", "", ""], "user_id": "u2"}
 ]
}
""")


@pytest.mark.parametrize(("json_format", "request_body", "answer"), [
    ("columnar", LIST_COLUMNAR_REQUEST, COLUMNAR_ANSWER),
    ("row", LIST_ROW_REQUEST, ROW_ANSWER),
])
def test_a_list_input_goes_out_cut_and_padded_to_its_length(json_format, request_body, answer):
    script = [HttpExchange("GET", "/v1/models/ranker", None, 200, STATUS),
              HttpExchange("GET", "/v1/models/ranker/metadata", None, 200,
                           _with_recent_items(METADATA)),
              HttpExchange("POST", "/v1/models/ranker:predict", request_body, 200, answer)]
    with RecordingHttpServer(scripted_http(script)) as server, \
            RestClient(server.address, "ranker", json_format=json_format, retry=FAST) as client:
        info = client.describe()
        assert info.signature.shapes["recent_items"] == (-1, 3)
        assert info.signature.shapes["hour"] == (-1,)
        assert client.check_row({**ROWS[0], "recent_items": ["i1", ""]}) == (
            None, "field 'recent_items': element 1: equals the pad value '', which marks "
                  "padding")
        assert client.predict(LIST_ROWS).scores == SCORES
    assert [(r.method, r.path, r.body) for r in server.requests] == [s[:3] for s in script]


@pytest.mark.parametrize(("options", "path"), [
    ({"version": 1}, "/v1/models/ranker/versions/1"),
    ({"label": "canary"}, "/v1/models/ranker/labels/canary"),
    ({"label": "a b/c"}, "/v1/models/ranker/labels/a%20b%2Fc"),
])
def test_a_version_or_a_label_is_asked_in_every_path(options, path):
    script = _describe(path) + [HttpExchange("POST", f"{path}:predict", COLUMNAR_REQUEST, 200,
                                             COLUMNAR_ANSWER)]
    with RecordingHttpServer(scripted_http(script)) as server, \
            RestClient(server.address, "ranker", retry=FAST, **options) as client:
        assert client.predict(ROWS).scores == SCORES
    assert [(r.method, r.path, r.body) for r in server.requests] == [s[:3] for s in script]


def test_a_version_and_a_label_together_are_refused_before_any_request():
    with pytest.raises(ServingError, match=r"either version 1 or label 'canary'.*not both"):
        RestClient("127.0.0.1:1", "ranker", version=1, label="canary")


@pytest.mark.parametrize(("json_format", "answer"), [
    ("columnar", {"outputs": [0.25, 0.5]}),
    ("row", {"predictions": [0.25, 0.5]}),
])
def test_a_model_of_one_output_is_answered_without_its_name(json_format, answer):
    metadata = json.loads(json.dumps(METADATA))
    outputs = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["outputs"]
    del outputs["conversion"], outputs["ranking_score"], outputs["watch_time"]
    request = COLUMNAR_REQUEST if json_format == "columnar" else ROW_REQUEST
    script = [HttpExchange("GET", "/v1/models/ranker", None, 200, STATUS),
              HttpExchange("GET", "/v1/models/ranker/metadata", None, 200, metadata),
              HttpExchange("POST", "/v1/models/ranker:predict", request, 200, answer)]
    with RecordingHttpServer(scripted_http(script)) as server, \
            RestClient(server.address, "ranker", json_format=json_format, retry=FAST) as client:
        assert client.predict(ROWS).scores == {"click": [0.25, 0.5]}


def test_an_error_answer_is_refused_with_the_servers_message_and_not_retried():
    message = "JSON Value: \"7\" Type: String is not of expected type: int64"
    script = _describe() + [HttpExchange("POST", "/v1/models/ranker:predict", COLUMNAR_REQUEST,
                                         400, f'{{ "error": "{json.dumps(message)[1:-1]}" }}')]
    with RecordingHttpServer(scripted_http(script)) as server, \
            RestClient(server.address, "ranker", retry=FAST) as client, \
            pytest.raises(ServerError) as refused:
        client.predict(ROWS)
    assert server.calls(":predict") == 1
    assert refused.value.code == "HTTP 400" and refused.value.server_message == message
    assert str(refused.value) == (f"http://{server.address}: TF Serving refused the predict "
                                  f"request for model 'ranker' (HTTP 400: {message})")


def test_an_unknown_model_is_refused_with_the_documented_404():
    # api_rest.md's own example of an error answer, for a model named "half"
    script = [HttpExchange("GET", "/v1/models/half", None, 404,
                           '{ "error": "Servable not found for request: Latest(half)" }')]
    with RecordingHttpServer(scripted_http(script)) as server, \
            RestClient(server.address, "half", retry=FAST) as client, \
            pytest.raises(ServerError, match=r"\(HTTP 404: Servable not found for request: "
                                             r"Latest\(half\)\); check the model name"):
        client.describe()
    assert len(server.requests) == 1


def test_503_is_retried_until_the_server_answers():
    unavailable = iter([(503, {"error": "Servable not available"})] * 2)

    def answer(request):
        if request.path.endswith(":predict"):
            return next(unavailable, (200, COLUMNAR_ANSWER))
        return 200, STATUS if request.path == "/v1/models/ranker" else METADATA

    with RecordingHttpServer(answer) as server, \
            RestClient(server.address, "ranker", retry=FAST) as client:
        assert client.predict(ROWS).scores == SCORES
    assert server.calls(":predict") == 3


def test_503_on_every_attempt_names_the_server_the_attempts_and_the_last_error():
    with RecordingHttpServer(lambda r: (503, {"error": "Model is loading"})) as server, \
            RestClient(server.address, "ranker", retry=FAST) as client, \
            pytest.raises(UnavailableError) as failed:
        client.describe()
    assert len(server.requests) == 3
    assert str(failed.value).startswith(
        f"http://{server.address}: TF Serving did not answer the status request for model "
        f"'ranker' after 3 attempts over ")
    assert "(HTTP 503: Model is loading); is the server running" in str(failed.value)


def test_nothing_listening_fails_after_the_configured_attempts():
    port = unused_port()
    with RestClient(f"127.0.0.1:{port}", "ranker", retry=FAST) as client, \
            pytest.raises(UnavailableError) as failed:
        client.describe()
    message = str(failed.value)
    assert message.startswith(f"http://127.0.0.1:{port}: TF Serving did not answer the status "
                              f"request for model 'ranker' after 3 attempts over ")
    assert "Connection refused" in message and "is the server running" in message


@pytest.mark.parametrize("status", [404, 400, 504])
def test_other_errors_are_not_retried(status):
    with RecordingHttpServer(lambda r: (status, {"error": "no"})) as server, \
            RestClient(server.address, "ranker", retry=FAST) as client, \
            pytest.raises(DeadlineError if status == 504 else ServerError):
        client.status()
    assert len(server.requests) == 1


@pytest.mark.parametrize(("row", "reason"), [
    ({**ROWS[0], "user_id": None}, "row 2: field 'user_id': null value"),
    ({k: v for k, v in ROWS[0].items() if k != "hour"}, "row 2: missing field 'hour'"),
    ({**ROWS[0], "click": 1}, "row 2: unknown field 'click': signature 'serving_default' takes "
                              "no such input"),
    ({**ROWS[0], "position": "2"}, "row 2: field 'position': expected an integer, got str '2'"),
    ({**ROWS[0], "item_price": "cheap"},
     "row 2: field 'item_price': expected a number, got str 'cheap'"),
    ({**ROWS[0], "item_id": 9}, "row 2: field 'item_id': expected a string, got int 9"),
])
def test_a_row_that_does_not_fit_is_refused_before_any_predict(row, reason):
    with RecordingHttpServer(scripted_http(_describe())) as server, \
            RestClient(server.address, "ranker", retry=FAST) as client, \
            pytest.raises(RowsError) as refused:
        client.predict([ROWS[0], row, ROWS[1]])
    assert server.calls(":predict") == 0
    assert str(refused.value).splitlines()[1:] == [f"  {reason}"]
    assert refused.value.bad == [(2, reason.split(": ", 1)[1])]


def test_a_model_without_an_available_version_is_refused():
    status = {"model_version_status": [
        {"version": "3", "state": "LOADING", "status": {"error_code": "OK", "error_message": ""}},
        {"version": "2", "state": "END", "status": {"error_code": "NOT_FOUND",
                                                    "error_message": "no saved_model.pb"}}]}
    script = [HttpExchange("GET", "/v1/models/ranker", None, 200, status)]
    with RecordingHttpServer(scripted_http(script)) as server, \
            RestClient(server.address, "ranker", retry=FAST) as client, \
            pytest.raises(ServingError, match=r"has no AVAILABLE version \(versions: 3 LOADING, "
                                              r"2 END \(no saved_model.pb\)\)"):
        client.describe()


def test_a_signature_the_model_does_not_serve_is_refused_naming_those_it_does():
    with RecordingHttpServer(scripted_http(_describe())) as server, \
            RestClient(server.address, "ranker", signature="serving", retry=FAST) as client, \
            pytest.raises(ServingError, match=r"has no signature 'serving'; it serves "
                                              r"\['__saved_model_init_op', 'predict_examples', "
                                              r"'serving_default'\]"):
        client.describe()


@pytest.mark.parametrize("server", ["localhost", "localhost:port", "ftp://host:1", ":8501"])
def test_a_server_that_is_not_host_and_port_is_refused(server):
    with pytest.raises(ServingError, match="expected HOST:PORT"):
        base_url(server)
