"""What makes every pod meet the "restricted" Pod Security Standard, with a read-only root.

The restricted profile (kubernetes.io/docs/concepts/security/pod-security-standards) asks for
a non-root user, no privilege escalation, every capability dropped and the `RuntimeDefault`
seccomp profile. On top of it the root file system is read-only: a process can then write only
to its volumes, so every place TensorFlow, Beam, Python and their libraries write by default
(home, temporary files, caches) is pointed into one `emptyDir`, the scratch folder, by
`SCRATCH_ENV`. The same folder is mounted at `/tmp` too, for code that ignores `TMPDIR`.
"""

from __future__ import annotations

from typing import Any

from multitower.config.k8s import K8sConfig

SCRATCH_VOLUME = "scratch"
SCRATCH_DIR = "/scratch"

# Where each program would write by default, and why it is set (the only place that lists
# them: the pods get them all, tests run the rendered commands with them pointing elsewhere).
SCRATCH_ENV: dict[str, str] = {
    "HOME": SCRATCH_DIR,  # ~/.keras, ~/.aws/cli/cache, ~/.config of anything not listed below
    "TMPDIR": SCRATCH_DIR,  # Python's tempfile (Beam's staging), TensorFlow's temporary files
    "XDG_CACHE_HOME": f"{SCRATCH_DIR}/.cache",  # pip, fontconfig and other XDG users
    "XDG_CONFIG_HOME": f"{SCRATCH_DIR}/.config",
    "MPLCONFIGDIR": f"{SCRATCH_DIR}/.config/matplotlib",  # matplotlib's config and font cache
    "KERAS_HOME": f"{SCRATCH_DIR}/.keras",  # keras.json and downloaded datasets
    "TFHUB_CACHE_DIR": f"{SCRATCH_DIR}/.cache/tfhub_modules",
    "CUDA_CACHE_PATH": f"{SCRATCH_DIR}/.nv/ComputeCache",  # the GPU driver's PTX JIT cache
}
# Not a folder: Python would try to write .pyc files next to the installed sources.
PYTHON_ENV: dict[str, str] = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}


def pod_security_context(k8s: K8sConfig) -> dict[str, Any]:
    """The pod-level context: a non-root user and group, and `RuntimeDefault` seccomp.

    `fsGroup` makes mounted volumes writable by that group; `OnRootMismatch` skips the
    recursive ownership change of a large volume that already has it.
    """
    return {
        "runAsNonRoot": True,
        "runAsUser": k8s.run_as_user,
        "runAsGroup": k8s.run_as_group,
        "fsGroup": k8s.run_as_group,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The container-level context of every container: nothing beyond the user's rights."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_volume(size: str) -> dict[str, Any]:
    """The `emptyDir` behind `SCRATCH_ENV`, bounded so a runaway cache evicts only its pod."""
    return {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": size}}


def scratch_mounts() -> list[dict[str, Any]]:
    """The scratch folder, and its `tmp` sub-folder at `/tmp` for code that hard-codes it."""
    return [{"name": SCRATCH_VOLUME, "mountPath": SCRATCH_DIR},
            {"name": SCRATCH_VOLUME, "mountPath": "/tmp", "subPath": "tmp"}]


def scratch_environment(python: bool = True) -> list[dict[str, str]]:
    """`SCRATCH_ENV` (and `PYTHON_ENV` for a Python program) as container `env` entries."""
    values = {**SCRATCH_ENV, **(PYTHON_ENV if python else {})}
    return [{"name": k, "value": v} for k, v in values.items()]
