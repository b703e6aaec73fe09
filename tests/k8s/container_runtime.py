"""The container runtime's part of starting a pod: enter its namespaces, mounts and user, exec.

Run as `python container_runtime.py SPEC.json` by `tests.k8s.pods.start_pod`, as root, in the
process that becomes the container (so the process id the test holds is the container's): a
new mount and UTS namespace, the host's root file system as the lower layer of an overlay (so
mount points and added files exist for this pod only), `/proc`, `/sys` and `/dev` bound in,
each volume bound at its mount path (read-only when the mount is), the root remounted
read-only when `readOnlyRootFilesystem`, the pod's host name, chroot, `workingDir`, the pod's
user and groups, no new privileges, then `execvpe` of `command` + `args` with the pod's
environment, untouched.

A script, so the standard library only.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_CLONE_NEWNS, _CLONE_NEWUTS = 0x00020000, 0x04000000
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
_PR_SET_NO_NEW_PRIVS = 38


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]
    return libc


def _call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def enter_pod(spec: Mapping[str, Any]) -> None:
    """Becomes the pod's container as the module says, then execs its command (no return)."""
    libc = _libc()

    def mount(source: str | None, target: str, kind: str | None, flags: int,
              data: str | None = None) -> None:
        _call(libc.mount(source and source.encode(), target.encode(), kind and kind.encode(),
                         flags, data and data.encode()), f"mount {source} on {target}")

    root = spec["root"]
    _call(libc.unshare(_CLONE_NEWNS | _CLONE_NEWUTS), "unshare")
    mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing here reaches the host's mounts
    mount("overlay", root, "overlay", 0,
          f"lowerdir=/,upperdir={spec['upper']},workdir={spec['work']}")
    for system in ("/proc", "/sys", "/dev"):
        mount(system, root + system, None, _MS_BIND | _MS_REC)
    # The image's folders a volume would hide (the checkout under /tmp, say): held aside from
    # the pod's own root before the volumes are mounted, shown again at their path after.
    kept = []
    for number, path in enumerate(spec.get("keep", [])):
        hold = f"{spec['work']}-keep-{number}"
        os.makedirs(hold, exist_ok=True)
        mount(root + path, hold, None, _MS_BIND | _MS_REC)
        kept.append((hold, path))
    for source, target, read_only in spec["mounts"]:
        os.makedirs(root + target, exist_ok=True)
        mount(source, root + target, None, _MS_BIND | _MS_REC)
        if read_only:
            mount(None, root + target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
    for hold, path in kept:
        os.makedirs(root + path, exist_ok=True)
        mount(hold, root + path, None, _MS_BIND | _MS_REC)
    for path, text in spec["files"].items():
        Path(root + path).write_text(text)
    for path in spec["traverse"]:
        os.chmod(root + path, os.stat(root + path).st_mode | 0o001)
    if spec["read_only_root"]:
        for target in [root] + [root + path for _, path in kept]:  # a kept folder is image too
            mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
    socket.sethostname(spec["hostname"])
    os.chroot(root)
    os.chdir(spec["cwd"])
    os.setgroups(spec["groups"])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    if spec["no_new_privs"]:
        _call(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl")
    os.execvpe(spec["argv"][0], spec["argv"], spec["env"])


if __name__ == "__main__":
    enter_pod(json.loads(Path(sys.argv[1]).read_text()))
