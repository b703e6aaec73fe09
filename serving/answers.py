"""What a TF Serving client says about a served model: statuses, signatures, scores.

The value types of `serving.client.ServingClient`'s interface (and importable from there).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from multitower.rows import Column
from serving.lists import ListInput, Shape, columns

# A signature's input dtypes (TensorFlow's enum names) as the value checker's kinds.
KINDS = {"DT_STRING": "string", "DT_INT64": "int64", "DT_FLOAT": "float32"}


class VersionStatus(NamedTuple):
    """One version's state as `GetModelStatus` reports it (`ModelVersionStatus`)."""

    version: int
    state: str  # UNKNOWN, START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""


_NO_SHAPES: Mapping[str, Shape] = MappingProxyType({})
_NO_LISTS: Mapping[str, ListInput] = MappingProxyType({})


class Signature(NamedTuple):
    """A served signature: input dtypes, output names, and input shapes.

    `inputs` is `{input name: dtype name}` (`DT_STRING` ...); `shapes` is `{input name: dims}`
    as the metadata gives them (-1 for any size, None for an unknown rank; an input left out
    takes one value per row).
    """

    name: str
    inputs: dict[str, str]
    outputs: tuple[str, ...]
    shapes: Mapping[str, Shape] = _NO_SHAPES

    def kinds(self) -> dict[str, str]:
        """`{input: value kind}` (every input's dtype must be in `KINDS`)."""
        return {name: KINDS[dtype] for name, dtype in self.inputs.items()}

    def columns(self, lists: Mapping[str, ListInput] = _NO_LISTS) -> list[Column]:
        """The inputs as the value checker's columns; `lists` are the list-valued inputs."""
        return columns(self.kinds(), lists)


class ModelInfo(NamedTuple):
    """What the server says about the selected model: statuses, signature, resolved version.

    `lists` holds the signature's list-valued inputs, their lengths and pads (`serving.lists`).
    """

    versions: tuple[VersionStatus, ...]
    signature: Signature
    version: int | None  # the version the metadata answer is for, if the server named it
    lists: Mapping[str, ListInput] = _NO_LISTS


class BatchScores(NamedTuple):
    """One request's answer: `{output: one score per row}`, and the version that answered."""

    scores: dict[str, list[float]]
    version: int | None  # gRPC names it in each answer; REST answers do not


class Scores(NamedTuple):
    """Every row's scores, in row order, and the versions that answered (when known)."""

    scores: dict[str, list[float]]
    versions: tuple[int, ...]
