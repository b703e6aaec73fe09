"""A DOUBLE of the Kubernetes API server on loopback, for `multitower submit`'s tests.

It is not Kubernetes. It serves, over real HTTP, exactly the endpoints `submit` calls, at their
real paths, with their real query parameters and JSON bodies: create/read/delete Jobs, Services
and TFJobs (custom objects), list and watch pods (newline-delimited watch events, `ERROR`
events holding a 410 `Expired` Status), pod logs (`container`, `tailLines`, `follow`,
`previous`), server-side apply (`application/apply-patch+yaml` with `fieldManager`) and
strategic merge patches (with the resourceVersion precondition). Errors are Status objects
shaped as the API server shapes them (404 NotFound, 409 AlreadyExists / Conflict, 400
BadRequest, 401 Unauthorized), with its messages.

No controller runs here: a test scripts what the Job controller and the kubelet would do
(`script(run_name, [pod(...), finish(...), expire()])`). The script is played as the client
watches the run's pods: each time a watch has delivered every event so far, the next step is
applied, so a client sees every phase in order, whatever its speed. Every request is recorded
(`calls`), with what RBAC would check (`Call.attributes`).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from werkzeug.routing import Map, Rule
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from tests.k8s.api_double_state import (
    JOB_LABELS,
    ClusterState,
    expire,
    finish,
    matches,
    now,
    pod,
)

__all__ = ["Call", "KubeApiDouble", "expire", "finish", "pod", "status", "write_kubeconfig"]

APPLY = "application/apply-patch+yaml"
MERGE = ("application/strategic-merge-patch+json", "application/merge-patch+json")
KINDS = {("", "pods"): "Pod", ("", "services"): "Service", ("", "configmaps"): "ConfigMap",
         ("", "serviceaccounts"): "ServiceAccount", ("batch", "jobs"): "Job",
         ("batch", "cronjobs"): "CronJob", ("apps", "deployments"): "Deployment",
         ("autoscaling", "horizontalpodautoscalers"): "HorizontalPodAutoscaler",
         ("policy", "poddisruptionbudgets"): "PodDisruptionBudget",
         ("rbac.authorization.k8s.io", "roles"): "Role",
         ("rbac.authorization.k8s.io", "rolebindings"): "RoleBinding",
         ("kubeflow.org", "tfjobs"): "TFJob"}


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    """A `Status` as the API server writes it for a failure."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason}
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def _resource(group: str, plural: str) -> str:
    return f"{plural}.{group}" if group else plural  # how the server names it in messages


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


@dataclass(frozen=True)
class Call:
    """One request the double received."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any

    @property
    def attributes(self) -> tuple[str, str, str, str]:
        """(API group, resource, verb, name): what an RBAC rule must grant for this call."""
        parts = self.path.strip("/").split("/")
        group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
        rest = rest[2:] if rest and rest[0] == "namespaces" else rest
        plural, name = rest[0], rest[1] if len(rest) > 1 else ""
        resource = "/".join([plural, *rest[2:]])
        if self.method == "GET" and not name:
            verb = "watch" if self.query.get("watch") in ("true", "True", "1") else "list"
        else:
            verb = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update",
                    "DELETE": "delete"}[self.method]
        return group, resource, verb, name


def write_kubeconfig(path: Path, server: str, token: str, namespace: str = "default") -> Path:
    """A kubeconfig with one context: `server`, a bearer token, a default namespace."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "tester",
                                                    "namespace": namespace}}]}))
    return path


