"""The TF Serving double's REST API, against JSON written by hand from TF Serving's docs.

The requests and responses below follow the examples of tensorflow_serving/g3doc/api_rest.md
(row and columnar formats, b64, the error object, status and metadata), some literally (the
`half_plus_three` example), the others adapted to the project's model ("ranker"). The JSON in
this file is the reference: a client and the double cannot agree on a misreading of the docs.
Scores are compared with the SavedModel's own signature run in this process.
"""

import base64
import json
import re
import signal

import numpy as np
import pytest
import requests

from tests.served_model import day_examples, tensor_rows, with_lists
from tests.serving.double_server import (
    MODEL,
    cli_server,
    model_config_text,
    reference_outputs,
    small_batches,
    version_path,
    write_half_plus_three,
)

pytestmark = pytest.mark.integration
MAX_BATCH = 32  # the warmup requests (32 rows) go through the batching limit too
TYPED = [  # two rows of the project's raw features, typed by hand (lists: `two_rows`)
    {"user_id": "u133149", "user_segment": "seg09", "user_country": "BR", "item_id": "i124140",
     "item_category": "cat002", "device": "android", "hour": 0, "position": 2,
     "item_price": 83.23, "user_activity": 2.49},
    {"user_id": "u212539", "user_segment": "seg12", "user_country": "JP", "item_id": "i241196",
     "item_category": "cat006", "device": "ios", "hour": 13, "position": 7,
     "item_price": 55, "user_activity": 4.09},
]
OUTPUTS = ["click", "conversion", "ranking_score", "watch_time"]


@pytest.fixture(scope="module")
def server(served_project, tmp_path_factory):
    """Serves `ranker` (versions 1, 2; labels) and the docs' `half_plus_three` (version 123).

    Started from a model config file, as `multitower serve --model-config-file` does.
    """
    from serving.double import read_model_config_file, start_server

    root = tmp_path_factory.mktemp("double_rest")
    toy = write_half_plus_three(root / "half_plus_three")
    path = root / "models.config"
    path.write_text(model_config_text([
        {"name": MODEL, "base_path": served_project["export_base"],
         "policy": "latest { num_versions: 2 }", "labels": {"stable": 1, "canary": 2}},
        {"name": "half_plus_three", "base_path": toy}]))
    running = start_server(read_model_config_file(str(path)),
                           serving_config=small_batches(served_project["config"], MAX_BATCH),
                           source=str(path))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def two_rows(served_project):
    """`TYPED`, with a hand-written list for each list feature of the config, cut and padded."""
    config = served_project["config"]
    return tensor_rows(config, [with_lists(row, config.data) for row in TYPED])


def url(server, path):
    return f"{server.rest_url}/v1/models/{path}"


def close(answer, expected):
    for name in OUTPUTS:
        np.testing.assert_allclose(answer[name], expected[name], rtol=1e-5, atol=1e-6)


# --- the docs' own example ----------------------------------------------------------------------

def test_half_plus_three_example_of_the_docs(server):
    status = requests.get(url(server, "half_plus_three"))
    assert status.status_code == 200
    assert status.headers["Content-Type"] == "application/json"
    assert status.json() == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]}

    predict = requests.post(url(server, "half_plus_three:predict"),
                            data='{"instances": [1.0,2.0,5.0]}')
    assert predict.status_code == 200
    assert predict.json() == {"predictions": [3.5, 4.0, 5.5]}
    assert "4.0" in predict.text  # whole floats keep their ".0", as TF Serving writes them

    columnar = requests.post(url(server, "half_plus_three:predict"), json={"inputs": [1.0, 2.0]})
    assert columnar.json() == {"outputs": [3.5, 4.0]}  # one output: the bare batch

    missing = requests.post(url(server, "half:predict"), data='{"instances": [1.0,5.0]}')
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/json"
    assert missing.json() == {"error": "Servable not found for request: Latest(half)"}


