"""TF Serving's JSON <-> tensor codec for the REST API (tensorflow_serving/util/json_tensor.cc).

Requests (`FillPredictRequestFromJson`): `signature_name` (a string), then either `instances`
(row format: a list with one item per row, each an object `{input: value}`, or a bare value
when the signature has one input) or `inputs` (columnar: an object `{input: batch}`, or a bare
value or list for a single input), never both. Values are converted to the dtype the signature
declares, with TF Serving's checks and messages: a float input takes any JSON number that fits
a float32 without loss (`NaN`, `Infinity` included), an int64 input only JSON integers, a
string input JSON strings or `{"b64": "<base64>"}` objects for binary data. Nested lists are
tensors of higher rank, their shape read from the first element at each level and every other
list held to it: a padded list feature, `(batch, L)`, is a list per instance in the row format
(each instance's list of the same length as the first's, else "Expecting tensor size: L but
got: n") or a list of lists in `inputs` ("Encountered list at unexpected size ..."). The
signature's declared shapes are not checked (nor are they by TF Serving): the graph decides.

Responses (`MakeJsonFromTensors`): `{"predictions": [...]}` for the row format (one object per
row when the signature has several outputs, bare values when one) and `{"outputs": ...}` for
the columnar one (an object of batches, or the bare batch for one output). Floats are written
as TF Serving writes them: the shortest of `%g` (6 digits) and `%.9g` that reads back to the
same float32, with `.0` added to whole numbers; outputs named `*_bytes` are written as b64
objects.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.double.servable import Tensor, TFServingError, invalid, type_name

ROW, COLUMNAR = "row", "columnar"
_FLOAT_MAX = float(np.finfo(np.float32).max)
_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64,
          types_pb2.DT_INT64: np.int64, types_pb2.DT_INT32: np.int32,
          types_pb2.DT_INT16: np.int16, types_pb2.DT_INT8: np.int8,
          types_pb2.DT_UINT8: np.uint8, types_pb2.DT_UINT32: np.uint32,
          types_pb2.DT_UINT64: np.uint64, types_pb2.DT_BOOL: np.bool_}
_INT_RANGES = {types_pb2.DT_INT32: (-2**31, 2**31 - 1), types_pb2.DT_INT16: (-2**31, 2**31 - 1),
               types_pb2.DT_INT8: (-2**31, 2**31 - 1), types_pb2.DT_UINT8: (-2**31, 2**31 - 1),
               types_pb2.DT_INT64: (-2**63, 2**63 - 1), types_pb2.DT_UINT32: (0, 2**32 - 1),
               types_pb2.DT_UINT64: (0, 2**64 - 1)}
TensorInfos = Mapping[str, meta_graph_pb2.TensorInfo]


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object (`ParseJson`; NaN and Infinity are accepted).

    Raises:
        TFServingError: INVALID_ARGUMENT for an empty body, bad JSON or a non-object.
    """
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise invalid(f"JSON Parse error: Invalid encoding in string. at offset: "
                      f"{err.start}") from None
    except json.JSONDecodeError as err:
        raise invalid(f"JSON Parse error: {err.msg} at offset: {err.pos}") from None
    if not isinstance(doc, dict):
        raise format_error(doc, "Is not object")
    return doc


def signature_name(doc: Mapping[str, Any]) -> str:
    """`signature_name` of a request, or "" (`FillSignature`).

    Raises:
        TFServingError: INVALID_ARGUMENT when it is not a string.
    """
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid(f"JSON Value: {value_text(doc)} not formatted correctly. "
                      f"'signature_name' key must be a string value.")
    return name


