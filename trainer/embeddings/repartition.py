"""Restoring a checkpoint whose tables were written with another number of shards.

Shards and their row-sparse slots are checkpointed under names that carry P
(`.../<layer>/part_<i>_of_<P>` and `.../slots/<layer>/<slot>/part_<i>_of_<P>`), so a checkpoint
written with another P matches none of them by name. `restore_checkpoint` reads the old shards
and slots from the file, concatenates them and splits them into the model's shards (or, if
asked not to, stops and names both P values) instead of failing on shapes.

A checkpoint whose tables are fused otherwise than the model's (`model.embeddings.fuse`, see
`trainer.embeddings.fused`) is refused before anything is restored, naming the setting that
restores it: Keras saves layers by position, so its rows would land in other tables.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from multitower.errors import MultitowerError
from trainer.embeddings.fused import FusedEmbedding
from trainer.embeddings.layer import PartitionedEmbedding
from trainer.embeddings.optimizers import RowSparseOptimizer
from trainer.embeddings.per_worker import (
    model_parallel_variables,
    restore_parts,
    split_of,
    stitched_parts,
    table_rows,
    written_count,
)

log = logging.getLogger("multitower.trainer")

_PART = re.compile(r"^part_(\d+)_of_(\d+)$")
_LAYER = re.compile(r"^layer_with_weights-(\d+)$")
_SLOTTED = re.compile(r"(?:^|/)slots/([^/]+)/[^/]+/part_\d+_of_\d+/")
_FUSED = re.compile(r"embed_fused_d\d+_")
_Graph = trackable_object_graph_pb2.TrackableObjectGraph


class PartitionMismatchError(MultitowerError, ValueError):
    """A checkpoint's table was written with another number of shards (or cannot be mapped)."""


class FusionMismatchError(PartitionMismatchError):
    """A checkpoint's tables are fused otherwise than the model's (`model.embeddings.fuse`)."""


@dataclass(frozen=True)
class Repartition:
    """One table restored from a checkpoint written with another number of shards."""

    layer: str
    old_shards: int
    new_shards: int
    slots: tuple[str, ...]  # row-sparse optimizer slots re-partitioned with it
    placement_changed: bool = False  # saved replicated, now model-parallel, or the other way


def restore_with_parts(checkpoint: tf.train.Checkpoint, path: str, network: tf.Module,
                       tables: RowSparseOptimizer | None = None) -> list[Repartition]:
    """`restore_checkpoint`, then this process's share of every model-parallel table.

    The rows (and, with `tables`, their slots) come from the workers' parts, re-partitioned if
    another count wrote them; a table the checkpoint holds under the other placement was
    already filled by `restore_checkpoint`.

    Returns:
        What `restore_checkpoint` returns.
    """
    done = restore_checkpoint(checkpoint, path)
    moved = {r.layer for r in done if r.placement_changed}
    parts = model_parallel_variables(network, tables)
    restore_parts({k: v for k, v in parts.items() if k.split("__")[0] not in moved}, path,
                  split_of(network), table_rows(network))
    return done


def other_placement_name(name: str) -> str:
    """The name a fused group had under the other placement (a table's own name is the same)."""
    for this, other in (("_model_parallel", "_replicated"), ("_replicated", "_model_parallel")):
        if _FUSED.search(name) and name.endswith(this):
            return name[: -len(this)] + other
    return name


def _change_placement(layer: PartitionedEmbedding, old: list[int] | None, graph: _Graph,
                      reader: tf.train.CheckpointReader, path: str,
                      optimizers: list[tuple[int, RowSparseOptimizer]]) -> tuple[str, ...]:
    """Fills `layer` (and its slots) from a table saved under the other placement.

    `old`: the replicated shards' nodes (now model-parallel), or None (saved model-parallel,
    now replicated: the whole table is stitched from every worker's part).
    """
    if old is not None:  # replicated -> model-parallel: this worker's rows of the whole table
        count, index = layer.workers
        full = np.concatenate([reader.get_tensor(_value_key(graph.nodes[n])) for n in old])
        layer.shards[0].assign(full[index::count])
        names = []
        for node, optimizer in optimizers:
            saved = _saved_slots(graph, node, layer) or _saved_slots(
                graph, node, layer, other_placement_name(layer.name))
            for slot, nodes in sorted(saved.items()):
                full = np.concatenate([reader.get_tensor(_value_key(graph.nodes[n]))
                                       for n in nodes])
                optimizer.local_slots(layer.name)[slot].assign(full[index::count])
                names.append(slot)
        log.info("table %s: saved replicated in %s, now model-parallel: worker %d of %d took "
                 "its rows (slots: %s)", layer.name, path, index, count,
                 ", ".join(names) or "none")
        return tuple(names)
    saved_name = other_placement_name(layer.name)
    rows = {saved_name: layer.num_buckets}
    parts = {saved_name: None}
    names = []
    for _, optimizer in optimizers:
        names = list(optimizer.slot_names)
        parts.update({f"{saved_name}__{slot}": None for slot in names})
    full = stitched_parts(path, parts, rows)
    _assign_rows(layer.shards, [full[saved_name]])
    for _, optimizer in optimizers:
        for slot in names:
            _assign_rows([optimizer.slot(v, slot) for v in layer.shards],
                         [full[f"{saved_name}__{slot}"]])
    log.info("table %s: saved model-parallel in %s, now replicated: stitched from every "
             "worker's part (slots: %s)", layer.name, path, ", ".join(names) or "none")
    return tuple(names)