class _Quiet(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:  # noqa: A002
        pass


class KubeApiDouble(ClusterState):
    """The double: `url` to point a kubeconfig at, `calls`, `script`, `put`, `get`."""

    def __init__(self, token: str = "double-token") -> None:
        super().__init__()
        self.token = token
        self.calls: list[Call] = []
        self.rbac: tuple[str, list[dict[str, Any]]] | None = None  # (user, Role rules)
        self._routes = Map([
            Rule("/api/v1/namespaces/<ns>/pods/<name>/log", endpoint="log"),
            Rule("/api/v1/namespaces/<ns>/<plural>", endpoint="collection"),
            Rule("/api/v1/namespaces/<ns>/<plural>/<name>", endpoint="item"),
            Rule("/apis/<group>/<version>/namespaces/<ns>/<plural>", endpoint="collection"),
            Rule("/apis/<group>/<version>/namespaces/<ns>/<plural>/<name>", endpoint="item"),
        ])
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True,
                                   request_handler=_Quiet)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()

    def close(self) -> None:
        """Ends open watches and log streams, then stops the server."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose current context is this double, with its bearer token."""
        return write_kubeconfig(path, self.url, self.token, namespace)

    # What tests set up and read.

    def enforce(self, user: str, rules: list[dict[str, Any]]) -> None:
        """From now on, answer 403 Forbidden to calls `rules` (a Role's) do not grant."""
        self.rbac = (user, rules)

    def _forbidden(self, call: Call, ns: str) -> dict[str, Any] | None:
        if self.rbac is None:
            return None
        user, rules = self.rbac
        group, resource, verb, name = call.attributes
        for rule in rules:
            names = rule.get("resourceNames")
            if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule[
                    "verbs"] and (not names or name in names):
                return None
        plural = resource.split("/")[0]
        what = _resource(group, plural) + (f' "{name}"' if name else "")
        return status(403, "Forbidden", f'{what} is forbidden: User "{user}" cannot {verb} '
                      f'resource "{resource}" in API group "{group}" in the namespace "{ns}"',
                      {"name": name, **({"group": group} if group else {}), "kind": plural})

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Stores an object as if created earlier (e.g. the serving ConfigMap)."""
        group = obj["apiVersion"].rpartition("/")[0]
        plural = {v: k for k, v in KINDS.items()}[obj["kind"]][1]
        with self._cond:
            stored = self._stamp(copy.deepcopy(obj))
            meta = stored["metadata"]
            self.objects[(group, plural, meta["namespace"], meta["name"])] = stored
            return copy.deepcopy(stored)

    def get(self, group: str, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        """The stored object, or None."""
        with self._cond:
            found = self.objects.get((group, plural, ns, name))
            return copy.deepcopy(found) if found else None

    def requests(self, method: str | None = None, contains: str = "") -> list[Call]:
        """The recorded calls, of one method and with `contains` in the path if given."""
        return [c for c in self.calls
                if (method is None or c.method == method) and contains in c.path]

    # HTTP.

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self._handle(request)
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        content_type = request.headers.get("Content-Type", "").split(";")[0]
        raw = request.get_data(as_text=True)
        body: Any = None
        if raw:
            body = yaml.safe_load(raw) if content_type == APPLY else json.loads(raw)
        query = dict(request.args.items())
        call = Call(request.method, request.path, query, content_type, body)
        with self._cond:
            self.calls.append(call)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._json(status(401, "Unauthorized", "Unauthorized"), 401)
        try:
            endpoint, args = self._routes.bind_to_environ(request.environ).match()
        except Exception:  # noqa: BLE001  (the server's answer to any unknown path)
            return self._json(status(404, "NotFound", "the server could not find the requested "
                                     "resource", {}), 404)
        group, plural = args.get("group", ""), args.get("plural", "pods")
        if (group, plural) not in KINDS:
            return self._json(status(404, "NotFound", "the server could not find the requested "
                                     "resource", {}), 404)
        key = (group, plural, args["ns"], args.get("name", ""))
        forbidden = self._forbidden(call, args["ns"])
        if forbidden:
            return self._json(forbidden, 403)
        if endpoint == "log":
            return self._log(args["ns"], args["name"], query)
        if endpoint == "collection" and request.method == "GET":
            if query.get("watch") in ("true", "True", "1"):
                return Response(self._watch(args["ns"], query), mimetype="application/json",
                                direct_passthrough=True)
            return self._list(group, plural, args["ns"], query.get("labelSelector", ""))
        if endpoint == "collection" and request.method == "POST":
            return self._create(key, body)
        if endpoint == "item" and request.method == "GET":
            return self._read(key)
        if endpoint == "item" and request.method == "PATCH":
            return self._patch(key, body, content_type, query)
        if endpoint == "item" and request.method == "DELETE":
            return self._delete(key)
        return self._json(status(405, "MethodNotAllowed", "the server does not allow this "
                                 "method on the requested resource"), 405)

    @staticmethod
    def _json(obj: Any, code: int = 200) -> Response:
        return Response(json.dumps(obj), status=code, mimetype="application/json")

    def _missing(self, key: tuple[str, str, str, str]) -> Response:
        group, plural, _, name = key
        details = {"name": name, **({"group": group} if group else {}), "kind": plural}
        return self._json(status(404, "NotFound", f'{_resource(group, plural)} "{name}" not '
                                 f"found", details), 404)

    def _create(self, key: tuple[str, str, str, str], body: dict[str, Any]) -> Response:
        group, plural, ns, _ = key
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        if body.get("kind") != KINDS[(group, plural)]:
            return self._json(status(400, "BadRequest", f"the API version in the data "
                                     f"({body.get('apiVersion')}) does not match the expected "
                                     f"API version or kind"), 400)
        if meta.get("namespace", ns) != ns:
            return self._json(status(400, "BadRequest", "the namespace of the provided object "
                                     "does not match the namespace sent on the request"), 400)
        if any(ref.get("blockOwnerDeletion") for ref in meta.get("ownerReferences") or []):
            # OwnerReferencesPermissionEnforcement, for a user without <owner>/finalizers.
            return self._json(status(422, "Invalid", f'{_resource(group, plural)} "{name}" is '
                                     f"forbidden: cannot set blockOwnerDeletion if an "
                                     f"ownerReference refers to a resource you can't set "
                                     f"finalizers on"), 422)
        with self._cond:
            if (group, plural, ns, name) in self.objects:
                return self._json(status(409, "AlreadyExists", f'{_resource(group, plural)} '
                                         f'"{name}" already exists',
                                         {"name": name, **({"group": group} if group else {}),
                                          "kind": plural}), 409)
            obj = self._stamp(copy.deepcopy(body))
            obj["metadata"]["namespace"] = ns
            if plural == "jobs":  # defaulted by the API server: the selector on its own uid
                uid = obj["metadata"]["uid"]
                own = {k: (uid if "uid" in k else name) for k in JOB_LABELS}
                obj["spec"]["selector"] = {"matchLabels": {JOB_LABELS[0]: uid}}
                obj["spec"]["template"]["metadata"].setdefault("labels", {}).update(own)
            if plural in ("jobs", "tfjobs"):
                obj["status"] = {}
            self.objects[(group, plural, ns, name)] = obj
            return self._json(obj, 201)

    def _read(self, key: tuple[str, str, str, str]) -> Response:
        with self._cond:
            obj = self.objects.get(key)
            if obj is None:
                return self._missing(key)
            if obj["metadata"].get("deletionTimestamp"):
                del self.objects[key]  # the garbage collector finishes after this read
            return self._json(obj)

    def _list(self, group: str, plural: str, ns: str, selector: str) -> Response:
        with self._cond:
            items = [o for (g, p, n, _), o in self.objects.items() if (g, p, n) ==
                     (group, plural, ns) and matches(o["metadata"].get("labels") or {},
                                                      selector)]
            return self._json({"kind": f"{KINDS[(group, plural)]}List", "apiVersion": "v1",
                               "metadata": {"resourceVersion": str(self._last_rv)},
                               "items": items})

    def _patch(self, key: tuple[str, str, str, str], body: dict[str, Any], content_type: str,
               query: dict[str, str]) -> Response:
        group, plural, ns, name = key
        with self._cond:
            existing = self.objects.get(key)
            if content_type == APPLY:
                if not query.get("fieldManager"):
                    return self._json(status(400, "BadRequest", 'PatchOptions.meta.k8s.io "" is '
                                             "invalid: fieldManager: Required value: is "
                                             "required for apply patch"), 400)
                if body["metadata"].get("name") != name or body.get("kind") != KINDS[
                        (group, plural)]:
                    return self._json(status(400, "BadRequest", "the name or kind of the "
                                             "object does not match the request"), 400)
                obj = copy.deepcopy(body)
                if existing:  # what apply keeps: the server's fields and others' status
                    for field in ("uid", "creationTimestamp"):
                        obj["metadata"][field] = existing["metadata"][field]
                obj["metadata"]["managedFields"] = [{"manager": query["fieldManager"],
                                                     "operation": "Apply"}]
                self.objects[key] = self._stamp(obj)
                return self._json(obj, 200 if existing else 201)
            if content_type not in MERGE:
                return self._json(status(415, "UnsupportedMediaType", "the body of the "
                                         "request was in an unknown format"), 415)
            if existing is None:
                return self._missing(key)
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != existing["metadata"]["resourceVersion"]:
                return self._json(status(409, "Conflict", f"Operation cannot be fulfilled on "
                                         f'{_resource(group, plural)} "{name}": the object has '
                                         f"been modified; please apply your changes to the "
                                         f"latest version and try again",
                                         {"name": name, "kind": plural}), 409)
            _merge(existing, {k: v for k, v in body.items() if k != "metadata"})
            self._stamp(existing)
            return self._json(existing)

    def _delete(self, key: tuple[str, str, str, str]) -> Response:
        with self._cond:
            obj = self.objects.get(key)
            if obj is None:
                return self._missing(key)
            uid = obj["metadata"]["uid"]
            for other_key, other in list(self.objects.items()):
                owners = [r.get("uid") for r in other["metadata"].get("ownerReferences") or []]
                if uid in owners:  # foreground: dependents go first
                    del self.objects[other_key]
                    if other_key[1] == "pods":
                        self._pod_event("DELETED", other)
            obj["metadata"].update(deletionTimestamp=now(), finalizers=["foregroundDeletion"])
            self._stamp(obj)
            return self._json(obj)

    # Pods: the script, the watch, the logs.

    def _watch(self, ns: str, query: dict[str, str]) -> Any:
        selector = query.get("labelSelector", "")
        sent = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds", 1800))

        def expired() -> bytes:  # what the watch cache sends for a resourceVersion it dropped
            return (json.dumps({"type": "ERROR", "object": status(
                410, "Expired", f"too old resource version: {sent} ({self.compacted})")})
                + "\n").encode()

        if sent < self.compacted:
            yield expired()
            return
        while True:
            with self._cond:
                pending = [(rv, kind, obj) for rv, kind, obj in self.events if rv > sent
                           and obj["metadata"]["namespace"] == ns
                           and matches(obj["metadata"]["labels"], selector)]
                step = ""
                if not pending:
                    run = self._run(ns, selector)
                    step = self._advance(run) if run is not None else ""
                    if step == "event":
                        continue
                    if not step:
                        if self._stopping or time.monotonic() > deadline:
                            return
                        self._cond.wait(0.05)
                        continue
            if step == "expire":
                yield expired()
                return
            for rv, kind, obj in pending:
                sent = rv
                yield (json.dumps({"type": kind, "object": obj}) + "\n").encode()

    def _log(self, ns: str, name: str, query: dict[str, str]) -> Response:
        key = ("", "pods", ns, name)
        with self._cond:
            obj = self.objects.get(key)
            if obj is None:
                return self._missing(key)
            containers = [c["name"] for c in obj["spec"]["containers"]]
            container = query.get("container") or containers[0]
            if container not in containers:
                return self._json(status(400, "BadRequest", f"container {container} is not "
                                         f"valid for pod {name}"), 400)
            if query.get("previous") in ("true", "True", "1"):
                return self._json(status(400, "BadRequest", f'previous terminated container '
                                         f'"{container}" in pod "{name}" not found'), 400)
            state = (obj["status"].get("containerStatuses") or [{}])[0].get("state", {})
            if not state or "waiting" in state:
                why = state.get("waiting", {}).get("reason", "ContainerCreating")
                return self._json(status(400, "BadRequest", f'container "{container}" in pod '
                                         f'"{name}" is waiting to start: {why}'), 400)
            lines = list(self.logs.get(name, []))
        if "tailLines" in query:
            lines = lines[-int(query["tailLines"]):] if int(query["tailLines"]) else []
        if query.get("follow") not in ("true", "True", "1"):
            return Response("".join(f"{line}\n" for line in lines), mimetype="text/plain")
        return Response(self._follow(key, len(self.logs.get(name, [])) - len(lines)),
                        mimetype="text/plain", direct_passthrough=True)

    def _follow(self, key: tuple[str, str, str, str], start: int) -> Any:
        sent = start
        while True:
            with self._cond:
                lines = self.logs.get(key[3], [])[sent:]
                obj = self.objects.get(key)
                ended = obj is None or obj["status"]["phase"] in ("Succeeded", "Failed")
                if not lines and not ended and not self._stopping:
                    self._cond.wait(0.05)
                    continue
            for line in lines:
                sent += 1
                yield f"{line}\n".encode()
            if not lines and (ended or self._stopping):
                return
