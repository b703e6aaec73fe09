"""The gRPC client against hand-built messages of TF Serving's gRPC API (`tensorflow_serving.apis`).

The answers are built field by field from TF Serving's protos (`get_model_status.proto`,
`get_model_metadata.proto`: `metadata["signature_def"]` an `Any` packing a `SignatureDefMap`,
`predict.proto`), for a model of the example config's inputs and outputs, and served by a
recording servicer (a test double, not TF Serving) registered with TF Serving's own
`add_*Servicer_to_server`; each test checks the fields of the requests the client sent.
"""

import grpc
import pytest
import tensorflow as tf
from google.protobuf.wrappers_pb2 import Int64Value
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    status_pb2,
)

from serving.client import (
    DeadlineError,
    RetryPolicy,
    RowsError,
    ServerError,
    ServingError,
    UnavailableError,
)
from serving.grpc_client import GrpcClient, check_target
from tests.serving.recording_servers import GrpcAbort, RecordingGrpcServer, unused_port

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.01)
INPUTS = {"user_id": types_pb2.DT_STRING, "item_id": types_pb2.DT_STRING,
          "hour": types_pb2.DT_INT64, "position": types_pb2.DT_INT64,
          "item_price": types_pb2.DT_FLOAT}
OUTPUTS = ("click", "conversion", "ranking_score", "watch_time")
ROWS = [
    {"user_id": "u1", "item_id": "i9", "hour": 7, "position": 2, "item_price": 19.5},
    {"user_id": "u2", "item_id": "i4", "hour": 22, "position": 1, "item_price": 3},
]
# what the request must carry for ROWS: (dtype, values)
SENT = {"user_id": (types_pb2.DT_STRING, [b"u1", b"u2"]),
        "item_id": (types_pb2.DT_STRING, [b"i9", b"i4"]),
        "hour": (types_pb2.DT_INT64, [7, 22]), "position": (types_pb2.DT_INT64, [2, 1]),
        "item_price": (types_pb2.DT_FLOAT, [19.5, 3.0])}
SCORES = {"click": [0.25, 0.5], "conversion": [0.125, 0.0625], "ranking_score": [0.75, 0.5],
          "watch_time": [12.5, 30.0]}
_OK = status_pb2.StatusProto(error_code=0, error_message="")  # tensorflow.error.OK


def _vector(size: int) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size)])


def status_answer(request: get_model_status_pb2.GetModelStatusRequest):
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    return get_model_status_pb2.GetModelStatusResponse(model_version_status=[
        get_model_status_pb2.ModelVersionStatus(version=2, state=available, status=_OK),
        get_model_status_pb2.ModelVersionStatus(version=1, state=available, status=_OK)])


def metadata_answer(request, outputs=OUTPUTS):
    defs = get_model_metadata_pb2.SignatureDefMap()
    serving = defs.signature_def["serving_default"]
    serving.method_name = "tensorflow/serving/predict"
    for name, dtype in INPUTS.items():
        serving.inputs[name].CopyFrom(meta_graph_pb2.TensorInfo(
            name=f"serving_default_{name}:0", dtype=dtype, tensor_shape=_vector(-1)))
    for i, name in enumerate(outputs):
        serving.outputs[name].CopyFrom(meta_graph_pb2.TensorInfo(
            name=f"StatefulPartitionedCall:{i}", dtype=types_pb2.DT_FLOAT,
            tensor_shape=_vector(-1)))
    examples = defs.signature_def["predict_examples"]
    examples.method_name = "tensorflow/serving/predict"
    examples.inputs["examples"].CopyFrom(meta_graph_pb2.TensorInfo(
        name="predict_examples_examples:0", dtype=types_pb2.DT_STRING,
        tensor_shape=_vector(-1)))
    answer = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=model_pb2.ModelSpec(name="ranker", version=Int64Value(value=2)))
    answer.metadata["signature_def"].Pack(defs)
    return answer


def predict_answer(request, scores=SCORES, version=2):
    answer = predict_pb2.PredictResponse(model_spec=model_pb2.ModelSpec(
        name="ranker", version=Int64Value(value=version), signature_name="serving_default"))
    for name, values in scores.items():
        answer.outputs[name].CopyFrom(tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, tensor_shape=_vector(len(values)),
            float_val=values))
    return answer


ANSWERS = {"GetModelStatus": status_answer, "GetModelMetadata": metadata_answer,
           "Predict": predict_answer}


def _spec(spec: model_pb2.ModelSpec) -> tuple:
    """(name, version or None, label, signature) of a received ModelSpec."""
    version = spec.version.value if spec.HasField("version") else None
    return spec.name, version, spec.version_label, spec.signature_name


