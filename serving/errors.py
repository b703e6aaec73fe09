"""What a TF Serving call can fail with (`serving.client` and its two transports).

`ServingError` and its subclasses are what a caller sees; `Transient` is the transports' signal
that a failure is worth retrying (see `serving.client` for which are), never shown as it is.
"""

from __future__ import annotations

from multitower.errors import MultitowerError


class ServingError(MultitowerError):
    """A TF Serving call failed or its rows do not fit; the message names the server and why."""


class RowsError(ServingError, ValueError):
    """Rows do not fit the served signature; nothing was sent. `bad` lists `(row, reason)`."""

    def __init__(self, message: str, bad: list[tuple[int, str]]) -> None:
        super().__init__(message)
        self.bad = bad


class ServerError(ServingError):
    """TF Serving answered with an error (HTTP 4xx, INVALID_ARGUMENT, NOT_FOUND ...).

    `code` is `HTTP 400` or the gRPC status name; `server_message` is the server's own text.
    """

    def __init__(self, message: str, code: str, server_message: str) -> None:
        super().__init__(message)
        self.code = code
        self.server_message = server_message


class DeadlineError(ServingError):
    """TF Serving did not answer within the per-request timeout (not retried)."""


class UnavailableError(ServingError):
    """TF Serving stayed unreachable or UNAVAILABLE through every attempt."""


class Transient(Exception):  # noqa: N818 (internal signal to retry, never shown as is)
    """Raised by a transport for a failure worth retrying; `str()` describes it for the user."""


def server_error(address: str, what: str, target: str, code: str, message: str) -> ServerError:
    """The `ServerError` for an error answer, with a hint for the usual causes."""
    hint = ""
    if code in ("NOT_FOUND", "HTTP 404"):
        hint = "; check the model name, version and label against the server's models.config"
    elif code in ("INVALID_ARGUMENT", "HTTP 400") and "label" in message:
        hint = "; check the label against the server's models.config"
    return ServerError(f"{address}: TF Serving refused {what} for {target} ({code}: "
                       f"{message}){hint}", code, message)
