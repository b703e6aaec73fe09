"""Load the newest exported version and score raw rows through its `serving_default` signature.

This is the same SavedModel TF Serving loads; the TF Serving client comes in `serving/` later.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

from trainer.export import versions


class PredictError(ValueError):
    """Input rows do not fit the model's signature; the message names the row and the key."""


def newest_version(model_base: str) -> tuple[int, str]:
    """`(version, path)` of the highest integer version under `<export>/<model name>`."""
    found = versions(model_base)
    if not found:
        raise FileNotFoundError(
            f"no exported version under {model_base}: expected integer folders such as "
            f"{os.path.join(model_base, '1')}; train a day first (multitower train)"
        )
    return found[-1], os.path.join(model_base, str(found[-1]))


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
        values = []
        for where, row in rows:
            if name not in row or row[name] is None:
                raise PredictError(f"{where}: missing feature {name!r}")
            value = row[name]
            ok = (
                isinstance(value, str) if spec.dtype == tf.string
                else isinstance(value, int) and not isinstance(value, bool)
                if spec.dtype.is_integer
                else isinstance(value, int | float) and not isinstance(value, bool)
            )
            if not ok:
                raise PredictError(
                    f"{where}: feature {name!r} must be {spec.dtype.name}, "
                    f"got {type(value).__name__} {value!r}"
                )
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
