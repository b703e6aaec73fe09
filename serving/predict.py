"""Load the newest exported version and score raw rows through its `serving_default` signature.

This is the same SavedModel TF Serving loads; the TF Serving client comes in `serving/` later.
Rows are decoded by `multitower.rows.decode_line` and checked by `multitower.rows.check_row`,
the functions log validation uses, so a row is refused for the same reason in a log and in a
request (requests carry no labels, so only features are checked). A list-valued feature (an
input of shape `(None, L)`) is checked element by element, then cut and padded to `L` with its
pad value (`serving.lists`), the tensor `multitower.records.pad_lists` makes of the same list
in the TFRecords.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, TextIO

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from multitower.errors import MultitowerError
from multitower.exports import newest_version
from multitower.rows import check_row, decode_line
from serving.lists import ListInputError, columns, fit_lists, list_inputs


class PredictError(MultitowerError, ValueError):
    """Input rows do not fit the model's signature; the message names the row and the key."""


class BadRow(NamedTuple):
    """An input row refused with its reason; `record()` is the pipeline's rejected-row record."""

    source: str
    line: int
    reason: str
    raw: bytes

    def record(self) -> dict[str, Any]:
        """`{"source", "line", "reason", "raw"}`, `raw` as text (undecodable bytes replaced)."""
        return {"source": self.source, "line": self.line, "reason": self.reason,
                "raw": self.raw.decode("utf-8", "replace")}


class ScoredRow(NamedTuple):
    """The scores of the input row on line `line`, one per output of the signature."""

    line: int
    scores: dict[str, float]


# The signature's dtypes as the value checker's kinds.
_KINDS = {tf.string: "string", tf.int64: "int64", tf.float32: "float32"}