def test_status_metadata_and_predict_carry_the_protos_fields():
    with RecordingGrpcServer(ANSWERS) as server, \
            GrpcClient(server.address, "ranker", retry=FAST) as client:
        info = client.describe()
        scores = client.predict(ROWS)
    assert [name for name, _ in server.requests] == ["GetModelStatus", "GetModelMetadata",
                                                     "Predict"]
    status, metadata, predict = (request for _, request in server.requests)
    assert _spec(status.model_spec) == ("ranker", None, "", "")
    assert _spec(metadata.model_spec) == ("ranker", None, "", "")
    assert list(metadata.metadata_field) == ["signature_def"]
    assert _spec(predict.model_spec) == ("ranker", None, "", "serving_default")
    assert set(predict.inputs) == set(SENT)
    for name, (dtype, values) in SENT.items():
        tensor = predict.inputs[name]
        assert tensor.dtype == dtype, name
        assert [d.size for d in tensor.tensor_shape.dim] == [2], name
        assert tf.make_ndarray(tensor).tolist() == values, name
    assert [(v.version, v.state, v.error_code) for v in info.versions] == [
        (2, "AVAILABLE", "OK"), (1, "AVAILABLE", "OK")]
    assert info.version == 2
    assert info.signature.inputs == {n: types_pb2.DataType.Name(d) for n, d in INPUTS.items()}
    assert info.signature.outputs == OUTPUTS
    assert scores.scores == SCORES
    assert scores.versions == (2,)  # named by the answer's model_spec


def list_metadata_answer(request):
    """The metadata with a list input `recent_items` of shape (-1, 3)."""
    answer = metadata_answer(request)
    defs = get_model_metadata_pb2.SignatureDefMap()
    answer.metadata["signature_def"].Unpack(defs)
    defs.signature_def["serving_default"].inputs["recent_items"].CopyFrom(
        meta_graph_pb2.TensorInfo(
            name="serving_default_recent_items:0", dtype=types_pb2.DT_INT64,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[
                tensor_shape_pb2.TensorShapeProto.Dim(size=-1),
                tensor_shape_pb2.TensorShapeProto.Dim(size=3)])))
    answer.metadata["signature_def"].Pack(defs)
    return answer


def test_a_list_input_goes_out_as_a_batch_by_length_tensor_cut_and_padded():
    rows = [{**ROWS[0], "recent_items": [7, 8, 9, 10]}, {**ROWS[1], "recent_items": [4]}]
    answers = {**ANSWERS, "GetModelMetadata": list_metadata_answer}
    with RecordingGrpcServer(answers) as server, \
            GrpcClient(server.address, "ranker", retry=FAST, pads={"recent_items": 0}) as client:
        assert client.describe().signature.shapes["recent_items"] == (-1, 3)
        assert client.check_row({**ROWS[0], "recent_items": [0]})[1] == (
            "field 'recent_items': element 0: equals the pad value 0, which marks padding")
        assert client.predict(rows).scores == SCORES
    (predict,) = server.calls("Predict")
    tensor = predict.inputs["recent_items"]
    assert tensor.dtype == types_pb2.DT_INT64
    assert [d.size for d in tensor.tensor_shape.dim] == [2, 3]
    assert list(tensor.int64_val) == [7, 8, 9, 4, 0, 0]  # row-major, cut and padded
    assert [d.size for d in predict.inputs["hour"].tensor_shape.dim] == [2]


@pytest.mark.parametrize(("options", "version", "label"), [
    ({"version": 1}, 1, ""), ({"label": "canary"}, None, "canary")])
def test_a_version_or_a_label_is_asked_in_every_model_spec(options, version, label):
    with RecordingGrpcServer(ANSWERS) as server, \
            GrpcClient(server.address, "ranker", retry=FAST, **options) as client:
        client.predict(ROWS)
    signatures = ["", "", "serving_default"]
    assert [_spec(request.model_spec) for _, request in server.requests] == [
        ("ranker", version, label, signature) for signature in signatures]


def test_a_version_and_a_label_together_are_refused_before_any_call():
    with pytest.raises(ServingError, match=r"either version 2 or label 'stable'.*not both"):
        GrpcClient("127.0.0.1:1", "ranker", version=2, label="stable")


def test_batches_are_sent_in_order_and_never_exceed_the_batch_size():
    def answer(request):
        positions = tf.make_ndarray(request.inputs["position"]).tolist()
        return predict_answer(request, {name: [p / 8 for p in positions] for name in OUTPUTS})

    rows = [{**ROWS[0], "position": p} for p in range(7)]
    with RecordingGrpcServer({**ANSWERS, "Predict": answer}) as server, \
            GrpcClient(server.address, "ranker", retry=FAST, batch_size=3) as client:
        scores = client.predict(rows)
    assert [len(tf.make_ndarray(r.inputs["position"])) for r in server.calls("Predict")] == [
        3, 3, 1]
    assert scores.scores["click"] == [p / 8 for p in range(7)]