def test_metadata_prints_the_signature_def_map(server, two_rows):
    features = sorted(two_rows[0])
    answer = requests.get(url(server, "half_plus_three/metadata"))
    assert answer.status_code == 200
    body = answer.json()
    assert body["model_spec"] == {"name": "half_plus_three", "signature_name": "",
                                  "version": "123"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    shape = {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False}
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert signatures["serving_default"]["inputs"] == {
        "x": {"dtype": "DT_FLOAT", "tensor_shape": shape, "name": "serving_default_x:0"}}
    assert signatures["serving_default"]["outputs"]["y"]["dtype"] == "DT_FLOAT"
    assert "__saved_model_init_op" in signatures  # every signature of the meta graph

    stable = requests.get(url(server, f"{MODEL}/labels/stable/metadata")).json()
    assert stable["model_spec"]["version"] == "1"
    ranker = stable["metadata"]["signature_def"]["signature_def"]
    assert sorted(ranker["serving_default"]["inputs"]) == features
    assert ranker["serving_default"]["inputs"]["hour"]["dtype"] == "DT_INT64"
    assert ranker["predict_examples"]["inputs"]["examples"]["dtype"] == "DT_STRING"


# --- status ---------------------------------------------------------------------------------------

def test_status_of_versions_and_unknown_ones(server):
    ok = {"error_code": "OK", "error_message": ""}
    both = {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": ok},
        {"version": "1", "state": "AVAILABLE", "status": ok}]}
    assert requests.get(url(server, MODEL)).json() == both
    assert requests.get(url(server, f"{MODEL}/versions/1")).json() == {
        "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]}
    # TF Serving's GetModelStatus reads the version only: a label lists every version.
    assert requests.get(url(server, f"{MODEL}/labels/canary")).json() == both

    seven = requests.get(url(server, f"{MODEL}/versions/7"))
    assert (seven.status_code, seven.json()) == (
        404, {"error": "Could not find version 7 of model ranker"})
    nope = requests.get(url(server, "nope"))
    assert (nope.status_code, nope.json()) == (
        404, {"error": "Could not find any versions of model nope"})


# --- predict --------------------------------------------------------------------------------------

def test_row_format_one_object_per_row(server, served_project, two_rows):
    answer = requests.post(url(server, f"{MODEL}:predict"), json={"instances": two_rows})
    assert answer.status_code == 200
    predictions = answer.json()["predictions"]
    assert len(predictions) == 2 and all(sorted(row) == OUTPUTS for row in predictions)
    expected = reference_outputs(version_path(served_project, 2), two_rows)  # latest: 2
    close({name: [row[name] for row in predictions] for name in OUTPUTS}, expected)


def test_columnar_format_and_label_and_version(server, served_project, two_rows):
    features = sorted(two_rows[0])
    request = {"signature_name": "serving_default",
               "inputs": {name: [row[name] for row in two_rows] for name in features}}
    expected = reference_outputs(version_path(served_project, 1), two_rows)
    for path in (f"{MODEL}/labels/stable:predict", f"{MODEL}/versions/1:predict"):
        answer = requests.post(url(server, path), json=request)
        assert answer.status_code == 200
        outputs = answer.json()["outputs"]
        assert sorted(outputs) == OUTPUTS and all(len(v) == 2 for v in outputs.values())
        close(outputs, expected)


def test_b64_values_are_binary_strings(server, served_project, two_rows):
    encoded = [{**row, "user_id": {"b64": base64.b64encode(row["user_id"].encode()).decode()}}
               for row in two_rows]
    plain = requests.post(url(server, f"{MODEL}:predict"), json={"instances": two_rows}).json()
    assert requests.post(url(server, f"{MODEL}:predict"),
                         json={"instances": encoded}).json() == plain

    # A one-input signature takes bare values: serialized tf.Examples as b64, as in the docs.
    examples = day_examples(served_project["config"], 3)
    b64 = [{"b64": base64.b64encode(example).decode()} for example in examples]
    answer = requests.post(url(server, f"{MODEL}:predict"),
                           json={"signature_name": "predict_examples", "instances": b64})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    import tensorflow as tf

    function = tf.saved_model.load(version_path(served_project, 2)).signatures[
        "predict_examples"]
    expected = {k: v.numpy() for k, v in function(examples=tf.constant(examples)).items()}
    close({name: [row[name] for row in predictions] for name in OUTPUTS}, expected)


def error(server, path, body):
    answer = requests.post(url(server, path), data=body if isinstance(body, str)
                           else json.dumps(body))
    return answer.status_code, answer.json()["error"]


def test_type_errors_are_tf_servings(server, two_rows):
    features = sorted(two_rows[0])
    as_text = [{**two_rows[0], "hour": "3"}]
    assert error(server, f"{MODEL}:predict", {"instances": as_text}) == (
        400, "Failed to process element: 0 key: hour of 'instances' list. Error: "
             "INVALID_ARGUMENT: JSON Value: \"3\" Type: String is not of expected type: int64")
    columns = {name: [two_rows[0][name]] for name in features}
    assert error(server, f"{MODEL}:predict", {"inputs": {**columns, "hour": [1.5]}}) == (
        400, "JSON Value: 1.5 Type: Number is not of expected type: int64")
    assert error(server, f"{MODEL}:predict", {"inputs": {**columns, "item_price": [16777217]}}) \
        == (400, "Cannot convert JSON value: 16777217 to float without loss of precision.")
    assert error(server, f"{MODEL}:predict", {"inputs": {**columns, "device": [7]}}) == (
        400, "JSON Value: 7 Type: Number is not of expected type: string")
    assert error(server, f"{MODEL}:predict", {"inputs": {**columns, "device": [{"b64": "%"}]}}) \
        == (400, "Unable to base64 decode")


def test_request_shape_errors(server, two_rows):
    features = sorted(two_rows[0])
    both = {"instances": two_rows, "inputs": {}}
    status, message = error(server, f"{MODEL}:predict", both)
    assert status == 400 and message.startswith("JSON Value: {")
    assert message.endswith("Not formatted correctly expecting only one of 'inputs' or "
                            "'instances' keys to exist ")
    assert error(server, f"{MODEL}:predict", {"signature_name": "serving_default"}) == (
        400, "Missing 'inputs' or 'instances' key")
    assert error(server, f"{MODEL}:predict", "") == (
        400, "JSON Parse error: The document is empty")

    no_hour = [two_rows[0], {k: v for k, v in two_rows[1].items() if k != "hour"}]
    status, message = error(server, f"{MODEL}:predict", {"instances": no_hour})
    assert status == 400
    assert re.fullmatch(r"Failed to process element: 1 of 'instances' list\. JSON object: "
                        r"\{.*\} keys must be equal to: " + ",".join(features), message, re.S)
    uneven = [two_rows[0], {**two_rows[1], "hour": [1, 2]}]  # rows of unequal lengths
    assert error(server, f"{MODEL}:predict", {"instances": uneven}) == (
        400, "Failed to process element: 1 key: hour of 'instances' list. Error: "
             "INVALID_ARGUMENT: Expecting tensor size: 1 but got: 2")
    assert error(server, f"{MODEL}:predict", {"inputs": [1, 2]}) == (
        400, "inputs is a plain value/list, but expecting an object as multiple input tensors "
             "required as per tensorinfo_map")
    assert error(server, f"{MODEL}:predict", {"instances": two_rows * 17}) == (
        400, f"Task size 34 is larger than maximum input batch size {MAX_BATCH}")
    assert error(server, f"{MODEL}:predict", {"signature_name": "nope", "instances": [1]}) == (
        400, 'Serving signature name: "nope" not found in signature def')


def test_unknown_versions_labels_and_paths(server, two_rows):
    assert error(server, f"{MODEL}/versions/7:predict", {"instances": two_rows}) == (
        404, "Servable not found for request: Specific(ranker, 7)")
    assert error(server, f"{MODEL}/labels/nope:predict", {"instances": two_rows}) == (
        400, "Unrecognized servable version label: nope")
    assert error(server, f"{MODEL}:classify", {"examples": [{"hour": 3}]}) == (
        400, "Expected classification signature method_name to be "
             "tensorflow/serving/classify. Was: tensorflow/serving/predict")
    assert error(server, f"{MODEL}:regress", {"examples": [{"hour": 3}]}) == (
        400, "Expected regression signature method_name to be tensorflow/serving/regress. "
             "Was: tensorflow/serving/predict")
    odd = requests.get(f"{server.rest_url}/v1/something")
    assert (odd.status_code, odd.json()) == (
        400, {"error": "Malformed request: GET /v1/something"})
    assert requests.get(f"{server.rest_url}/elsewhere").status_code == 404


# --- metrics --------------------------------------------------------------------------------------

def counted(server, status="OK"):
    page = requests.get(server.rest_url + server.monitoring_path)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/plain")
    found = re.search(r'^:tensorflow:serving:request_count_total\{model_name="ranker",'
                      rf'status="{status}"\}} ([0-9.e+]+)$', page.text, re.M)
    return float(found.group(1)) if found else 0.0


def test_prometheus_counts_requests(server, two_rows):
    before_ok, before_bad = counted(server), counted(server, "NOT_FOUND")
    requests.post(url(server, f"{MODEL}:predict"), json={"instances": two_rows})
    requests.post(url(server, f"{MODEL}/versions/9:predict"), json={"instances": two_rows})
    assert counted(server) == before_ok + 1
    assert counted(server, "NOT_FOUND") == before_bad + 1
    page = requests.get(server.rest_url + server.monitoring_path).text
    assert re.search(r'^:tensorflow:serving:request_latency_count\{API="Predict",'
                     r'entrypoint="REST",model_name="ranker",status="OK"\} [1-9]', page, re.M)


def test_no_metrics_page_when_prometheus_is_off(tmp_path):
    from werkzeug.test import Client

    from serving.double.models import VersionManager
    from serving.double.rest import RestApi
    from serving.double.server import read_model_config_file

    (tmp_path / "empty").mkdir()
    path = tmp_path / "models.config"
    path.write_text(model_config_text([{"name": "m", "base_path": str(tmp_path / "empty")}]))
    client = Client(RestApi(VersionManager(read_model_config_file(str(path))), None, None))
    assert client.get("/monitoring/prometheus/metrics").status_code == 404
    assert client.get("/v1/models/m").json == {"error": "Could not find any versions of model m"}


# --- the command line ----------------------------------------------------------------------------

def test_cli_serves_until_sigterm(served_project, two_rows):
    with cli_server(served_project["config_path"]) as (process, rest_port, _, lines):
        assert any("not for production" in line for line in lines)
        assert any(line.startswith(f"model {MODEL}: available versions [1, 2]")
                   for line in lines)
        answer = requests.post(f"http://127.0.0.1:{rest_port}/v1/models/{MODEL}:predict",
                               json={"instances": two_rows})
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
