"""One client interface to TF Serving, over REST or gRPC: status, signature, checked rows, scores.

`ServingClient` is the interface; `serving.rest_client.RestClient` and
`serving.grpc_client.GrpcClient` carry it over TF Serving's two protocols. A client names one
model and at most one of a version (`model_spec.version`, `/versions/N`) or a label
(`model_spec.version_label`, `/labels/L`); without either, TF Serving answers with the newest
version it serves.

Before any row is sent, the client asks the server for the model's status (some version must be
AVAILABLE) and for its metadata (the signature's input names, dtypes and shapes, and its output
names). Every row is then checked against that signature with `multitower.rows.check_row`, the
checker log validation uses (so a value is refused for the same reason in a log and in a
request), plus one rule of its own: a key the signature takes no input for is refused too, since
TF Serving refuses a request holding one. An input of shape `(-1, L)` takes a list per row (a
list-valued feature, `serving.lists`): the row's list is checked element by element (none may
equal the pad value), cut to its first `L` elements and padded to `L`. The pad value is not in
TF Serving's metadata: `""` for strings and -1 for integers, unless the `pads` option names
others (`serving.lists.config_pads` reads them from a config). Checked rows go out in batches of
`batch_size` rows, each a `(batch,)` or `(batch, L)` tensor per input; each output comes back as
one score per row.

Retries (tenacity, exponential backoff) follow Google's retry guidance for gRPC (AIP-194): only a
failure that says nothing was done and may pass is retried, since a Predict changes nothing on
the server: gRPC UNAVAILABLE, HTTP 503 (TF Serving's mapping of UNAVAILABLE, http_server.cc) and
a connection refused, reset or not established in time. DEADLINE_EXCEEDED (HTTP 504, or no
answer within the timeout) is not retried: the deadline is the caller's budget, and a model too
slow for it once is as slow again, with the server more loaded by each retry. Neither are
INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION (HTTP 400 / 404) nor RESOURCE_EXHAUSTED (429):
the same request gets the same answer. Those become a `ServerError` carrying the server's message.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import tenacity

from multitower.rows import Column, check_row
from multitower.values import describe
from serving.answers import KINDS, BatchScores, ModelInfo, Scores, Signature, VersionStatus
from serving.errors import (
    DeadlineError,
    RowsError,
    ServerError,
    ServingError,
    Transient,
    UnavailableError,
    server_error,
)
from serving.lists import ListInputError, fit_lists, list_inputs

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_BATCH_SIZE = 256
DEFAULT_TIMEOUT = 10.0  # seconds per request
AVAILABLE = "AVAILABLE"
LISTED_ROWS = 20  # bad rows a refusal lists, as serving.predict.LISTED_BAD_ROWS

T = TypeVar("T")
# The errors live in `serving.errors`; they are part of this module's interface too.
__all__ = ["AVAILABLE", "BatchScores", "DeadlineError", "ModelInfo", "RetryPolicy", "RowsError",
           "Scores", "ServerError", "ServingClient", "ServingError", "Signature", "Transient",
           "UnavailableError", "VersionStatus", "one_score_per_row", "server_error"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a retryable failure is retried.

    The wait before retry `n` (1, 2, ...) is `initial_backoff * multiplier ** (n - 1)` seconds,
    at most `max_backoff`.
    """

    attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        """Refuses a policy that cannot work (no attempt, negative waits).

        Raises:
            ServingError: An argument is out of range; the message names it.
        """
        if self.attempts < 1:
            raise ServingError(f"retry attempts must be at least 1, got {self.attempts}")
        if min(self.initial_backoff, self.max_backoff) < 0 or self.multiplier < 1:
            raise ServingError(f"retry backoffs must be >= 0 and the multiplier >= 1, got {self}")


