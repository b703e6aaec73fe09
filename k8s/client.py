"""The connection to the Kubernetes API server: credentials, timeouts, retries, readable errors.

`connect` loads a kubeconfig (`--kubeconfig`, `$KUBECONFIG`, `~/.kube/config`) or, inside a
pod, the pod's ServiceAccount (the daily CronJob), and returns a `Kube`: the `kubernetes`
client's typed APIs plus `call`, which every request of `submit` goes through. `call` sets the
timeouts, retries what may be retried (a connection that never opened, for every verb; a read
timeout or a 429/5xx answer only for reads and server-side applies, which are idempotent; a
create is not retried once it was sent), and turns failures into `MultitowerError`s naming the
server: `ApiUnreachableError` (the server did not answer) or `ApiError` (it answered with an error
Status, whose message the API server writes for people).

Bodies go out and come back as plain Kubernetes JSON (dicts), as the renderer builds them:
every call is made with `_preload_content=False` and the answer parsed here, so no model class
stands between the YAML a person reads and what the server received.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from multitower.errors import MultitowerError

FIELD_MANAGER = "multitower"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
DEFAULT_KUBECONFIG = "~/.kube/config"
# Answers worth asking again: throttled, or the server (or a proxy before it) briefly unwell.
RETRY_STATUS = (429, 500, 502, 503, 504)
# Where `kubectl apply --server-side` would send each kind `submit` applies: the plural of
# the REST path (the group and version come from the object's apiVersion).
APPLY_PLURALS = {
    "ConfigMap": "configmaps", "Service": "services", "ServiceAccount": "serviceaccounts",
    "Deployment": "deployments", "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets", "CronJob": "cronjobs", "Role": "roles",
    "RoleBinding": "rolebindings",
}


@dataclass(frozen=True)
class ClientSettings:
    """How patient `submit` is with the API server (the tests make every figure small).

    Attributes:
        request_timeout: Seconds to connect, and to wait for each answer.
        retries: Tries after the first one, for the failures worth retrying.
        retry_wait: Seconds before the first retry; doubled each time, at most 30.
        watch_seconds: Length of one pod watch; the Job's status is read again after each.
        poll_seconds: Seconds between reads while a replaced Job is being deleted.
        delete_timeout: Seconds to wait for a replaced Job (and its pods) to go away.
    """

    request_timeout: float = 30.0
    retries: int = 3
    retry_wait: float = 1.0
    watch_seconds: int = 60
    poll_seconds: float = 2.0
    delete_timeout: float = 300.0


class K8sClientError(MultitowerError):
    """No usable client configuration: a kubeconfig that cannot be read, or none at all."""


class ApiUnreachableError(MultitowerError):
    """The API server did not answer (refused, timed out, no route); the message names it."""


class ApiError(MultitowerError):
    """The API server answered with an error Status (`status` is its HTTP code)."""

    def __init__(self, message: str, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def connect(kubeconfig: str | None = None, context: str | None = None,
            settings: ClientSettings | None = None) -> Kube:
    """A client for the cluster named by a kubeconfig, or by the pod this runs in.

    Order, as kubectl's: `kubeconfig`, then `$KUBECONFIG`, then `~/.kube/config` if it
    exists, then the pod's ServiceAccount when running in a pod.

    Raises:
        K8sClientError: The kubeconfig cannot be read or names no usable context, or there is
            neither a kubeconfig nor a pod's ServiceAccount.
    """
    settings = settings or ClientSettings()
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    default = Path(DEFAULT_KUBECONFIG).expanduser()
    if not path and (default.is_file() or context):
        path = str(default)
    try:
        if path:
            config.load_kube_config(config_file=path, context=context,
                                    client_configuration=configuration, persist_config=False)
            source = f"kubeconfig {path}" + (f", context {context}" if context else "")
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            source = "the pod's ServiceAccount"
        else:
            raise K8sClientError(
                "no Kubernetes client configuration: no --kubeconfig, no $KUBECONFIG, no "
                f"{DEFAULT_KUBECONFIG}, and not running in a pod; give --kubeconfig")
    except (config.ConfigException, OSError, ValueError, TypeError) as err:
        where = path or "the pod's ServiceAccount"
        raise K8sClientError(f"{where}: cannot load the Kubernetes client configuration: "
                             f"{err}") from None
    # No retries inside urllib3: `Kube.call` retries, knowing which requests may be repeated.
    configuration.retries = False
    return Kube(client.ApiClient(configuration), configuration.host, source, settings)


def _transport_error(err: BaseException) -> urllib3.exceptions.HTTPError | None:
    """The urllib3 error behind `err`, if the request failed below HTTP."""
    if isinstance(err, urllib3.exceptions.MaxRetryError) and err.reason is not None:
        return err.reason if isinstance(err.reason, urllib3.exceptions.HTTPError) else err
    return err if isinstance(err, urllib3.exceptions.HTTPError) else None


def _never_sent(err: BaseException) -> bool:
    """True when the request cannot have reached the server (the connection never opened)."""
    return isinstance(_transport_error(err), urllib3.exceptions.ConnectTimeoutError)


def status_message(err: ApiException) -> str:
    """The message of the Status the API server sent, or the HTTP reason."""
    try:
        status = json.loads(err.body or "")
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
    except (TypeError, ValueError):
        pass
    return str(err.reason or "no message").strip()


class Kube:
    """The typed APIs `submit` uses, and `call`, through which each request is made."""

    def __init__(self, api_client: client.ApiClient, host: str, source: str,
                 settings: ClientSettings) -> None:
        self.api_client = api_client
        self.host = host
        self.source = source
        self.settings = settings
        self.batch = client.BatchV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def close(self) -> None:
        """Closes the connection pool."""
        self.api_client.close()

    def timeout(self, read: float | None = None) -> tuple[float, float | None]:
        """`(connect, read)` seconds for `_request_timeout`; `read=None` keeps the default."""
        return (self.settings.request_timeout,
                self.settings.request_timeout if read is None else read)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, idempotent: bool = True,
             stream: bool = False, text: bool = False, read_timeout: float | None = None,
             **kwargs: Any) -> Any:
        """Makes one request, with the settings' timeouts and retries.

        Args:
            what: The request for people, e.g. `create Job recsys/impressions-train-2026-03-01`.
            fn: A method of the typed APIs (or `api_client.call_api`).
            *args: Its arguments.
            idempotent: False for creates: they are retried only when never sent.
            stream: Return the open response (a watch, a followed log) instead of its JSON.
            text: The answer is text (a log), not JSON.
            read_timeout: Seconds without a byte before giving up (default: request_timeout;
                0 waits forever, for a followed log).
            **kwargs: Its keyword arguments.

        Returns:
            The answer's JSON (a dict, or the text of a log), or the open response if `stream`.

        Raises:
            ApiUnreachableError: The server did not answer, after the retries.
            ApiError: It answered with an error Status.
        """
        settings = self.settings
        read = None if read_timeout == 0 else (read_timeout or settings.request_timeout)
        kwargs.update(_preload_content=False, _request_timeout=(settings.request_timeout, read))

        def worth_retrying(err: BaseException) -> bool:
            if _never_sent(err):
                return True
            if not idempotent:
                return False
            if isinstance(err, ApiException):
                return err.status in RETRY_STATUS
            return _transport_error(err) is not None

        retrying = Retrying(stop=stop_after_attempt(settings.retries + 1), reraise=True,
                            wait=wait_exponential(multiplier=settings.retry_wait, max=30),
                            retry=retry_if_exception(worth_retrying))
        try:
            response = retrying(fn, *args, **kwargs)
        except ApiException as err:
            if err.status == 0:  # raised by the client itself, e.g. for a TLS failure
                raise ApiUnreachableError(f"{what}: cannot talk to the Kubernetes API server at "
                                     f"{self.host}: {str(err.reason).strip()}") from None
            raise ApiError(f"{what}: {status_message(err)} (HTTP {err.status} from "
                           f"{self.host})", err.status, self._reason(err)) from None
        except urllib3.exceptions.HTTPError as err:
            cause = _transport_error(err) or err
            detail = str(cause).split(": ", 1)[-1] if isinstance(
                cause, urllib3.exceptions.NewConnectionError) else str(cause)
            tries = settings.retries + 1
            raise ApiUnreachableError(
                f"cannot reach the Kubernetes API server at {self.host} ({detail}; {tries} "
                f"tr{'y' if tries == 1 else 'ies'}) to {what}; check the server in "
                f"{self.source}, or choose another with --kubeconfig/--context") from None
        if stream:
            return response
        try:
            data = response.data
        finally:
            response.release_conn()
        decoded = data.decode("utf-8", errors="replace")
        return decoded if text else json.loads(decoded)

    @staticmethod
    def _reason(err: ApiException) -> str:
        try:
            return str(json.loads(err.body or "{}").get("reason", ""))
        except (TypeError, ValueError, AttributeError):
            return ""

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of `obj` (field manager `multitower`, conflicts forced).

        What a person or a GitOps tool changed in fields `submit` renders is taken back;
        fields it does not render (replicas the autoscaler sets, annotations others add) stay.

        Raises:
            ApiUnreachableError: As `call`.
            ApiError: As `call`.
            ValueError: A kind `submit` does not apply.
        """
        kind, meta = obj["kind"], obj["metadata"]
        plural = APPLY_PLURALS.get(kind)
        if plural is None:
            raise ValueError(f"submit does not apply {kind} objects")
        api_version = obj["apiVersion"]
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        return self.call(
            f"apply {kind} {meta['namespace']}/{meta['name']}", self.api_client.call_api,
            f"{prefix}/namespaces/{{namespace}}/{plural}/{{name}}", "PATCH",
            path_params={"namespace": meta["namespace"], "name": meta["name"]},
            query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            header_params={"Content-Type": APPLY_CONTENT_TYPE, "Accept": "application/json"},
            body=obj, auth_settings=["BearerToken"], _return_http_data_only=True)
