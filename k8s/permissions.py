"""What `multitower submit daily` may do in its namespace: the one list its Role is built from.

The daily CronJob's pod runs `submit daily`: it creates the day's preprocess Job and waits for
it, creates the training objects and waits for them, then rewrites the serving ConfigMap so the
version labels move. Each entry below is one API call it makes, with why; `daily_role` grants
exactly these and nothing else, and `submit`'s tests can compare the calls it makes (on its
success and failure paths) with this list.
"""

from __future__ import annotations

from dataclasses import dataclass

from multitower.config import Config


@dataclass(frozen=True)
class Permission:
    """One Role rule: these verbs on one resource of one API group (`""` is the core group)."""

    api_group: str
    resource: str  # plural, with its subresource: `pods/log`
    verbs: tuple[str, ...]
    why: str
    resource_names: tuple[str, ...] = ()  # only these objects (not for create, list, watch)


def serving_config_map_name(app: str) -> str:
    """The ConfigMap holding TF Serving's files (`k8s/serving.py`), which `submit daily` patches."""
    return f"{app}-serving-config"


def daily_permissions(config: Config, app: str) -> list[Permission]:
    """The calls `submit daily` makes for this config (`training.kind` decides which kinds).

    Args:
        config: The project's config, with a `k8s` section.
        app: The app name every object starts with.
    """
    assert config.k8s is not None
    found = [
        Permission("batch", "jobs", ("create", "get"),
                   "create the day's preprocess (and training) Job; read its status while "
                   "waiting, and find an existing Job of that name (reported, not replaced)"),
        Permission("", "pods", ("list", "watch"),
                   "show progress (pending / running / done) and find the failing pod"),
        Permission("", "pods/log", ("get",), "print the failing pod's last log lines"),
    ]
    if config.k8s.training.kind == "tfjob":
        found.append(Permission("kubeflow.org", "tfjobs", ("create", "get"),
                                "create the day's TFJob and read its status while waiting"))
    elif config.k8s.training.workers > 1:
        found.append(Permission("", "services", ("create", "get"),
                                "create the headless Service that names the day's workers"))
    found.append(Permission("", "configmaps", ("get", "patch"),
                            "rewrite TF Serving's models.config so the version labels move "
                            "to the new export", (serving_config_map_name(app),)))
    return found
