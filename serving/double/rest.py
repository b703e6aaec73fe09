"""TF Serving's REST API on the double (g3doc/api_rest.md; model_servers/http_rest_api_*.cc).

Endpoints (paths matched as TF Serving matches them, case-insensitive, names URL-decoded):

- `GET /v1/models/{name}[/versions/{v}|/labels/{l}]`: model status, a JSON
  `GetModelStatusResponse` (`model_version_status`: version as a string, state, status with
  error_code and error_message); TF Serving ignores a label here and lists every version;
- `GET /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata`: `model_spec` and
  `metadata.signature_def`, the JSON of the version's `SignatureDefMap` (proto field names,
  default values printed);
- `POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict`: see `rest_json` (row and
  columnar formats, b64, TF Serving's type checks);
- `POST ...:classify` and `...:regress`: the body is checked, then TF Serving's signature
  checks answer (multitower's exports have no classify/regress signature);
- the Prometheus metrics at `serving.monitoring.path` when `serving.monitoring.prometheus` is
  on (a 404 otherwise).

Any other path under `/v1/` is answered 400 "Malformed request: METHOD PATH", as TF Serving
does; paths outside it get a plain 404. Errors are `{"error": "<message>"}` with the HTTP status
TF Serving maps from the status code (`ToHTTPStatusCode` in http_server.cc): INVALID_ARGUMENT,
FAILED_PRECONDITION and OUT_OF_RANGE 400, NOT_FOUND 404, UNIMPLEMENTED 501, UNAVAILABLE 503...
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from multitower.tfs_requests import DEFAULT_SIGNATURE
from serving.double import rest_json
from serving.double.grpc_service import SIGNATURE_DEF, metadata_response, status_response
from serving.double.metrics import CONTENT_TYPE, ServingMetrics
from serving.double.models import VersionManager
from serving.double.servable import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    TFServingError,
    invalid,
    status_from_exception,
)

log = logging.getLogger("multitower.serve")

_PREDICTION = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                         r":(classify|regress|predict)", re.IGNORECASE)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
                     r"(?:/(metadata))?", re.IGNORECASE)
_API = re.compile(r"/v1/.*", re.IGNORECASE)
_HTTP = {"OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
         "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
         "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
         "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
         "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}
_APIS = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}
_JSON = {"including_default_value_fields": True, "preserving_proto_field_name": True}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status TF Serving answers for a status code."""
    return _HTTP.get(code.name, 500)