def predict_inputs(doc: Mapping[str, Any], infos: TensorInfos, signature: str
                   ) -> tuple[str, dict[str, Tensor]]:
    """`(ROW or COLUMNAR, {input: Tensor})` of a Predict request, typed by the signature.

    Args:
        doc: The parsed request.
        infos: The signature's inputs (`{alias: TensorInfo}`).
        signature: The signature name asked for ("" for the default), for messages.

    Raises:
        TFServingError: INVALID_ARGUMENT with TF Serving's message.
    """
    if not infos:
        raise invalid(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    if "instances" in doc:
        if "inputs" in doc:
            raise format_error(doc, "Not formatted correctly expecting only one of 'inputs' "
                                    "or 'instances' keys to exist ")
        if not isinstance(doc["instances"], list):
            raise format_error(doc, "Excepting 'instances' to be an list/array")
        if not doc["instances"]:
            raise format_error(doc, "No values in 'instances' array")
        return ROW, _from_instances(doc["instances"], infos)
    if "inputs" in doc:
        return COLUMNAR, _from_inputs(doc["inputs"], infos)
    raise invalid("Missing 'inputs' or 'instances' key")


def check_examples(doc: Mapping[str, Any]) -> None:
    """The shape checks of a classify/regress body (`FillClassifyRegressRequestFromJson`).

    Raises:
        TFServingError: INVALID_ARGUMENT with TF Serving's message.
    """
    if "context" in doc and not isinstance(doc["context"], dict):
        raise invalid(f"Example must be JSON object but got JSON {json_type(doc['context'])}")
    examples = doc.get("examples")
    if examples is None:  # TF Serving says "classify" for regress too
        raise format_error(doc, "When method is classify, key 'examples' is expected and was "
                                "not found")
    if not isinstance(examples, list):
        raise format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise format_error(doc, "'examples' value is an empty array")
    for example in examples:
        if not isinstance(example, dict):
            raise invalid(f"Example must be JSON object but got JSON {json_type(example)}")


def predict_json(outputs: Mapping[str, np.ndarray], form: str) -> str:
    """The response body of a Predict request in `form` (ROW or COLUMNAR).

    Raises:
        TFServingError: INVALID_ARGUMENT when the outputs cannot be written in rows.
    """
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    several = len(names) > 1
    if form == COLUMNAR:
        if not several:
            return f'{{"outputs": {_tensor_text(names[0], outputs[names[0]])}}}'
        body = ", ".join(f"{json.dumps(n)}: {_tensor_text(n, outputs[n])}" for n in names)
        return f'{{"outputs": {{{body}}}}}'
    batch = None
    for name in names:
        values = np.asarray(outputs[name])
        if values.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch is not None and values.shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: "
                          f"{values.shape[0]} expecting: {batch}")
        batch = values.shape[0]
    rows = []
    for item in range(batch or 0):
        if several:
            rows.append("{" + ", ".join(
                f"{json.dumps(n)}: {_tensor_text(n, np.asarray(outputs[n])[item])}"
                for n in names) + "}")
        else:
            rows.append(_tensor_text(names[0], np.asarray(outputs[names[0]])[item]))
    return '{"predictions": [' + ", ".join(rows) + "]}"


def error_json(message: str) -> str:
    """`{"error": message}` (`MakeJsonFromStatus`)."""
    return json.dumps({"error": message}, ensure_ascii=False)


# --- values -----------------------------------------------------------------------------------

def format_float(value: float, single: bool = True) -> str:
    """A float as TF Serving's `WriteDecimal` writes it (float32 when `single`)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    same = (np.float32(float(text)) == np.float32(value)) if single else float(text) == value
    if not same:
        text = f"{value:.{9 if single else 17}g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def json_type(value: Any) -> str:
    """The type name rapidjson gives a JSON value (`JsonTypeString`)."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def value_text(value: Any) -> str:
    """A JSON value as TF Serving quotes it in messages (`JsonValueToString`)."""
    if isinstance(value, float):
        return format_float(value, single=abs(value) <= _FLOAT_MAX or not math.isfinite(value))
    return json.dumps(value, ensure_ascii=False, indent=4 if isinstance(value, dict) else None)


def format_error(doc: Any, message: str) -> TFServingError:
    """`FormatError`: "JSON Value: <doc> <message>"."""
    return invalid(f"JSON Value: {value_text(doc)} {message}")


