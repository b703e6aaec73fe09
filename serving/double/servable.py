"""One loaded version of a model, as TF Serving holds it: load, warm up, run a signature.

`Servable.load` reads `saved_model.pb` (the `serve` meta graph, whose `signature_def` map is what
TF Serving's metadata API prints), loads the SavedModel with `tf.saved_model.load` and replays
its warmup file (`assets.extra/tf_serving_warmup_requests`) through the signatures, as TF
Serving does before a version serves. `Servable.predict` follows TF Serving's Predict path
(`predict_util.cc` `RunPredict`, TensorFlow's `saved_model/util.cc` `GetInputValues`, and the
batching session's checks when batching is on): every refusal is a `TFServingError` with TF
Serving's status code and message.

Tensors are `(values: np.ndarray, dtype: DataType enum)` pairs: the dtype a client declared is
kept next to the values, so that a float sent for an int64 input is refused as TF Serving
refuses it ("Expects arg[i] to be int64 but float is provided"). Tensors of any rank pass
(padded lists are `(batch, L)`); as in TF Serving, the shapes a signature declares are not
checked against a request's (tensorflow/serving#1436, #1527: "Modelserver does not do any input
shape verification"): the graph runs and fails, or not, as TensorFlow's ops decide. A loaded
SavedModel's signature function does the same (it does not check its inputs' shapes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from multitower.errors import MultitowerError
from multitower.tfs_requests import DEFAULT_SIGNATURE, RequestError, read_warmup, warmup_path

log = logging.getLogger("multitower.serve")

SERVE_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_CODES = {code.value[0]: code for code in grpc.StatusCode}
# TensorFlow's DataTypeString names where they differ from tf.DType.name.
_TYPE_NAMES = {types_pb2.DT_FLOAT: "float", types_pb2.DT_DOUBLE: "double",
               types_pb2.DT_HALF: "half"}


class TFServingError(MultitowerError):
    """A status TF Serving answers with: its gRPC code and TF Serving's own message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> TFServingError:
    """An INVALID_ARGUMENT status."""
    return TFServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def type_name(dtype: int) -> str:
    """TensorFlow's `DataTypeString`: `float`, `int64`, `string`..."""
    if dtype in _TYPE_NAMES:
        return _TYPE_NAMES[dtype]
    try:
        return tf.as_dtype(dtype).name
    except TypeError:
        return types_pb2.DataType.Name(dtype)


class Tensor(NamedTuple):
    """A request tensor: its values and the dtype the client gave it (a `DataType` enum)."""

    values: np.ndarray
    dtype: int


def tensor_from_proto(alias: str, proto: tensor_pb2.TensorProto) -> Tensor:
    """A request's `TensorProto` as a `Tensor`; one TensorFlow cannot read is refused.

    Raises:
        TFServingError: INVALID_ARGUMENT "tensor parsing error: <alias>", as TF Serving.
    """
    fast = _typed_vector(proto)
    if fast is not None:
        return Tensor(fast, proto.dtype)
    try:
        return Tensor(tf.make_ndarray(proto), proto.dtype)
    except (TypeError, ValueError):
        raise invalid(f"tensor parsing error: {alias}") from None


# A vector (or a matrix: padded lists) in its typed field, as multitower's client and most
# clients send raw features.
_VECTOR_FIELDS = {types_pb2.DT_STRING: ("string_val", object),
                  types_pb2.DT_INT64: ("int64_val", np.int64),
                  types_pb2.DT_FLOAT: ("float_val", np.float32)}


def _typed_vector(proto: tensor_pb2.TensorProto) -> np.ndarray | None:
    """The values of a `(n,)` or `(n, m)` string, int64 or float tensor in its typed field.

    What `tf.make_ndarray` returns for such a tensor, at a fraction of its cost (it was half
    of the double's own time per batch-1 Predict). Anything else (other shapes and dtypes,
    `tensor_content`, a single value to broadcast, no value) is left to `tf.make_ndarray`:
    returns None.
    """
    kind = _VECTOR_FIELDS.get(proto.dtype)
    dims = proto.tensor_shape.dim
    if kind is None or proto.tensor_content or len(dims) not in (1, 2):
        return None
    field, dtype = kind
    values = getattr(proto, field)
    shape = [d.size for d in dims]
    if not values or len(values) != int(np.prod(shape)):
        return None
    array = np.array(values, dtype=dtype)
    return array if len(shape) == 1 else array.reshape(shape)


_PROTO_FIELDS = {np.dtype(np.float32): "float_val", np.dtype(np.float64): "double_val",
                 np.dtype(np.int64): "int64_val", np.dtype(np.int32): "int_val",
                 np.dtype(np.bool_): "bool_val"}


def tensor_to_proto(values: np.ndarray) -> tensor_pb2.TensorProto:
    """An output as TF Serving's Predict writes it: `Tensor::AsProtoField` (typed `*_val`)."""
    values = np.asarray(values)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in values.shape])
    if values.dtype == object or values.dtype.kind in "SU":
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape)
        proto.string_val.extend(v.encode() if isinstance(v, str) else bytes(v)
                                for v in values.ravel())
        return proto
    field = _PROTO_FIELDS.get(values.dtype)
    if field is None:  # other dtypes: TensorFlow's own encoding (tensor_content)
        return tf.make_tensor_proto(values)
    proto = tensor_pb2.TensorProto(dtype=tf.as_dtype(values.dtype).as_datatype_enum,
                                   tensor_shape=shape)
    getattr(proto, field).extend(values.ravel().tolist())
    return proto


