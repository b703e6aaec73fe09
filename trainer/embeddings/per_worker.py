"""Checkpoints of model-parallel tables: each worker saves its own rows and slots.

The chief's checkpoint (`ckpt-<step>`) holds every mirrored variable; a model-parallel table's
rows and its row-sparse optimizer's slots are each worker's own, so each worker writes them next
to it, under `<checkpoint dir>/model_parallel/worker-<w>-of-<N>/ckpt-<step>`: the worker count
is in the path. Restoring:

- with the same N, each worker reads its own part;
- with another N (a relaunch on more or fewer workers, or one process with no cluster:
  evaluation, export), each worker builds its rows from every part written: global row g was
  on old worker `g % M` at row `g // M`, and goes to new worker `g % N` at row `g // N`. A
  worker reads one old part at a time, so it never holds more than its own rows and one part.

A stitched table (N = 1) is what the export and the chief's evaluation load: rows only, no
slots. The model directory must be reachable from every worker (as object storage is).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from multitower.errors import MultitowerError
from trainer.embeddings.layer import PartitionedEmbedding
from trainer.embeddings.model_parallel import Workers, rows_on_worker
from trainer.embeddings.optimizers import RowSparseOptimizer

log = logging.getLogger("multitower.trainer")

PARTS_DIR = "model_parallel"
_PART = re.compile(r"worker-(\d+)-of-(\d+)$")


class PartsMissingError(MultitowerError, FileNotFoundError):
    """A checkpoint's model-parallel parts are missing or incomplete (the message names them)."""


def part_prefix(checkpoint: str, index: int, count: int) -> str:
    """Where worker `index` of `count` keeps its part of the checkpoint prefix `checkpoint`."""
    head, tail = os.path.split(checkpoint)
    return os.path.join(head, PARTS_DIR, f"worker-{index}-of-{count}", tail)


def model_parallel_layers(network: tf.Module) -> list[PartitionedEmbedding]:
    """The built model-parallel tables of `network`, in module order."""
    return [layer for layer in [network, *network.submodules]
            if isinstance(layer, PartitionedEmbedding) and layer.model_parallel and layer.shards]


def model_parallel_variables(network: tf.Module, tables: RowSparseOptimizer | None = None
                             ) -> dict[str, tf.Variable]:
    """This worker's rows of every model-parallel table of `network`, and their slots.

    Keys: `<layer>` for the rows, `<layer>__<slot>` for a slot (only with `tables`).
    """
    found: dict[str, tf.Variable] = {}
    for layer in model_parallel_layers(network):
        found[layer.name] = layer.shards[0]
        if tables is not None:
            for slot, variable in tables.local_slots(layer.name).items():
                found[f"{layer.name}__{slot}"] = variable
    return found


def split_of(network: tf.Module) -> Workers:
    """The split of `network`'s model-parallel tables (`Workers(1, 0)` when it has none)."""
    layers = model_parallel_layers(network)
    return layers[0].workers if layers else Workers(1, 0)


def placements(network: tf.Module) -> dict[str, dict]:
    """What a day records of each model-parallel table: its split and the exchange it used."""
    return {layer.name: {"placement": "model_parallel", "workers": layer.workers.count,
                         "exchange": layer.exchange if layer.workers.count > 1 else "none"}
            for layer in model_parallel_layers(network)}


def table_rows(network: tf.Module) -> dict[str, int]:
    """Rows of each model-parallel table of `network`, by layer name."""
    return {layer.name: layer.num_buckets for layer in model_parallel_layers(network)}


def _key(name: str) -> str:
    return f"parts/{name}/.ATTRIBUTES/VARIABLE_VALUE"


