"""Versioned SavedModels for TF Serving, in the layout of `multitower.exports`, checked before use.

Two signatures, with the same outputs `{task name: (batch,)}` float32: a probability for binary
tasks, a regression task's value in the label's own unit (a `log1p` label transform is inverted
here), with ESMM also the pCTCVR output, and with `serving.ranking_score` also `ranking_score`,
the configured product or sum of those outputs (`ranking_score`). Gate weights are diagnostics
and stay out of both.

- `serving_default`: the raw features by their log names and dtypes, each of shape `(batch,)`.
- `predict_examples` (`EXAMPLES_SIGNATURE`): `examples`, a `(batch,)` string tensor of
  serialized `tf.train.Example`s in the TFRecords' own format (`multitower.records`); only the
  features are parsed, labels and origin fields are ignored when present. A day's TFRecords can
  be scored as they are.

Given real examples of the trained day, `export_saved_model` also writes TF Serving's warmup
file (`multitower.tfs_requests`: requests of 1 row and of `serving.warmup_size` rows) and, before
the version folder appears, loads the staged export afresh, replays the warmup requests and
checks every output (`validate_export`). A version that fails is removed unpublished and
`ExportRejectedError` says which output was wrong and how.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras
from google.protobuf.message import DecodeError
from tensorflow_serving.apis.predict_pb2 import PredictRequest

from multitower.config import Config
from multitower.config.serving import RANKING_FLOOR, RANKING_SCORE
from multitower.errors import MultitowerError
from multitower.exports import model_base, version_dir
from multitower.records import feature_dtype, parse_examples
from multitower.storage import rename_dir
from multitower.tfs_requests import (
    DEFAULT_SIGNATURE,
    EXAMPLES_INPUT,
    EXAMPLES_SIGNATURE,
    RequestError,
    predict_request,
    read_warmup,
    request_rows,
    warmup_path,
    write_warmup,
)
from trainer.losses import invert_output


class VersionExistsError(MultitowerError, FileExistsError):
    """An export version folder exists already; versions are never overwritten."""


class ExportRejectedError(MultitowerError, RuntimeError):
    """An export failed its checks and was not published; the message names output and fault."""


def served_outputs(config: Config) -> dict[str, str]:
    """`{output name: label transform}` of both signatures, in output order."""
    served = {t.name: t.label_transform for t in config.data.tasks}
    if config.model.heads == "esmm":
        served[config.model.esmm.ctcvr_name] = "none"
    return served


def export_outputs(config: Config) -> list[str]:
    """Every output of both signatures: `served_outputs`, then `ranking_score` if configured."""
    names = list(served_outputs(config))
    if config.serving.ranking_score is not None:
        names.append(RANKING_SCORE)
    return names


def ranking_score(config: Config, served: dict[str, tf.Tensor]) -> tf.Tensor:
    """`serving.ranking_score` over the served outputs `{name: (batch,)}`, float32 `(batch,)`.

    `product`: prod_i max(offset_i + y_i, RANKING_FLOOR) ** weight_i (the floor keeps a
    probability that underflows to 0, or a prediction below its task's `min`, finite);
    `sum`: sum_i weight_i * (offset_i + y_i).
    """
    ranking = config.serving.ranking_score
    if ranking is None:
        raise ValueError("the config has no serving.ranking_score")
    score = None
    for term in ranking.terms:
        base = tf.cast(served[term.output], tf.float32) + term.offset
        if ranking.combine == "product":
            part = tf.pow(tf.maximum(base, RANKING_FLOOR), term.weight)
            score = part if score is None else score * part
        else:
            part = term.weight * base
            score = part if score is None else score + part
    return tf.identity(score, name=RANKING_SCORE)


def probability_outputs(config: Config) -> list[str]:
    """The outputs that are probabilities: binary tasks, and ESMM's pCTCVR."""
    names = [t.name for t in config.data.tasks if t.type == "binary"]
    if config.model.heads == "esmm":
        names.append(config.model.esmm.ctcvr_name)
    return names


def input_dtypes(config: Config) -> dict[str, tf.DType]:
    """`{feature: dtype}` of `serving_default`'s inputs."""
    return {f.name: feature_dtype(f.dtype) for f in config.data.features}


def input_shapes(config: Config) -> dict[str, list[int | None]]:
    """`{feature: shape}` of `serving_default`'s inputs: `[None]`, lists `[None, max_length]`."""
    return {f.name: [None, f.max_length] if f.multivalent else [None]
            for f in config.data.features}


def _outputs(model: keras.Model, config: Config, features: dict[str, tf.Tensor]
             ) -> dict[str, tf.Tensor]:
    outputs = model(features, training=False)
    served = {name: invert_output(tf.squeeze(outputs[name], axis=-1), transform)
              for name, transform in served_outputs(config).items()}
    if config.serving.ranking_score is not None:
        served[RANKING_SCORE] = ranking_score(config, served)
    return served


def serving_function(model: keras.Model, config: Config) -> tf.types.experimental.ConcreteFunction:
    """The `serving_default` concrete function over raw inputs."""
    shapes = input_shapes(config)
    specs = {name: tf.TensorSpec(shapes[name], dtype, name=name)
             for name, dtype in input_dtypes(config).items()}

    @tf.function(input_signature=[specs], autograph=False)  # no Python control flow to convert
    def serve(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return _outputs(model, config, features)

    return serve.get_concrete_function()


def examples_function(model: keras.Model, config: Config
                      ) -> tf.types.experimental.ConcreteFunction:
    """The `predict_examples` concrete function over serialized `tf.train.Example`s."""
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)],
                 autograph=False)
    def score_examples(examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(model, config, parse_examples(examples, config.data, labels=False))

    return score_examples.get_concrete_function()


def parse_features(config: Config, examples: Sequence[bytes]) -> dict[str, np.ndarray]:
    """The features of serialized Examples as arrays: `(batch,)`, lists `(batch, max_length)`."""
    parsed = parse_examples(tf.constant(list(examples), tf.string), config.data, labels=False)
    return {name: tensor.numpy() for name, tensor in parsed.items()}


def warmup_size(config: Config, available: int) -> int:
    """Rows of the larger warmup request: `serving.warmup_size`, at most what is available.

    With batching on, TF Serving refuses a request larger than `batching.max_batch_size` (and
    a version whose warmup fails does not load), so it is also capped by that.
    """
    size = min(config.serving.warmup_size, available)
    if config.serving.batching.enabled:
        size = min(size, config.serving.batching.max_batch_size)
    return size


def warmup_requests(config: Config, examples: Sequence[bytes]) -> list[PredictRequest]:
    """Predict requests over the features of `examples`: their first row, then the first N.

    Each input is `(rows,)`, a list feature `(rows, max_length)` padded as the signature takes
    it (`parse_features`); the shapes are checked against `input_shapes`. N is
    `warmup_size(config, len(examples))`; with N == 1 there is one request.
    """
    rows = parse_features(config, examples)
    sizes = sorted({1, warmup_size(config, len(examples))})
    dtypes, shapes = input_dtypes(config), input_shapes(config)
    return [predict_request(config.serving.model_name,
                            {name: values[:size] for name, values in rows.items()},
                            dtypes, shapes=shapes) for size in sizes]


class _Servable(tf.Module):
    """What an export saves: the network's variables (which the signatures read), no Keras.

    Saving the Keras model itself makes tf-keras trace its call and every layer's call again
    for its own loader's metadata: 24 of 26 s of exporting a 27-table MMoE. TF Serving and
    `tf.saved_model.load` use the signatures only.
    """

    def __init__(self, model: keras.Model) -> None:
        super().__init__(name=model.name)
        self.weights = list(model.weights)


def export_saved_model(model: keras.Model, config: Config, version: int,
                       examples: Sequence[bytes] | None = None) -> str:
    """Writes `model` as version `version`; the folder appears only once complete and checked.

    The SavedModel is written under a temporary name that TF Serving ignores (it is not an
    integer), then renamed.

    Args:
        model: The network (built outside any distribution strategy).
        config: The loaded config.
        version: The version number; its folder must not exist.
        examples: Serialized Examples of the trained day (the first `serving.warmup_size`).
            Given, the export carries TF Serving's warmup file built from them and is published
            only if `validate_export` passes; None writes neither (a bare export, for tests).

    Returns:
        The version's folder.

    Raises:
        VersionExistsError: The version folder exists.
        ExportRejectedError: The export failed `validate_export`; nothing was published.
    """
    base = model_base(config.train.export_dir, config.model.name)
    final = version_dir(base, version)
    if tf.io.gfile.exists(final):
        raise VersionExistsError(f"{final} already exists; versions are never overwritten")
    tmp = os.path.join(base, f".tmp-{version}-{uuid.uuid4().hex}")
    tf.io.gfile.makedirs(base)
    try:
        tf.saved_model.save(_Servable(model), tmp, signatures={
            DEFAULT_SIGNATURE: serving_function(model, config),
            EXAMPLES_SIGNATURE: examples_function(model, config),
        })
        if examples is not None:
            write_warmup(warmup_path(tmp), warmup_requests(config, examples))
            validate_export(tmp, config, version, examples)
    except BaseException:
        # A rejected (or half-written) export is removed: the checkpoint it came from is what
        # is kept for inspection (see trainer.train).
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    rename_dir(tmp, final)
    return final


def validate_export(path: str, config: Config, version: int, examples: Sequence[bytes]) -> None:
    """Loads the SavedModel at `path` afresh and checks what TF Serving would do with it.

    Every warmup request is replayed through `serving_default`; every output must be the
    signature's (one per task, plus pCTCVR with ESMM and `ranking_score` when configured), of
    shape `(batch,)`, float32 and finite, and the probabilities within [0, 1] (the ranking
    score is not one). `examples` are then scored through
    `predict_examples` and must give the same outputs as the largest warmup request (the
    same rows).

    Raises:
        ExportRejectedError: The first fault found, naming the version, signature and output.
    """
    name = config.model.name

    def reject(what: str) -> ExportRejectedError:
        return ExportRejectedError(f"export {version} of model {name!r} rejected: {what}; it is "
                                   f"not published and TF Serving keeps the versions it serves")

    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError, DecodeError) as err:
        raise reject(f"the SavedModel cannot be loaded ({_first_line(err)})") from None
    for signature in (DEFAULT_SIGNATURE, EXAMPLES_SIGNATURE):
        if signature not in loaded.signatures:
            raise reject(f"it has no {signature} signature")
    try:
        requests = read_warmup(warmup_path(path))
    except RequestError as err:
        raise reject(str(err)) from None
    expected = export_outputs(config)
    probabilities = set(probability_outputs(config))
    largest: tuple[int, dict[str, np.ndarray]] = (0, {})
    for number, request in enumerate(requests, start=1):
        rows = request_rows(request)
        batch = len(next(iter(rows.values())))
        where = f"{DEFAULT_SIGNATURE} on warmup request {number} ({batch} rows)"
        outputs = _call(loaded.signatures[DEFAULT_SIGNATURE],
                        {k: tf.constant(v) for k, v in rows.items()}, where, reject)
        _check_outputs(outputs, expected, probabilities, batch, where, reject)
        if batch > largest[0]:
            largest = (batch, outputs)
    batch, by_rows = largest
    where = f"{EXAMPLES_SIGNATURE} on the warmup's {batch} examples"
    by_examples = _call(loaded.signatures[EXAMPLES_SIGNATURE],
                        {EXAMPLES_INPUT: tf.constant(list(examples[:batch]), tf.string)},
                        where, reject)
    _check_outputs(by_examples, expected, probabilities, batch, where, reject)
    for output in expected:
        a, b = by_examples[output].numpy(), by_rows[output].numpy()
        if not np.allclose(a, b, rtol=1e-5, atol=1e-6):
            row = int(np.argmax(np.abs(a - b)))
            raise reject(f"{where}: output {output!r} differs from {DEFAULT_SIGNATURE} on the "
                         f"same rows ({a[row]!r} against {b[row]!r} at row {row})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _call(function: tf.types.experimental.ConcreteFunction, inputs: dict[str, tf.Tensor],
          where: str, reject: Callable[[str], ExportRejectedError]) -> dict[str, tf.Tensor]:
    try:
        return function(**inputs)
    except (TypeError, ValueError, tf.errors.OpError) as err:
        raise reject(f"{where}: the call failed ({_first_line(err)})") from None


def _check_outputs(outputs: dict[str, tf.Tensor], expected: list[str], probabilities: set[str],
                   batch: int, where: str, reject: Callable[[str], ExportRejectedError]) -> None:
    if sorted(outputs) != sorted(expected):
        raise reject(f"{where}: outputs {sorted(outputs)}, expected {sorted(expected)}")
    for output in expected:
        tensor = outputs[output]
        if tensor.dtype != tf.float32:
            raise reject(f"{where}: output {output!r} is {tensor.dtype.name}, expected float32")
        if tuple(tensor.shape) != (batch,):
            raise reject(f"{where}: output {output!r} has shape {tuple(tensor.shape)}, expected "
                         f"({batch},)")
        values = tensor.numpy()
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise reject(f"{where}: output {output!r} has {bad.size} of {batch} values not "
                         f"finite (row {bad[0]}: {values[bad[0]]})")
        if output in probabilities:
            bad = np.flatnonzero((values < 0.0) | (values > 1.0))
            if bad.size:
                raise reject(f"{where}: output {output!r} is a probability, but {bad.size} of "
                             f"{batch} values are outside [0, 1] (row {bad[0]}: "
                             f"{values[bad[0]]})")