def restore_checkpoint(
    checkpoint: tf.train.Checkpoint, path: str, allow_repartition: bool = True,
) -> list[Repartition]:
    """Restores `path` into `checkpoint`, re-partitioning tables saved with another P.

    Every table whose P matches is restored as usual; for the others the old shards, and the
    row-sparse optimizer's slots of them, are read from the file, concatenated and split into
    the model's shards and slots (created by the optimizer's `build` if missing). Slots of an
    optimizer `checkpoint` does not hold are left out, as for a model restored to be
    evaluated. Then, as `assert_existing_objects_matched` does, every variable of the live
    objects must have a value in the checkpoint; values of objects the live side does not have
    are left unread (`expect_partial`). Everything is checked before anything is restored.

    Call it after the model is built and the optimizer built (inside the strategy scope);
    under MultiWorkerMirroredStrategy every worker calls it and reads the file.

    Args:
        checkpoint: The live `tf.train.Checkpoint` (network, optimizer, ...).
        path: A checkpoint prefix, e.g. from `tf.train.latest_checkpoint`.
        allow_repartition: If False, a different P raises instead.

    Returns:
        The tables that were re-partitioned (empty when every P matched).

    Raises:
        PartitionMismatchError: A table (or slot) was saved with other rows or width, is
            missing or incomplete, a slot belongs to another optimizer, P differs and
            `allow_repartition` is False, or a live variable has no value in the checkpoint.
    """
    reader = tf.train.load_checkpoint(path)
    graph = _Graph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    live = _match_live_objects(graph, checkpoint)
    shapes = reader.get_variable_to_shape_map()
    _check_fusion(graph, live, shapes, path)
    plans = []  # (layer, old shard node ids)
    placed = []  # (layer, old shard node ids or None): tables saved with the other placement
    for node_id, obj in live.items():
        if not (isinstance(obj, PartitionedEmbedding) and obj.built):
            continue
        if obj.model_parallel:
            # Its rows are each worker's own, restored from the parts (`per_worker`), unless
            # the checkpoint holds the table replicated (the placement changed).
            old = _parts(graph, node_id, f"layer {obj.name!r}")
            if old:
                _check_rows([shapes[_value_key(graph.nodes[n])] for n in old], obj, "the table")
                placed.append((obj, old))
            continue
        if not _parts(graph, node_id, f"layer {obj.name!r}") and written_count(path):
            placed.append((obj, None))  # saved model-parallel: its rows are in the parts
            continue
        old = _old_shards(graph, node_id, obj)
        if len(old) != obj.num_shards:
                if not allow_repartition:
                    raise PartitionMismatchError(
                        f"layer {obj.name!r}: the checkpoint {path} holds its table in "
                        f"{len(old)} shards, the model has {obj.num_shards}; keep "
                        f"num_shards={len(old)} or allow re-partitioning")
                plans.append((obj, old))
    optimizers = [(n, obj) for n, obj in live.items() if isinstance(obj, RowSparseOptimizer)]
    work = []  # (layer, old shard nodes, [(optimizer, slot name, old slot nodes)])
    for layer, old in plans:
        _check_rows([shapes[_value_key(graph.nodes[n])] for n in old], layer, "the table")
        found = []
        for optimizer_node, optimizer in optimizers:
            for slot_name, nodes in sorted(_saved_slots(graph, optimizer_node, layer).items()):
                if slot_name not in optimizer.slot_names:
                    raise PartitionMismatchError(
                        f"the checkpoint holds slot {slot_name!r} of layer {layer.name!r}, but "
                        f"{type(optimizer).__name__} keeps {list(optimizer.slot_names)}; use "
                        "the embedding optimizer the checkpoint was written with")
                if len(nodes) != len(old):
                    raise PartitionMismatchError(
                        f"slot {slot_name!r} of layer {layer.name!r} is saved in {len(nodes)} "
                        f"shards, its table in {len(old)}")
                _check_rows([shapes[_value_key(graph.nodes[n])] for n in nodes], layer,
                            f"slot {slot_name!r}")
                found.append((optimizer, slot_name, nodes))
        work.append((layer, old, found))
    for layer, _, found in work:  # the slots that receive the old rows
        for optimizer in {id(o): o for o, _, _ in found}.values():
            optimizer.build([layer])
    for layer, _ in placed:
        for _, optimizer in optimizers:
            optimizer.build([layer])
    status = checkpoint.restore(path)
    if not plans and not placed:
        status.assert_existing_objects_matched().expect_partial()
        return []
    done, new = [], []
    for layer, old in placed:
        names = _change_placement(layer, old, graph, reader, path,
                                  [(n, o) for n, o in optimizers])
        if not layer.model_parallel:
            new += layer.shards + [o.slot(v, slot) for _, o in optimizers for slot in names
                                   for v in layer.shards]
        done.append(Repartition(layer.name, len(old) if old else 0, layer.num_shards, names,
                                placement_changed=True))
    for layer, old, found in work:
        _assign_rows(layer.shards, [reader.get_tensor(_value_key(graph.nodes[n])) for n in old])
        new += layer.shards
        for optimizer, slot_name, nodes in found:
            slots = [optimizer.slot(s, slot_name) for s in layer.shards]
            _assign_rows(slots, [reader.get_tensor(_value_key(graph.nodes[n])) for n in nodes])
            new += slots
        names = tuple(slot_name for _, slot_name, _ in found)
        done.append(Repartition(layer.name, len(old), layer.num_shards, names))
        log.info("re-partitioned table %s from %d to %d shards (slots: %s)", layer.name,
                 len(old), layer.num_shards, ", ".join(names) or "none")
    _assert_all_matched(graph, checkpoint, new)
    status.expect_partial()
    return done


