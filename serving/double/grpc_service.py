"""TF Serving's gRPC services on the double: `PredictionService` and `ModelService`.

- `tensorflow.serving.PredictionService/Predict`: `model_spec` names the model and either a
  version or a label (a proto `oneof`, so a request cannot carry both: the last one set wins,
  as in TF Serving); the response's `model_spec` holds the name asked for, the version that
  answered and the signature used (`serving_default` when none was given), and each output as
  TF Serving writes it (`Tensor::AsProtoField`: `float_val`...).
- `/GetModelMetadata`: `metadata_field` must be `["signature_def"]`; the answer packs the
  version's `SignatureDefMap` (every signature of its `serve` meta graph) in a
  `google.protobuf.Any` under the key `signature_def`.
- `/Classify`, `/Regress`: TF Serving's signature checks (multitower exports only Predict
  signatures, so INVALID_ARGUMENT "Expected classification signature method_name ...").
- `/MultiInference` and `ModelService/HandleReloadConfigRequest`: UNIMPLEMENTED in the double.
- `tensorflow.serving.ModelService/GetModelStatus`: the states of the model's versions (a
  `version_label` is ignored, as TF Serving ignores it: every version is listed).

Every refusal carries TF Serving's status code and message (cut at 1024 characters and marked
"...TRUNCATED", as its `ToGRPCStatus`). Predict, Classify and Regress are counted in the
Prometheus metrics with entrypoint `GRPC`. The response builders are shared with the REST API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.double.metrics import ServingMetrics
from serving.double.models import VersionManager
from serving.double.servable import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    Servable,
    TFServingError,
    invalid,
    status_from_exception,
    tensor_to_proto,
)

log = logging.getLogger("multitower.serve")

SIGNATURE_DEF = "signature_def"
_MESSAGE_LIMIT = 1024


def servable_request(request: Any) -> tuple[str, int | None, str | None]:
    """`(name, version, label)` of a request's `model_spec`.

    Raises:
        TFServingError: INVALID_ARGUMENT when there is no model_spec or no name.
    """
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
    spec = request.model_spec
    if not spec.name:
        raise invalid("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    return (spec.name, spec.version.value if choice == "version" else None,
            spec.version_label if choice == "version_label" else None)


def predict(manager: VersionManager, request: predict_pb2.PredictRequest
            ) -> predict_pb2.PredictResponse:
    """TF Serving's Predict on the version the request names.

    Raises:
        TFServingError: TF Serving's status.
    """
    name, version, label = servable_request(request)
    with manager.acquire(name, version, label) as servable:
        used, outputs = servable.predict(request.model_spec.signature_name, request.inputs,
                                         request.output_filter)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = used
    for alias, values in outputs.items():
        response.outputs[alias].CopyFrom(tensor_to_proto(values))
    return response


def metadata_response(servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The version's `SignatureDefMap` packed under `signature_def`, and its model_spec."""
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signatures.items():
        signatures.signature_def[key].CopyFrom(signature)
    response.metadata[SIGNATURE_DEF].Pack(signatures)
    return response


def status_response(manager: VersionManager, name: str, version: int | None
                    ) -> get_model_status_pb2.GetModelStatusResponse:
    """`GetModelStatus`: each version's state and status, newest first.

    Raises:
        TFServingError: NOT_FOUND for an unknown model or version.
    """
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in manager.statuses(name, version):
        entry = response.model_version_status.add(
            version=status.version,
            state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state))
        entry.status.error_code = grpc.StatusCode[status.error_code].value[0]
        entry.status.error_message = status.error_message
    return response


def check_inference(manager: VersionManager, request: Any, method: str) -> None:
    """Classify/Regress: the servable lookup and TF Serving's signature checks.

    Raises:
        TFServingError: Always (see `Servable.check_inference_signature`).
    """
    name, version, label = servable_request(request)
    with manager.acquire(name, version, label) as servable:
        servable.check_inference_signature(request.model_spec.signature_name, method)


def _run(call: Callable[[], Any]) -> tuple[Any, TFServingError | None]:
    """`(response, None)`, or `(None, the status)` when `call` is refused."""
    try:
        return call(), None
    except TFServingError as err:
        return None, err
    except Exception as err:  # a bug of the double: logged, answered as UNKNOWN
        log.exception("gRPC request failed")
        return None, status_from_exception(err)