class ServingClient(ABC):
    """Reads a served model's status and signature, checks rows, and scores them in batches.

    Subclasses carry the calls (`_get_status`, `_get_metadata`, `_predict`, `close`) and raise
    `Transient` for a failure worth retrying, `ServerError` / `DeadlineError` otherwise; this
    class retries, checks and batches. A client may be shared by threads once `describe()` ran.
    """

    protocol = ""

    def __init__(
        self, server: str, model: str, *, version: int | None = None, label: str | None = None,
        signature: str = DEFAULT_SIGNATURE, timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
        pads: Mapping[str, str | int | float] | None = None,
    ) -> None:
        """Names the model to ask; no call is made yet.

        Args:
            server: `HOST:PORT` of TF Serving's gRPC or REST port (REST also takes a URL).
            model: The name TF Serving serves the model under.
            version: Ask this version (`model_spec.version`); refused together with `label`.
            label: Ask the version this label names (`model_spec.version_label`).
            signature: The signature to score with.
            timeout: Seconds each request may take (the gRPC deadline, requests' timeout).
            retry: When to retry; `RetryPolicy()` by default.
            batch_size: Rows per Predict request.
            pads: `{input: pad value}` of list-valued inputs whose pad is not the default (`""`
                for strings, -1 for integers): the config's (`serving.lists.config_pads`).
                Entries for inputs that take no list are ignored.

        Raises:
            ServingError: Both a version and a label, or a bad timeout, batch size or name.
        """
        if version is not None and label is not None:
            raise ServingError(f"ask either version {version} or label {label!r} of model "
                               f"{model!r}, not both: TF Serving takes one (model_spec's "
                               f"version_choice)")
        if version is not None and version < 0:
            raise ServingError(f"model {model!r}: version must be >= 0, got {version}")
        if label is not None and not label:
            raise ServingError(f"model {model!r}: the label is empty")
        if not model:
            raise ServingError("the model name is empty")
        if timeout <= 0 or batch_size < 1:
            raise ServingError(f"timeout must be > 0 and batch size >= 1, got {timeout} and "
                               f"{batch_size}")
        self.server = server
        self.model = model
        self.version = version
        self.label = label
        self.signature_name = signature
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.batch_size = batch_size
        self.pads = dict(pads or {})
        self._info: ModelInfo | None = None
        self._columns: list[Column] = []
        self._lock = threading.Lock()

    # --- the transport, per protocol --------------------------------------------------------

    @property
    @abstractmethod
    def address(self) -> str:
        """The server as errors name it (`localhost:8500`, `http://localhost:8501`)."""

    @abstractmethod
    def _get_status(self) -> list[VersionStatus]:
        """One GetModelStatus call for the selected model (and version or label)."""

    @abstractmethod
    def _get_metadata(self) -> tuple[dict[str, Signature], int | None]:
        """One GetModelMetadata call: every signature by name, and the version it describes."""

    @abstractmethod
    def _predict(self, columns: dict[str, list[Any]], signature: Signature) -> BatchScores:
        """One Predict call over `{input: values}` (checked, all of one length)."""

    @abstractmethod
    def close(self) -> None:
        """Releases the connection (channel, session)."""

    def __enter__(self) -> ServingClient:
        """The client itself; `close()` runs when the block ends."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes the client."""
        self.close()

    # --- what a caller uses -----------------------------------------------------------------

    @property
    def target(self) -> str:
        """`model 'ranker'`, `model 'ranker' version 2` or `model 'ranker' label 'canary'`."""
        if self.version is not None:
            return f"model {self.model!r} version {self.version}"
        if self.label is not None:
            return f"model {self.model!r} label {self.label!r}"
        return f"model {self.model!r}"

    def status(self) -> list[VersionStatus]:
        """The selected model's versions and states (only the selected one, if any).

        Raises:
            ServingError: The call failed (see the module docstring for what is retried).
        """
        return self._call("the status request", self._get_status)

    def describe(self, refresh: bool = False) -> ModelInfo:
        """Reads (once, unless `refresh`) the status and signature the rows are checked against.

        Returns:
            The versions, the signature and the version the metadata describes.

        Raises:
            ServingError: No version is AVAILABLE, the signature is not served or takes an input
                of a dtype no log column has or of a shape rows cannot fill (see
                `serving.lists`), a pad value does not fit its input, or a call failed.
        """
        with self._lock:
            if self._info is None or refresh:
                self._info = self._read_info()
                self._columns = self._info.signature.columns(self._info.lists)
            return self._info

    def _read_info(self) -> ModelInfo:
        versions = self.status()
        if not any(v.state == AVAILABLE for v in versions):
            states = ", ".join(f"{v.version} {v.state}" + (f" ({v.error_message})"
                                                           if v.error_message else "")
                               for v in versions) or "none"
            raise ServingError(f"{self.address}: {self.target} has no AVAILABLE version "
                               f"(versions: {states}); wait until it loads, or read the "
                               f"server's log for why it did not")
        signatures, version = self._call("the metadata request", self._get_metadata)
        if self.signature_name not in signatures:
            raise ServingError(f"{self.address}: {self.target} has no signature "
                               f"{self.signature_name!r}; it serves {sorted(signatures)}")
        signature = signatures[self.signature_name]
        odd = {n: d for n, d in signature.inputs.items() if d not in KINDS}
        if odd or not signature.inputs or not signature.outputs:
            raise ServingError(f"{self.address}: signature {signature.name!r} of {self.target} "
                               f"does not take raw rows: it needs inputs of dtypes "
                               f"{sorted(KINDS)} and outputs (inputs of other dtypes: {odd}, "
                               f"outputs: {list(signature.outputs)})")
        try:
            lists = list_inputs(signature.kinds(), signature.shapes, self.pads)
        except ListInputError as err:
            raise ServingError(f"{self.address}: signature {signature.name!r} of {self.target}: "
                               f"{err}") from None
        return ModelInfo(tuple(versions), signature, version, MappingProxyType(lists))

    def check_row(self, row: object) -> tuple[dict[str, Any] | None, str | None]:
        """Checks one row against the signature, as log validation checks a log row.

        Returns:
            `(features, None)` with exactly the signature's inputs, each list-valued input's
            list cut and padded to its length (`serving.lists.fit`), or `(None, reason)`:
            `multitower.rows.check_row`'s reason (missing field, wrong type, a list element of
            the wrong type or equal to the pad ...) first, then `unknown field 'x'` for a key
            the signature takes no input for.
        """
        info = self._info or self.describe()
        features, reason = check_row(row, self._columns)
        if reason is not None:
            return None, reason
        unknown = sorted(set(row) - set(info.signature.inputs))  # type: ignore[arg-type]
        if unknown:
            return None, (f"unknown field {unknown[0]!r}: signature {info.signature.name!r} "
                          f"takes no such input")
        return fit_lists(features, info.lists), None

    def check_rows(self, rows: Iterable[object]) -> list[dict[str, Any]]:
        """Checks every row; refuses them all if one does not fit.

        Returns:
            The rows' features, in order.

        Raises:
            RowsError: A row does not fit; the message lists each such row (numbered from 1)
                with its reason, the first `LISTED_ROWS` of them.
        """
        good: list[dict[str, Any]] = []
        bad: list[tuple[int, str]] = []
        for number, row in enumerate(rows, start=1):
            features, reason = self.check_row(row)
            if reason is not None:
                bad.append((number, reason))
            else:
                good.append(features)  # type: ignore[arg-type]
        if bad:
            lines = [f"{len(bad)} row{'s' * (len(bad) > 1)} do not fit signature "
                     f"{self.signature_name!r} of {self.target} at {self.address}; nothing was "
                     f"sent:"]
            lines += [f"  row {number}: {reason}" for number, reason in bad[:LISTED_ROWS]]
            if len(bad) > LISTED_ROWS:
                lines.append(f"  ... and {len(bad) - LISTED_ROWS} more")
            raise RowsError("\n".join(lines), bad)
        return good

    def score_batch(self, features: Sequence[Mapping[str, Any]]) -> BatchScores:
        """Scores checked rows (see `check_row`: lists fitted) in one Predict request.

        Returns:
            `{output: one score per row}` for every output of the signature, and the version
            that answered if the protocol says.

        Raises:
            ServingError: A list input's value is not a list of its length, the request
                failed, or the answer lacks an output or a row's score.
        """
        info = self._info or self.describe()
        signature = info.signature
        if not features:
            return BatchScores({name: [] for name in signature.outputs}, None)
        columns = {name: [row[name] for row in features] for name in signature.inputs}
        for name, spec in info.lists.items():
            for number, value in enumerate(columns[name], start=1):
                if not isinstance(value, list) or len(value) != spec.length:
                    raise ServingError(f"row {number}: input {name!r} takes a list of "
                                       f"{spec.length} values, got {describe(value)}; check "
                                       f"rows with check_row, which cuts and pads lists")
        answer = self._call("the predict request", lambda: self._predict(columns, signature))
        for name in signature.outputs:
            values = answer.scores.get(name)
            if values is None or len(values) != len(features):
                raise ServingError(f"{self.address}: the answer for {self.target} holds "
                                   f"{'no' if values is None else len(values)} scores of "
                                   f"output {name!r} for {len(features)} rows")
        return BatchScores({n: answer.scores[n] for n in signature.outputs}, answer.version)

    def predict_checked(
        self, features: Iterable[Mapping[str, Any]], batch_size: int | None = None
    ) -> Iterator[tuple[int, BatchScores]]:
        """Yields `(rows in the batch, scores)` per batch of checked rows, in order."""
        size = batch_size or self.batch_size
        batch: list[Mapping[str, Any]] = []
        for row in features:
            batch.append(row)
            if len(batch) == size:
                yield len(batch), self.score_batch(batch)
                batch = []
        if batch:
            yield len(batch), self.score_batch(batch)

    def predict(self, rows: Iterable[object], batch_size: int | None = None) -> Scores:
        """Checks every row, then scores them all in batches.

        Returns:
            `{output: one score per row}` in row order, and the versions that answered.

        Raises:
            RowsError: A row does not fit the signature (nothing is sent).
            ServingError: A request failed.
        """
        features = self.check_rows(rows)
        scores: dict[str, list[float]] = {n: [] for n in self.describe().signature.outputs}
        versions: set[int] = set()
        for _, batch in self.predict_checked(features, batch_size):
            for name, values in batch.scores.items():
                scores[name].extend(values)
            if batch.version is not None:
                versions.add(batch.version)
        return Scores(scores, tuple(sorted(versions)))

    # --- retries ------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Runs `fn`, retrying on `Transient` as the policy says; raises a clear error after."""
        policy = self.retry
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=tenacity.wait_exponential(multiplier=policy.initial_backoff,
                                           exp_base=policy.multiplier, max=policy.max_backoff),
            retry=tenacity.retry_if_exception_type(Transient),
        )
        start = time.monotonic()
        try:
            return retrying(fn)
        except tenacity.RetryError as err:
            attempts = err.last_attempt.attempt_number
            last = err.last_attempt.exception()
            raise UnavailableError(
                f"{self.address}: TF Serving did not answer {what} for {self.target} after "
                f"{attempts} attempt{'s' * (attempts > 1)} over "
                f"{time.monotonic() - start:.1f} s ({last}); is the server running, at this "
                f"address and with this protocol ({self.protocol})?") from None


def one_score_per_row(name: str, values: object, address: str) -> list[float]:
    """An output's values as floats, refusing anything but one number per row.

    Raises:
        ServingError: The output is not a list of numbers (a nested list: not one per row).
    """
    if not isinstance(values, list):
        raise ServingError(f"{address}: output {name!r} is not a list of scores: "
                           f"{type(values).__name__}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ServingError(f"{address}: output {name!r} holds {value!r}, not one score "
                               f"per row; score with a signature whose outputs are (batch,)")
    return [float(value) for value in values]