class RestApi:
    """The WSGI application: TF Serving's REST endpoints and the Prometheus page."""

    def __init__(self, manager: VersionManager, metrics: ServingMetrics | None,
                 monitoring_path: str | None) -> None:
        self._manager = manager
        self._metrics = metrics
        self._monitoring_path = monitoring_path if metrics is not None else None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request = Request(environ)
        path = environ.get("RAW_URI") or request.path
        path = path.split("?", 1)[0]
        if self._monitoring_path is not None and path == self._monitoring_path:
            response = Response(self._metrics.exposition(), content_type=CONTENT_TYPE)
        elif not _API.fullmatch(path):
            response = Response("Not Found\n", status=404, content_type="text/plain")
        else:
            status, body = self.handle(request.method, path, request.get_data())
            response = Response(body, status=status, content_type="application/json")
        return response(environ, start_response)

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        """`(HTTP status, JSON body)` of one API request."""
        start, api, model = time.perf_counter(), None, ""
        try:
            answer, api, model = self._dispatch(method, path, body)
            code, text = grpc.StatusCode.OK, answer
        except TFServingError as err:
            code, text = err.code, rest_json.error_json(err.message)
        except Exception as err:  # a bug of the double: logged, answered as UNKNOWN
            log.exception("REST request %s %s failed", method, path)
            code, text = grpc.StatusCode.UNKNOWN, rest_json.error_json(
                status_from_exception(err).message)
        if api is None and method == "POST":  # a refused prediction is counted too
            match = _PREDICTION.fullmatch(path)
            if match and match.group(4) in _APIS:
                api, model = _APIS[match.group(4)], unquote(match.group(1))
        if api is not None and self._metrics is not None:
            self._metrics.record(model, api, "REST", code.name, time.perf_counter() - start)
        return http_status(code), text

    def _dispatch(self, method: str, path: str, body: bytes) -> tuple[str, str | None, str]:
        """`(JSON answer, API counted in the metrics or None, model name)`."""
        malformed = invalid(f"Malformed request: {method} {path}")
        if method == "POST" and (match := _PREDICTION.fullmatch(path)):
            name, version, label = _model_info(match)
            kind = match.group(4)
            if kind == "predict":
                return self._predict(name, version, label, body), "Predict", name
            if kind in ("classify", "regress"):
                self._inference(name, version, label, body,
                                CLASSIFY_METHOD if kind == "classify" else REGRESS_METHOD)
            raise malformed  # a method in another case, as TF Serving compares exactly
        if method == "GET" and (match := _STATUS.fullmatch(path)):
            name, version, label = _model_info(match)
            if not name:
                raise invalid("Missing model name in request.")
            if match.group(4) == "metadata":
                return self._metadata(name, version, label), None, name
            # TF Serving's GetModelStatus reads only the version: a label lists every version.
            response = status_response(self._manager, name, version)
            return json_format.MessageToJson(response, including_default_value_fields=True,
                                             indent=1), None, name
        raise malformed

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        doc = rest_json.parse_body(body)
        signature = rest_json.signature_name(doc)
        with self._manager.acquire(name, version, label) as servable:
            found = servable.signatures.get(signature or DEFAULT_SIGNATURE)
            if found is None:
                raise invalid(f'Serving signature name: "{signature or DEFAULT_SIGNATURE}" not '
                              f"found in signature def")
            form, inputs = rest_json.predict_inputs(doc, found.inputs, signature)
            _, outputs = servable.predict(signature, inputs)
        return rest_json.predict_json(outputs, form)

    def _inference(self, name: str, version: int | None, label: str | None, body: bytes,
                   method: str) -> None:
        doc = rest_json.parse_body(body)
        signature = rest_json.signature_name(doc)
        rest_json.check_examples(doc)
        with self._manager.acquire(name, version, label) as servable:
            servable.check_inference_signature(signature, method)

    def _metadata(self, name: str, version: int | None, label: str | None) -> str:
        with self._manager.acquire(name, version, label) as servable:
            response = metadata_response(servable)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF].Unpack(signatures)
        # TF Serving prints the two parts separately (its http_rest_api_util.cc), with proto
        # field names and default values.
        return json.dumps({"model_spec": json_format.MessageToDict(response.model_spec, **_JSON),
                           "metadata": {SIGNATURE_DEF: json_format.MessageToDict(signatures,
                                                                                 **_JSON)}},
                          indent=1)


def _model_info(match: re.Match) -> tuple[str, int | None, str | None]:
    """`(name, version, label)` from a path match (`ParseModelInfo`)."""
    name, version, label = match.group(1), match.group(2), match.group(3)
    number = None
    if version:
        number = int(version)
        if number >= 2 ** 63:
            raise invalid(f"Failed to convert version: {version} to numeric.")
    return unquote(name or ""), number, unquote(label) if label else None


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request (the double's log is for loads and errors)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def create_rest_server(api: RestApi, host: str, port: int) -> BaseWSGIServer:
    """A threaded HTTP server for `api`, bound, not yet serving.

    werkzeug's server closes the connection after each response (no keep-alive, unlike TF
    Serving), so each REST request pays a TCP connect on loopback.

    Raises:
        OSError: The port cannot be bound.
    """
    return make_server(host, port, api, threaded=True, request_handler=_QuietHandler)
