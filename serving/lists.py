"""List-valued inputs of a served signature: which inputs take lists, their length and pad.

A list-valued (`multivalent`) feature is exported as an input of shape `(batch, L)`, `L` its
`max_length`, padded with its pad value (`multitower.config.data.CategoricalFeature`); every
other input is `(batch,)`. A request row gives such a feature as a list of any length; it is
checked with `multitower.values.check_list` (every element of the input's kind, none equal to
the pad), then `fit` cuts it to its first `L` elements and pads it at the end to `L`: the very
tensor row `multitower.records.pad_lists` makes of the same list read from the TFRecords, which
is what the model was trained and exported on.

TF Serving's metadata gives each input's shape, so a client learns `L` from the server, but not
the pad value: it is `""` for strings and -1 for integers unless the config names another, so a
client takes the pads from the config when it has one (`config_pads`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from multitower.config import Config
from multitower.config.data import DEFAULT_PADS
from multitower.errors import MultitowerError
from multitower.rows import Column
from multitower.values import check_value, padded

Shape = tuple[int, ...] | None  # an input's dims (-1 for any size), None for an unknown rank


class ListInputError(MultitowerError, ValueError):
    """A signature input cannot be filled from rows (its shape, or its pad); names the input."""


class ListInput(NamedTuple):
    """A list-valued input: its length `L` (`(batch, L)`) and the value that pads a list."""

    length: int
    pad: Any


def list_length(name: str, shape: Shape) -> int | None:
    """`L` of an input of shape `(-1, L)`, or None for an input that takes one value per row.

    An input of unknown rank, or of rank 0 or 1, takes one value per row (as multitower's
    scalar features do); rank 2 is a padded list.

    Raises:
        ListInputError: The input is of rank 2 with no fixed `L`, or of a higher rank.
    """
    if shape is None or len(shape) < 2:
        return None
    if len(shape) == 2 and shape[1] >= 0:
        return shape[1]
    shown = "(" + ", ".join("None" if size < 0 else str(size) for size in shape) + ")"
    raise ListInputError(f"input {name!r} has shape {shown}: raw rows fill an input of shape "
                         f"(None,) (a value per row) or (None, L) (a list per row, padded to L)")


def list_inputs(kinds: Mapping[str, str], shapes: Mapping[str, Shape],
                pads: Mapping[str, Any] | None = None) -> dict[str, ListInput]:
    """The list-valued inputs of a signature, with their lengths and pads.

    Args:
        kinds: `{input: value kind}` (`string`, `int64`, `float32`).
        shapes: `{input: shape}`; an input missing here takes one value per row.
        pads: `{input: pad value}` overriding the defaults (`""` for strings, -1 for integers);
            entries for other inputs are ignored (a config may name lists a version lacks).

    Returns:
        `{input: ListInput}` for every input of shape `(-1, L)`.

    Raises:
        ListInputError: An input of another shape (`list_length`), a float list with no pad
            given, or a pad that is not a value of its input's kind.
    """
    lists = {}
    for name, kind in kinds.items():
        length = list_length(name, shapes.get(name))
        if length is None:
            continue
        pad = (pads or {}).get(name, DEFAULT_PADS.get(kind))
        if pad is None:
            raise ListInputError(f"input {name!r} is a list of {kind} values, which have no "
                                 f"default pad value; give its pad")
        checked, reason = check_value(name, pad, kind)
        if reason is not None or isinstance(pad, bool):
            raise ListInputError(f"input {name!r}: the pad value {pad!r} is not a {kind} value")
        lists[name] = ListInput(length, checked)
    return lists


def columns(kinds: Mapping[str, str], lists: Mapping[str, ListInput]) -> list[Column]:
    """The value checker's columns of a signature's inputs; list inputs are `multivalent`."""
    return [Column(name, kind, multivalent=True, pad=lists[name].pad) if name in lists
            else Column(name, kind) for name, kind in kinds.items()]


def fit(values: Sequence[Any], spec: ListInput) -> list[Any]:
    """A checked list as its input takes it: the first `L` elements, then pads up to `L`."""
    return padded(values, spec.length, spec.pad)


def fit_lists(features: dict[str, Any], lists: Mapping[str, ListInput]) -> dict[str, Any]:
    """`features` (a checked row) with each list input's list fitted (`fit`), in place."""
    for name, spec in lists.items():
        if name in features:
            features[name] = fit(features[name], spec)
    return features


def config_pads(config: Config) -> dict[str, str | int]:
    """`{feature: pad value}` of the config's list-valued features."""
    return {f.name: f.list_pad for f in config.data.multivalent}
