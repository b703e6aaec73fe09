"""The objects of each step, as YAML a person can read, one file per object plus a kustomization.

`step_objects` is the one list of what a step needs on the cluster (the `k8s render` command
writes it, `submit` sends it): the project's config ConfigMap first, then the step's own
objects. `render` joins several steps, each object once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from k8s.daily import daily_objects
from k8s.objects import Target, project_config_map, target
from k8s.preprocess import preprocess_job
from k8s.serving import serving_objects
from k8s.storage import K8sError, check_cluster_paths
from k8s.training import training_objects
from multitower.config import Config

STEPS = ("preprocess", "train", "daily", "serving")
PER_DAY = ("preprocess", "train")
KUSTOMIZATION = "kustomization.yaml"
_MARK = "# Written by `multitower k8s render`"


@dataclass(frozen=True)
class ServingInputs:
    """TF Serving's files and command line, built by the serving stage for the cluster."""

    files: Mapping[str, str]
    command: Sequence[str]


def step_objects(t: Target, step: str, date: str | None = None,
                 serving: ServingInputs | None = None) -> list[dict[str, Any]]:
    """Every object `step` needs, in the order to apply them.

    Args:
        t: The target (`k8s.objects.target`).
        step: One of `STEPS`.
        date: The day, for `preprocess` and `train`.
        serving: TF Serving's files and command, for `serving`.

    Raises:
        K8sError: A path the step uses cannot be reached from a pod, or the step's inputs
            are missing.
    """
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; expected one of {STEPS}")
    check_cluster_paths(t.config, step)
    if step in PER_DAY and not date:
        raise K8sError(f"the {step} step is per day: give its date")
    if step == "preprocess":
        return [project_config_map(t), preprocess_job(t, date or "")]
    if step == "train":
        return [project_config_map(t), *training_objects(t, date or "")]
    if step == "daily":
        return [project_config_map(t), *daily_objects(t)]
    if serving is None:
        raise K8sError("the serving step needs TF Serving's files and command line")
    return serving_objects(t, serving.files, serving.command)


def render(config: Config, steps: Iterable[str], date: str | None = None,
           serving: ServingInputs | None = None, namespace: str | None = None
           ) -> list[dict[str, Any]]:
    """The objects of several steps, each once (the config ConfigMap is shared).

    Raises:
        K8sError: As `target` and `step_objects`.
    """
    t = target(config, namespace)
    seen: set[tuple[str, str]] = set()
    found = []
    for step in steps:
        for obj in step_objects(t, step, date, serving):
            key = (obj["kind"], obj["metadata"]["name"])
            if key not in seen:
                seen.add(key)
                found.append(obj)
    return found


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (ConfigMap files read as files, not escapes)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(c in value for c in "\t\r") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(obj: Mapping[str, Any]) -> str:
    """One object as YAML, keys in the order they were built (apiVersion, kind, metadata...)."""
    return yaml.dump(dict(obj), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)


def file_name(obj: Mapping[str, Any]) -> str:
    """`<kind>-<name>.yaml`, e.g. `job-impressions-train-2026-03-01.yaml`."""
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def write_manifests(objects: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike[str]
                    ) -> list[Path]:
    """Writes one YAML file per object and a `kustomization.yaml` listing them.

    Files listed by a kustomization this function wrote before are removed first, so the
    folder holds exactly the objects rendered now; other files are left alone.

    Returns:
        The paths written, the kustomization last.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / KUSTOMIZATION
    if previous.is_file() and previous.read_text().startswith(_MARK):
        listed = (yaml.safe_load(previous.read_text()) or {}).get("resources", [])
        for name in listed:
            if isinstance(name, str) and "/" not in name and name.endswith(".yaml"):
                (out / name).unlink(missing_ok=True)
    written = []
    for obj in objects:
        path = out / file_name(obj)
        _write(path, f"{_MARK}; edits are lost on the next render.\n" + to_yaml(obj))
        written.append(path)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [p.name for p in written]}
    _write(previous, f"{_MARK}; apply with `kubectl apply -k {out}`.\n"
           + yaml.safe_dump(kustomization, sort_keys=False))
    return [*written, previous]


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)