def _reply(context: grpc.ServicerContext, response: Any, error: TFServingError | None) -> Any:
    """The response, or the refusal as a gRPC status (aborts the RPC)."""
    if error is None:
        return response
    message = error.message
    if len(message) > _MESSAGE_LIMIT:
        message = message[:_MESSAGE_LIMIT] + "...TRUNCATED"
    context.abort(error.code, message)
    return None  # not reached: abort raises


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`tensorflow.serving.PredictionService` over the double's version manager.

    The methods carry the service's own names (hence `noqa: N802`).
    """

    def __init__(self, manager: VersionManager, metrics: ServingMetrics | None) -> None:
        self._manager = manager
        self._metrics = metrics

    def _counted(self, api: str, request: Any, context: grpc.ServicerContext,
                 call: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        response, error = _run(call)
        if self._metrics is not None:
            self._metrics.record(request.model_spec.name, api, "GRPC",
                                 error.code.name if error else "OK", time.perf_counter() - start)
        return _reply(context, response, error)

    def Predict(self, request: predict_pb2.PredictRequest,  # noqa: N802
                context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        return self._counted("Predict", request, context,
                             lambda: predict(self._manager, request))

    def Classify(self, request: classification_pb2.ClassificationRequest,  # noqa: N802
                 context: grpc.ServicerContext) -> classification_pb2.ClassificationResponse:
        return self._counted("Classify", request, context,
                             lambda: check_inference(self._manager, request, CLASSIFY_METHOD))

    def Regress(self, request: regression_pb2.RegressionRequest,  # noqa: N802
                context: grpc.ServicerContext) -> regression_pb2.RegressionResponse:
        return self._counted("Regress", request, context,
                             lambda: check_inference(self._manager, request, REGRESS_METHOD))

    def GetModelMetadata(  # noqa: N802
            self, request: get_model_metadata_pb2.GetModelMetadataRequest,
            context: grpc.ServicerContext) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return _reply(context, *_run(lambda: metadata(self._manager, request)))

    def MultiInference(self, request: Any,  # noqa: N802
                       context: grpc.ServicerContext) -> Any:
        return _reply(context, *_run(lambda: _unimplemented("MultiInference")))


def metadata(manager: VersionManager, request: get_model_metadata_pb2.GetModelMetadataRequest
             ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """`GetModelMetadata` (get_model_metadata_impl.cc).

    Raises:
        TFServingError: TF Serving's status.
    """
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
    if not request.metadata_field:
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF:
            # TF Serving builds this message with StrCat, so its "%s" stays as written.
            raise invalid(f"Metadata field %s is not supported{field}")
    with manager.acquire(*servable_request(request)) as servable:
        return metadata_response(servable)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """`tensorflow.serving.ModelService`: status; config reloads are not taken over gRPC."""

    def __init__(self, manager: VersionManager) -> None:
        self._manager = manager

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,  # noqa: N802
                       context: grpc.ServicerContext
                       ) -> get_model_status_pb2.GetModelStatusResponse:
        def call() -> get_model_status_pb2.GetModelStatusResponse:
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            spec: model_pb2.ModelSpec = request.model_spec
            choice = spec.WhichOneof("version_choice")
            return status_response(self._manager, spec.name,
                                   spec.version.value if choice == "version" else None)

        return _reply(context, *_run(call))

    def HandleReloadConfigRequest(self, request: Any,  # noqa: N802
                                  context: grpc.ServicerContext) -> Any:
        return _reply(context, *_run(lambda: _unimplemented(
            "HandleReloadConfigRequest (it re-reads --model-config-file, or the project "
            "config, at each poll instead)")))


def _unimplemented(what: str) -> None:
    raise TFServingError(grpc.StatusCode.UNIMPLEMENTED,
                         f"multitower serve (a double of TF Serving) does not implement {what}")


def create_grpc_server(manager: VersionManager, metrics: ServingMetrics | None,
                       max_workers: int = 16) -> grpc.Server:
    """A gRPC server with both services, not yet bound to a port nor started.

    Messages have no size limit, as TF Serving sets its own limit to the largest int.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                    thread_name_prefix="multitower-serve-grpc"),
                         options=[("grpc.max_receive_message_length", -1),
                                  ("grpc.max_send_message_length", -1)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(manager, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    return server
