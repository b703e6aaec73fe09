"""Per-task gradients as flat vectors: what PCGrad projects and GradNorm measures.

Dense gradients flatten the whole variable; sparse ones (embedding tables) are compacted to the
rows some task touched, so a large table is never densified.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

Gradient = tf.Tensor | tf.IndexedSlices | None


def project_conflicts(grads: tf.Tensor, seed: int | None) -> tf.Tensor:
    """PCGrad's projections on `(tasks, elements)` per-task gradients; returns the same shape."""
    count = grads.shape[0]
    squared = tf.reduce_sum(grads * grads, axis=1)
    projected = []
    for i in range(count):
        g = grads[i]
        others = [j for j in range(count) if j != i]
        if not others:
            projected.append(g)
            continue
        order = tf.random.shuffle(tf.constant(others), seed=seed)
        for k in range(len(others)):
            j = order[k]
            other = tf.gather(grads, j)
            dot = tf.reduce_sum(g * other)
            norm = tf.gather(squared, j)
            conflict = (dot < 0) & (norm > 0)
            g -= tf.where(conflict, dot / tf.where(conflict, norm, 1.0), 0.0) * other
        projected.append(g)
    return tf.stack(projected)


def flat_dense(grad: Gradient, variable: tf.Variable) -> tf.Tensor:
    """A gradient as a float32 vector (zeros where the task does not reach the variable)."""
    if grad is None:
        return tf.zeros([variable.shape.num_elements()])
    return tf.cast(tf.reshape(tf.convert_to_tensor(grad), [-1]), tf.float32)


def compact_rows(grads: list[Gradient], variable: tf.Variable
             ) -> tuple[tf.Tensor | None, Callable[[tf.Tensor], Gradient]]:
    """Per-task gradients of one variable as `(tasks, elements)`, and the way back.

    Dense gradients flatten the whole variable. When every present gradient is sparse, rows are
    gathered over the union of touched rows (duplicates summed), so a large embedding table is
    never densified; the way back returns `tf.IndexedSlices` on those rows. The projection works
    in float32; the way back returns the variable's dtype.
    """
    present = [g for g in grads if g is not None]
    if not present:
        return None, lambda flat: None
    dtype = variable.dtype
    if not all(isinstance(g, tf.IndexedSlices) for g in present):
        rows = [flat_dense(g, variable) for g in grads]
        return tf.stack(rows), lambda flat: tf.cast(tf.reshape(flat, variable.shape), dtype)
    row_shape = tf.constant(variable.shape[1:].as_list(), tf.int32)
    indices = tf.concat([g.indices for g in present], axis=0)
    unique, positions = tf.unique(indices)
    count = tf.size(unique)
    segments = iter(tf.split(positions, tf.stack([tf.size(g.indices) for g in present]),
                             num=len(present)))
    rows = []
    for g in grads:
        if g is None:
            values = tf.zeros(tf.concat([[count], row_shape], axis=0))
        else:
            values = tf.math.unsorted_segment_sum(tf.cast(g.values, tf.float32), next(segments),
                                                  count)
        rows.append(tf.reshape(values, [-1]))
    dense_shape = present[0].dense_shape
    if dense_shape is None:
        dense_shape = tf.shape(variable)
    return tf.stack(rows), lambda flat: tf.IndexedSlices(
        tf.cast(tf.reshape(flat, tf.concat([[count], row_shape], axis=0)), dtype), unique,
        dense_shape)