def status_from_exception(err: BaseException) -> TFServingError:
    """A TensorFlow error as the status TF Serving passes on (same code, same message)."""
    if isinstance(err, TFServingError):
        return err
    if isinstance(err, tf.errors.OpError):
        return TFServingError(_CODES.get(err.error_code, grpc.StatusCode.UNKNOWN), err.message)
    return TFServingError(grpc.StatusCode.UNKNOWN, f"{type(err).__name__}: {err}")


def read_meta_graph(path: str) -> meta_graph_pb2.MetaGraphDef:
    """The `serve` meta graph of the SavedModel at `path`, as TF Serving's loader reads it.

    Raises:
        TFServingError: NOT_FOUND (no saved_model.pb, no `serve` meta graph) or DATA_LOSS (not a
            SavedModel proto), with TensorFlow's messages.
    """
    pb = os.path.join(path, "saved_model.pb")
    if not tf.io.gfile.exists(pb):
        raise TFServingError(
            grpc.StatusCode.NOT_FOUND,
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}. "
            f"Check that the directory exists and that you have the right permissions for "
            f"accessing it.")
    saved_model = saved_model_pb2.SavedModel()
    try:
        with tf.io.gfile.GFile(pb, "rb") as f:
            saved_model.ParseFromString(f.read())
    except DecodeError:
        raise TFServingError(grpc.StatusCode.DATA_LOSS,
                             f"Can't parse {pb} as binary proto") from None
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == {SERVE_TAG}:
            return meta_graph
    raise TFServingError(
        grpc.StatusCode.NOT_FOUND,
        f"Could not find meta graph def matching supplied tags: {{ {SERVE_TAG} }}. To inspect "
        f"available tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`")


class Servable:
    """One version of one model, loaded; `predict` may run in many threads at once."""

    def __init__(self, name: str, version: int, path: str,
                 meta_graph: meta_graph_pb2.MetaGraphDef, loaded: object,
                 max_batch_size: int | None) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.signatures = dict(meta_graph.signature_def)
        self._functions = dict(loaded.signatures)
        self._loaded = loaded  # keeps the variables the functions use alive
        self.max_batch_size = max_batch_size

    @classmethod
    def load(cls, name: str, version: int, path: str, max_batch_size: int | None = None
             ) -> Servable:
        """Loads the version at `path` and replays its warmup file.

        Args:
            name: The model's served name.
            version: The version number.
            path: The version's folder (local, s3://, gs://).
            max_batch_size: With batching on, the largest request (rows); None: no limit.

        Raises:
            TFServingError: The load or the warmup failed; the status TF Serving reports.
        """
        meta_graph = read_meta_graph(path)
        try:
            loaded = tf.saved_model.load(path, tags=[SERVE_TAG])
        except Exception as err:  # any load failure is the version's status
            raise status_from_exception(err) from None
        servable = cls(name, version, path, meta_graph, loaded, max_batch_size)
        servable.warmup()
        return servable

    def warmup(self) -> int:
        """Replays `assets.extra/tf_serving_warmup_requests`; returns the records replayed.

        Having no warmup file, or an empty one, is fine, as for TF Serving.

        Raises:
            TFServingError: The file is not a TFRecord file of PredictionLogs (DATA_LOSS or
                INVALID_ARGUMENT), or a request fails (its own status).
        """
        path = warmup_path(self.path)
        if not tf.io.gfile.exists(path):
            log.info("no warmup data file found at %s", path)
            return 0
        if not tf.io.gfile.stat(path).length:  # TF Serving reads no record: nothing to replay
            return 0
        try:
            requests = read_warmup(path)
        except RequestError as err:
            # Reading the records failed (read_warmup keeps TensorFlow's error as the context):
            # TF Serving reports DATA_LOSS with its own hint.
            if isinstance(err.__context__, tf.errors.OpError):
                raise TFServingError(grpc.StatusCode.DATA_LOSS,
                                     f"{err}. Please verify your warmup data is in TFRecord "
                                     f"format.") from None
            raise invalid(str(err)) from None
        for request in requests:
            self.predict(request.model_spec.signature_name, request.inputs,
                         request.output_filter)
        return len(requests)

    def predict(self, signature_name: str,
                inputs: Mapping[str, Tensor | tensor_pb2.TensorProto],
                output_filter: Sequence[str] = ()) -> tuple[str, dict[str, np.ndarray]]:
        """Runs a signature as TF Serving's Predict does.

        Args:
            signature_name: The signature; empty means `serving_default`.
            inputs: `{alias: Tensor or TensorProto}`, one per signature input (a proto is
                read only after the aliases are checked, where TF Serving reads it).
            output_filter: The outputs to return; empty means all.

        Returns:
            `(signature name used, {output alias: values})`.

        Raises:
            TFServingError: With TF Serving's code and message.
        """
        name = signature_name or DEFAULT_SIGNATURE
        signature = self.signatures.get(name)
        if signature is None:
            raise TFServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f'Serving signature key "{name}" not found.')
        if signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
            raise TFServingError(
                grpc.StatusCode.INTERNAL,
                f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
                f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}")
        _check_inputs(signature, inputs)
        inputs = {alias: t if isinstance(t, Tensor) else tensor_from_proto(alias, t)
                  for alias, t in inputs.items()}
        outputs = _check_outputs(signature, output_filter)
        if self.max_batch_size:
            _check_batch(inputs, self.max_batch_size)
        _check_dtypes(signature, inputs)
        function = self._functions.get(name)
        if function is None:
            raise TFServingError(grpc.StatusCode.INTERNAL,
                                 f"signature {name!r} has no function in {self.path}")
        try:
            results = function(**{alias: tf.constant(t.values, dtype=tf.as_dtype(t.dtype))
                                  for alias, t in inputs.items()})
        except Exception as err:  # TensorFlow's error is the request's status
            raise status_from_exception(err) from None
        return name, {alias: results[alias].numpy() for alias in outputs}

    def check_inference_signature(self, signature_name: str, method: str) -> None:
        """Classify or Regress: TF Serving's signature checks; the double runs neither API.

        Args:
            signature_name: The signature asked for; empty means `serving_default`.
            method: `CLASSIFY_METHOD` or `REGRESS_METHOD`.

        Raises:
            TFServingError: INVALID_ARGUMENT as TF Serving (no such signature, or not one of
                that method); UNIMPLEMENTED for a real classify/regress signature.
        """
        name = signature_name or DEFAULT_SIGNATURE
        kind = "classification" if method == CLASSIFY_METHOD else "regression"
        signature = self.signatures.get(name)
        if signature is None:
            raise invalid(f"No signature was found with the name: {name}")
        if signature.method_name != method:
            raise invalid(f"Expected {kind} signature method_name to be {method}. Was: "
                          f"{signature.method_name}")
        raise TFServingError(grpc.StatusCode.UNIMPLEMENTED,
                             f"multitower serve (a double of TF Serving) does not run "
                             f"{kind} signatures; {name!r} of {self.path} is one")