def _check_fusion(graph: _Graph, live: dict[int, object], shapes: dict[str, list[int]],
                  path: str) -> None:
    """Refuses a checkpoint whose tables are fused otherwise than the model's.

    Keras checkpoints a functional model's layers by position (`layer_with_weights-<k>`), so a
    checkpoint written with one table per layer, restored into fused groups (or the other way
    round), would put rows of one table into another's place. Detected two ways: the tables of
    a network hold the same rows of each width in both, but split otherwise between layers; or
    the checkpoint's optimizer slots are keyed by fused layer names and the model's are not
    (or the other way round).

    Raises:
        FusionMismatchError: With a message naming the checkpoint and the setting to use.
    """
    model_fused = any(isinstance(obj, FusedEmbedding) for obj in live.values())
    for node_id, obj in live.items():
        refs = [(int(m[1]), ref.node_id) for ref in graph.nodes[node_id].children
                if (m := _LAYER.match(ref.local_name))]
        if not refs:
            continue
        saved = []
        for position, child in sorted(refs):
            parts = _parts(graph, child, f"layer_with_weights-{position}")
            if parts:
                dims = [shapes[_value_key(graph.nodes[n])] for n in parts]
                saved.append((position, sum(d[0] for d in dims), dims[0][1]))
        ours = []
        for name, layer in tf.train.TrackableView.children(obj).items():
            m = _LAYER.match(name)
            if m and isinstance(layer, PartitionedEmbedding) and layer.built \
                    and not layer.model_parallel:
                model_fused = model_fused or isinstance(layer, FusedEmbedding)
                ours.append((int(m[1]), layer.num_buckets, layer.dim))
        if sorted(saved) != sorted(ours) and _rows_by_width(saved) == _rows_by_width(ours):
            raise _fusion_error(path, model_fused, len(saved), len(ours))
    slotted = {m[1] for key in shapes if (m := _SLOTTED.search(key))}
    if slotted and any(isinstance(obj, RowSparseOptimizer) for obj in live.values()):
        saved_fused = any(_FUSED.search(name) for name in slotted)
        if saved_fused != model_fused:
            raise _fusion_error(path, model_fused, None, None)


def _rows_by_width(tables: Sequence[tuple[int, int, int]]) -> dict[int, int]:
    totals: dict[int, int] = {}
    for _, rows, dim in tables:
        totals[dim] = totals.get(dim, 0) + rows
    return totals


def _fusion_error(path: str, model_fused: bool, saved: int | None, ours: int | None
                  ) -> FusionMismatchError:
    counts = "" if saved is None else f" ({saved} table layers in the checkpoint, {ours} in " \
        "the model)"
    if model_fused:
        return FusionMismatchError(
            f"the checkpoint {path} holds one variable per embedding table, but the model fuses "
            f"tables of one width into one variable (model.embeddings.fuse: true, the default)"
            f"{counts}; set model.embeddings.fuse: false to keep training that model, or train "
            "into a new model_dir")
    return FusionMismatchError(
        f"the checkpoint {path} holds fused embedding tables (one variable per width), but the "
        f"model keeps one variable per table (model.embeddings.fuse: false){counts}; set "
        "model.embeddings.fuse: true to keep training that model, or train into a new model_dir")


