"""Load the newest exported version and score raw rows through its `serving_default` signature.

This is the same SavedModel TF Serving loads; the TF Serving client comes in `serving/` later.
Request values are checked by `multitower.values.check_value`, the checker log validation uses,
so a value is refused for the same reason in a log and in a request.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

from multitower.errors import MultitowerError
from multitower.exports import newest_version
from multitower.values import check_value


class PredictError(MultitowerError, ValueError):
    """Input rows do not fit the model's signature; the message names the row and the key."""


# The signature's dtypes as the value checker's kinds.
_KINDS = {tf.string: "string", tf.int64: "int64", tf.float32: "float32"}


def read_rows(path: str) -> Iterator[tuple[int, dict]]:
    """Yields `(line number, row)` from a JSON-lines file, gzipped if it ends in `.gz`."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PredictError(f"{path}:{number}: invalid JSON: {err.msg}") from None
            if not isinstance(row, dict):
                raise PredictError(f"{path}:{number}: expected a JSON object")
            yield number, row


class Predictor:
    """Scores raw feature rows with one exported version."""

    def __init__(self, model_base: str):
        self.version, self.path = newest_version(model_base)
        self._loaded = tf.saved_model.load(self.path)
        self._fn = self._loaded.signatures["serving_default"]
        self.inputs: dict[str, tf.TensorSpec] = self._fn.structured_input_signature[1]
        self.outputs = sorted(self._fn.structured_outputs)

    def _column(self, name: str, spec: tf.TensorSpec, rows: list[tuple[str, dict]]) -> tf.Tensor:
        kind = _KINDS.get(spec.dtype)
        if kind is None:
            raise PredictError(f"{self.path}: input {name!r} has dtype {spec.dtype.name}, "
                               f"which no log column has")
        values = []
        for where, row in rows:
            if name not in row:
                raise PredictError(f"{where}: missing field {name!r}")
            value, reason = check_value(name, row[name], kind)
            if reason is not None:
                raise PredictError(f"{where}: {reason}")
            values.append(value)
        return tf.constant(values, dtype=spec.dtype)

    def predict(
        self, rows: Iterable[tuple[str, dict]], batch_size: int = 4096
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yields `{task: scores}` per batch of `(where, row)` pairs, `where` naming the row."""
        batch: list[tuple[str, dict]] = []
        for item in rows:
            batch.append(item)
            if len(batch) == batch_size:
                yield self._run(batch)
                batch = []
        if batch:
            yield self._run(batch)

    def _run(self, batch: list[tuple[str, dict]]) -> dict[str, np.ndarray]:
        tensors = {name: self._column(name, spec, batch) for name, spec in self.inputs.items()}
        return {k: v.numpy() for k, v in self._fn(**tensors).items()}