def _keys(names: object) -> str:
    return ",".join(sorted(names))


def _check_inputs(signature: meta_graph_pb2.SignatureDef, inputs: Mapping[str, object]
                  ) -> None:
    """`VerifyRequestInputsSize`, then `GetInputValues`' alias checks."""
    expected = signature.inputs
    if len(inputs) > len(expected) or (len(inputs) < len(expected) and not signature.defaults):
        raise invalid(
            f"input size does not match signature: {len(inputs)}!={len(expected)} "
            f"len({{{_keys(inputs)}}}) != len({{{_keys(expected)}}}). Sent extra: "
            f"{{{_keys(set(inputs) - set(expected))}}}. Missing but required: "
            f"{{{_keys(set(expected) - set(inputs))}}}.")
    for alias in sorted(expected):
        if alias not in inputs and alias not in signature.defaults:
            raise invalid(
                f"Signature input alias: {alias}(feed name: {expected[alias].name}) not found "
                f"in request and no default value provided. Inputs expected to be in the "
                f"request {{{_keys(inputs)}}}, or default input alias set: "
                f"{_keys(signature.defaults)}")
    used = set(inputs) & set(expected)
    if inputs and len(used) != len(inputs):
        raise invalid(f"Inputs contains invalid name. Used request inputs: {_keys(used)}, "
                      f"request input: {_keys(inputs)}")


def _check_outputs(signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]
                   ) -> list[str]:
    if not output_filter:
        return list(signature.outputs)
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid(f"output tensor alias not found in signature: {alias} Outputs "
                          f"expected to be in the set {{{_keys(signature.outputs)}}}.")
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


def _check_batch(inputs: Mapping[str, Tensor], max_batch_size: int) -> None:
    """The batching session's checks (`batching_session.cc`, `shared_batch_scheduler.h`)."""
    sizes = set()
    for tensor in inputs.values():
        if tensor.values.ndim == 0:
            raise invalid("Batching Run() input tensors must have at least one dimension")
        sizes.add(tensor.values.shape[0])
    if len(sizes) > 1:
        raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
    size = sizes.pop() if sizes else 0
    if size > max_batch_size:
        raise invalid(f"Task size {size} is larger than maximum input batch size "
                      f"{max_batch_size}")


def _check_dtypes(signature: meta_graph_pb2.SignatureDef, inputs: Mapping[str, Tensor]) -> None:
    """The session's feed check: TensorFlow numbers feeds (`arg[i]`) by sorted tensor name."""
    feeds = sorted(signature.inputs[alias].name for alias in inputs)
    for alias, tensor in inputs.items():
        info = signature.inputs[alias]
        if tensor.dtype != info.dtype:
            raise invalid(f"Expects arg[{feeds.index(info.name)}] to be {type_name(info.dtype)} "
                          f"but {type_name(tensor.dtype)} is provided")
