"""Loading a config file: YAML, strict validation, and errors that name the file and the key.

Relative paths are resolved against the file's own directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from multitower.config.project import Config
from multitower.errors import MultitowerError
from multitower.storage import enable_filesystems


class ConfigError(MultitowerError, ValueError):
    """A configuration file is unreadable or invalid; the message names the file and the key."""


_PATH_KEYS = (("data", "logs"), ("data", "tfrecords"), ("data", "rejected"),
              ("train", "model_dir"), ("train", "export_dir"))


class _DuplicateKeyError(yaml.YAMLError):
    """A key repeated in one mapping, where plain YAML loading keeps the last value silently."""

    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(f"line {line}: duplicate key {key!r} (first at line {first}); "
                         f"a key may appear once per mapping")


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader, refusing a key that appears twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` merges keys that the mapping may then override
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise _DuplicateKeyError(key, line, first_line[key])
                first_line[key] = line
            except TypeError:  # an unhashable key: the base loader says so itself
                continue
        return super().construct_mapping(node, deep)


def _resolve(path: str, base: Path) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def _key(loc: tuple[Any, ...], raw: Any) -> str:
    """Turns a pydantic error location into `data.features[2].hash_buckets`."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        if isinstance(node, dict) and "type" in node and item == node["type"]:
            continue  # the discriminated-union tag pydantic adds to the path
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "<top level>"


def parse_config(raw: Any, source: str = "<config>") -> Config:
    """Validates an already-parsed YAML document; errors name `source` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return Config.model_validate({**raw, "source": source})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
            elif e["type"] == "missing":
                msg = "missing required key"
            elif "input" in e and e["type"] not in ("value_error",):
                msg = f"{msg} (got {e['input']!r})"
            lines.append(f"{source}: {_key(e['loc'], raw)}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Reads, validates and resolves a YAML config file.

    Raises:
        ConfigError: The file is unreadable, not YAML, repeats a key within one mapping (YAML
            would keep the last value silently), or does not validate; the message names the
            file and the key (and the line of a repeated key).
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror}") from None
    except _DuplicateKeyError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    config = parse_config(raw, str(path))
    base = path.resolve().parent
    updates: dict[str, dict[str, str]] = {}
    for section, key in _PATH_KEYS:
        value = getattr(getattr(config, section), key)
        updates.setdefault(section, {})[key] = _resolve(value, base)
    # s3:// and hdfs:// paths need tensorflow-io registered before their first use.
    enable_filesystems(v for u in updates.values() for v in u.values())
    return config.model_copy(
        update={s: getattr(config, s).model_copy(update=u) for s, u in updates.items()}
    )
