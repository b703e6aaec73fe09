"""Test doubles of TF Serving's two ports that record every request and answer as a test says.

`RecordingHttpServer` (werkzeug, on a loopback port chosen at run time) and
`RecordingGrpcServer` (grpcio, with servicers registered by TF Serving's own
`add_PredictionServiceServicer_to_server` / `add_ModelServiceServicer_to_server`) are not TF
Serving: they hold no model. Each request is recorded, then answered by a function the test
gives; `scripted_http` makes that function from hand-written (request, answer) pairs, refusing
with HTTP 500 any request that differs from the hand-written one.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any, NamedTuple

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HttpRequest(NamedTuple):
    method: str
    path: str  # as sent, percent-encoding kept
    body: Any  # the parsed JSON body, or None
    raw: bytes


class HttpExchange(NamedTuple):
    """A hand-written request (method, path, JSON body or None) and the answer to give it."""

    method: str
    path: str
    body: Any
    status: int
    answer: Any  # a JSON value, or str sent as is


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: object) -> None:  # keep the test output clean
        pass


class RecordingHttpServer:
    """A test double of TF Serving's REST port: records requests, answers with `answer()`.

    `answer(request)` returns `(HTTP status, JSON value or raw str)`.
    """

    def __init__(self, answer: Callable[[HttpRequest], tuple[int, Any]]) -> None:
        self.answer = answer
        self.requests: list[HttpRequest] = []
        self._lock = threading.Lock()

    def _app(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        raw = request.get_data()
        path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.path
        recorded = HttpRequest(request.method, path, json.loads(raw) if raw else None, raw)
        with self._lock:
            self.requests.append(recorded)
        status, answer = self.answer(recorded)
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return Response(text, status=status, content_type="application/json")(
            environ, start_response)

    def __enter__(self) -> RecordingHttpServer:
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True,
                                   request_handler=_Quiet)
        self.address = f"127.0.0.1:{self._server.server_port}"
        # a short poll: shutdown() waits for the serving loop to notice it
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def calls(self, suffix: str) -> int:
        """How many requests had a path ending with `suffix` (`:predict`, `/metadata`)."""
        return sum(r.path.endswith(suffix) for r in self.requests)


def scripted_http(exchanges: list[HttpExchange]) -> Callable[[HttpRequest], tuple[int, Any]]:
    """Answers the hand-written exchanges in order; a request that differs gets HTTP 500."""
    pending = list(exchanges)

    def answer(request: HttpRequest) -> tuple[int, Any]:
        if not pending:
            return 500, {"error": f"no hand-written exchange left for {request.method} "
                                  f"{request.path}"}
        expected = pending.pop(0)
        got = (request.method, request.path, request.body)
        if got != (expected.method, expected.path, expected.body):
            return 500, {"error": f"request differs from the hand-written one: got {got}, "
                                  f"expected {expected[:3]}"}
        return expected.status, expected.answer

    return answer


class GrpcAbort(Exception):  # noqa: N818 (raised by answers to end a call with a status)
    """Raised by an answer function: the call ends with this status code and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class RecordingGrpcServer:
    """A test double of TF Serving's gRPC port: records requests, answers with functions.

    `answers` maps a method name (`Predict`, `GetModelMetadata`, `GetModelStatus`) to a
    function of the request that returns the response or raises `GrpcAbort`.
    """

    def __init__(self, answers: dict[str, Callable[[Any], Any]]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def _handle(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        copy = type(request)()
        copy.CopyFrom(request)
        with self._lock:
            self.requests.append((method, copy))
        if method not in self.answers:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not answered here")
        try:
            return self.answers[method](request)
        except GrpcAbort as abort:
            context.abort(abort.code, abort.details)

    def __enter__(self) -> RecordingGrpcServer:
        handle = self._handle

        class Predictions(prediction_service_pb2_grpc.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 (the proto's name)
                return handle("Predict", request, context)

            def GetModelMetadata(self, request, context):  # noqa: N802
                return handle("GetModelMetadata", request, context)

        class Models(model_service_pb2_grpc.ModelServiceServicer):
            def GetModelStatus(self, request, context):  # noqa: N802
                return handle("GetModelStatus", request, context)

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Predictions(),
                                                                            self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None)

    def calls(self, method: str) -> list[Any]:
        """The requests `method` received, in order."""
        return [request for name, request in self.requests if name == method]