def test_unavailable_is_retried_until_the_server_answers():
    failures = iter([GrpcAbort(grpc.StatusCode.UNAVAILABLE, "Servable not ready")] * 2)

    def flaky(request):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return predict_answer(request)

    with RecordingGrpcServer({**ANSWERS, "Predict": flaky}) as server, \
            GrpcClient(server.address, "ranker", retry=FAST) as client:
        assert client.predict(ROWS).scores == SCORES
    assert len(server.calls("Predict")) == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.FAILED_PRECONDITION])
def test_a_refusal_is_not_retried_and_carries_the_servers_message(code):
    message = "input tensor alias not found in signature: user_idd"

    def refuse(request):
        raise GrpcAbort(code, message)

    with RecordingGrpcServer({**ANSWERS, "Predict": refuse}) as server, \
            GrpcClient(server.address, "ranker", retry=FAST) as client, \
            pytest.raises(ServerError) as refused:
        client.predict(ROWS)
    assert len(server.calls("Predict")) == 1
    assert refused.value.code == code.name and refused.value.server_message == message
    assert str(refused.value).startswith(
        f"{server.address}: TF Serving refused the predict request for model 'ranker' "
        f"({code.name}: {message})")


def test_deadline_exceeded_is_not_retried():
    def slow(request):
        raise GrpcAbort(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    with RecordingGrpcServer({**ANSWERS, "Predict": slow}) as server, \
            GrpcClient(server.address, "ranker", retry=FAST, timeout=2.5) as client, \
            pytest.raises(DeadlineError, match=r"within 2.5 s \(DEADLINE_EXCEEDED"):
        client.predict(ROWS)
    assert len(server.calls("Predict")) == 1


def test_an_unknown_model_is_refused_with_the_servers_message():
    def missing(request):
        raise GrpcAbort(grpc.StatusCode.NOT_FOUND,
                        "Could not find any versions of model rankr")

    with RecordingGrpcServer({"GetModelStatus": missing}) as server, \
            GrpcClient(server.address, "rankr", retry=FAST) as client, \
            pytest.raises(ServerError, match=r"\(NOT_FOUND: Could not find any versions of model "
                                             r"rankr\); check the model name"):
        client.describe()
    assert len(server.requests) == 1


def test_nothing_listening_fails_after_the_configured_attempts():
    port = unused_port()
    with GrpcClient(f"127.0.0.1:{port}", "ranker", retry=FAST) as client, \
            pytest.raises(UnavailableError) as failed:
        client.describe()
    message = str(failed.value)
    assert message.startswith(f"127.0.0.1:{port}: TF Serving did not answer the status request "
                              f"for model 'ranker' after 3 attempts over ")
    assert "(UNAVAILABLE: " in message and message.endswith(
        "is the server running, at this address and with this protocol (grpc)?")


def test_a_row_that_does_not_fit_is_refused_before_any_predict():
    rows = [ROWS[0], {**ROWS[0], "hour": 7.5}, {**ROWS[1], "label": 1},
            {k: v for k, v in ROWS[1].items() if k != "user_id"}]
    with RecordingGrpcServer(ANSWERS) as server, \
            GrpcClient(server.address, "ranker", retry=FAST) as client, \
            pytest.raises(RowsError) as refused:
        client.predict(rows)
    assert server.calls("Predict") == []
    assert str(refused.value).splitlines() == [
        f"3 rows do not fit signature 'serving_default' of model 'ranker' at {server.address}; "
        f"nothing was sent:",
        "  row 2: field 'hour': expected an integer, got float 7.5",
        "  row 3: unknown field 'label': signature 'serving_default' takes no such input",
        "  row 4: missing field 'user_id'"]


def test_an_answer_missing_an_output_is_refused():
    def short(request):
        return predict_answer(request, {"click": [0.25, 0.5]})

    with RecordingGrpcServer({**ANSWERS, "Predict": short}) as server, \
            GrpcClient(server.address, "ranker", retry=FAST) as client, \
            pytest.raises(ServingError, match="holds no scores of output 'conversion' for 2 rows"):
        client.predict(ROWS)


@pytest.mark.parametrize("server", ["localhost", "http://localhost:8500", "host:port"])
def test_a_server_that_is_not_host_and_port_is_refused(server):
    with pytest.raises(ServingError, match="expected HOST:PORT"):
        check_target(server)