def _type_error(value: Any, dtype: int) -> TFServingError:
    return invalid(f"JSON Value: {value_text(value)} Type: {json_type(value)} is not of "
                   f"expected type: {type_name(dtype)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _lossless(value: int | float, single: bool) -> bool:
    """`IsLosslessDecimal`: whole numbers up to 2^24 (2^53) - 1, decimals in range."""
    if isinstance(value, float):
        return not math.isfinite(value) or not single or abs(value) <= _FLOAT_MAX
    largest = 2 ** (24 if single else 53) - 1
    if -2**63 <= value < 2**64:
        return abs(value) <= largest
    return not single or abs(float(value)) <= _FLOAT_MAX


def _scalar(value: Any, dtype: int) -> Any:
    """`AddValueToTensor`: one JSON value as a value of `dtype`."""
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        if not _is_number(value):
            raise _type_error(value, dtype)
        single = dtype == types_pb2.DT_FLOAT
        if not _lossless(value, single):
            raise invalid(f"Cannot convert JSON value: {value_text(value)} to "
                          f"{'float' if single else 'double'} without loss of precision.")
        return float(value)
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8")
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    raise TFServingError(grpc.StatusCode.UNIMPLEMENTED,
                         f"Conversion of JSON Value: {value_text(value)} to type: "
                         f"{type_name(dtype)}")


def _is_b64(value: Any) -> bool:
    return (isinstance(value, dict) and len(value) == 1
            and isinstance(value.get("b64"), str))


def _b64(value: Any) -> bytes:
    if not _is_b64(value):
        raise invalid(f"JSON Value: {value_text(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:  # absl::Base64Unescape takes the padding as optional
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("Unable to base64 decode") from None


def _dense_shape(value: Any) -> list[int]:
    """`GetDenseTensorShape`: the sizes of the first element at each nesting level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list) -> None:
    """`FillTensorProto`: the values of a nested list, checked against `shape`."""
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid(f"JSON Value: {value_text(value)} found at incorrect level: "
                          f"{level + 1} in the JSON DOM. Expected at level: {len(shape)}")
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            out.append(_b64(value))
        else:
            out.append(_scalar(value, dtype))
        return
    if level >= len(shape):
        raise invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                      f"expected size: {shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _tensor(values: list, shape: list[int], dtype: int) -> Tensor:
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
    else:
        array = np.array(values, dtype=_NUMPY.get(dtype, np.float32))
    return Tensor(array.reshape(shape), dtype)


def _value_tensor(value: Any, dtype: int) -> Tensor:
    shape = _dense_shape(value)
    values: list = []
    _fill(value, 0, shape, dtype, values)
    return _tensor(values, shape, dtype)


def _from_inputs(value: Any, infos: TensorInfos) -> dict[str, Tensor]:
    """`FillTensorMapFromInputsMap` (inputs the signature does not name are ignored)."""
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple "
                          "input tensors required as per tensorinfo_map")
        name = next(iter(infos))
        return {name: _value_tensor(value, infos[name].dtype)}
    tensors = {}
    for name in sorted(infos):
        if name not in value:
            raise invalid(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _value_tensor(value[name], infos[name].dtype)
    return tensors


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(size) for size in shape) + "]"


def _from_instances(instances: list, infos: TensorInfos) -> dict[str, Tensor]:
    """`FillTensorMapFromInstancesList`: one tensor per input, rows stacked on a first axis."""
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise invalid("instances is a plain list, but expecting list of objects as multiple "
                      "input tensors required as per tensorinfo_map")
    objects = isinstance(instances[0], dict) and not _is_b64(instances[0])
    values: dict[str, list] = {}
    shapes: dict[str, tuple[int, list[int]]] = {}

    def add(item: Any, name: str) -> None:  # `AddInstanceItem`
        if name not in infos:
            raise invalid(f"JSON object: does not have named input: {name}")
        shape, out = _dense_shape(item), []
        _fill(item, 0, shape, infos[name].dtype, out)
        size, first = len(out), shapes.setdefault(name, (len(out), shape))
        if first[0] != size:
            raise invalid(f"Expecting tensor size: {first[0]} but got: {size}")
        if first[1] != shape:
            raise invalid(f"Expecting shape {_shape_text(first[1])} but got: "
                          f"{_shape_text(shape)}")
        values.setdefault(name, []).extend(out)

    for count, element in enumerate(instances):
        element_is_object = isinstance(element, dict) and not _is_b64(element)
        if objects and not element_is_object:
            raise invalid(f"Expecting object but got list at item {count} of input list")
        if not objects and element_is_object:
            raise invalid(f"Expecting value/list but got object at item {count} of input list")
        for name, item in (element.items() if objects else [(next(iter(infos)), element)]):
            try:
                add(item, name)
            except TFServingError as err:
                key = f" key: {name}" if objects else ""
                raise invalid(f"Failed to process element: {count}{key} of 'instances' list. "
                              f"Error: {err.code.name}: {err.message}") from None
        if objects and set(element) != set(infos):
            raise invalid(f"Failed to process element: {count} of 'instances' list. JSON "
                          f"object: {value_text(element)} keys must be equal to: "
                          f"{','.join(sorted(infos))}")
    return {name: _tensor(values[name], [len(instances), *shapes[name][1]], infos[name].dtype)
            for name in values}


def _scalar_text(value: Any, dtype: np.dtype, as_bytes: bool) -> str:
    if dtype == np.float32:
        return format_float(float(value))
    if dtype == np.float64:
        return format_float(float(value), single=False)
    if dtype == np.bool_:
        return "true" if value else "false"
    if dtype.kind in "iu":
        return str(int(value))
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    if as_bytes:
        return '{"b64": "' + base64.b64encode(raw).decode("ascii") + '"}'
    return json.dumps(raw.decode("utf-8", "replace"), ensure_ascii=False)


def _tensor_text(name: str, values: np.ndarray) -> str:
    """`AddTensorValues`: a tensor as nested lists (outputs named `*_bytes` as b64)."""
    values = np.asarray(values)
    as_bytes = name.endswith("_bytes") and (values.dtype == object or values.dtype.kind == "S")

    def write(part: np.ndarray) -> str:
        if part.ndim == 0:
            return _scalar_text(part.item() if part.dtype != object else part[()],
                                values.dtype, as_bytes)
        return "[" + ", ".join(write(item) for item in part) + "]"

    return write(values)