def _value_key(node: _Graph.TrackableObject) -> str:
    return next(a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE")


def _child(graph: _Graph, node_id: int, name: str) -> int | None:
    return next((ref.node_id for ref in graph.nodes[node_id].children
                 if ref.local_name == name), None)


def _match_live_objects(graph: _Graph, root: tf.train.Checkpoint) -> dict[int, object]:
    """Node id in the checkpoint's object graph -> the live object at the same path."""
    live = {0: root}
    queue = [0]
    while queue:
        node_id = queue.pop()
        children = tf.train.TrackableView.children(live[node_id])
        for ref in graph.nodes[node_id].children:
            child = children.get(ref.local_name)
            if child is not None and ref.node_id not in live:
                live[ref.node_id] = child
                queue.append(ref.node_id)
    return live


def _parts(graph: _Graph, node_id: int, what: str) -> list[int]:
    """The node ids of the `part_<i>_of_<P>` children of a node, in row order (none: [])."""
    found = {}
    for ref in graph.nodes[node_id].children:
        match = _PART.match(ref.local_name)
        if match:
            found[(int(match[1]), int(match[2]))] = ref.node_id
    counts = {p for _, p in found}
    if found and (len(counts) != 1 or sorted(i for i, _ in found) != list(range(counts.pop()))):
        raise PartitionMismatchError(
            f"checkpoint shards of {what} are incomplete or mixed: "
            f"{sorted(f'part_{i}_of_{p}' for i, p in found)}")
    return [found[key] for key in sorted(found)]


def _old_shards(graph: _Graph, node_id: int, layer: PartitionedEmbedding) -> list[int]:
    """The checkpoint node ids of a layer's shards, in row order."""
    old = _parts(graph, node_id, f"layer {layer.name!r}")
    if not old:
        names = sorted(ref.local_name for ref in graph.nodes[node_id].children)
        raise PartitionMismatchError(
            f"the checkpoint holds no shards of layer {layer.name!r} (it has {names}: written "
            "before the table was partitioned?); train into a new model_dir")
    return old


def _saved_slots(graph: _Graph, optimizer_node: int, layer: PartitionedEmbedding,
                 name: str | None = None) -> dict[str, list[int]]:
    """Slot name -> the checkpoint node ids of that slot of a layer's shards, in row order.

    `name`: the layer's name in the checkpoint, if not its own.
    """
    slots = _child(graph, optimizer_node, "slots")
    table = None if slots is None else _child(graph, slots, name or layer.name)
    if table is None:
        return {}
    return {ref.local_name: _parts(graph, ref.node_id,
                                   f"slot {ref.local_name!r} of layer {layer.name!r}")
            for ref in graph.nodes[table].children}


def _check_rows(shapes: Sequence[Sequence[int]], layer: PartitionedEmbedding, what: str) -> None:
    rows, dims = sum(shape[0] for shape in shapes), {shape[1] for shape in shapes}
    if dims != {layer.dim} or rows != layer.num_buckets:
        raise PartitionMismatchError(
            f"{what} of layer {layer.name!r} was saved as a {rows} x {'/'.join(map(str, dims))} "
            f"table, the model's is {layer.num_buckets} x {layer.dim}: hashed ids differ, so it "
            "cannot be re-partitioned; train into a new model_dir")


def _assign_rows(variables: Sequence[tf.Variable], old_parts: Sequence[np.ndarray]) -> None:
    """Concatenates the old shards and splits them by the new shards' rows."""
    table = np.concatenate(old_parts, axis=0)
    bounds = np.cumsum([v.shape[0] for v in variables])[:-1]
    for variable, value in zip(variables, np.split(table, bounds), strict=True):
        variable.assign(value)


def _assert_all_matched(graph: _Graph, root: tf.train.Checkpoint,
                        new: Sequence[tf.Variable]) -> None:
    """`assert_existing_objects_matched` for a restore that bypassed the re-partitioned variables.

    Every variable of the live objects but the re-partitioned shards and slots (`new`) must have
    a value in the checkpoint.

    Raises:
        PartitionMismatchError: Some other variable has no value in the checkpoint.
    """
    matched = {id(obj) for obj in _match_live_objects(graph, root).values()}
    skipped = {id(v) for v in new}
    if isinstance(root, tf.train.Checkpoint):  # `Checkpoint.write` leaves the counter out
        skipped.add(id(root.save_counter))
    unmatched = [v.name for v in tf.train.TrackableView(root).descendants()
                 if isinstance(v, tf.Variable) and id(v) not in matched | skipped]
    if unmatched:
        raise PartitionMismatchError(f"model variables not in the checkpoint: {unmatched[:10]}")
