"""The TF Serving client over gRPC: `PredictionService` and `ModelService` of TF Serving.

Calls, each with `model_spec` naming the model and at most one of `version` / `version_label`:

- status: `ModelService.GetModelStatus(GetModelStatusRequest)` -> `model_version_status`;
- metadata: `PredictionService.GetModelMetadata(GetModelMetadataRequest)` with
  `metadata_field: ["signature_def"]`, whose answer's `metadata["signature_def"]` is an `Any`
  packing a `SignatureDefMap` (the only field TF Serving serves); its `model_spec.version` names
  the version described;
- predict: `PredictionService.Predict(PredictRequest)`, built by
  `multitower.tfs_requests.predict_request` (the warmup file's requests), one `(batch,)` tensor
  per input, `(batch, L)` for an input of shape `(-1, L)` (a padded list per row, its values in
  row-major order); the answer's `model_spec.version` names the version that answered.

Each call has the client's timeout as its deadline. UNAVAILABLE (no server, or a server not
ready) is retried; DEADLINE_EXCEEDED and every other status code are not (see `serving.client`).
The channel's reconnect backoff follows the retry policy, so that a retry after a server came
back is not refused by a channel still waiting out gRPC's default 1 s reconnect backoff.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import grpc
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
    status_pb2,
)

from multitower.tfs_requests import predict_request
from serving.client import (
    BatchScores,
    DeadlineError,
    ServingClient,
    ServingError,
    Signature,
    Transient,
    VersionStatus,
    one_score_per_row,
    server_error,
)

SIGNATURE_DEF = "signature_def"  # GetModelMetadataImpl::kSignatureDef
_STATES = get_model_status_pb2.ModelVersionStatus.State
_ERROR_CODES = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type


def check_target(server: str) -> str:
    """`HOST:PORT` as gRPC takes it.

    Raises:
        ServingError: The server is not `HOST:PORT` (a URL is REST's).
    """
    try:
        valid = "://" not in server and urlsplit(f"//{server}").port is not None
    except ValueError:  # a port that is not a number
        valid = False
    if not valid:
        raise ServingError(f"--server {server!r}: expected HOST:PORT of TF Serving's gRPC port "
                           f"(8500 by default); a URL is for --protocol rest")
    return server


class GrpcClient(ServingClient):
    """`ServingClient` over TF Serving's gRPC API (default port 8500)."""

    protocol = "grpc"

    def __init__(self, server: str, model: str, **options: Any) -> None:
        """A client of `model` at `server`; the channel connects on the first call.

        Args:
            server: `HOST:PORT` of the gRPC port.
            model: The name TF Serving serves the model under.
            **options: `version`, `label`, `signature`, `timeout`, `retry`, `batch_size`, `pads`, as
                `ServingClient` takes them.

        Raises:
            ServingError: A bad server address or option (see `ServingClient`).
        """
        super().__init__(server, model, **options)
        self._target = check_target(server)
        backoff_ms = max(10, int(self.retry.initial_backoff * 1000))
        self._channel = grpc.insecure_channel(self._target, options=[
            # TF Serving takes messages up to 2 GiB; gRPC's client default refuses above 4 MiB.
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", backoff_ms),
            ("grpc.max_reconnect_backoff_ms", max(backoff_ms,
                                                  int(self.retry.max_backoff * 1000))),
        ])
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    @property
    def address(self) -> str:
        """`HOST:PORT`."""
        return self._target

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def model_spec(self, signature: str | None = None) -> model_pb2.ModelSpec:
        """The `ModelSpec` of every call: name, and version or label if asked."""
        spec = model_pb2.ModelSpec(name=self.model)
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        if signature is not None:
            spec.signature_name = signature
        return spec

    def _invoke(self, what: str, method: Any, request: Any) -> Any:
        """One call with the deadline; errors as the module docstring says."""
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                raise Transient(f"UNAVAILABLE: {details}") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DeadlineError(f"{self.address}: TF Serving did not answer {what} for "
                                    f"{self.target} within {self.timeout:g} s "
                                    f"(DEADLINE_EXCEEDED: {details}; not retried: the "
                                    f"deadline is yours); raise --timeout or lower "
                                    f"--batch-size") from None
            raise server_error(self.address, what, self.target, code.name, details) from None

    def _get_status(self) -> list[VersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self.model_spec())
        answer = self._invoke("the status request", self._models.GetModelStatus, request)
        return [VersionStatus(s.version, _STATES.Name(s.state),
                              _ERROR_CODES.values_by_number[s.status.error_code].name
                              if s.status.error_code in _ERROR_CODES.values_by_number
                              else str(s.status.error_code), s.status.error_message)
                for s in answer.model_version_status]

    def _get_metadata(self) -> tuple[dict[str, Signature], int | None]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self.model_spec(), metadata_field=[SIGNATURE_DEF])
        answer = self._invoke("the metadata request", self._predictions.GetModelMetadata,
                              request)
        defs = get_model_metadata_pb2.SignatureDefMap()
        if SIGNATURE_DEF not in answer.metadata or not answer.metadata[SIGNATURE_DEF].Unpack(defs):
            raise ServingError(f"{self.address}: the metadata answer for {self.target} holds no "
                               f"SignatureDefMap under {SIGNATURE_DEF!r}")
        signatures = {
            name: Signature(name, {i: types_pb2.DataType.Name(info.dtype)
                                   for i, info in d.inputs.items()}, tuple(sorted(d.outputs)),
                            {i: _dims(info.tensor_shape) for i, info in d.inputs.items()})
            for name, d in defs.signature_def.items()}
        spec = answer.model_spec
        return signatures, spec.version.value if spec.HasField("version") else None

    def _predict(self, columns: dict[str, list[Any]], signature: Signature) -> BatchScores:
        dtypes = {name: tf.as_dtype(types_pb2.DataType.Value(dtype))
                  for name, dtype in signature.inputs.items()}
        lists = (self._info or self.describe()).lists
        shapes = {name: [None, lists[name].length] if name in lists else [None]
                  for name in dtypes}
        request = predict_request(self.model, columns, dtypes, signature.name, self.version,
                                  shapes=shapes)
        if self.label is not None:
            request.model_spec.version_label = self.label
        answer = self._invoke("the predict request", self._predictions.Predict, request)
        scores = {name: one_score_per_row(name, _values(answer.outputs[name]), self.address)
                  for name in signature.outputs if name in answer.outputs}
        spec = answer.model_spec
        return BatchScores(scores, spec.version.value if spec.HasField("version") else None)


def _dims(shape: tensor_shape_pb2.TensorShapeProto) -> tuple[int, ...] | None:
    """A `TensorShapeProto`'s sizes (-1 for any), or None for an unknown rank."""
    return None if shape.unknown_rank else tuple(d.size for d in shape.dim)


def _values(proto: tensor_pb2.TensorProto) -> list:
    """A score tensor's values, as `tf.make_ndarray(proto).tolist()` reads them.

    A `(n,)` float32 tensor in `float_val` (how TF Serving writes float32 outputs) is read
    directly: `tf.make_ndarray` costs ~20 us per output, a tenth of the client's own time per
    batch-1 request.
    """
    dims = proto.tensor_shape.dim
    if (proto.dtype == types_pb2.DT_FLOAT and not proto.tensor_content and len(dims) == 1
            and len(proto.float_val) == dims[0].size):
        return list(proto.float_val)
    return tf.make_ndarray(proto).tolist()
