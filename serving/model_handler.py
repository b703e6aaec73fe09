"""An exported version as a Beam `RunInference` model: serialized Examples in, scores out.

Beam's own TensorFlow handler does not fit an export of `multitower.exports`: it imports
tensorflow_hub and feeds one dense tensor. `ExamplesModelHandler` feeds a batch of serialized
`tf.train.Example`s (the day's TFRecords as they are) to the version's `predict_examples`
signature and returns one `PredictionResult` per example, `inference` being
`{output name: float}` (every task, ESMM's pCTCVR, `ranking_score` when configured).

Before a pipeline is built, `resolve_version` finds the version folder (`--model`) and
`inspect_version` reads its `saved_model.pb` without loading it, so that a folder that is no
SavedModel, or one without a usable `predict_examples` signature, is refused up front, naming
the path, instead of failing in a worker mid-run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2

from multitower.errors import MultitowerError
from multitower.exports import newest_version
from multitower.tfs_requests import DEFAULT_SIGNATURE, EXAMPLES_SIGNATURE

SAVED_MODEL_FILE = "saved_model.pb"

# DataType enum values of tensorflow/core/framework/types.proto, as signature_def records them.
_DTYPE_NAMES = {tf.float32.as_datatype_enum: "float32", tf.int64.as_datatype_enum: "int64",
                tf.string.as_datatype_enum: "string"}


class ModelRefusedError(MultitowerError, ValueError):
    """A `--model` path is no exported version that can score Examples; names the path."""


@dataclass(frozen=True)
class VersionInfo:
    """What a version's `saved_model.pb` says, read without loading the model.

    Attributes:
        path: The version folder.
        version: Its integer version (the folder's name), or None for a folder of another name.
        input_name: The one input of `predict_examples`, a `(batch,)` string tensor.
        outputs: The outputs of `predict_examples`, sorted by name; each `(batch,)` float32.
        features: `{feature: dtype name}` of `serving_default`'s inputs (the raw features the
            version parses from each Example); empty when it has no such signature.
        list_lengths: `{feature: L}` of those inputs of shape `(None, L)`: the list-valued
            features, each padded to its `max_length` L.
    """

    path: str
    version: int | None
    input_name: str
    outputs: tuple[str, ...]
    features: Mapping[str, str]
    list_lengths: Mapping[str, int] = field(default_factory=dict)


def resolve_version(model: str | None, default_base: str) -> str:
    """The version folder to score with.

    Args:
        model: A version folder (`<export>/<name>/<N>`, any folder holding `saved_model.pb`),
            a model base (`<export>/<name>`: its newest version), or None for `default_base`.
        default_base: `<train.export_dir>/<model.name>`.

    Returns:
        The version folder (not yet checked to hold a usable SavedModel: `inspect_version`).

    Raises:
        ModelRefusedError: `model` is neither a SavedModel folder nor a folder of versions.
        NoExportError: `model` is None and `default_base` holds no version.
    """
    if model is None:
        return newest_version(default_base)[1]
    model = model.rstrip("/") or model
    if tf.io.gfile.exists(f"{model}/{SAVED_MODEL_FILE}"):
        return model
    if not tf.io.gfile.isdir(model):
        raise ModelRefusedError(f"--model {model}: no such folder; give a version folder "
                                "(<export_dir>/<model name>/<N>) or a model folder of versions")
    try:
        return newest_version(model)[1]
    except MultitowerError:
        raise ModelRefusedError(
            f"--model {model}: not a SavedModel (no {SAVED_MODEL_FILE}) nor a model folder of "
            f"integer versions; give <export_dir>/<model name>/<N> or <export_dir>/<model name>"
        ) from None


def _version_number(path: str) -> int | None:
    name = os.path.basename(path.rstrip("/"))
    return int(name) if name.isdigit() else None


def inspect_version(path: str) -> VersionInfo:
    """Reads a version's signatures from its `saved_model.pb` (the model is not loaded).

    Args:
        path: The version folder.

    Returns:
        The version's `predict_examples` input and outputs, and `serving_default`'s features.

    Raises:
        ModelRefusedError: There is no `saved_model.pb`, it cannot be parsed, it has no
            `predict_examples` signature, or that signature does not take one string tensor
            and give float32 outputs.
    """
    pb = f"{path}/{SAVED_MODEL_FILE}"
    if not tf.io.gfile.exists(pb):
        raise ModelRefusedError(f"{path}: not a SavedModel (no {SAVED_MODEL_FILE}); give a "
                                "version folder written by `multitower train` or `export`")
    saved = saved_model_pb2.SavedModel()
    try:
        with tf.io.gfile.GFile(pb, "rb") as f:
            saved.ParseFromString(f.read())
    except (DecodeError, tf.errors.OpError) as err:
        raise ModelRefusedError(f"{pb}: cannot be read as a SavedModel ({err}); export the "
                                "version again") from None
    serving = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags]
    signatures = serving[0].signature_def if serving else {}
    if EXAMPLES_SIGNATURE not in signatures:
        # `__saved_model_init_op` is TensorFlow's own, not a signature one can call.
        names = sorted(n for n in signatures if not n.startswith("__"))
        raise ModelRefusedError(
            f"{path}: the SavedModel has no {EXAMPLES_SIGNATURE} signature (it has "
            f"{names or 'none'}); score with a version exported by multitower")
    examples = signatures[EXAMPLES_SIGNATURE]
    inputs = dict(examples.inputs)
    if len(inputs) != 1 or next(iter(inputs.values())).dtype != tf.string.as_datatype_enum:
        shown = {n: _DTYPE_NAMES.get(t.dtype, str(t.dtype)) for n, t in inputs.items()}
        raise ModelRefusedError(f"{path}: {EXAMPLES_SIGNATURE} must take one string tensor of "
                                f"serialized Examples, it takes {shown}")
    not_float = sorted(n for n, t in examples.outputs.items()
                       if t.dtype != tf.float32.as_datatype_enum)
    if not examples.outputs or not_float:
        raise ModelRefusedError(f"{path}: {EXAMPLES_SIGNATURE} must give float32 scores; "
                                f"{'these outputs are not' if not_float else 'it has no outputs'}"
                                f"{': ' + ', '.join(not_float) if not_float else ''}")
    features, lengths = {}, {}
    if DEFAULT_SIGNATURE in signatures:
        for n, t in signatures[DEFAULT_SIGNATURE].inputs.items():
            features[n] = _DTYPE_NAMES.get(t.dtype, str(t.dtype))
            dims = [d.size for d in t.tensor_shape.dim]
            if not t.tensor_shape.unknown_rank and len(dims) == 2:
                lengths[n] = dims[1]
    return VersionInfo(path, _version_number(path), next(iter(inputs)),
                       tuple(sorted(examples.outputs)), features, lengths)


class LoadedVersion:
    """A loaded version's `predict_examples` function, and the loaded object it belongs to.

    The loaded object is kept: the concrete function only holds weak references to the
    variables it reads.
    """

    def __init__(self, path: str) -> None:
        """Loads the SavedModel at `path`.

        Raises:
            ModelRefusedError: It cannot be loaded or has no `predict_examples` signature.
        """
        try:
            self.loaded = tf.saved_model.load(path)
        except (OSError, ValueError, tf.errors.OpError, DecodeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ModelRefusedError(f"{path}: cannot load the SavedModel ({first})") from None
        if EXAMPLES_SIGNATURE not in self.loaded.signatures:
            raise ModelRefusedError(f"{path}: the SavedModel has no {EXAMPLES_SIGNATURE} "
                                    "signature")
        self.path = path
        self.function = self.loaded.signatures[EXAMPLES_SIGNATURE]
        (self.input_name,) = self.function.structured_input_signature[1]

    def __call__(self, examples: Sequence[bytes]) -> dict[str, Any]:
        """Scores serialized Examples: `{output: numpy array of shape (len(examples),)}`."""
        tensor = tf.constant(list(examples), dtype=tf.string)
        return {name: value.numpy() for name, value in
                self.function(**{self.input_name: tensor}).items()}


class ExamplesModelHandler(ModelHandler[bytes, PredictionResult, LoadedVersion]):
    """Scores serialized `tf.train.Example`s with one exported version's `predict_examples`.

    `RunInference` loads the model once per worker process and shares it between the
    process's threads (its `shared.Shared` handle, keyed by the transform); a concrete
    function may be called from several threads at once.

    Args:
        path: The version folder (see `inspect_version`).
        min_batch_size: The smallest batch `RunInference` hands over (except a bundle's last).
        max_batch_size: The largest batch; one call of the signature each.
    """

    def __init__(self, path: str, *, min_batch_size: int = 32, max_batch_size: int = 1024
                 ) -> None:
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError(f"need 1 <= min_batch_size <= max_batch_size, got "
                             f"{min_batch_size} and {max_batch_size}")
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._path = path

    def load_model(self) -> LoadedVersion:
        """Loads the version (`tf.saved_model.load`), once per worker process."""
        return LoadedVersion(self._path)

    def run_inference(self, batch: Sequence[bytes], model: LoadedVersion,
                      inference_args: dict[str, Any] | None = None
                      ) -> Iterable[PredictionResult]:
        """Scores a batch of serialized Examples in one call of `predict_examples`.

        Args:
            batch: Serialized `tf.train.Example`s.
            model: The loaded version.
            inference_args: Unused (`validate_inference_args` refuses any).

        Returns:
            One `PredictionResult(example, {output: float}, model_id=path)` per example, in
            batch order.
        """
        scores = model(batch)
        for name, values in scores.items():
            if values.shape != (len(batch),):  # a version must score each example once
                raise ValueError(f"{self._path}: {EXAMPLES_SIGNATURE} output {name!r} has "
                                 f"shape {values.shape} for a batch of {len(batch)}")
        return [PredictionResult(example, {name: float(values[i])
                                           for name, values in scores.items()}, self._path)
                for i, example in enumerate(batch)]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        """The batch's size in bytes, for Beam's metrics (cheaper than pickling it)."""
        return sum(len(example) for example in batch)

    def get_metrics_namespace(self) -> str:
        """Beam metrics of this handler go under `multitower_score`."""
        return "multitower_score"

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        """Refuses inference arguments: `predict_examples` takes none."""
        if inference_args:
            raise ValueError(f"{EXAMPLES_SIGNATURE} takes no inference arguments, got "
                             f"{sorted(inference_args)}")

    def __repr__(self) -> str:
        return f"ExamplesModelHandler({self._path!r})"