def save_parts(variables: Mapping[str, tf.Variable], checkpoint: str, workers: Workers
               ) -> str | None:
    """Writes this worker's part of `checkpoint`; returns its prefix (None: nothing to save)."""
    if not variables:
        return None
    path = part_prefix(checkpoint, workers.index, workers.count)
    tf.train.Checkpoint(parts=dict(variables)).write(path)
    if workers.index == 0:  # a step saved again on another count (`--force`) replaces the old
        head, tail = os.path.split(checkpoint)
        for old in tf.io.gfile.glob(os.path.join(head, PARTS_DIR, "worker-*-of-*", tail + ".*")):
            match = _PART.search(os.path.dirname(old))
            if match and int(match.group(2)) != workers.count:
                with contextlib.suppress(tf.errors.NotFoundError):  # another worker's race
                    tf.io.gfile.remove(old)
    return path


def prune_parts(checkpoint_dir: str, workers: Workers, kept: list[str]) -> None:
    """Deletes this worker's parts of checkpoints no longer in `kept` (prefixes in the dir)."""
    steps = {os.path.basename(k) for k in kept}
    mine = os.path.dirname(part_prefix(os.path.join(checkpoint_dir, "x"), workers.index,
                                       workers.count))
    for path in tf.io.gfile.glob(os.path.join(mine, "ckpt-*")):
        if os.path.basename(path).split(".")[0] not in steps:
            tf.io.gfile.remove(path)


def written_count(checkpoint: str) -> int | None:
    """The worker count that wrote `checkpoint`'s parts (None: no parts)."""
    head, tail = os.path.split(checkpoint)
    counts = set()
    for path in tf.io.gfile.glob(os.path.join(head, PARTS_DIR, "worker-0-of-*", f"{tail}.index")):
        match = _PART.search(os.path.dirname(path))
        if match:
            counts.add(int(match.group(2)))
    if len(counts) > 1:
        raise PartsMissingError(f"{checkpoint} has model-parallel parts written by "
                                f"{sorted(counts)} workers; keep the ones of one count")
    return counts.pop() if counts else None


def restore_parts(variables: Mapping[str, tf.Variable], checkpoint: str, workers: Workers,
                  num_buckets: Mapping[str, int]) -> None:
    """Fills this worker's rows (and slots) from `checkpoint`'s parts, re-partitioned if needed.

    Args:
        variables: From `model_parallel_variables`.
        checkpoint: The chief's checkpoint prefix.
        workers: This worker's split (`Workers(1, 0)` outside a cluster: the whole table).
        num_buckets: Rows of each table, by layer name.

    Raises:
        PartsMissingError: The checkpoint has no parts, or a part or a variable is missing.
    """
    if not variables:
        return
    readers = _readers(checkpoint, sorted(variables))
    for name, variable in variables.items():
        variable.assign(_rows_for(readers, name, num_buckets[name.split("__")[0]], workers,
                                  variable.shape[1:]))
    if len(readers) != workers.count:
        log.info("re-partitioned %s from %d worker part(s) into worker %d of %d",
                 sorted(variables), len(readers), workers.index, workers.count)


def stitched_weights(network: tf.Module, weights: list[np.ndarray], checkpoint: str
                     ) -> list[np.ndarray]:
    """`network.get_weights()` with every model-parallel table whole, from `checkpoint`'s parts.

    What an export or a network outside the cluster loads: rows only, no optimizer slots.
    """
    parts = model_parallel_variables(network)
    if not parts:
        return list(weights)
    whole = stitched_parts(checkpoint, parts, table_rows(network))
    names = {id(v): name for name, v in parts.items()}
    return [whole[names[id(v)]] if id(v) in names else w
            for v, w in zip(network.weights, weights, strict=True)]


def stitched_parts(checkpoint: str, names: Mapping[str, object], num_buckets: Mapping[str, int]
                   ) -> dict[str, np.ndarray]:
    """Whole tables (and slots) named `names` (`<layer>`, `<layer>__<slot>`) from the parts."""
    readers = _readers(checkpoint, sorted(names))
    path, first = readers[0]
    return {name: _rows_for(readers, name, num_buckets[name.split("__")[0]], Workers(1, 0),
                            tf.TensorShape(_read(first, path, name).shape[1:]))
            for name in names}


