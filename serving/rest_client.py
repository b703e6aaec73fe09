"""The TF Serving client over REST (`api_rest.md`): JSON over one `requests.Session`.

Calls, for model `M` and an optional `/versions/N` or `/labels/L` (`SEL`):

- status: `GET /v1/models/M[SEL]` -> `{"model_version_status": [{"version": "2", "state":
  "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}`;
- metadata: `GET /v1/models/M[SEL]/metadata` -> `{"model_spec": {"name", "signature_name",
  "version": "2"}, "metadata": {"signature_def": {"signature_def": {name: {"inputs": {input:
  {"dtype": "DT_STRING", "tensor_shape": {"dim": [{"size": "-1", "name": ""}, ...],
  "unknown_rank": false}, ...}}, "outputs": {...}, "method_name": ...}}}}}` (sizes are int64,
  which proto JSON writes as strings);
- predict: `POST /v1/models/M[SEL]:predict` with `{"signature_name", "inputs": {input: [values]}}`
  (columnar) answered by `{"outputs": {output: [scores]}}`, or `{"signature_name", "instances":
  [{input: value}, ...]}` (row) answered by `{"predictions": [{output: score}, ...]}`. A model of
  one output is answered without its name: `{"outputs": [scores]}`, `{"predictions": [scores]}`.
  A list-valued input (shape `(-1, L)`) takes a padded list per row: `[[v, v, pad], ...]` in
  `inputs`, `{input: [v, v, pad]}` in each instance (TF Serving requires the lists of all
  instances to be of one length, which padding gives).

An error answer is `{"error": "<message>"}` with the HTTP code TF Serving maps the status to
(http_server.cc): 400 INVALID_ARGUMENT / FAILED_PRECONDITION, 404 NOT_FOUND, 503 UNAVAILABLE
(retried), 504 DEADLINE_EXCEEDED. Float32 inputs are sent as JSON decimals (`3.0`, not `3`):
TF Serving refuses an integer above 2**24 for a float input as lossy, but not the decimal.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any
from urllib.parse import quote, urlsplit

import requests

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

FORMATS = ("columnar", "row")
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")]+")


def base_url(server: str) -> str:
    """`http://HOST:PORT` for `HOST:PORT`; a URL (`http://` or `https://`) is kept.

    Raises:
        ServingError: The server is not `HOST:PORT` or such a URL.
    """
    url = server.rstrip("/") if "://" in server else f"http://{server}"
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (
            parts.port is not None or "://" in server)
    except ValueError:  # a port that is not a number
        valid = False
    if not valid:
        raise ServingError(f"--server {server!r}: expected HOST:PORT of TF Serving's REST port "
                           f"(8501 by default), or an http:// URL")
    return url


def parse_status(body: Any, where: str) -> list[VersionStatus]:
    """A `GetModelStatusResponse` in JSON as `VersionStatus`es.

    Raises:
        ServingError: The JSON is not of that shape.
    """
    try:
        return [VersionStatus(int(s["version"]), str(s["state"]),
                              str(s.get("status", {}).get("error_code", "OK")),
                              str(s.get("status", {}).get("error_message", "")))
                for s in body["model_version_status"]]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ServingError(f"{where}: not a model status answer (model_version_status): "
                           f"{err!r}") from None


def parse_metadata(body: Any, where: str) -> tuple[dict[str, Signature], int | None]:
    """A `GetModelMetadataResponse` in JSON: every signature, and the version it is for.

    Raises:
        ServingError: The JSON is not of that shape.
    """
    try:
        defs = body["metadata"]["signature_def"]["signature_def"]
        signatures = {
            # TF Serving prints empty maps too (always_print_primitive_fields); be lenient
            name: Signature(name, {i: str(info["dtype"])
                                   for i, info in d.get("inputs", {}).items()},
                            tuple(sorted(d.get("outputs", {}))),
                            {i: _dims(info.get("tensor_shape"))
                             for i, info in d.get("inputs", {}).items()})
            for name, d in defs.items()}
        version = body.get("model_spec", {}).get("version")
        return signatures, None if version in (None, "") else int(version)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ServingError(f"{where}: not a model metadata answer (metadata.signature_def): "
                           f"{err!r}") from None


def _dims(shape: Any) -> tuple[int, ...] | None:
    """A `TensorShapeProto` in JSON as sizes (-1 for any); None for an unknown rank or none."""
    if shape is None or shape.get("unknown_rank", False):
        return None
    return tuple(int(d.get("size", 0)) for d in shape.get("dim", []))


def parse_predict(body: Any, outputs: tuple[str, ...], address: str) -> dict[str, list[float]]:
    """The scores of a `:predict` answer, columnar (`outputs`) or row (`predictions`).

    Raises:
        ServingError: The answer is neither, or its outputs are not one score per row.
    """
    if not isinstance(body, dict) or not ({"outputs", "predictions"} & set(body)):
        raise ServingError(f"{address}: not a predict answer (no 'outputs' or 'predictions'): "
                           f"{str(body)[:200]}")
    if "outputs" in body:
        columns = body["outputs"]
        if not isinstance(columns, dict):  # one output: its name is left out
            columns = {outputs[0]: columns} if len(outputs) == 1 else {}
    else:
        rows = body["predictions"]
        if not isinstance(rows, list):
            raise ServingError(f"{address}: 'predictions' is not a list")
        if len(outputs) == 1 and not all(isinstance(r, dict) for r in rows):
            columns = {outputs[0]: rows}
        elif not all(isinstance(r, dict) and set(outputs) <= set(r) for r in rows):
            raise ServingError(f"{address}: a prediction lacks one of the outputs "
                               f"{list(outputs)}")
        else:
            columns = {name: [r[name] for r in rows] for name in outputs}
    return {name: one_score_per_row(name, columns[name], address)
            for name in outputs if name in columns}


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
    except ValueError:
        pass
    return response.text.strip()[:300] or response.reason or "no message"


def _connection_reason(err: Exception) -> str:
    found = _ERRNO.search(str(err))
    return found.group(0) if found else type(err).__name__


class RestClient(ServingClient):
    """`ServingClient` over TF Serving's REST API (default port 8501)."""

    protocol = "rest"

    def __init__(self, server: str, model: str, *, json_format: str = "columnar",
                 **options: Any) -> None:
        """A client of `model` at `server`; no call is made yet.

        Args:
            server: `HOST:PORT` of the REST port, or an `http(s)://` URL.
            model: The name TF Serving serves the model under.
            json_format: `columnar` (`inputs` / `outputs`) or `row` (`instances` /
                `predictions`), the two forms of `api_rest.md`.
            **options: `version`, `label`, `signature`, `timeout`, `retry`, `batch_size`, `pads`, as
                `ServingClient` takes them.

        Raises:
            ServingError: A bad server address, format, or option (see `ServingClient`).
        """
        super().__init__(server, model, **options)
        if json_format not in FORMATS:
            raise ServingError(f"json_format must be one of {FORMATS}, got {json_format!r}")
        self.json_format = json_format
        self._base = base_url(server)
        path = f"/v1/models/{quote(model, safe='')}"
        if self.version is not None:
            path += f"/versions/{self.version}"
        elif self.label is not None:
            path += f"/labels/{quote(self.label, safe='')}"
        self._url = self._base + path
        self._local = threading.local()  # one Session per thread: Session is not thread-safe
        self._sessions: list[requests.Session] = []

    @property
    def address(self) -> str:
        """The base URL, `http://HOST:PORT`."""
        return self._base

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
            self._sessions.append(session)
        return session

    def close(self) -> None:
        """Closes every thread's session."""
        for session in self._sessions:
            session.close()
        self._sessions.clear()
        self._local = threading.local()

    def _send(self, what: str, method: str, url: str, body: dict | None = None) -> Any:
        """One HTTP exchange; the answer's JSON, or the error the module docstring describes."""
        data = None if body is None else json.dumps(body, allow_nan=False)
        headers = {"Content-Type": "application/json"} if data is not None else None
        try:
            response = self._session().request(method, url, data=data, headers=headers,
                                               timeout=self.timeout)
        except requests.ConnectionError as err:  # refused, reset, not connected in time
            raise Transient(_connection_reason(err)) from None
        except requests.exceptions.ChunkedEncodingError as err:  # reset while answering
            raise Transient(f"connection broken ({_connection_reason(err)})") from None
        except requests.Timeout:
            raise DeadlineError(f"{self.address}: TF Serving did not answer {what} for "
                                f"{self.target} within {self.timeout:g} s (not retried: the "
                                f"deadline is yours); raise --timeout or lower "
                                f"--batch-size") from None
        if response.status_code == 200:
            try:
                return response.json()  # json accepts NaN / Infinity, as api_rest.md says
            except ValueError:
                raise ServingError(f"{url}: the answer is not JSON: "
                                   f"{response.text[:200]!r}") from None
        message = _error_text(response)
        if response.status_code == 503:
            raise Transient(f"HTTP 503: {message}")
        if response.status_code == 504:
            raise DeadlineError(f"{self.address}: TF Serving gave up on {what} for "
                                f"{self.target} (HTTP 504: {message}); the server's own "
                                f"timeout was reached, lower --batch-size")
        raise server_error(self.address, what, self.target, f"HTTP {response.status_code}",
                           message)

    def _get_status(self) -> list[VersionStatus]:
        return parse_status(self._send("the status request", "GET", self._url), self._url)

    def _get_metadata(self) -> tuple[dict[str, Signature], int | None]:
        url = f"{self._url}/metadata"
        return parse_metadata(self._send("the metadata request", "GET", url), url)

    def _predict(self, columns: dict[str, list[Any]], signature: Signature) -> BatchScores:
        columns = {name: _floats(values) if signature.inputs[name] == "DT_FLOAT" else values
                   for name, values in sorted(columns.items())}
        body: dict[str, Any] = {"signature_name": signature.name}
        if self.json_format == "columnar":
            body["inputs"] = columns
        else:
            count = len(next(iter(columns.values())))
            body["instances"] = [{name: values[i] for name, values in columns.items()}
                                 for i in range(count)]
        answer = self._send("the predict request", "POST", f"{self._url}:predict", body)
        # REST answers do not name the version that answered.
        return BatchScores(parse_predict(answer, signature.outputs, self.address), None)


def _floats(values: list[Any]) -> list[Any]:
    """Float values (a value or a list per row) as Python floats, which JSON writes as decimals."""
    return [[float(v) for v in value] if isinstance(value, list) else float(value)
            for value in values]
