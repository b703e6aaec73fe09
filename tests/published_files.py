"""What a published day holds, for byte-for-byte comparisons of reruns.

Tests import it from here, never from a conftest.
"""

from __future__ import annotations

import json
from pathlib import Path

TIME_FIELDS = ("created_at",)  # the manifest's only field that differs between reruns


def published_files(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by relative path, with its bytes (the manifest's time removed)."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        content = path.read_bytes()
        if path.name == "_MANIFEST.json":
            manifest = json.loads(content)
            for key in TIME_FIELDS:
                manifest.pop(key)
            content = json.dumps(manifest).encode()
        files[str(path.relative_to(root))] = content
    return files
