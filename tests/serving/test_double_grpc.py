"""The TF Serving double's gRPC services, called with TF Serving's own stubs on loopback."""

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from multitower.tfs_requests import predict_request
from tests.serving.double_server import (
    MODEL,
    columns,
    input_dtypes,
    project_server,
    reference_outputs,
    small_batches,
    version_path,
)

pytestmark = pytest.mark.integration
MAX_BATCH = 40
OUTPUTS = ["click", "conversion", "ranking_score", "watch_time"]


@pytest.fixture(scope="module")
def server(served_project):
    running = project_server(served_project,
                             serving_config=small_batches(served_project["config"], MAX_BATCH))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as opened:
        yield opened


@pytest.fixture(scope="module")
def predict_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def rows(served_project):
    return served_project["tensor_rows"][:5]


def request_for(served_project, rows, **kwargs):
    dtypes = input_dtypes(version_path(served_project, 1))
    return predict_request(MODEL, columns(rows), dtypes, **kwargs)


def refused(call, request):
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value.code(), caught.value.details()


def outputs_of(response):
    return {name: np.array(proto.float_val) for name, proto in response.outputs.items()}


def test_predict_latest_and_the_response_model_spec(predict_stub, served_project, rows):
    response = predict_stub.Predict(request_for(served_project, rows), timeout=30)
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 2  # the newest AVAILABLE version
    assert response.model_spec.signature_name == "serving_default"
    assert sorted(response.outputs) == OUTPUTS
    click = response.outputs["click"]
    # TF Serving writes Predict outputs with Tensor::AsProtoField: typed values, no content.
    assert click.dtype == types_pb2.DT_FLOAT and not click.tensor_content
    assert [d.size for d in click.tensor_shape.dim] == [len(rows)]
    expected = reference_outputs(version_path(served_project, 2), rows)
    for name in OUTPUTS:
        np.testing.assert_allclose(outputs_of(response)[name], expected[name], rtol=1e-5)


def test_version_and_label_choose_the_version(predict_stub, served_project, rows):
    expected = {v: reference_outputs(version_path(served_project, v), rows) for v in (1, 2)}
    for choice, version in (({"version": 1}, 1), ({"version": 2}, 2)):
        response = predict_stub.Predict(request_for(served_project, rows, **choice), timeout=30)
        assert response.model_spec.version.value == version
        np.testing.assert_allclose(outputs_of(response)["click"], expected[version]["click"],
                                   rtol=1e-5)
    for label, version in (("stable", 1), ("canary", 2)):
        request = request_for(served_project, rows)
        request.model_spec.version_label = label
        response = predict_stub.Predict(request, timeout=30)
        assert response.model_spec.version.value == version
        np.testing.assert_allclose(outputs_of(response)["ranking_score"],
                                   expected[version]["ranking_score"], rtol=1e-5)


def test_version_and_label_on_the_wire_keep_the_last(channel, served_project, rows):
    """model_spec's version and version_label are a oneof: a request cannot hold both.

    TF Serving's refusal of both (REST's FillModelSpecWithNameVersionAndLabel) cannot be
    reached over gRPC: bytes carrying both parse to the one written last, here the label.
    """
    with_version = request_for(served_project, rows, version=1)
    label_only = predict_pb2.PredictRequest()
    label_only.model_spec.version_label = "canary"
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                               request_serializer=lambda raw: raw,
                               response_deserializer=predict_pb2.PredictResponse.FromString)
    response = call(with_version.SerializeToString() + label_only.SerializeToString(),
                    timeout=30)
    assert response.model_spec.version.value == 2


def test_predict_errors_are_tf_servings(predict_stub, served_project, rows):
    unknown = request_for(served_project, rows)
    unknown.model_spec.name = "nope"
    assert refused(predict_stub.Predict, unknown) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)")
    assert refused(predict_stub.Predict, request_for(served_project, rows, version=7)) == (
        grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(ranker, 7)")
    labelled = request_for(served_project, rows)
    labelled.model_spec.version_label = "nope"
    assert refused(predict_stub.Predict, labelled) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nope")

    missing = request_for(served_project, rows)
    del missing.inputs["hour"]
    names = sorted(rows[0])
    sent, expected = ",".join(n for n in names if n != "hour"), ",".join(names)
    assert refused(predict_stub.Predict, missing) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"input size does not match signature: {len(names) - 1}!={len(names)} "
        f"len({{{sent}}}) != len({{{expected}}}). "
        f"Sent extra: {{}}. Missing but required: {{hour}}.")

    float_hour = request_for(served_project, rows)
    float_hour.inputs["hour"].CopyFrom(tf.make_tensor_proto([1.0] * len(rows), tf.float32))
    feeds = sorted(f"serving_default_{name}:0" for name in names)
    assert refused(predict_stub.Predict, float_hour) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Expects arg[{feeds.index('serving_default_hour:0')}] to be int64 but float is "
        f"provided")

    other = request_for(served_project, rows, signature_name="nope")
    assert refused(predict_stub.Predict, other) == (
        grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.')

    big = request_for(served_project, served_project["tensor_rows"][:MAX_BATCH + 1])
    assert refused(predict_stub.Predict, big) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        f"Task size {MAX_BATCH + 1} is larger than maximum input batch size {MAX_BATCH}")


def test_get_model_metadata_packs_the_signature_def_map(predict_stub, served_project):
    from serving.double.servable import read_meta_graph

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    request.model_spec.version_label = "stable"
    response = predict_stub.GetModelMetadata(request, timeout=30)
    assert response.model_spec.name == MODEL and response.model_spec.version.value == 1
    packed = response.metadata["signature_def"]
    assert packed.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert packed.Unpack(signatures)
    saved = read_meta_graph(version_path(served_project, 1)).signature_def
    assert dict(signatures.signature_def) == dict(saved)

    request.metadata_field[:] = []
    assert refused(predict_stub.GetModelMetadata, request) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "GetModelMetadataRequest must specify at least one metadata_field")


def test_get_model_status(channel):
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = stub.GetModelStatus(request, timeout=30)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state, s.status.error_code, s.status.error_message)
            for s in response.model_version_status] == [(2, available, 0, ""),
                                                         (1, available, 0, "")]
    request.model_spec.version.value = 5
    assert refused(stub.GetModelStatus, request) == (
        grpc.StatusCode.NOT_FOUND, "Could not find version 5 of model ranker")


def test_other_apis(predict_stub):
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = MODEL
    classify.input.example_list.examples.add()
    assert refused(predict_stub.Classify, classify) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expected classification signature method_name to be tensorflow/serving/classify. "
        "Was: tensorflow/serving/predict")
    code, _ = refused(predict_stub.MultiInference, inference_pb2.MultiInferenceRequest())
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_grpc_requests_are_counted(predict_stub, server, served_project, rows):
    def count() -> float:
        text = server.metrics.exposition().decode()
        line = next((line for line in text.splitlines() if line.startswith(
            ':tensorflow:serving:request_latency_count{API="Predict",entrypoint="GRPC",'
            'model_name="ranker",status="OK"}')), None)
        return float(line.split()[-1]) if line else 0.0

    before = count()
    predict_stub.Predict(request_for(served_project, rows), timeout=30)
    assert count() == before + 1
