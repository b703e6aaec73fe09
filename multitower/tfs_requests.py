"""TF Serving Predict requests over raw rows, and the warmup file that carries them in an export.

A request holds one tensor per signature input, keyed by the input's name, each of shape
`(batch,)`, or `(batch, max_length)` for a list-valued feature (padded, see
`multitower.config.data.CategoricalFeature`), and of the signature's dtype (`string`, `int64`,
`float32`, as in `multitower.records`), and names the model (`model_spec.name`, the name TF
Serving serves it under) and the signature (`model_spec.signature_name`). The trainer builds
them for the warmup file; the serving client sends the same requests.

The warmup file follows TF Serving's SavedModel Warmup guide (`saved_model_warmup.md`):

- name `tf_serving_warmup_requests`, in the `assets.extra/` folder of the version
  (`<export_dir>/<model>/<version>/assets.extra/tf_serving_warmup_requests`);
- an uncompressed TFRecord file, each record a serialized `PredictionLog` whose `predict_log`
  holds one `PredictRequest` (the response is left empty: TF Serving replays requests only);
- at most 1000 records (`MAX_WARMUP_RECORDS`).

TF Serving replays every record when it loads the version, before the version serves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from multitower.errors import MultitowerError

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit on warmup records
DEFAULT_SIGNATURE = "serving_default"
# Every export's second signature: serialized `tf.train.Example`s (the TFRecords' own format) in
# its one input, the same outputs as `serving_default` (trainer/export.py writes it; batch
# scoring, serving/score.py, reads it).
EXAMPLES_SIGNATURE = "predict_examples"
EXAMPLES_INPUT = "examples"


class RequestError(MultitowerError, ValueError):
    """A request or a warmup file does not hold what the contract says; the message says what."""


def warmup_path(saved_model_dir: str) -> str:
    """`<saved_model_dir>/assets.extra/tf_serving_warmup_requests`."""
    return os.path.join(saved_model_dir, WARMUP_DIR, WARMUP_FILE)


def predict_request(
    model_name: str, rows: Mapping[str, Sequence | np.ndarray], dtypes: Mapping[str, tf.DType],
    signature_name: str = DEFAULT_SIGNATURE, version: int | None = None,
    shapes: Mapping[str, Sequence[int | None]] | None = None,
) -> predict_pb2.PredictRequest:
    """A Predict request over a batch of raw rows, one `(batch,)` or `(batch, L)` tensor per input.

    Args:
        model_name: The name TF Serving serves the model under (`model_spec.name`).
        rows: `{input name: batch of values}`, every input of the signature and no other; all
            of one length, at least one row. A batch is a sequence of values (`(batch,)`) or of
            equally long sequences of values, or a 1-D or 2-D array (`(batch, L)`, written in
            row-major order: a padded list feature). Strings as `str` or `bytes`.
        dtypes: `{input name: dtype}` of the signature (`tf.string`, `tf.int64`, `tf.float32`).
        signature_name: `model_spec.signature_name`.
        version: `model_spec.version`, or None for the version TF Serving chooses.
        shapes: `{input name: shape}` the batches must have, `[None]` or `[None, L]` (None
            matches any size, as in `tf.TensorSpec`); None checks only that they are 1-D or 2-D.

    Returns:
        The request.

    Raises:
        RequestError: An input is missing or unknown, the batches differ in length or are
            empty, a batch's rows differ in length or its shape is not the expected one, or a
            value does not fit its dtype.
    """
    missing, unknown = sorted(set(dtypes) - set(rows)), sorted(set(rows) - set(dtypes))
    if missing or unknown:
        raise RequestError(f"the rows do not match the signature {signature_name!r}: missing "
                           f"inputs {missing}, unknown inputs {unknown}")
    lengths = {name: len(values) for name, values in rows.items()}
    if len(set(lengths.values())) != 1 or not next(iter(lengths.values())):
        raise RequestError(f"every input needs the same number of rows (at least one), got "
                           f"{lengths}")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = int(version)
    for name in sorted(dtypes):
        shape, flat = _flatten(name, rows[name])
        expected = None if shapes is None else shapes.get(name)
        if expected is not None and not _fits(shape, expected):
            shown = "(" + ", ".join("None" if d is None else str(d) for d in expected) + ")"
            raise RequestError(f"input {name!r}: a batch of shape {shape}, the signature "
                               f"takes {shown}")
        try:
            _fill_tensor(request.inputs[name], flat, dtypes[name], shape)
        except (TypeError, ValueError, OverflowError) as err:
            raise RequestError(f"input {name!r}: the values do not fit {dtypes[name].name}: "
                               f"{err}") from None
    return request


def _fits(shape: tuple[int, ...], expected: Sequence[int | None]) -> bool:
    return len(shape) == len(expected) and all(
        want is None or want < 0 or have == want for have, want in zip(shape, expected,
                                                                     strict=True))


_ROWS = (list, tuple, np.ndarray)  # what holds a row's values in a 2-D batch


def _flatten(name: str, values: Sequence | np.ndarray) -> tuple[tuple[int, ...], Sequence]:
    """`(shape, values in row-major order)` of a 1-D or 2-D batch.

    Raises:
        RequestError: The batch is of another rank, or its rows differ in length.
    """
    if isinstance(values, np.ndarray):
        if values.ndim not in (1, 2):
            raise RequestError(f"input {name!r}: a batch is 1-D or 2-D (a padded list per "
                               f"row), got an array of shape {values.shape}")
        return values.shape, values.reshape(-1)
    if not isinstance(values[0], _ROWS):
        # One value per row, the common case; a list further on is refused where the values
        # are converted (`_fill_tensor` takes no list for a value).
        return (len(values),), values
    sizes = {len(v) if isinstance(v, _ROWS) else None for v in values}
    if len(sizes) != 1 or None in sizes:
        shown = sorted(sizes, key=lambda size: -1 if size is None else size)
        raise RequestError(f"input {name!r}: every row needs a list of one length (pad the "
                           f"lists), got rows of lengths "
                           f"{['a single value' if s is None else s for s in shown]}")
    for row in values:
        if any(isinstance(v, _ROWS) for v in row):
            raise RequestError(f"input {name!r}: a batch is 1-D or 2-D (a padded list per "
                               f"row), got lists nested deeper")
    return (len(values), sizes.pop()), [v for row in values for v in row]


# The TensorProto field that holds each dtype's values (tensorflow/core/framework/tensor.proto).
_VALUE_FIELDS = {tf.string: "string_val", tf.int64: "int64_val", tf.float32: "float_val"}


def _fill_tensor(proto: tensor_pb2.TensorProto, values: Sequence | np.ndarray, dtype: tf.DType,
                 shape: Sequence[int] | None = None) -> None:
    """Writes a tensor of `dtype` and `shape` into `proto`, in its typed value field.

    Args:
        proto: The (empty) tensor to fill.
        values: Every value of the tensor in row-major order.
        dtype: `tf.string`, `tf.int64` or `tf.float32`.
        shape: The tensor's shape (its sizes multiply to `len(values)`); None for
            `(len(values),)`.

    The same message `tf.make_tensor_proto` builds for these dtypes (TF Serving reads either
    the typed field or `tensor_content`), at a tenth of its cost per request: a batch-1 request
    of ten inputs took 0.19 ms through `make_tensor_proto`, which is most of what a client
    adds to a round trip on loopback.
    """
    field = _VALUE_FIELDS.get(dtype)
    if field is None:
        raise TypeError(f"no TF Serving value field for {dtype.name}")
    proto.dtype = dtype.as_datatype_enum
    for size in (len(values),) if shape is None else shape:
        proto.tensor_shape.dim.add(size=size)
    if dtype == tf.string:
        values = [v.encode() if isinstance(v, str) else _bytes(v) for v in values]
    elif dtype == tf.int64:
        values = [_integer(v) for v in values]
    elif isinstance(values, np.ndarray):
        values = values.astype(np.float32).tolist()
    getattr(proto, field).extend(values)


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):  # bytes() would take a list of small ints, or a count
        raise TypeError(f"expected a string, got {value!r}")
    return bytes(value)


def _integer(value: object) -> int:
    if isinstance(value, bool | float | str | bytes):
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value)


def request_rows(request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    """The request's inputs as arrays, `{input name: (batch,) or (batch, L)}` (strings as `bytes`).

    Raises:
        RequestError: A tensor cannot be read (its values do not fill its shape).
    """
    arrays = {}
    for name, proto in request.inputs.items():
        try:
            arrays[name] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as err:
            raise RequestError(f"input {name!r}: the tensor cannot be read ({err})") from None
    return arrays


def write_warmup(path: str, requests: Sequence[predict_pb2.PredictRequest]) -> None:
    """Writes `requests` as TF Serving's warmup file (one `PredictionLog` per record).

    Raises:
        RequestError: No request, or more than TF Serving's 1000 warmup records.
    """
    if not requests or len(requests) > MAX_WARMUP_RECORDS:
        raise RequestError(f"a warmup file holds 1 to {MAX_WARMUP_RECORDS} requests "
                           f"(TF Serving's limit), got {len(requests)}")
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:  # uncompressed, as TF Serving reads it
        for request in requests:
            record = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(record.SerializeToString(deterministic=True))


def read_warmup(path: str) -> list[predict_pb2.PredictRequest]:
    """The Predict requests of a warmup file, in file order.

    Raises:
        RequestError: The file is missing or not a TFRecord file, a record is not a
            `PredictionLog` holding a Predict request, or it holds no record or more than
            TF Serving's 1000.
    """
    if not tf.io.gfile.exists(path):
        raise RequestError(f"{path}: no warmup file")
    requests = []
    try:
        for number, record in enumerate(_records(path), start=1):
            log = prediction_log_pb2.PredictionLog()
            log.ParseFromString(record)
            if log.WhichOneof("log_type") != "predict_log":
                raise RequestError(f"{path}: record {number} is a {log.WhichOneof('log_type')} "
                                   f"log, not a predict_log")
            requests.append(log.predict_log.request)
    except DecodeError:
        raise RequestError(f"{path}: record {len(requests) + 1} is not a PredictionLog") from None
    except tf.errors.OpError as err:
        raise RequestError(f"{path}: not a TFRecord file ({err.message})") from None
    if not requests or len(requests) > MAX_WARMUP_RECORDS:
        raise RequestError(f"{path}: holds {len(requests)} records; TF Serving replays 1 to "
                           f"{MAX_WARMUP_RECORDS}")
    return requests


def _records(path: str) -> Iterable[bytes]:
    for record in tf.data.TFRecordDataset(path):
        yield record.numpy()