def repartition_parts(checkpoint: str, workers: int) -> int:
    """Rewrites `checkpoint`'s model-parallel parts for `workers` workers, offline.

    Each new part is built from the old ones (one old part and one new part in memory at a
    time) and written; then the old parts of this checkpoint are deleted, so a day starting on
    `workers` workers reads its own part directly. Returns the old worker count.

    Raises:
        PartsMissingError: The checkpoint has no parts, or they are incomplete.
    """
    count = written_count(checkpoint)
    if count is None:
        raise PartsMissingError(f"{checkpoint} has no model-parallel parts to re-partition")
    if count == workers:
        return count
    first = tf.train.load_checkpoint(part_prefix(checkpoint, 0, count))
    names = sorted(key.split("/")[1] for key in first.get_variable_to_shape_map()
                   if key.startswith("parts/") and key.endswith("VARIABLE_VALUE"))
    readers = _readers(checkpoint, names)
    rows = {}
    for name in names:  # a table's rows: the sum of its parts'
        if "__" not in name:
            rows[name] = sum(r.get_variable_to_shape_map()[_key(name)][0] for _, r in readers)
    for index in range(workers):
        values = {name: tf.Variable(_rows_for(
            readers, name, rows[name.split("__")[0]], Workers(workers, index),
            tf.TensorShape(first.get_variable_to_shape_map()[_key(name)][1:])))
            for name in names}
        tf.train.Checkpoint(parts=values).write(part_prefix(checkpoint, index, workers))
    for old in range(count):
        for path in tf.io.gfile.glob(part_prefix(checkpoint, old, count) + ".*"):
            tf.io.gfile.remove(path)
    log.info("re-partitioned %s's model-parallel parts %s from %d to %d workers", checkpoint,
             names, count, workers)
    return count


def _readers(checkpoint: str, names: list[str]) -> list[tuple[str, tf.train.CheckpointReader]]:
    count = written_count(checkpoint)
    if count is None:
        raise PartsMissingError(
            f"{checkpoint} has no model-parallel parts ({part_prefix(checkpoint, 0, 'N')}...): "
            f"it was written by a model without the model_parallel tables {names}")
    readers = []
    for old in range(count):
        path = part_prefix(checkpoint, old, count)
        if not tf.io.gfile.exists(f"{path}.index"):
            raise PartsMissingError(f"{path} is missing: {checkpoint} was written by {count} "
                                    f"workers and every part is needed")
        readers.append((path, tf.train.load_checkpoint(path)))
    return readers


def _rows_for(readers: list[tuple[str, tf.train.CheckpointReader]], name: str, num_buckets: int,
              workers: Workers, width: tf.TensorShape) -> np.ndarray:
    """Worker `workers.index`'s rows of `name` from the parts of `len(readers)` workers."""
    count = len(readers)
    if count == workers.count:
        path, reader = readers[workers.index]
        return _checked(_read(reader, path, name), path, name, num_buckets, count,
                        workers.index, width)
    mine = None
    for old, (path, reader) in enumerate(readers):
        part = _checked(_read(reader, path, name), path, name, num_buckets, count, old, width)
        if mine is None:
            mine = np.zeros((rows_on_worker(num_buckets, workers.count, workers.index),
                             *part.shape[1:]), part.dtype)
        rows = old + count * np.arange(part.shape[0], dtype=np.int64)  # global rows
        keep = rows % workers.count == workers.index
        mine[rows[keep] // workers.count] = part[keep]
    return mine


def _checked(part: np.ndarray, path: str, name: str, num_buckets: int, count: int, index: int,
             width: tf.TensorShape) -> np.ndarray:
    want = (rows_on_worker(num_buckets, count, index), *width.as_list())
    if part.shape != want:
        raise PartsMissingError(
            f"{path}: {name!r} has shape {list(part.shape)}, not {list(want)} (worker {index} "
            f"of {count}'s rows of a {num_buckets}-row table): the table changed since")
    return part


def _read(reader: tf.train.CheckpointReader, path: str, name: str) -> np.ndarray:
    try:
        return reader.get_tensor(_key(name))
    except (tf.errors.NotFoundError, ValueError) as err:
        raise PartsMissingError(f"{path} has no {name!r}: the table or its optimizer slots "
                                f"changed since it was written") from err