def read_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """Yields `(line number, bytes)` of a file, gunzipped if it ends in `.gz`.

    Lines keep their bytes (without the line ending), so that invalid UTF-8 is one row's
    reason; only faults of the file itself raise.

    Raises:
        PredictError: The file is missing or unreadable, or not a complete gzip file.
    """
    opener = tf.io.gfile.GFile if "://" in path else open
    try:
        with opener(path, "rb") as raw:
            handle = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
            for number, line in enumerate(handle, start=1):
                yield number, line.rstrip(b"\r\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # EOFError: a truncated file
        raise PredictError(f"{path}: invalid or truncated gzip file: {err}") from None
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except OSError as err:
        raise PredictError(f"{path}: cannot read: {err.strerror or err}") from None
    except tf.errors.OpError as err:
        raise PredictError(f"{path}: cannot read: {err.message}") from None


def read_rows(path: str) -> Iterator[tuple[int, dict]]:
    """Yields `(line number, row)` from a JSON-lines file, gzipped if it ends in `.gz`.

    Raises:
        PredictError: A line is not a JSON object (the message names file, line and reason),
            or the file cannot be read (see `read_lines`).
    """
    for number, text in read_lines(path):
        row, reason = decode_line(text)
        if reason is not None:
            raise PredictError(f"{path}:{number}: {reason}")
        yield number, row


class Predictor:
    """Scores raw feature rows with one exported version."""

    def __init__(self, model_base: str, pads: dict[str, Any] | None = None) -> None:
        """Loads the newest version under `model_base`.

        Args:
            model_base: `<export_dir>/<model name>`.
            pads: `{feature: pad value}` of list-valued features whose pad is not the default
                (`""` for strings, -1 for integers): the config's (`serving.lists.config_pads`).

        Raises:
            PredictError: The version cannot be loaded, has no `serving_default` signature, or
                its signature takes an input of a dtype no log column has, or of a shape rows
                cannot fill, or a pad does not fit its feature.
        """
        self.version, self.path = newest_version(model_base)
        try:
            self._loaded = tf.saved_model.load(self.path)
        except (OSError, ValueError, tf.errors.OpError, DecodeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PredictError(f"{self.path}: cannot load the SavedModel ({first}); export "
                               "the version again, or remove it to fall back on the one "
                               "before") from None
        if "serving_default" not in self._loaded.signatures:
            raise PredictError(f"{self.path}: the SavedModel has no serving_default signature")
        self._fn = self._loaded.signatures["serving_default"]
        self.inputs: dict[str, tf.TensorSpec] = self._fn.structured_input_signature[1]
        self.outputs = sorted(self._fn.structured_outputs)
        unknown = {n: s.dtype.name for n, s in self.inputs.items() if s.dtype not in _KINDS}
        if unknown:
            raise PredictError(f"{self.path}: inputs of a dtype no log column has: {unknown}")
        kinds = {n: _KINDS[s.dtype] for n, s in self.inputs.items()}
        shapes = {n: None if s.shape.rank is None else tuple(-1 if d is None else d
                                                             for d in s.shape.as_list())
                  for n, s in self.inputs.items()}
        try:
            self.lists = list_inputs(kinds, shapes, pads)
        except ListInputError as err:
            raise PredictError(f"{self.path}: {err}") from None
        self.columns = columns(kinds, self.lists)

    def check_row(self, row: object) -> tuple[dict[str, Any] | None, str | None]:
        """`(features, None)` or `(None, reason)`, as `multitower.rows.check_row` says.

        The features' lists are cut and padded to their inputs' lengths (`serving.lists.fit`).
        """
        features, reason = check_row(row, self.columns)
        return (None, reason) if reason is not None else (fit_lists(features, self.lists), None)

    def score(self, rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Scores checked rows (see `check_row`): `{output: scores of shape (len(rows),)}`."""
        tensors = {name: tf.constant([row[name] for row in rows], dtype=spec.dtype)
                   for name, spec in self.inputs.items()}
        return {k: v.numpy() for k, v in self._fn(**tensors).items()}

    def predict(
        self, rows: Iterable[tuple[str, dict]], batch_size: int = 4096
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yields `{task: scores}` per batch of `(where, row)` pairs, `where` naming the row.

        Raises:
            PredictError: A row does not fit (`where: reason`); its batch is not scored.
        """
        batch: list[dict[str, Any]] = []
        for where, row in rows:
            features, reason = self.check_row(row)
            if reason is not None:
                raise PredictError(f"{where}: {reason}")
            batch.append(features)
            if len(batch) == batch_size:
                yield self.score(batch)
                batch = []
        if batch:
            yield self.score(batch)


def score_file(
    predictor: Predictor, path: str, *, skip_invalid: bool, batch_size: int = 4096
) -> Iterator[ScoredRow | BadRow]:
    """Reads, checks and scores every row of a JSON-lines file, in batches.

    Every line is checked and each invalid one yields a `BadRow`. Valid rows yield a
    `ScoredRow` once their batch is scored. Without `skip_invalid`, scoring stops at the
    first invalid row (the run is refused: its scores would be incomplete) while checking
    goes on, so that every invalid row is still reported.

    Args:
        predictor: The loaded version.
        path: A `.jsonl` or `.jsonl.gz` file of raw feature rows.
        skip_invalid: Go on scoring the valid rows after an invalid one.
        batch_size: Rows per call of the signature.

    Raises:
        PredictError: The file cannot be read (see `read_lines`).
    """
    scoring = True
    batch: list[tuple[int, dict[str, Any]]] = []

    def flush() -> Iterator[ScoredRow]:
        scores = predictor.score([features for _, features in batch])
        for i, (number, _) in enumerate(batch):
            yield ScoredRow(number, {k: float(v[i]) for k, v in scores.items()})
        batch.clear()

    for number, text in read_lines(path):
        row, reason = decode_line(text)
        features = None
        if reason is None:
            features, reason = predictor.check_row(row)
        if reason is not None:
            yield BadRow(path, number, reason, text)
            if not skip_invalid:
                scoring = False
                batch.clear()
            continue
        if scoring:
            batch.append((number, features))
            if len(batch) == batch_size:
                yield from flush()
    if scoring and batch:
        yield from flush()


LISTED_BAD_ROWS = 20  # invalid rows a refusal lists before "... and N more"


class Outcome(NamedTuple):
    """What `predict_file` did: rows scored, rows invalid, and the first invalid ones."""

    scored: int
    invalid: int
    first_invalid: list[BadRow]


def _refusal(path: str, outcome: Outcome) -> str:
    lines = [f"{path}: {outcome.invalid} invalid row{'s' * (outcome.invalid > 1)}, so nothing "
             f"was scored (--skip-invalid scores the valid rows and writes the invalid ones "
             f"with their reasons):"]
    lines += [f"  {b.source}:{b.line}: {b.reason}" for b in outcome.first_invalid]
    if outcome.invalid > len(outcome.first_invalid):
        lines.append(f"  ... and {outcome.invalid - len(outcome.first_invalid)} more")
    return "\n".join(lines)


def predict_file(
    predictor: Predictor, path: str, scores_out: TextIO, rejected_out: TextIO | None,
    batch_size: int = 4096,
) -> Outcome:
    """Scores a JSON-lines file into `scores_out`, one JSON object per row, in input order.

    With `rejected_out`, invalid rows are skipped: each is written there as
    `{"source", "line", "reason", "raw"}` (the pipeline's rejected-row record) and each score
    object starts with its input `"line"`, since the scores no longer follow the input line by
    line. Without it, one invalid row refuses the file: every row is still checked, and the
    refusal lists the first `LISTED_BAD_ROWS` invalid rows with their reasons; what was written
    to `scores_out` by then is to be discarded (see `complete_file`).

    Args:
        predictor: The loaded version.
        path: A `.jsonl` or `.jsonl.gz` file of raw feature rows.
        scores_out: Where the scores go.
        rejected_out: Where invalid rows go, or None to refuse a file holding any.
        batch_size: Rows per call of the signature.

    Returns:
        The counts, and the first invalid rows.

    Raises:
        PredictError: Without `rejected_out`, the file holds invalid rows; or the file
            cannot be read, or the model has an output named `line` (with `rejected_out`).
    """
    skip = rejected_out is not None
    if skip and "line" in predictor.outputs:
        raise PredictError(f"{predictor.path} has an output named 'line', which skipping "
                           f"invalid rows adds to each score; score without skipping")
    scored = invalid = 0
    first_invalid: list[BadRow] = []
    for event in score_file(predictor, path, skip_invalid=skip, batch_size=batch_size):
        if isinstance(event, BadRow):
            invalid += 1
            if len(first_invalid) < LISTED_BAD_ROWS:
                first_invalid.append(event)
            if rejected_out is not None:
                rejected_out.write(json.dumps(event.record()) + "\n")
            continue
        shown = {k: round(v, 6) for k, v in event.scores.items()}
        scores_out.write(json.dumps({"line": event.line, **shown} if skip else shown) + "\n")
        scored += 1
    outcome = Outcome(scored, invalid, first_invalid)
    if invalid and not skip:
        raise PredictError(_refusal(path, outcome))
    return outcome


@contextlib.contextmanager
def complete_file(path: str | None, fallback: TextIO) -> Iterator[TextIO]:
    """A text file to write that appears at `path` only once the `with` block succeeds.

    The text goes to a temporary name in the same folder, renamed to `path` at the end, so a
    failed or refused run leaves no partial output (and an older file at `path` as it was).
    With no path the text is spooled and copied to `fallback` (stdout, stderr) at the end.

    Args:
        path: The file to write, or None for `fallback`.
        fallback: The stream that gets the text when `path` is None.

    Raises:
        PredictError: The file cannot be created (no such folder, no permission).
    """
    if path is None:
        with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
            yield spool
            spool.seek(0)
            shutil.copyfileobj(spool, fallback)
        return
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        handle = open(tmp, "x", encoding="utf-8")  # noqa: SIM115 (closed before the rename)
    except OSError as err:
        raise PredictError(f"{path}: cannot write: {err.strerror}") from None
    try:
        with handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
